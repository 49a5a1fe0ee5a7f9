// mmsparse/core/config.hpp
//
// Portability macros shared by host and device code.
#pragma once

#if defined(__CUDACC__)
#define MMSPARSE_HOST_DEVICE __host__ __device__
#define MMSPARSE_DEVICE __device__
#else
#define MMSPARSE_HOST_DEVICE
#define MMSPARSE_DEVICE
#endif

#if defined(_MSC_VER)
#define MMSPARSE_FORCEINLINE __forceinline
#else
#define MMSPARSE_FORCEINLINE inline __attribute__((always_inline))
#endif

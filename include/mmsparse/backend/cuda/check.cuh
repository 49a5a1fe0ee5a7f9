// mmsparse/backend/cuda/check.cuh
//
// Status checks of the CUDA backend (STYLE.md §9, tier 3): every CUDA runtime,
// CUB and cuBLAS(Lt) call goes through MMSPARSE_CUDA_CHECK / MMSPARSE_CUBLAS_CHECK,
// which throw mmsparse::CudaError naming the call, the error and file:line.
// Every kernel launch is followed by MMSPARSE_CUDA_CHECK_LAUNCH(kernel).
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <sstream>
#include <string>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <mmsparse/core/error.hpp>

namespace mmsparse::gpu::detail {

[[noreturn]] inline void throw_cuda_error(const char* call,
                                          cudaError_t status,
                                          const char* file,
                                          int line) {
  std::ostringstream os;
  os << "[cuda] " << call << " failed: " << cudaGetErrorString(status) << " ("
     << cudaGetErrorName(status) << ") at " << file << ':' << line;
  throw CudaError(os.str());
}

[[noreturn]] inline void throw_cublas_error(const char* call,
                                            cublasStatus_t status,
                                            const char* file,
                                            int line) {
  std::ostringstream os;
  os << "[cublas] " << call << " failed: " << cublasGetStatusString(status) << " ("
     << cublasGetStatusName(status) << ") at " << file << ':' << line;
  throw CudaError(os.str());
}

inline void check_launch(const char* kernel, const char* file, int line) {
  cudaError_t status = cudaGetLastError();
#if defined(MMSPARSE_CUDA_SYNC_LAUNCHES)
  if (status == cudaSuccess) {
    status = cudaDeviceSynchronize();
  }
#endif
  if (status != cudaSuccess) {
    throw_cuda_error((std::string("launch of ") + kernel).c_str(), status, file, line);
  }
}

}  // namespace mmsparse::gpu::detail

// Throws mmsparse::CudaError unless the CUDA runtime (or CUB) call returns cudaSuccess.
#define MMSPARSE_CUDA_CHECK(call)                                                             \
  do {                                                                                        \
    const cudaError_t mmsparse_status_ = (call);                                              \
    if (mmsparse_status_ != cudaSuccess) {                                                    \
      ::mmsparse::gpu::detail::throw_cuda_error(#call, mmsparse_status_, __FILE__, __LINE__); \
    }                                                                                         \
  } while (0)

// Throws mmsparse::CudaError unless the cuBLAS / cuBLASLt call returns CUBLAS_STATUS_SUCCESS.
#define MMSPARSE_CUBLAS_CHECK(call)                                                             \
  do {                                                                                          \
    const cublasStatus_t mmsparse_status_ = (call);                                             \
    if (mmsparse_status_ != CUBLAS_STATUS_SUCCESS) {                                            \
      ::mmsparse::gpu::detail::throw_cublas_error(#call, mmsparse_status_, __FILE__, __LINE__); \
    }                                                                                           \
  } while (0)

// After a kernel launch: a bad launch configuration surfaces here, named by the kernel.
// Define MMSPARSE_CUDA_SYNC_LAUNCHES (sanitizer and debug runs) to also wait for the kernel,
// so that a fault inside it is reported at its launch site rather than at a later call.
#define MMSPARSE_CUDA_CHECK_LAUNCH(kernel) \
  ::mmsparse::gpu::detail::check_launch(#kernel, __FILE__, __LINE__)

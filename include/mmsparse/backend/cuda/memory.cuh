// mmsparse/backend/cuda/memory.cuh
//
// Device memory: SpaceAllocator<device_space> (cudaMalloc / cudaFree), so that
// Tensor<T, device_space> and Workspace<device_space> work, and host <-> device
// copies of views on a stream. Copies to the device are stream-ordered; copies to
// the host wait for the stream (a sync), since the caller reads the result next.
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>

#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse {

// Device memory of Tensor<T, device_space> and of the backend's workspace arena.
// Freeing waits for the device first: a buffer may still be read by a kernel in flight on
// any stream, and the arena frees its blocks while it is cold (never in a warm forward).
template <>
struct SpaceAllocator<device_space> {
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) {
      return nullptr;
    }
    void* p = nullptr;
    MMSPARSE_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
  }
  static void deallocate(void* p) noexcept {
    if (p != nullptr) {
      // A destructor cannot throw: a failure here resurfaces at the next checked call.
      (void)cudaDeviceSynchronize();
      (void)cudaFree(p);
    }
  }
};

namespace gpu {

namespace detail {

template <class T>
void check_same_shape(const char* op, Shape dst, Shape src) {
  MMSPARSE_CHECK(dst == src, op, "dst", src, dst);
}

template <class T, class DstSpace, class SrcSpace>
void copy_2d(View<T, DstSpace> dst,
             View<const T, SrcSpace> src,
             cudaMemcpyKind kind,
             cudaStream_t stream) {
  if (dst.empty()) {
    return;
  }
  const std::size_t row_bytes = static_cast<std::size_t>(dst.cols) * sizeof(T);
  const auto pitch = [&](std::int64_t stride, std::int64_t rows) {
    return rows <= 1 ? row_bytes : static_cast<std::size_t>(stride) * sizeof(T);
  };
  MMSPARSE_CUDA_CHECK(cudaMemcpy2DAsync(dst.data,
                                        pitch(dst.stride, dst.rows),
                                        src.data,
                                        pitch(src.stride, src.rows),
                                        row_bytes,
                                        static_cast<std::size_t>(dst.rows),
                                        kind,
                                        stream));
}

}  // namespace detail

// dst (device) = src (host), ordered on `stream`. A pageable `src` may be reused as soon as
// this returns (the runtime stages it).
template <class T>
void copy_to_device(View<T, device_space> dst, View<const T> src, cudaStream_t stream) {
  detail::check_same_shape<T>("copy_to_device", dst.shape(), src.shape());
  detail::copy_2d(dst, src, cudaMemcpyHostToDevice, stream);
}

// dst (host) = src (device), after all earlier work on `stream`: waits for the stream.
template <class T>
void copy_to_host(View<T> dst, View<const T, device_space> src, cudaStream_t stream) {
  detail::check_same_shape<T>("copy_to_host", dst.shape(), src.shape());
  detail::copy_2d(dst, src, cudaMemcpyDeviceToHost, stream);
  MMSPARSE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

// dst (device) = src (device), ordered on `stream`.
template <class T>
void copy_on_device(View<T, device_space> dst,
                    View<const T, device_space> src,
                    cudaStream_t stream) {
  detail::check_same_shape<T>("copy_on_device", dst.shape(), src.shape());
  detail::copy_2d(dst, src, cudaMemcpyDeviceToDevice, stream);
}

// A new device tensor holding a copy of the host view.
template <class T>
[[nodiscard]] Tensor<std::remove_const_t<T>, device_space> to_device(View<T> host,
                                                                     cudaStream_t stream) {
  using U = std::remove_const_t<T>;
  Tensor<U, device_space> t(host.rows, host.cols);
  copy_to_device(t.view(), View<const U>(host), stream);
  return t;
}
template <class T>
[[nodiscard]] Tensor<std::remove_const_t<T>, device_space> to_device(Span<T> host,
                                                                     cudaStream_t stream) {
  return to_device(host.as_column(), stream);
}
// A [values.size(), 1] device column.
template <class T>
[[nodiscard]] Tensor<T, device_space> to_device(const std::vector<T>& values, cudaStream_t stream) {
  return to_device(View<const T>(values.data(), static_cast<std::int64_t>(values.size()), 1),
                   stream);
}

// A new host tensor holding a copy of the device view (waits for the stream).
template <class T>
[[nodiscard]] Tensor<std::remove_const_t<T>> to_host(View<T, device_space> device,
                                                     cudaStream_t stream) {
  using U = std::remove_const_t<T>;
  Tensor<U> t(device.rows, device.cols);
  copy_to_host(t.view(), View<const U, device_space>(device), stream);
  return t;
}
template <class T>
[[nodiscard]] Tensor<std::remove_const_t<T>> to_host(Span<T, device_space> device,
                                                     cudaStream_t stream) {
  return to_host(device.as_column(), stream);
}

}  // namespace gpu
}  // namespace mmsparse

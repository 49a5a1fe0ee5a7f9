// mmsparse/backend/cuda/kernels/attention.cuh
//
// Attention kernels of the CUDA backend (as backend/cpu/attention.hpp; the GEMMs go through
// cuBLASLt): rope / rope_backward (rotary embedding, interleaved pairs, angles in fp64 with
// the host's inverse frequencies) and masked_softmax_rows(_backward) over the first limit[r]
// columns of each row (one block per row). Every kernel may run in place (y = x, dx = dy).
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cmath>
#include <cstdint>
#include <vector>

#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

// Unit (r, u): head h = u / half, pair i = u % half of row r.
template <class T>
struct RopeOp {
  View<T, device_space> y;
  View<const T, device_space> x;
  const std::int32_t* pos;
  const double* inv_freq;  // [half]
  std::int64_t head_dim;
  double sign;  // -1: the inverse rotation
  MMSPARSE_DEVICE void operator()(std::int64_t r, std::int64_t u) const {
    using A = accum_t<T>;
    const std::int64_t half = head_dim / 2;
    const std::int64_t h = u / half;
    const std::int64_t i = u % half;
    const double angle = static_cast<double>(pos[r]) * inv_freq[i];
    double s = 0.0;
    double c = 0.0;
    sincos(angle, &s, &c);
    const A ca = static_cast<A>(c);
    const A sa = static_cast<A>(sign * s);
    const std::int64_t j = h * head_dim + 2 * i;
    const A a = to_acc(x(r, j));
    const A b = to_acc(x(r, j + 1));
    y(r, j) = from_acc<T>(ca * a - sa * b);
    y(r, j + 1) = from_acc<T>(sa * a + ca * b);
  }
};

template <class T>
__global__ void masked_softmax_rows_kernel(View<T, device_space> y,
                                           View<const T, device_space> x,
                                           const std::int32_t* __restrict__ limit,
                                           accum_t<T> scale) {
  using A = accum_t<T>;
  __shared__ BlockScratch scratch;
  for (std::int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const std::int64_t lim = limit[r];
    const std::int64_t n = lim < 0 ? 0 : (lim > x.cols ? x.cols : lim);
    if (n > 0) {
      A m = scale * to_acc(x(r, 0));
      for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        m = fmax(m, scale * to_acc(x(r, j)));
      }
      m = block_max(m, scratch);
      A sum{};
      for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        sum += exp_acc(scale * to_acc(x(r, j)) - m);
      }
      sum = block_sum(sum, scratch);  // also orders every read of x before the writes below
      const A inv = A{1} / sum;
      for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        y(r, j) = from_acc<T>(exp_acc(scale * to_acc(x(r, j)) - m) * inv);
      }
    }
    for (std::int64_t j = n + threadIdx.x; j < x.cols; j += blockDim.x) {
      y(r, j) = T{};
    }
  }
}

template <class T>
__global__ void masked_softmax_rows_backward_kernel(View<T, device_space> dx,
                                                    View<const T, device_space> y,
                                                    View<const T, device_space> dy,
                                                    const std::int32_t* __restrict__ limit,
                                                    accum_t<T> scale) {
  using A = accum_t<T>;
  __shared__ BlockScratch scratch;
  for (std::int64_t r = blockIdx.x; r < y.rows; r += gridDim.x) {
    const std::int64_t lim = limit[r];
    const std::int64_t n = lim < 0 ? 0 : (lim > y.cols ? y.cols : lim);
    A dot{};
    for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      dot += to_acc(y(r, j)) * to_acc(dy(r, j));
    }
    dot = block_sum(dot, scratch);
    for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      dx(r, j) = from_acc<T>(scale * to_acc(y(r, j)) * (to_acc(dy(r, j)) - dot));
    }
    for (std::int64_t j = n + threadIdx.x; j < y.cols; j += blockDim.x) {
      dx(r, j) = T{};
    }
  }
}

}  // namespace detail

// y = R(pos) x (inverse: R(pos)^T x) on every head of [n, heads * head_dim] rows; y may be x.
template <class T>
void rope_rotate(const Context& ctx,
                 View<T, device_space> y,
                 View<const T, device_space> x,
                 Span<const std::int32_t, device_space> pos,
                 std::int64_t head_dim,
                 double theta,
                 bool inverse) {
  const std::int64_t half = head_dim / 2;
  const std::int64_t heads = head_dim > 0 ? x.cols / head_dim : 0;
  if (x.rows == 0 || half == 0 || heads == 0) {
    return;
  }
  std::vector<double> inv_freq(static_cast<std::size_t>(half));  // as the CPU computes them
  for (std::int64_t i = 0; i < half; ++i) {
    inv_freq[static_cast<std::size_t>(i)] =
        std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  }
  auto frame = ctx.workspace->frame();
  auto freq = ctx.workspace->take_span<double>(half);
  MMSPARSE_CUDA_CHECK(cudaMemcpyAsync(freq.data,
                                      inv_freq.data(),
                                      inv_freq.size() * sizeof(double),
                                      cudaMemcpyHostToDevice,
                                      ctx.stream));
  for_each_2d(ctx,
              x.rows,
              heads * half,
              detail::RopeOp<T>{y, x, pos.data, freq.data, head_dim, inverse ? -1.0 : 1.0});
}

// y[r, j] = softmax_j(scale * x[r, :L]) for j < L = clamp(limit[r], 0, cols), else 0.
template <class T>
void masked_softmax_rows(const Context& ctx,
                         View<T, device_space> y,
                         View<const T, device_space> x,
                         Span<const std::int32_t, device_space> limit,
                         double scale) {
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::
      masked_softmax_rows_kernel<<<row_blocks(ctx, x.rows), row_threads(x.cols), 0, ctx.stream>>>(
          y, x, limit.data, static_cast<accum_t<T>>(scale));
  MMSPARSE_CUDA_CHECK_LAUNCH(masked_softmax_rows_kernel);
}

// dx = scale * y . (dy - <y, dy>) on the first limit[r] columns, 0 elsewhere; dx may be dy.
template <class T>
void masked_softmax_rows_backward(const Context& ctx,
                                  View<T, device_space> dx,
                                  View<const T, device_space> y,
                                  View<const T, device_space> dy,
                                  Span<const std::int32_t, device_space> limit,
                                  double scale) {
  if (y.rows == 0 || y.cols == 0) {
    return;
  }
  detail::masked_softmax_rows_backward_kernel<<<row_blocks(ctx, y.rows),
                                                row_threads(y.cols),
                                                0,
                                                ctx.stream>>>(
      dx, y, dy, limit.data, static_cast<accum_t<T>>(scale));
  MMSPARSE_CUDA_CHECK_LAUNCH(masked_softmax_rows_backward_kernel);
}

}  // namespace mmsparse::gpu

// mmsparse/backend/cuda/kernels/norm.cuh
//
// Row normalisation of the CUDA backend, forward and backward (as backend/cpu/norm.hpp):
//   rms_norm    y = x * rstd * w,                 rstd = 1 / sqrt(mean(x^2) + eps)
//   layer_norm  y = (x - mean) * rstd * w + bias, rstd = 1 / sqrt(var(x) + eps)
// One block per row (fixed-order block sums). The weight gradients are column sums over rows,
// done in two fixed-order stages (row chunks, then chunks), so no float atomics anywhere.
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <algorithm>
#include <cstdint>

#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

// ---- column sums: out(j) op= sum_i f(i, j), rows in ascending chunks -----------------

inline constexpr std::int64_t column_chunk_rows = 64;
inline constexpr std::int64_t column_max_chunks = 256;

// Chunking depends on the row count only, so a result never depends on the GPU model.
[[nodiscard]] inline std::int64_t column_chunks(std::int64_t rows) {
  return std::clamp<std::int64_t>(ceil_div(rows, column_chunk_rows), 1, column_max_chunks);
}

template <class A, class F>
__global__ void column_partial_kernel(
    A* __restrict__ partial, std::int64_t rows, std::int64_t cols, std::int64_t chunk_rows, F f) {
  const std::int64_t c = blockIdx.y;
  const std::int64_t begin = c * chunk_rows;
  const std::int64_t end = begin + chunk_rows < rows ? begin + chunk_rows : rows;
  for (std::int64_t j = thread_index(); j < cols; j += thread_count()) {
    A s{};
    for (std::int64_t i = begin; i < end; ++i) {
      s += f(i, j);
    }
    partial[c * cols + j] = s;
  }
}

template <class A, class G>
__global__ void column_finish_kernel(const A* __restrict__ partial,
                                     std::int64_t chunks,
                                     std::int64_t cols,
                                     G g) {
  for (std::int64_t j = thread_index(); j < cols; j += thread_count()) {
    A s{};
    for (std::int64_t c = 0; c < chunks; ++c) {
      s += partial[c * cols + j];
    }
    g(j, s);
  }
}

// g(j, sum_i f(i, j)) for every column j of a [rows, cols] pass.
template <class A, class F, class G>
void column_sum(const Context& ctx, std::int64_t rows, std::int64_t cols, F f, G g) {
  if (cols == 0) {
    return;
  }
  const std::int64_t chunks = column_chunks(rows);
  const std::int64_t chunk_rows = ceil_div(std::max<std::int64_t>(rows, 1), chunks);
  auto frame = ctx.workspace->frame();
  auto partial = ctx.workspace->take_span<A>(chunks * cols);  // [chunks, cols]
  const auto bx = static_cast<unsigned>(ceil_div(cols, block_threads));
  column_partial_kernel<<<dim3(bx, static_cast<unsigned>(chunks)), block_threads, 0, ctx.stream>>>(
      partial.data, rows, cols, chunk_rows, f);
  MMSPARSE_CUDA_CHECK_LAUNCH(column_partial_kernel);
  column_finish_kernel<<<bx, block_threads, 0, ctx.stream>>>(partial.data, chunks, cols, g);
  MMSPARSE_CUDA_CHECK_LAUNCH(column_finish_kernel);
}

// Workspace bytes of one column_sum.
template <class A>
[[nodiscard]] std::size_t column_sum_bytes(std::int64_t rows, std::int64_t cols) {
  return Workspace<device_space>::bytes_for<A>(column_chunks(rows) * cols);
}

template <class T>
struct AddToRow {  // w(0, j) += s
  View<T, device_space> w;
  MMSPARSE_DEVICE void operator()(std::int64_t j, accum_t<T> s) const {
    w(0, j) = from_acc<T>(to_acc(w(0, j)) + s);
  }
};

template <class T>
struct RmsDwTerm {  // dy x rstd
  View<const T, device_space> dy;
  View<const T, device_space> x;
  const accum_t<T>* rstd;
  MMSPARSE_DEVICE accum_t<T> operator()(std::int64_t i, std::int64_t j) const {
    return to_acc(dy(i, j)) * to_acc(x(i, j)) * rstd[i];
  }
};

template <class T>
struct LayerDwTerm {  // dy (x - mean) rstd
  View<const T, device_space> dy;
  View<const T, device_space> x;
  const accum_t<T>* mean;
  const accum_t<T>* rstd;
  MMSPARSE_DEVICE accum_t<T> operator()(std::int64_t i, std::int64_t j) const {
    return to_acc(dy(i, j)) * (to_acc(x(i, j)) - mean[i]) * rstd[i];
  }
};

template <class T>
struct DyTerm {
  View<const T, device_space> dy;
  MMSPARSE_DEVICE accum_t<T> operator()(std::int64_t i, std::int64_t j) const {
    return to_acc(dy(i, j));
  }
};

// ---- row kernels ----------------------------------------------------------------------

template <class T>
__global__ void rms_norm_kernel(View<T, device_space> y,
                                accum_t<T>* __restrict__ rstd,
                                View<const T, device_space> x,
                                View<const T, device_space> w,
                                accum_t<T> eps) {
  using A = accum_t<T>;
  __shared__ BlockScratch scratch;
  const std::int64_t d = x.cols;
  for (std::int64_t i = blockIdx.x; i < x.rows; i += gridDim.x) {
    A ss{};
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A v = to_acc(x(i, j));
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const A r = A{1} / sqrt_acc(ss / static_cast<A>(d) + eps);
    if (threadIdx.x == 0) {
      rstd[i] = r;
    }
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      y(i, j) = from_acc<T>(to_acc(x(i, j)) * r * to_acc(w(0, j)));
    }
  }
}

// dx += r (w . dy) - x r^3 / d * sum_j(w_j dy_j x_j)
template <class T>
__global__ void rms_norm_backward_kernel(View<T, device_space> dx,
                                         View<const T, device_space> dy,
                                         View<const T, device_space> x,
                                         View<const T, device_space> w,
                                         const accum_t<T>* __restrict__ rstd) {
  using A = accum_t<T>;
  __shared__ BlockScratch scratch;
  const std::int64_t d = x.cols;
  for (std::int64_t i = blockIdx.x; i < x.rows; i += gridDim.x) {
    const A r = rstd[i];
    A dot{};
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      dot += to_acc(w(0, j)) * to_acc(dy(i, j)) * to_acc(x(i, j));
    }
    dot = block_sum(dot, scratch);
    const A c = dot * r * r * r / static_cast<A>(d);
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A g = r * to_acc(w(0, j)) * to_acc(dy(i, j)) - c * to_acc(x(i, j));
      dx(i, j) = from_acc<T>(to_acc(dx(i, j)) + g);
    }
  }
}

template <class T>
__global__ void layer_norm_kernel(View<T, device_space> y,
                                  accum_t<T>* __restrict__ mean,
                                  accum_t<T>* __restrict__ rstd,
                                  View<const T, device_space> x,
                                  View<const T, device_space> w,
                                  View<const T, device_space> bias,
                                  accum_t<T> eps) {
  using A = accum_t<T>;
  __shared__ BlockScratch scratch;
  const std::int64_t d = x.cols;
  const bool has_bias = bias.cols > 0;
  for (std::int64_t i = blockIdx.x; i < x.rows; i += gridDim.x) {
    A m{};
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      m += to_acc(x(i, j));
    }
    m = block_sum(m, scratch) / static_cast<A>(d);
    A v{};
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A c = to_acc(x(i, j)) - m;
      v += c * c;
    }
    v = block_sum(v, scratch);
    const A r = A{1} / sqrt_acc(v / static_cast<A>(d) + eps);
    if (threadIdx.x == 0) {
      mean[i] = m;
      rstd[i] = r;
    }
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A b = has_bias ? to_acc(bias(0, j)) : A{};
      y(i, j) = from_acc<T>((to_acc(x(i, j)) - m) * r * to_acc(w(0, j)) + b);
    }
  }
}

// With xh = (x - mean) rstd and g = w . dy: dx += rstd (g - mean_j(g) - xh mean_j(g xh)).
template <class T>
__global__ void layer_norm_backward_kernel(View<T, device_space> dx,
                                           View<const T, device_space> dy,
                                           View<const T, device_space> x,
                                           View<const T, device_space> w,
                                           const accum_t<T>* __restrict__ mean,
                                           const accum_t<T>* __restrict__ rstd) {
  using A = accum_t<T>;
  __shared__ BlockScratch scratch;
  const std::int64_t d = x.cols;
  for (std::int64_t i = blockIdx.x; i < x.rows; i += gridDim.x) {
    const A m = mean[i];
    const A r = rstd[i];
    A mg{};
    A mgx{};
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A g = to_acc(w(0, j)) * to_acc(dy(i, j));
      mg += g;
      mgx += g * (to_acc(x(i, j)) - m) * r;
    }
    mg = block_sum(mg, scratch) / static_cast<A>(d);
    mgx = block_sum(mgx, scratch) / static_cast<A>(d);
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A g = to_acc(w(0, j)) * to_acc(dy(i, j));
      const A xh = (to_acc(x(i, j)) - m) * r;
      dx(i, j) = from_acc<T>(to_acc(dx(i, j)) + r * (g - mg - xh * mgx));
    }
  }
}

}  // namespace detail

template <class T>
void rms_norm(const Context& ctx,
              View<T, device_space> y,
              Span<accum_t<T>, device_space> rstd,
              View<const T, device_space> x,
              View<const T, device_space> w,
              double eps) {
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::rms_norm_kernel<<<row_blocks(ctx, x.rows), row_threads(x.cols), 0, ctx.stream>>>(
      y, rstd.data, x, w, static_cast<accum_t<T>>(eps));
  MMSPARSE_CUDA_CHECK_LAUNCH(rms_norm_kernel);
}

template <class T>
void rms_norm_backward(const Context& ctx,
                       View<T, device_space> dx,
                       View<T, device_space> dw,
                       View<const T, device_space> dy,
                       View<const T, device_space> x,
                       View<const T, device_space> w,
                       Span<const accum_t<T>, device_space> rstd) {
  using A = accum_t<T>;
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::rms_norm_backward_kernel<<<row_blocks(ctx, x.rows), row_threads(x.cols), 0, ctx.stream>>>(
      dx, dy, x, w, rstd.data);
  MMSPARSE_CUDA_CHECK_LAUNCH(rms_norm_backward_kernel);
  detail::column_sum<A>(
      ctx, x.rows, x.cols, detail::RmsDwTerm<T>{dy, x, rstd.data}, detail::AddToRow<T>{dw});
}

// bias may be empty (cols == 0): no bias.
template <class T>
void layer_norm(const Context& ctx,
                View<T, device_space> y,
                Span<accum_t<T>, device_space> mean,
                Span<accum_t<T>, device_space> rstd,
                View<const T, device_space> x,
                View<const T, device_space> w,
                View<const T, device_space> bias,
                double eps) {
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::layer_norm_kernel<<<row_blocks(ctx, x.rows), row_threads(x.cols), 0, ctx.stream>>>(
      y, mean.data, rstd.data, x, w, bias, static_cast<accum_t<T>>(eps));
  MMSPARSE_CUDA_CHECK_LAUNCH(layer_norm_kernel);
}

// dbias may be empty (cols == 0): no bias.
template <class T>
void layer_norm_backward(const Context& ctx,
                         View<T, device_space> dx,
                         View<T, device_space> dw,
                         View<T, device_space> dbias,
                         View<const T, device_space> dy,
                         View<const T, device_space> x,
                         View<const T, device_space> w,
                         Span<const accum_t<T>, device_space> mean,
                         Span<const accum_t<T>, device_space> rstd) {
  using A = accum_t<T>;
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::
      layer_norm_backward_kernel<<<row_blocks(ctx, x.rows), row_threads(x.cols), 0, ctx.stream>>>(
          dx, dy, x, w, mean.data, rstd.data);
  MMSPARSE_CUDA_CHECK_LAUNCH(layer_norm_backward_kernel);
  detail::column_sum<A>(ctx,
                        x.rows,
                        x.cols,
                        detail::LayerDwTerm<T>{dy, x, mean.data, rstd.data},
                        detail::AddToRow<T>{dw});
  if (!dbias.empty()) {
    detail::column_sum<A>(ctx, x.rows, x.cols, detail::DyTerm<T>{dy}, detail::AddToRow<T>{dbias});
  }
}

}  // namespace mmsparse::gpu

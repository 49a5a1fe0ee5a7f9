// mmsparse/backend/cuda/kernels/router.cuh
//
// Router math of the CUDA backend (as backend/cpu/router_kernels.hpp): find_nonfinite,
// add_logistic_noise (the counter-based hash of core/rng.hpp: the same draws as the CPU),
// sigmoid/softmax/normalize backwards, logsumexp_rows, scatter_add_cols. Rows are short
// (E or k columns): one warp per row, with fp64 row sums as on the CPU.
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cstdint>

#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

template <class W>
struct NonfiniteOp {
  View<const W, device_space> x;
  unsigned long long* first;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    if (!isfinite(x(i, j))) {
      atomicMin(first, static_cast<unsigned long long>(i * x.cols + j));  // integer: exact
    }
  }
};

template <class W>
struct LogisticNoiseOp {
  View<W, device_space> y;
  const std::int32_t* row_id;  // null: the row itself
  std::uint64_t seed;
  std::int64_t row_stride;
  std::int64_t col_offset;
  MMSPARSE_DEVICE void operator()(std::int64_t r, std::int64_t j) const {
    const std::int64_t id = row_id == nullptr ? r : row_id[r];
    const auto base = static_cast<std::uint64_t>(id * row_stride + col_offset);
    y(r, j) += static_cast<W>(logistic_noise(seed, base + static_cast<std::uint64_t>(j)));
  }
};

template <class W>
struct SigmoidBackwardOp {
  View<W, device_space> dx;
  View<const W, device_space> dy;
  View<const W, device_space> y;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    const W s = y(i, j);
    dx(i, j) = dy(i, j) * s * (W{1} - s);
  }
};

template <class W>
__global__ void softmax_rows_backward_kernel(View<W, device_space> dx,
                                             View<const W, device_space> dy,
                                             View<const W, device_space> y) {
  const int lane = lane_index();
  for (std::int64_t r = warp_index(); r < dx.rows; r += warp_count()) {
    double dot = 0.0;
    for (std::int64_t j = lane; j < dx.cols; j += 32) {
      dot += static_cast<double>(dy(r, j)) * static_cast<double>(y(r, j));
    }
    const W d = static_cast<W>(warp_sum(dot));
    for (std::int64_t j = lane; j < dx.cols; j += 32) {
      dx(r, j) = y(r, j) * (dy(r, j) - d);
    }
  }
}

template <class W>
__global__ void logsumexp_rows_kernel(W* __restrict__ out, View<const W, device_space> x) {
  const int lane = lane_index();
  for (std::int64_t r = warp_index(); r < x.rows; r += warp_count()) {
    const W* in = x.row(r);
    W m = in[0];
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      m = fmax(m, in[j]);
    }
    m = warp_max(m);
    double s = 0.0;
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      s += exp(static_cast<double>(in[j] - m));
    }
    s = warp_sum(s);
    if (lane == 0) {
      out[r] = m + static_cast<W>(log(s));
    }
  }
}

template <class W>
__global__ void normalize_rows_kernel(View<W, device_space> y, View<const W, device_space> x) {
  const int lane = lane_index();
  for (std::int64_t r = warp_index(); r < x.rows; r += warp_count()) {
    double s = 0.0;
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      s += static_cast<double>(x(r, j));
    }
    s = warp_sum(s);
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      y(r, j) = static_cast<W>(static_cast<double>(x(r, j)) / s);
    }
  }
}

template <class W>
__global__ void normalize_rows_backward_kernel(View<W, device_space> dx,
                                               View<const W, device_space> dy,
                                               View<const W, device_space> y,
                                               View<const W, device_space> x) {
  const int lane = lane_index();
  for (std::int64_t r = warp_index(); r < x.rows; r += warp_count()) {
    double s = 0.0;
    double dot = 0.0;
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      s += static_cast<double>(x(r, j));
      dot += static_cast<double>(dy(r, j)) * static_cast<double>(y(r, j));
    }
    s = warp_sum(s);
    dot = warp_sum(dot);
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      dx(r, j) = static_cast<W>((static_cast<double>(dy(r, j)) - dot) / s);
    }
  }
}

// One thread per row, columns in ascending order (several j may share a target column).
template <class W>
__global__ void scatter_add_cols_kernel(View<W, device_space> dst,
                                        View<const W, device_space> src,
                                        View<const std::int32_t, device_space> col) {
  for (std::int64_t r = thread_index(); r < src.rows; r += thread_count()) {
    for (std::int64_t j = 0; j < src.cols; ++j) {
      const std::int32_t c = col(r, j);
      if (c >= 0 && c < dst.cols) {
        dst(r, c) += src(r, j);
      }
    }
  }
}

}  // namespace detail

// Flat row-major index of the first NaN or infinity of x, -1 if none. Waits for the stream.
template <class W>
[[nodiscard]] std::int64_t find_nonfinite(const Context& ctx, View<const W, device_space> x) {
  if (x.empty()) {
    return -1;
  }
  auto frame = ctx.workspace->frame();
  auto first = ctx.workspace->take_span<unsigned long long>(1);
  MMSPARSE_CUDA_CHECK(cudaMemsetAsync(first.data, 0xff, sizeof(unsigned long long), ctx.stream));
  for_each_2d(ctx, x.rows, x.cols, detail::NonfiniteOp<W>{x, first.data});
  unsigned long long host = 0;
  MMSPARSE_CUDA_CHECK(
      cudaMemcpyAsync(&host, first.data, sizeof host, cudaMemcpyDeviceToHost, ctx.stream));
  MMSPARSE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  return host == ~0ull ? -1 : static_cast<std::int64_t>(host);
}

// y(r, j) += logistic_noise(seed, id(r) * row_stride + col_offset + j), id(r) = row_id[r] or r.
template <class W>
void add_logistic_noise(const Context& ctx,
                        View<W, device_space> y,
                        Span<const std::int32_t, device_space> row_id,
                        std::uint64_t seed,
                        std::int64_t row_stride,
                        std::int64_t col_offset) {
  const std::int32_t* ids = row_id.empty() ? nullptr : row_id.data;
  for_each_2d(
      ctx, y.rows, y.cols, detail::LogisticNoiseOp<W>{y, ids, seed, row_stride, col_offset});
}

template <class W>
void sigmoid_backward(const Context& ctx,
                      View<W, device_space> dx,
                      View<const W, device_space> dy,
                      View<const W, device_space> y) {
  for_each_2d(ctx, dx.rows, dx.cols, detail::SigmoidBackwardOp<W>{dx, dy, y});
}

template <class W>
void softmax_rows_backward(const Context& ctx,
                           View<W, device_space> dx,
                           View<const W, device_space> dy,
                           View<const W, device_space> y) {
  if (dx.rows == 0 || dx.cols == 0) {
    return;
  }
  detail::
      softmax_rows_backward_kernel<<<warp_row_blocks(ctx, dx.rows), block_threads, 0, ctx.stream>>>(
          dx, dy, y);
  MMSPARSE_CUDA_CHECK_LAUNCH(softmax_rows_backward_kernel);
}

template <class W>
void logsumexp_rows(const Context& ctx, Span<W, device_space> out, View<const W, device_space> x) {
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::logsumexp_rows_kernel<<<warp_row_blocks(ctx, x.rows), block_threads, 0, ctx.stream>>>(
      out.data, x);
  MMSPARSE_CUDA_CHECK_LAUNCH(logsumexp_rows_kernel);
}

template <class W>
void normalize_rows(const Context& ctx, View<W, device_space> y, View<const W, device_space> x) {
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::normalize_rows_kernel<<<warp_row_blocks(ctx, x.rows), block_threads, 0, ctx.stream>>>(y,
                                                                                                x);
  MMSPARSE_CUDA_CHECK_LAUNCH(normalize_rows_kernel);
}

template <class W>
void normalize_rows_backward(const Context& ctx,
                             View<W, device_space> dx,
                             View<const W, device_space> dy,
                             View<const W, device_space> y,
                             View<const W, device_space> x) {
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::normalize_rows_backward_kernel<<<warp_row_blocks(ctx, x.rows),
                                           block_threads,
                                           0,
                                           ctx.stream>>>(dx, dy, y, x);
  MMSPARSE_CUDA_CHECK_LAUNCH(normalize_rows_backward_kernel);
}

template <class W>
void scatter_add_cols(const Context& ctx,
                      View<W, device_space> dst,
                      View<const W, device_space> src,
                      View<const std::int32_t, device_space> col) {
  if (src.rows == 0 || src.cols == 0) {
    return;
  }
  detail::scatter_add_cols_kernel<<<grid_blocks(ctx, src.rows, 128), 128, 0, ctx.stream>>>(
      dst, src, col);
  MMSPARSE_CUDA_CHECK_LAUNCH(scatter_add_cols_kernel);
}

}  // namespace mmsparse::gpu

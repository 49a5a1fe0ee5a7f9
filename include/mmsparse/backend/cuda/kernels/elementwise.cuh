// mmsparse/backend/cuda/kernels/elementwise.cuh
//
// Element-wise and row-wise kernels of the CUDA backend, with their launchers:
// fill, copy (with conversion), axpy, scale_rows, scale (uniform), sigmoid and
// softmax_rows. Same formulas and accumulation types as backend/cpu/elementwise.hpp;
// every output element is computed by one thread in a fixed order (deterministic).
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cstdint>

#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

template <class T>
struct FillOp {
  View<T, device_space> y;
  T value;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    y(i, j) = value;
  }
};

template <class To, class From>
struct CopyOp {
  View<To, device_space> y;
  View<const From, device_space> x;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    y(i, j) = convert<To>(x(i, j));
  }
};

template <class T>
struct AxpyOp {
  View<T, device_space> y;
  View<const T, device_space> x;
  accum_t<T> alpha;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    y(i, j) = from_acc<T>(to_acc(y(i, j)) + alpha * to_acc(x(i, j)));
  }
};

template <class T, class W>
struct ScaleRowsOp {
  View<T, device_space> y;
  const W* w;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    y(i, j) = from_acc<T>(static_cast<accum_t<T>>(w[i]) * to_acc(y(i, j)));
  }
};

template <class T>
struct ScaleOp {
  View<T, device_space> y;
  accum_t<T> s;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    y(i, j) = from_acc<T>(s * to_acc(y(i, j)));
  }
};

template <class W>
struct SigmoidOp {
  View<W, device_space> y;
  View<const W, device_space> x;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    y(i, j) = sigmoid_acc(x(i, j));
  }
};

// One warp per row: max, sum of exponentials, normalise (each a fixed-order reduction).
template <class W>
__global__ void softmax_rows_kernel(View<W, device_space> y, View<const W, device_space> x) {
  const int lane = lane_index();
  for (std::int64_t i = warp_index(); i < x.rows; i += warp_count()) {
    const W* in = x.row(i);
    W* out = y.row(i);
    W m = in[0];
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      m = fmax(m, in[j]);
    }
    m = warp_max(m);
    W s{};
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      s += exp_acc(in[j] - m);
    }
    s = warp_sum(s);
    for (std::int64_t j = lane; j < x.cols; j += 32) {
      out[j] = exp_acc(in[j] - m) / s;
    }
  }
}

}  // namespace detail

// y = value
template <class T>
void fill(const Context& ctx, View<T, device_space> y, T value) {
  for_each_2d(ctx, y.rows, y.cols, detail::FillOp<T>{y, value});
}

// y = x, converted element by element (bf16 rounds to nearest even).
template <class To, class From>
void copy(const Context& ctx, View<To, device_space> y, View<const From, device_space> x) {
  for_each_2d(ctx, y.rows, y.cols, detail::CopyOp<To, From>{y, x});
}

// y += alpha * x
template <class T>
void axpy(const Context& ctx,
          View<T, device_space> y,
          View<const T, device_space> x,
          double alpha) {
  for_each_2d(ctx, y.rows, y.cols, detail::AxpyOp<T>{y, x, static_cast<accum_t<T>>(alpha)});
}

// y[r, :] *= w[r]
template <class T, class W>
void scale_rows(const Context& ctx, View<T, device_space> y, Span<const W, device_space> w) {
  for_each_2d(ctx, y.rows, y.cols, detail::ScaleRowsOp<T, W>{y, w.data});
}

// y *= s
template <class T>
void scale(const Context& ctx, View<T, device_space> y, double s) {
  for_each_2d(ctx, y.rows, y.cols, detail::ScaleOp<T>{y, static_cast<accum_t<T>>(s)});
}

template <class W>
void sigmoid(const Context& ctx, View<W, device_space> y, View<const W, device_space> x) {
  for_each_2d(ctx, y.rows, y.cols, detail::SigmoidOp<W>{y, x});
}

template <class W>
void softmax_rows(const Context& ctx, View<W, device_space> y, View<const W, device_space> x) {
  if (x.rows == 0 || x.cols == 0) {
    return;
  }
  detail::softmax_rows_kernel<<<warp_row_blocks(ctx, x.rows), block_threads, 0, ctx.stream>>>(y, x);
  MMSPARSE_CUDA_CHECK_LAUNCH(softmax_rows_kernel);
}

}  // namespace mmsparse::gpu

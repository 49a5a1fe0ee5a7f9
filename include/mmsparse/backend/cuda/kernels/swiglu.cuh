// mmsparse/backend/cuda/kernels/swiglu.cuh
//
// SwiGLU (Shazeer 2020): h = silu(a) * g, and its backward
// da = dh * g * silu'(a), dg = dh * silu(a), silu'(a) = s (1 + a (1 - s)), s = sigmoid(a).
// The largest element-wise passes of an expert FFN ([slots, f]): rows are read as
// 16-byte packs when every operand allows it, element by element otherwise.
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

template <class A>
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE A silu_times(A a, A g) {
  return a / (A{1} + exp_acc(-a)) * g;
}

template <class A>
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE void silu_backward(A d, A a, A g, A& da, A& dg) {
  const A s = sigmoid_acc(a);
  da = d * g * s * (A{1} + a * (A{1} - s));
  dg = d * a * s;
}

// N = elements per unit: Pack<T>::size (vector path) or 1.
template <class T, int N>
struct SwigluOp {
  View<T, device_space> h;
  View<const T, device_space> a;
  View<const T, device_space> g;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t u) const {
    if constexpr (N == 1) {
      h(i, u) = from_acc<T>(silu_times(to_acc(a(i, u)), to_acc(g(i, u))));
    } else {
      const auto pa = reinterpret_cast<const Pack<T>*>(a.row(i))[u];
      const auto pg = reinterpret_cast<const Pack<T>*>(g.row(i))[u];
      Pack<T> ph;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        ph.v[k] = from_acc<T>(silu_times(to_acc(pa.v[k]), to_acc(pg.v[k])));
      }
      reinterpret_cast<Pack<T>*>(h.row(i))[u] = ph;
    }
  }
};

template <class T, int N>
struct SwigluBackwardOp {
  View<T, device_space> da;
  View<T, device_space> dg;
  View<const T, device_space> dh;
  View<const T, device_space> a;
  View<const T, device_space> g;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t u) const {
    using A = accum_t<T>;
    if constexpr (N == 1) {
      A x;
      A y;
      silu_backward(to_acc(dh(i, u)), to_acc(a(i, u)), to_acc(g(i, u)), x, y);
      da(i, u) = from_acc<T>(x);
      dg(i, u) = from_acc<T>(y);
    } else {
      const auto pd = reinterpret_cast<const Pack<T>*>(dh.row(i))[u];
      const auto pa = reinterpret_cast<const Pack<T>*>(a.row(i))[u];
      const auto pg = reinterpret_cast<const Pack<T>*>(g.row(i))[u];
      Pack<T> qa;
      Pack<T> qg;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        A x;
        A y;
        silu_backward(to_acc(pd.v[k]), to_acc(pa.v[k]), to_acc(pg.v[k]), x, y);
        qa.v[k] = from_acc<T>(x);
        qg.v[k] = from_acc<T>(y);
      }
      reinterpret_cast<Pack<T>*>(da.row(i))[u] = qa;
      reinterpret_cast<Pack<T>*>(dg.row(i))[u] = qg;
    }
  }
};

}  // namespace detail

// h = silu(a) * g; all [rows, f].
template <class T>
void swiglu(const Context& ctx,
            View<T, device_space> h,
            View<const T, device_space> a,
            View<const T, device_space> g) {
  constexpr int n = Pack<T>::size;
  if (packable(h) && packable(a) && packable(g)) {
    for_each_2d(ctx, h.rows, h.cols / n, detail::SwigluOp<T, n>{h, a, g});
  } else {
    for_each_2d(ctx, h.rows, h.cols, detail::SwigluOp<T, 1>{h, a, g});
  }
}

// da, dg from dh and the forward inputs a, g; all [rows, f].
template <class T>
void swiglu_backward(const Context& ctx,
                     View<T, device_space> da,
                     View<T, device_space> dg,
                     View<const T, device_space> dh,
                     View<const T, device_space> a,
                     View<const T, device_space> g) {
  constexpr int n = Pack<T>::size;
  if (packable(da) && packable(dg) && packable(dh) && packable(a) && packable(g)) {
    for_each_2d(ctx, dh.rows, dh.cols / n, detail::SwigluBackwardOp<T, n>{da, dg, dh, a, g});
  } else {
    for_each_2d(ctx, dh.rows, dh.cols, detail::SwigluBackwardOp<T, 1>{da, dg, dh, a, g});
  }
}

}  // namespace mmsparse::gpu

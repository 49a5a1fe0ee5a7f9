// mmsparse/layers/experts.hpp
//
// A stack of E SwiGLU experts run over the segments of a row buffer (MoMa §2.2 Eq. 1, Shazeer
// 2020): rows [offsets[e], offsets[e+1]) go through expert e, o = (silu(x W1_e) ⊙ (x W3_e)) W2_e.
// Weights are stacked: w1, w3 [E*d, f] (expert e owns rows [e*d, (e+1)*d)), w2 [E*f, d].
// One grouped GEMM per projection; the dense SwiGLU FFN is the E = 1 case.
#pragma once

#include <cstdint>
#include <type_traits>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mmsparse {

template <class T, class Space = host_space>
struct ExpertWeights {
  View<const T, Space> w1;  // [E*d, f]
  View<const T, Space> w3;  // [E*d, f]
  View<const T, Space> w2;  // [E*f, d]
};

template <class T, class Space = host_space>
struct ExpertGrads {
  View<T, Space> w1;  // [E*d, f]
  View<T, Space> w3;  // [E*d, f]
  View<T, Space> w2;  // [E*f, d]
};

// FLOPs of `rows` rows through one SwiGLU expert: three [rows, d] x [d, f]-sized GEMMs.
constexpr double expert_flops(std::int64_t rows, std::int64_t d, std::int64_t f) {
  return 6.0 * static_cast<double>(rows) * static_cast<double>(d) * static_cast<double>(f);
}

// Forward over segments. Outputs: a = x W1 [R, f], g = x W3 [R, f] (kept for the backward),
// h = silu(a) ⊙ g [R, f], o = h W2 [R, d]. None of them may alias x or each other.
template <backend B>
void experts_forward(B& b,
                     View<typename B::scalar, typename B::space> o,
                     View<typename B::scalar, typename B::space> a,
                     View<typename B::scalar, typename B::space> g,
                     View<typename B::scalar, typename B::space> h,
                     View<const typename B::scalar, typename B::space> x,
                     const ExpertWeights<typename B::scalar, typename B::space>& w,
                     SegmentOffsets offsets) {
  using T = typename B::scalar;
  using S = typename B::space;
  MMSPARSE_ASSERT(static_cast<std::int64_t>(offsets.back()) == x.rows);
  b.grouped_gemm(a, x, w.w1, Trans::no, offsets, 1.0, 0.0);
  b.grouped_gemm(g, x, w.w3, Trans::no, offsets, 1.0, 0.0);
  b.swiglu(h, View<const T, S>(a), View<const T, S>(g));
  b.grouped_gemm(o, View<const T, S>(h), w.w2, Trans::no, offsets, 1.0, 0.0);
}

// Backward over segments, given dout = dL/do [R, d] and the forward's x, a, g.
// dx [R, d] gets dL/dx (written, or added with accumulate_dx); the weight gradients are always
// added (+=) into `grads`. Scratch [R, f] x 3 comes from the backend's workspace. Without
// accumulate_dx, dx may be x's own memory: x is last read before dx is first written.
template <backend B>
void experts_backward(B& b,
                      View<typename B::scalar, typename B::space> dx,
                      const ExpertGrads<typename B::scalar, typename B::space>& grads,
                      View<const typename B::scalar, typename B::space> dout,
                      View<const typename B::scalar, typename B::space> x,
                      View<const typename B::scalar, typename B::space> a,
                      View<const typename B::scalar, typename B::space> g,
                      const ExpertWeights<typename B::scalar, typename B::space>& w,
                      SegmentOffsets offsets,
                      bool accumulate_dx) {
  using T = typename B::scalar;
  using S = typename B::space;
  const std::int64_t rows = x.rows;
  const std::int64_t f = a.cols;
  auto frame = b.workspace().frame();
  auto h = b.workspace().template take<T>(rows, f);   // [R, f] recomputed silu(a) ⊙ g
  auto dh = b.workspace().template take<T>(rows, f);  // [R, f]
  auto dg = b.workspace().template take<T>(rows, f);  // [R, f]
  b.swiglu(h, a, g);
  b.grouped_gemm_weight_grad(grads.w2, View<const T, S>(h), dout, offsets, 1.0, 1.0);
  b.grouped_gemm(dh, dout, w.w2, Trans::yes, offsets, 1.0, 0.0);
  auto da = h;  // h is spent: da takes its memory
  b.swiglu_backward(da, dg, View<const T, S>(dh), a, g);
  b.grouped_gemm_weight_grad(grads.w1, x, View<const T, S>(da), offsets, 1.0, 1.0);
  b.grouped_gemm_weight_grad(grads.w3, x, View<const T, S>(dg), offsets, 1.0, 1.0);
  b.grouped_gemm(
      dx, View<const T, S>(da), w.w1, Trans::yes, offsets, 1.0, accumulate_dx ? 1.0 : 0.0);
  b.grouped_gemm(dx, View<const T, S>(dg), w.w3, Trans::yes, offsets, 1.0, 1.0);
}

// Workspace bytes experts_backward takes for `rows` rows of width f.
template <backend B>
constexpr std::size_t experts_backward_bytes(std::int64_t rows, std::int64_t f) {
  return 3 * Workspace<typename B::space>::template bytes_for<typename B::scalar>(rows * f);
}

namespace detail {

// "[op] arg: expected [r, c], got [r', c']" unless v has the shape `expected`.
template <class V>
void check_shape(const char* op, const char* arg, const V& v, Shape expected) {
  MMSPARSE_CHECK(v.shape() == expected, op, arg, expected, v.shape());
}

// Fills a host tensor with N(0, stddev^2) draws (deterministic weight initialisation).
template <class T, class Space>
void init_normal(Tensor<T, Space>& t, Rng& rng, double stddev) {
  static_assert(std::is_same_v<Space, host_space>,
                "layers initialise their own weights on the host; bind() device weights instead");
  auto v = t.view();
  for (std::int64_t i = 0; i < v.rows; ++i) {
    for (std::int64_t j = 0; j < v.cols; ++j) {
      v(i, j) = scalar_cast<T>(stddev * rng.normal());
    }
  }
}

// Gives `t` the shape [rows, cols], reallocating only when the shape changes (saved activations
// are reused from step to step).
template <class T, class Space>
void reshape_storage(Tensor<T, Space>& t, std::int64_t rows, std::int64_t cols) {
  if (t.rows() != rows || t.cols() != cols) {
    t = Tensor<T, Space>(rows, cols);
  }
}

}  // namespace detail
}  // namespace mmsparse

// mmsparse/layers/rope.hpp
//
// Rotary position embedding (Su et al. 2021, RoFormer; LLaMA/Chameleon, PAPERS.md §1.9) of
// [N, heads * head_dim] rows at explicit per-token positions: routing (MoD, modality groups)
// reorders or drops tokens, but each token keeps its original position (PAPERS.md §4.11).
// Pair (2i, 2i + 1) of each head turns by pos * theta^(-2i / head_dim). Backward = inverse
// rotation.
#pragma once

#include <cstdint>
#include <string>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>

namespace mmsparse {

struct RopeConfig {
  std::int64_t head_dim = 0;  // even
  double theta = 10000.0;     // base of the frequencies
};

namespace detail {
template <class V, class C, class P>
void check_rope_args(const char* op, const V& y, const C& x, const P& positions, RopeConfig cfg) {
  MMSPARSE_CHECK(cfg.head_dim > 0 && cfg.head_dim % 2 == 0,
                 op,
                 "head_dim",
                 "an even number > 0",
                 cfg.head_dim);
  MMSPARSE_CHECK(cfg.theta > 0.0, op, "theta", "> 0", cfg.theta);
  MMSPARSE_CHECK(x.cols % cfg.head_dim == 0,
                 op,
                 "x",
                 "[N, heads * " + std::to_string(cfg.head_dim) + "]",
                 x.shape());
  MMSPARSE_CHECK(y.shape() == x.shape(), op, "y", x.shape(), y.shape());
  MMSPARSE_CHECK(
      positions.size == x.rows, op, "positions", "one position per row of x", positions.size);
}
}  // namespace detail

// y [N, H * dh] = R(positions) x; y may be x.
template <backend B>
void rope_forward(B& b,
                  View<typename B::scalar, typename B::space> y,
                  View<const typename B::scalar, typename B::space> x,
                  Span<const std::int32_t, typename B::space> positions,
                  RopeConfig cfg) {
  detail::check_rope_args("rope_forward", y, x, positions, cfg);
  b.rope(y, x, positions, cfg.head_dim, cfg.theta);
}

// dx [N, H * dh] += R(positions)^T dy (a rotation: its inverse is its transpose).
template <backend B>
void rope_backward(B& b,
                   View<typename B::scalar, typename B::space> dx,
                   View<const typename B::scalar, typename B::space> dy,
                   Span<const std::int32_t, typename B::space> positions,
                   RopeConfig cfg) {
  using T = typename B::scalar;
  detail::check_rope_args("rope_backward", dx, dy, positions, cfg);
  auto frame = b.workspace().frame();
  auto rotated = b.workspace().template take<T>(dy.rows, dy.cols);  // [N, H * dh]
  b.rope_backward(rotated, dy, positions, cfg.head_dim, cfg.theta);
  b.axpy(dx, View<const T, typename B::space>(rotated), 1.0);
}

}  // namespace mmsparse

// mmsparse/testing/oracle.hpp
//
// Slow, obviously correct references in double precision for the FFN layers (STYLE.md §1.3: CPU
// first, oracle always): plain loops per token and expert, SwiGLU written out,
//   y_t = Σ_{(e, t, gate)} gate · Σ_j silu(x_t · W1_e[:, j]) (x_t · W3_e[:, j]) W2_e[j, :]
// (MoMa §2.2 Eq. 1). Public, so users can check their own layers and backends.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>
#include <mmsparse/routing/plan.hpp>

namespace mmsparse {

// One (expert, token, gate) triple of a routing decision.
struct ExpertAssignment {
  std::int64_t expert = 0;
  std::int64_t token = 0;
  double gate = 0;
};

// The triples of a host plan, expert by expert.
template <class W>
[[nodiscard]] std::vector<ExpertAssignment> plan_assignments(
    const RoutingPlan<W, host_space>& plan) {
  std::vector<ExpertAssignment> out;
  for (std::int64_t e = 0; e < plan.num_experts; ++e) {
    for (std::int64_t s = plan.offsets[static_cast<std::size_t>(e)];
         s < plan.offsets[static_cast<std::size_t>(e + 1)];
         ++s) {
      out.push_back({e, plan.token[s], static_cast<double>(plan.gate[s])});
    }
  }
  return out;
}

namespace detail {

// out[0..d) += gate * FFN_e(x_t) for expert e of stacked weights w1, w3 [E*d, f], w2 [E*f, d].
template <class T>
void oracle_add_expert(double* out,
                       const T* x,
                       View<const T> w1,
                       View<const T> w3,
                       View<const T> w2,
                       std::int64_t e,
                       std::int64_t d,
                       double gate) {
  const std::int64_t f = w1.cols;
  for (std::int64_t j = 0; j < f; ++j) {
    double a = 0;
    double g = 0;
    for (std::int64_t i = 0; i < d; ++i) {
      const double xi = scalar_cast<double>(x[i]);
      a += xi * scalar_cast<double>(w1(e * d + i, j));
      g += xi * scalar_cast<double>(w3(e * d + i, j));
    }
    const double h = a / (1.0 + std::exp(-a)) * g;  // silu(a) * g
    for (std::int64_t i = 0; i < d; ++i) {
      out[i] += gate * h * scalar_cast<double>(w2(e * f + j, i));
    }
  }
}

template <class T>
void oracle_check_weights(
    View<const T> x, View<const T> w1, View<const T> w3, View<const T> w2, std::int64_t experts) {
  constexpr const char* op = "oracle";
  const std::int64_t d = x.cols;
  MMSPARSE_CHECK(experts >= 1, op, "experts", ">= 1", experts);
  MMSPARSE_CHECK(w1.rows == experts * d, op, "w1", "rows E*d", w1.shape());
  MMSPARSE_CHECK(w3.shape() == w1.shape(), op, "w3", w1.shape(), w3.shape());
  MMSPARSE_CHECK(
      w2.shape() == (Shape{experts * w1.cols, d}), op, "w2", "shape [E*f, d]", w2.shape());
}

}  // namespace detail

// Dense SwiGLU FFN: y [N, d] = (silu(x W1) ⊙ (x W3)) W2 with w1, w3 [d, f], w2 [f, d].
template <class T>
[[nodiscard]] Tensor<double> oracle_swiglu_ffn(View<const T> x,
                                               View<const T> w1,
                                               View<const T> w3,
                                               View<const T> w2) {
  detail::oracle_check_weights(x, w1, w3, w2, 1);
  Tensor<double> y(x.rows, x.cols);
  y.fill(0.0);
  for (std::int64_t t = 0; t < x.rows; ++t) {
    detail::oracle_add_expert(y.view().row(t), x.row(t), w1, w3, w2, 0, x.cols, 1.0);
  }
  return y;
}

// Sparse FFN from (expert, token, gate) triples: y [N, d], 0 for a token in no triple.
template <class T>
[[nodiscard]] Tensor<double> oracle_sparse_ffn(View<const T> x,
                                               const std::vector<ExpertAssignment>& assignments,
                                               View<const T> w1,
                                               View<const T> w3,
                                               View<const T> w2,
                                               std::int64_t experts) {
  detail::oracle_check_weights(x, w1, w3, w2, experts);
  Tensor<double> y(x.rows, x.cols);
  y.fill(0.0);
  for (const ExpertAssignment& a : assignments) {
    MMSPARSE_CHECK(a.expert >= 0 && a.expert < experts, "oracle", "expert", "in [0, E)", a.expert);
    MMSPARSE_CHECK(a.token >= 0 && a.token < x.rows, "oracle", "token", "in [0, N)", a.token);
    detail::oracle_add_expert(
        y.view().row(a.token), x.row(a.token), w1, w3, w2, a.expert, x.cols, a.gate);
  }
  return y;
}

// Sparse FFN from a dense gate matrix gates [N, E] (0: expert not applied): y_t = Σ_e gates[t, e]
// · FFN_e(x_t), every expert evaluated on every token.
template <class T, class G>
[[nodiscard]] Tensor<double> oracle_sparse_ffn_dense(
    View<const T> x, View<const G> gates, View<const T> w1, View<const T> w3, View<const T> w2) {
  const std::int64_t experts = gates.cols;
  detail::oracle_check_weights(x, w1, w3, w2, experts);
  MMSPARSE_CHECK(gates.rows == x.rows, "oracle", "gates", "rows N", gates.shape());
  Tensor<double> y(x.rows, x.cols);
  y.fill(0.0);
  for (std::int64_t t = 0; t < x.rows; ++t) {
    for (std::int64_t e = 0; e < experts; ++e) {
      detail::oracle_add_expert(
          y.view().row(t), x.row(t), w1, w3, w2, e, x.cols, scalar_cast<double>(gates(t, e)));
    }
  }
  return y;
}

}  // namespace mmsparse

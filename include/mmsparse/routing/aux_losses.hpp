// mmsparse/routing/aux_losses.hpp
//
// Token-choice auxiliary losses on the backend (PAPERS.md §1.8, §4.16), values and gradients:
//   balance (Switch)  coef * E * sum_i f_i P_i,  P_i = mean_t p(t, i), f_i a constant;
//   z-loss (ST-MoE)   coef * mean_t logsumexp_j(z(t, j))^2 on the pre-softmax router logits.
// f_i convention: f_i = (pairs (token, choice) that selected expert i among the token's top-k,
// counted before capacity drops) / (N k). Every selected expert counts, as HF does [HF-Switch];
// dividing by N k (HF: N) makes sum_i f_i = 1, so the loss is coef at perfect balance for any k.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/logits.hpp>

namespace mmsparse {

// f_i = counts[i] / (n k); zeros when n == 0.
[[nodiscard]] inline std::vector<double> balance_fractions(std::span<const std::int64_t> counts,
                                                           std::int64_t n,
                                                           std::int64_t k) {
  std::vector<double> f(counts.size(), 0.0);
  if (n > 0 && k > 0) {
    for (std::size_t i = 0; i < counts.size(); ++i) {
      f[i] = static_cast<double>(counts[i]) / static_cast<double>(n * k);
    }
  }
  return f;
}

// coef * E * sum_i f_i P_i with P_i the column means of probs [N, E].
template <backend B>
[[nodiscard]] router_scalar_t<B> aux_loss_balance(
    B& b,
    View<const router_scalar_t<B>, typename B::space> probs,  // [N, E]
    std::span<const double> fraction,                         // [E]
    double coef) {
  using W = router_scalar_t<B>;
  const std::int64_t n = probs.rows;
  const std::int64_t e = probs.cols;
  MMSPARSE_ASSERT(static_cast<std::int64_t>(fraction.size()) == e);
  if (n == 0 || e == 0 || coef == 0.0) {
    return W{};
  }
  auto frame = b.workspace().frame();
  auto ones = b.workspace().template take<W>(1, n);        // [1, N]
  auto column_sum = b.workspace().template take<W>(1, e);  // [1, E]
  b.fill(ones, W{1});
  b.gemm(column_sum, detail::as_const(ones), Trans::no, probs, Trans::no, 1.0, 0.0);
  std::vector<W> host(static_cast<std::size_t>(e));
  b.copy_to_host(std::span<W>(host),
                 Span<const W, typename B::space>(column_sum.data, static_cast<std::int64_t>(e)));
  double s = 0.0;
  for (std::size_t i = 0; i < host.size(); ++i) {
    s += fraction[i] * static_cast<double>(host[i]) / static_cast<double>(n);
  }
  return static_cast<W>(coef * static_cast<double>(e) * s);
}

// dprobs(t, i) += scale * coef * E * f_i / N.
template <backend B>
void aux_loss_balance_backward(B& b,
                               View<router_scalar_t<B>, typename B::space> dprobs,  // [N, E]
                               std::span<const double> fraction,                    // [E]
                               double coef,
                               double scale) {
  using W = router_scalar_t<B>;
  const std::int64_t n = dprobs.rows;
  const std::int64_t e = dprobs.cols;
  if (n == 0 || e == 0 || coef == 0.0 || scale == 0.0) {
    return;
  }
  std::vector<W> host(static_cast<std::size_t>(e));
  for (std::size_t i = 0; i < host.size(); ++i) {
    host[i] = static_cast<W>(scale * coef * static_cast<double>(e) * fraction[i] /
                             static_cast<double>(n));
  }
  auto frame = b.workspace().frame();
  auto ones = b.workspace().template take<W>(n, 1);  // [N, 1]
  auto row = b.workspace().template take<W>(1, e);   // [1, E]
  b.fill(ones, W{1});
  b.copy_from_host(Span<W, typename B::space>(row.data, e), std::span<const W>(host));
  b.gemm(dprobs, detail::as_const(ones), Trans::no, detail::as_const(row), Trans::no, 1.0, 1.0);
}

// coef * mean_t lse_t^2, lse [N] the logsumexp of each token's logits.
template <backend B>
[[nodiscard]] router_scalar_t<B> aux_loss_z(B& b,
                                            Span<const router_scalar_t<B>, typename B::space> lse,
                                            double coef) {
  using W = router_scalar_t<B>;
  const std::int64_t n = lse.size;
  if (n == 0 || coef == 0.0) {
    return W{};
  }
  auto frame = b.workspace().frame();
  auto sum = b.workspace().template take<W>(1, 1);  // [1, 1] = lse^T lse
  b.gemm(sum, lse.as_column(), Trans::yes, lse.as_column(), Trans::no, 1.0, 0.0);
  W host{};
  b.copy_to_host(std::span<W>(&host, 1), Span<const W, typename B::space>(sum.data, 1));
  return static_cast<W>(coef * static_cast<double>(host) / static_cast<double>(n));
}

// dlogits(t, j) += scale * coef * 2 lse_t p(t, j) / N   (d lse_t / d z(t, j) = p(t, j)).
template <backend B>
void aux_loss_z_backward(B& b,
                         View<router_scalar_t<B>, typename B::space> dlogits,      // [N, E]
                         View<const router_scalar_t<B>, typename B::space> probs,  // [N, E]
                         Span<const router_scalar_t<B>, typename B::space> lse,    // [N]
                         double coef,
                         double scale) {
  using W = router_scalar_t<B>;
  const std::int64_t n = probs.rows;
  if (n == 0 || coef == 0.0 || scale == 0.0) {
    return;
  }
  auto frame = b.workspace().frame();
  auto tmp = b.workspace().template take<W>(n, probs.cols);  // [N, E] lse_t p(t, j)
  b.copy(tmp, probs);
  b.scale_rows(tmp, lse);
  b.axpy(dlogits, detail::as_const(tmp), scale * coef * 2.0 / static_cast<double>(n));
}

}  // namespace mmsparse

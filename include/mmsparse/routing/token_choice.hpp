// mmsparse/routing/token_choice.hpp
//
// Token-choice top-k routing (GShard / Switch / ST-MoE; PAPERS.md §1.8, §4.16): p = softmax(x W_r)
// in router precision, each token picks its k best experts (ties: lower expert). Each expert keeps
// C = token_choice_capacity(...) pairs per routing group, filled in GShard priority: all first
// choices in token order, then all second choices, ...; the rest are dropped and counted.
// Gate = p of the kept choice, or (renormalize) p / sum of the token's k chosen p, taken before
// drops. Aux losses: Switch balance and router z-loss (aux_losses.hpp), on the same logits.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#if !defined(__CUDACC__)  // the CPU backend (Eigen) stays out of nvcc translation units
#include <mmsparse/backend/cpu/backend.hpp>
#endif
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/routing/aux_losses.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/flat_router.hpp>
#include <mmsparse/routing/logits.hpp>
#include <mmsparse/routing/plan.hpp>
#include <mmsparse/routing/validate.hpp>

namespace mmsparse {

struct TokenChoice {
  struct Config {
    std::int64_t k = 2;             // experts per token, 1 <= k <= E
    double capacity_factor = 1.25;  // C = ceil(capacity_factor * k * N_group / E) per expert
    bool dropless = false;          // no capacity: every choice is kept
    bool renormalize = false;       // gates / sum of the token's k chosen probabilities
    double balance_coef = 1e-2;     // Switch load-balance loss coefficient
    double z_coef = 1e-3;           // router z-loss coefficient
    bool gumbel = false;            // logistic noise on the logits in training (gumbel.hpp)
  };

  static constexpr std::string_view name = "token_choice";
  // Capacity drops depend on other tokens (and on later tokens' first choices), so a token's
  // routing is not a function of its prefix; dropless routing alone would be causal.
  static constexpr bool causal = false;

  template <backend B>
  struct Saved {
    Tensor<router_scalar_t<B>, typename B::space> prob;         // [n, E] softmax of the logits
    Tensor<router_scalar_t<B>, typename B::space> lse;          // [n, 1] logsumexp (z-loss)
    Tensor<std::int32_t, typename B::space> choice;             // [n, k] chosen experts, best first
    Tensor<router_scalar_t<B>, typename B::space> choice_prob;  // [n, k] their probabilities
    Tensor<router_scalar_t<B>, typename B::space> choice_gate;  // [n, k] renormalised (or empty)
    Tensor<std::int32_t, typename B::space> pair;               // [S, 1] pair t * k + c per slot
    std::vector<std::int64_t> offsets;                          // [E + 1] the plan's segments
    std::vector<double> fraction;                               // [E] f_i of the balance loss
  };

  Config cfg;

  // One router column per expert.
  [[nodiscard]] static std::int64_t router_columns(std::span<const std::int64_t> per_group) {
    return std::accumulate(per_group.begin(), per_group.end(), std::int64_t{0});
  }

  void check_experts(std::string_view op, std::int64_t experts) const {
    MMSPARSE_CHECK(
        cfg.k >= 1 && cfg.k <= experts, op, "k", "1 <= k <= E = " + std::to_string(experts), cfg.k);
    MMSPARSE_CHECK(std::isfinite(cfg.capacity_factor) && cfg.capacity_factor > 0.0,
                   op,
                   "capacity_factor",
                   "> 0",
                   cfg.capacity_factor);
    MMSPARSE_CHECK(std::isfinite(cfg.balance_coef) && cfg.balance_coef >= 0.0,
                   op,
                   "balance_coef",
                   ">= 0",
                   cfg.balance_coef);
    MMSPARSE_CHECK(
        std::isfinite(cfg.z_coef) && cfg.z_coef >= 0.0, op, "z_coef", ">= 0", cfg.z_coef);
  }

  template <backend B>
  [[nodiscard]] plan_t<B> route(B& b, const RouteArgs<B>& args, Saved<B>& saved) const {
    return detail::flat_route(*this, b, args, saved);
  }

  template <backend B>
  void backward(B& b,
                const RouteArgs<B>& args,
                const Saved<B>& saved,
                Span<const router_scalar_t<B>, typename B::space> dgate,
                const RouterGrads<B>& grads) const {
    MMSPARSE_CHECK(std::isfinite(grads.aux_scale),
                   std::string(name) + "::backward",
                   "grads.aux_scale",
                   "a finite value",
                   grads.aux_scale);
    detail::flat_backward(*this, b, args, saved, saved.prob.shape(), dgate, grads);
  }

  // Routes a set of rows (the building block of ModalityAware); arguments already checked.
  template <backend B>
  [[nodiscard]] plan_t<B> route_rows(B& b, const RouteRows<B>& rows, Saved<B>& saved) const {
    using W = router_scalar_t<B>;
    using S = typename B::space;
    const std::int64_t n = rows.rows();
    const std::int64_t e = rows.experts();
    const std::int64_t k = cfg.k;
    MMSPARSE_CHECK(n * k < std::numeric_limits<std::int32_t>::max(),
                   rows.op,
                   "k",
                   "N * k < 2^31 - 1 (int32 pair indices)",
                   k);
    auto& ws = b.workspace();
    auto frame = ws.frame();

    auto logits = ws.template take<W>(n, e);  // [n, E]
    router_logits(b, rows, logits);
    saved.prob = Tensor<W, S>(n, e);
    saved.lse = Tensor<W, S>(n, 1);
    b.softmax_rows(saved.prob.view(), detail::as_const(logits));
    b.logsumexp_rows(saved.lse.span(), detail::as_const(logits));
    saved.choice = Tensor<std::int32_t, S>(n, k);
    saved.choice_prob = Tensor<W, S>(n, k);
    b.topk_rows(
        saved.choice.span(), saved.choice_prob.span(), detail::as_const(saved.prob.view()), k);
    if (cfg.renormalize) {
      saved.choice_gate = Tensor<W, S>(n, k);
      b.normalize_rows(saved.choice_gate.view(), detail::as_const(saved.choice_prob.view()));
    }

    // keep [n, k]: the expert of each (token, choice) pair, -1 once dropped by the capacity.
    auto keep = ws.template take<std::int32_t>(n, k);
    b.copy(keep, detail::as_const(saved.choice.view()));
    std::vector<std::int64_t> count(static_cast<std::size_t>(e), 0);  // choices before drops
    std::int64_t dropped = 0;
    if (!cfg.dropless) {
      dropped =
          apply_capacity(b, rows.groups, detail::as_const(saved.choice.view()), keep, e, count);
    }
    auto pair = ws.template take_span<std::int32_t>(n * k);  // kept pairs, grouped by expert
    plan_t<B> plan;
    b.bucket_sort(pair, plan.offsets, Span<const std::int32_t, S>(keep.data, n * k), e);
    if (cfg.dropless) {
      for (std::int64_t x = 0; x < e; ++x) {
        count[static_cast<std::size_t>(x)] = plan.tokens_of(x);
      }
    }
    const std::int64_t slots = plan.offsets.back();
    const auto kept = detail::as_const(pair.subspan(0, slots));
    plan.num_tokens = n;
    plan.num_experts = e;
    plan.dropped = dropped;
    plan.token = Tensor<std::int32_t, S>(slots, 1);  // [S, 1]
    plan.gate = Tensor<W, S>(slots, 1);              // [S, 1]
    b.map_index(plan.token.span(), kept, k, 0);      // pair t * k + c -> token t
    const auto& gate_of_pair = cfg.renormalize ? saved.choice_gate : saved.choice_prob;
    b.gather_values(plan.gate.span(), gate_of_pair.span(), kept, W{});
    saved.pair = Tensor<std::int32_t, S>(slots, 1);
    b.copy(saved.pair.view(), View<const std::int32_t, S>(kept.data, slots, 1));
    saved.offsets = plan.offsets;

    saved.fraction = balance_fractions(count, n, k);
    plan.aux.balance =
        aux_loss_balance(b, detail::as_const(saved.prob.view()), saved.fraction, cfg.balance_coef);
    plan.aux.z = aux_loss_z(b, detail::as_const(saved.lse.span()), cfg.z_coef);
    return plan;
  }

  template <backend B>
  void backward_rows(B& b,
                     const RouteRows<B>& rows,
                     const Saved<B>& saved,
                     Span<const router_scalar_t<B>, typename B::space> dgate,  // [S]
                     View<typename B::scalar, typename B::space> dx,           // [n, d]
                     View<router_scalar_t<B>, typename B::space> dweight,      // [d, E]
                     double aux_scale) const {
    using W = router_scalar_t<B>;
    using S = typename B::space;
    const std::int64_t n = rows.rows();
    const std::int64_t e = rows.experts();
    const std::int64_t k = cfg.k;
    if (n == 0) {
      return;
    }
    auto& ws = b.workspace();
    auto frame = ws.frame();
    auto dpair = ws.template take<W>(n, k);  // [n, k] gate gradient of each (token, choice)
    b.fill(dpair, W{});
    b.scatter_add_rows(View<W, S>(dpair.data, n * k, 1),
                       View<const W, S>(dgate.data, dgate.size, 1),
                       saved.pair.span(),
                       Span<const W, S>{});
    auto dchoice = dpair;  // [n, k] gradient of the chosen probabilities
    if (cfg.renormalize) {
      dchoice = ws.template take<W>(n, k);
      b.normalize_rows_backward(
          dchoice, detail::as_const(dpair), saved.choice_gate.view(), saved.choice_prob.view());
    }
    auto dprob = ws.template take<W>(n, e);  // [n, E]
    b.fill(dprob, W{});
    b.scatter_add_cols(dprob, detail::as_const(dchoice), saved.choice.view());
    aux_loss_balance_backward(b, dprob, saved.fraction, cfg.balance_coef, aux_scale);
    auto dlogits = ws.template take<W>(n, e);  // [n, E]
    b.softmax_rows_backward(dlogits, detail::as_const(dprob), saved.prob.view());
    aux_loss_z_backward(b, dlogits, saved.prob.view(), saved.lse.span(), cfg.z_coef, aux_scale);
    router_logits_backward(b, rows, detail::as_const(dlogits), dx, dweight);
  }

 private:
  // GShard capacity per routing group: expert e keeps the first C of its pairs in priority order
  // (choice-major: all first choices by token, then all second choices, ...). Dropped pairs get
  // keep = -1. Adds each expert's pairs before drops to `count`; returns the pairs dropped.
  template <backend B>
  std::int64_t apply_capacity(B& b,
                              const std::vector<std::int64_t>& groups,
                              View<const std::int32_t, typename B::space> choice,  // [n, k]
                              View<std::int32_t, typename B::space> keep,          // [n, k]
                              std::int64_t e,
                              std::vector<std::int64_t>& count) const {
    using S = typename B::space;
    const std::int64_t k = cfg.k;
    auto& ws = b.workspace();
    auto frame = ws.frame();
    const std::int64_t n = choice.rows;
    auto minus_one = ws.template take<std::int32_t>(n * k, 1);  // [n k, 1] the drop marker
    b.fill(minus_one, std::int32_t{-1});
    std::int64_t dropped = 0;
    std::vector<std::int64_t> offsets;
    for (std::size_t q = 0; q + 1 < groups.size(); ++q) {
      const std::int64_t r0 = groups[q];
      const std::int64_t n_q = groups[q + 1] - r0;
      if (n_q == 0) {
        continue;
      }
      const std::int64_t c = token_choice_capacity(cfg.capacity_factor, k, n_q, e, false);
      auto inner = ws.frame();
      auto priority = ws.template take<std::int32_t>(k, n_q);  // [k, n_q] choice-major experts
      b.transpose(priority, choice.row_block(r0, n_q));
      auto order = ws.template take_span<std::int32_t>(k * n_q);  // pairs by expert, priority
      const Span<std::int32_t, S> flat(priority.data, k * n_q);
      b.bucket_sort(order, offsets, detail::as_const(flat), e);
      bool any = false;
      for (std::int64_t x = 0; x < e; ++x) {
        const std::int64_t begin = offsets[static_cast<std::size_t>(x)];
        const std::int64_t total = offsets[static_cast<std::size_t>(x + 1)] - begin;
        count[static_cast<std::size_t>(x)] += total;
        if (total > c) {
          b.scatter_values(flat,
                           Span<const std::int32_t, S>(minus_one.data, total - c),
                           detail::as_const(order.subspan(begin + c, total - c)));
          dropped += total - c;
          any = true;
        }
      }
      if (any) {
        b.transpose(keep.row_block(r0, n_q), detail::as_const(priority));
      }
    }
    return dropped;
  }
};

#if !defined(__CUDACC__)
static_assert(router_for<TokenChoice, CpuBackend<float>>,
              "TokenChoice must model router_for<CpuBackend<float>>");
#endif

}  // namespace mmsparse

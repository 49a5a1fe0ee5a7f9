// mmsparse/routing/expert_choice.hpp
//
// Expert-choice routing: each expert takes the top-C tokens of its routing group,
// C = expert_choice_capacity(capacity_factor, N_group, E) (core/math.hpp). Zhou et al. 2022
// (softmax over experts, PAPERS.md §1.7) or MoMa §2.2 (independent sigmoid scores, §4.2).
// Gate = the (noisy, in training) score, not renormalised; a token may get 0..E experts.
// Ties: the lower token wins (§4.6). Not causal (§4.1): use an aux router at inference.
#pragma once

#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string_view>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#if !defined(__CUDACC__)  // the CPU backend (Eigen) stays out of nvcc translation units
#include <mmsparse/backend/cpu/backend.hpp>
#endif
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/flat_router.hpp>
#include <mmsparse/routing/logits.hpp>
#include <mmsparse/routing/plan.hpp>
#include <mmsparse/routing/validate.hpp>

namespace mmsparse {

enum class GateFn {
  sigmoid,  // MoMa: independent per-expert scores (what the causal aux router predicts)
  softmax,  // Zhou et al.: softmax over the experts of each token
};

namespace detail {

// What an expert-choice-like router (ExpertChoice, MixtureOfDepths) keeps for backward.
template <backend B>
struct TopTokensSaved {
  Tensor<router_scalar_t<B>, typename B::space> score;  // [n, E] score of every (token, expert)
  Tensor<std::int32_t, typename B::space> token;        // [S, 1] row of each plan slot
  std::vector<std::int64_t> offsets;                    // [E + 1] the plan's segments
};

// Every column (expert) of `score` takes the capacity(n_q) best rows of each routing group q;
// slots of expert e list group 0's rows, then group 1's, ... (ascending), gates = the scores.
template <backend B, class Capacity>
[[nodiscard]] plan_t<B> top_tokens_plan(B& b,
                                        View<const router_scalar_t<B>, typename B::space> score,
                                        const std::vector<std::int64_t>& groups,
                                        Capacity capacity) {
  using W = router_scalar_t<B>;
  using S = typename B::space;
  const std::int64_t n = score.rows;
  const std::int64_t e = score.cols;
  std::vector<std::int64_t> cap(groups.size() > 0 ? groups.size() - 1 : 0, 0);
  std::int64_t per_expert = 0;  // slots of each expert: sum of the groups' capacities
  for (std::size_t q = 0; q < cap.size(); ++q) {
    const std::int64_t n_q = groups[q + 1] - groups[q];
    cap[q] = n_q > 0 ? capacity(n_q) : 0;  // an empty group is skipped
    per_expert += cap[q];
  }
  plan_t<B> plan;
  plan.num_tokens = n;
  plan.num_experts = e;
  plan.offsets.resize(static_cast<std::size_t>(e + 1));
  for (std::int64_t x = 0; x <= e; ++x) {
    plan.offsets[static_cast<std::size_t>(x)] = x * per_expert;
  }
  plan.token = Tensor<std::int32_t, S>(e * per_expert, 1);  // [S, 1]
  plan.gate = Tensor<W, S>(e * per_expert, 1);              // [S, 1]
  if (per_expert == 0) {
    return plan;
  }
  auto frame = b.workspace().frame();
  std::int64_t column = 0;  // first slot of group q inside each expert's segment
  for (std::size_t q = 0; q < cap.size(); ++q) {
    const std::int64_t c = cap[q];
    if (c == 0) {
      continue;
    }
    const std::int64_t r0 = groups[q];
    const std::int64_t n_q = groups[q + 1] - r0;
    auto index = b.workspace().template take_span<std::int32_t>(e * c);  // [E, C] group rows
    b.topk_cols(index, score.row_block(r0, n_q), c);
    if (r0 != 0) {
      b.map_index(index, detail::as_const(index), 1, r0);
    }
    b.copy(View<std::int32_t, S>(plan.token.data() + column, e, c, per_expert),
           View<const std::int32_t, S>(index.data, e, c));
    column += c;
  }
  for (std::int64_t x = 0; x < e; ++x) {
    const std::int64_t o = x * per_expert;
    b.gather_rows(View<W, S>(plan.gate.data() + o, per_expert, 1),
                  score.col_block(x, 1),
                  Span<const std::int32_t, S>(plan.token.data() + o, per_expert));
  }
  return plan;
}

// Scores [n, E] from the rows' logits; then the plan; fills `saved`.
template <backend B, class Capacity>
[[nodiscard]] plan_t<B> top_tokens_route(
    B& b, const RouteRows<B>& rows, GateFn gate, Capacity capacity, TopTokensSaved<B>& saved) {
  using W = router_scalar_t<B>;
  using S = typename B::space;
  const std::int64_t n = rows.rows();
  const std::int64_t e = rows.experts();
  saved.score = Tensor<W, S>(n, e);  // [n, E]
  {
    auto frame = b.workspace().frame();
    auto logits = b.workspace().template take<W>(n, e);  // [n, E]
    router_logits(b, rows, logits);
    if (gate == GateFn::sigmoid) {
      b.sigmoid(saved.score.view(), detail::as_const(logits));
    } else {
      b.softmax_rows(saved.score.view(), detail::as_const(logits));
    }
  }
  plan_t<B> plan = top_tokens_plan(b, saved.score.view(), rows.groups, capacity);
  saved.token = clone_on(b, plan.token);
  saved.offsets = plan.offsets;
  return plan;
}

// dscore(token_s, e_s) = dgate_s, through the gate function to the logits and on to x and W_r.
template <backend B>
void top_tokens_backward(B& b,
                         const RouteRows<B>& rows,
                         GateFn gate,
                         const TopTokensSaved<B>& saved,
                         Span<const router_scalar_t<B>, typename B::space> dgate,  // [S]
                         View<typename B::scalar, typename B::space> dx,           // [n, d]
                         View<router_scalar_t<B>, typename B::space> dweight) {    // [d, E]
  using W = router_scalar_t<B>;
  using S = typename B::space;
  const std::int64_t n = rows.rows();
  const std::int64_t e = rows.experts();
  if (n == 0) {
    return;
  }
  auto frame = b.workspace().frame();
  if (gate == GateFn::sigmoid && e == 1) {
    // One sigmoid column (mixture-of-depths): only the kept rows have a gradient, so the
    // product with x and W_r runs over those C rows instead of all n.
    using T = typename B::scalar;
    const std::int64_t c = saved.offsets[1] - saved.offsets[0];
    if (c == 0) {
      return;
    }
    const auto kept_rows = saved.token.span().subspan(saved.offsets[0], c);
    auto xk = b.workspace().template take<T>(c, rows.x.cols);   // [C, d] kept rows of x
    auto dxk = b.workspace().template take<T>(c, rows.x.cols);  // [C, d]
    auto score = b.workspace().template take<W>(c, 1);          // [C, 1]
    auto dlogits = b.workspace().template take<W>(c, 1);        // [C, 1]
    b.gather_rows(xk, rows.x, kept_rows);
    b.gather_rows(score, saved.score.view(), kept_rows);
    b.sigmoid_backward(
        dlogits, View<const W, S>(dgate.data + saved.offsets[0], c, 1), detail::as_const(score));
    b.fill(dxk, T{});
    RouteRows<B> kept;
    kept.x = detail::as_const(xk);
    kept.weight = rows.weight;
    router_logits_backward(b, kept, detail::as_const(dlogits), dxk, dweight);
    b.scatter_add_rows(dx, detail::as_const(dxk), kept_rows, Span<const W, S>{});
    return;
  }
  auto dscore = b.workspace().template take<W>(n, e);   // [n, E]
  auto dlogits = b.workspace().template take<W>(n, e);  // [n, E]
  b.fill(dscore, W{});
  for (std::int64_t x = 0; x < e; ++x) {
    const std::int64_t o = saved.offsets[static_cast<std::size_t>(x)];
    const std::int64_t count = saved.offsets[static_cast<std::size_t>(x + 1)] - o;
    if (count == 0) {
      continue;
    }
    b.scatter_add_rows(dscore.col_block(x, 1),
                       View<const W, S>(dgate.data + o, count, 1),
                       saved.token.span().subspan(o, count),
                       Span<const W, S>{});
  }
  if (gate == GateFn::sigmoid) {
    b.sigmoid_backward(dlogits, detail::as_const(dscore), saved.score.view());
  } else {
    b.softmax_rows_backward(dlogits, detail::as_const(dscore), saved.score.view());
  }
  router_logits_backward(b, rows, detail::as_const(dlogits), dx, dweight);
}

}  // namespace detail

struct ExpertChoice {
  struct Config {
    double capacity_factor = 1.0;  // c: each expert takes ceil(c * N_group / E) tokens
    GateFn gate = GateFn::sigmoid;
    bool gumbel = false;  // Gumbel-sigmoid noise in training (gumbel.hpp)
  };

  static constexpr std::string_view name = "expert_choice";
  static constexpr bool causal = false;  // top-k over the batch sees later tokens (PAPERS.md §4.1)

  template <backend B>
  using Saved = detail::TopTokensSaved<B>;

  Config cfg;

  // One router column per expert.
  [[nodiscard]] static std::int64_t router_columns(std::span<const std::int64_t> per_group) {
    return std::accumulate(per_group.begin(), per_group.end(), std::int64_t{0});
  }

  // The config checks for a group of `experts` experts.
  void check_experts(std::string_view op, std::int64_t /*experts*/) const {
    MMSPARSE_CHECK(std::isfinite(cfg.capacity_factor) && cfg.capacity_factor > 0.0,
                   op,
                   "capacity_factor",
                   "> 0",
                   cfg.capacity_factor);
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
    detail::flat_backward(*this, b, args, saved, saved.score.shape(), dgate, grads);
  }

  // Routes a set of rows (the building block of ModalityAware); arguments already checked.
  template <backend B>
  [[nodiscard]] plan_t<B> route_rows(B& b, const RouteRows<B>& rows, Saved<B>& saved) const {
    const std::int64_t e = rows.experts();
    const double c = cfg.capacity_factor;
    return detail::top_tokens_route(
        b,
        rows,
        cfg.gate,
        [c, e](std::int64_t n_q) { return expert_choice_capacity(c, n_q, e); },
        saved);
  }

  template <backend B>
  void backward_rows(B& b,
                     const RouteRows<B>& rows,
                     const Saved<B>& saved,
                     Span<const router_scalar_t<B>, typename B::space> dgate,
                     View<typename B::scalar, typename B::space> dx,
                     View<router_scalar_t<B>, typename B::space> dweight,
                     double /*aux_scale: no aux loss*/) const {
    detail::top_tokens_backward(b, rows, cfg.gate, saved, dgate, dx, dweight);
  }
};

#if !defined(__CUDACC__)
static_assert(router_for<ExpertChoice, CpuBackend<float>>,
              "ExpertChoice must model router_for<CpuBackend<float>>");
#endif

}  // namespace mmsparse

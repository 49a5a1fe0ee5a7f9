// mmsparse/routing/mixture_of_depths.hpp
//
// Mixture-of-Depths routing (MoMa §2.3, Eq. 2; Raposo et al. §3.4): one "expert" (the wrapped
// block) takes the top-C tokens of its routing group by the score sigmoid(x w), w [d, 1],
// C = depth_capacity(capacity, N_group) (core/math.hpp). The dispatch scales the block's output
// by the gate = the score; the other tokens skip the block on the residual. Routing group: the
// batch (MoMa) or each sequence (Raposo; PAPERS.md §4.5). Ties: lower token wins. Not causal.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>

#include <mmsparse/backend/concepts.hpp>
#if !defined(__CUDACC__)  // the CPU backend (Eigen) stays out of nvcc translation units
#include <mmsparse/backend/cpu/backend.hpp>
#endif
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/flat_router.hpp>
#include <mmsparse/routing/logits.hpp>
#include <mmsparse/routing/plan.hpp>
#include <mmsparse/routing/validate.hpp>

namespace mmsparse {

struct MixtureOfDepths {
  struct Config {
    double capacity = 0.25;  // c_d in (0, 1]: fraction of the group's tokens that enter the block
    bool gumbel = false;     // Gumbel-sigmoid noise in training (gumbel.hpp)
  };

  static constexpr std::string_view name = "mixture_of_depths";
  static constexpr bool causal = false;  // top-C over the group sees later tokens (MoD §3.5)

  template <backend B>
  using Saved = detail::TopTokensSaved<B>;

  Config cfg;

  // One router column per group (each group is a single expert).
  [[nodiscard]] static std::int64_t router_columns(std::span<const std::int64_t> per_group) {
    return static_cast<std::int64_t>(per_group.size());
  }

  void check_experts(std::string_view op, std::int64_t experts) const {
    MMSPARSE_CHECK(experts == 1, op, "experts_per_group", "1 (the routed block)", experts);
    MMSPARSE_CHECK(std::isfinite(cfg.capacity) && cfg.capacity > 0.0 && cfg.capacity <= 1.0,
                   op,
                   "capacity",
                   "a fraction in (0, 1]",
                   cfg.capacity);
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

  template <backend B>
  [[nodiscard]] plan_t<B> route_rows(B& b, const RouteRows<B>& rows, Saved<B>& saved) const {
    const double c = cfg.capacity;
    return detail::top_tokens_route(
        b, rows, GateFn::sigmoid, [c](std::int64_t n_q) { return depth_capacity(c, n_q); }, saved);
  }

  template <backend B>
  void backward_rows(B& b,
                     const RouteRows<B>& rows,
                     const Saved<B>& saved,
                     Span<const router_scalar_t<B>, typename B::space> dgate,
                     View<typename B::scalar, typename B::space> dx,
                     View<router_scalar_t<B>, typename B::space> dweight,
                     double /*aux_scale: no aux loss*/) const {
    detail::top_tokens_backward(b, rows, GateFn::sigmoid, saved, dgate, dx, dweight);
  }
};

#if !defined(__CUDACC__)
static_assert(router_for<MixtureOfDepths, CpuBackend<float>>,
              "MixtureOfDepths must model router_for<CpuBackend<float>>");
#endif

}  // namespace mmsparse

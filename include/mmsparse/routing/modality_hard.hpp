// mmsparse/routing/modality_hard.hpp
//
// Hard modality routing: every token goes to the one expert of its modality with gate 1.
// MoMa 1t1i (§2.2, stage 1 of upcycling §2.5) and MoT's untied FFN (MoT §2.2, Alg. 1).
// In: modality [N]. Out: a plan with one segment per modality (experts_per_group all 1), N slots.
// No router weight (0 columns), nothing to learn, causal.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <mmsparse/backend/concepts.hpp>
#if !defined(__CUDACC__)  // the CPU backend (Eigen) stays out of nvcc translation units
#include <mmsparse/backend/cpu/backend.hpp>
#endif
#include <mmsparse/core/error.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/plan.hpp>
#include <mmsparse/routing/validate.hpp>

namespace mmsparse {

struct ModalityHard {
  struct Config {};

  static constexpr std::string_view name = "modality_hard";
  static constexpr bool causal = true;  // a token's expert depends on its own modality only

  template <backend B>
  struct Saved {
    std::int64_t num_tokens = 0;
  };

  Config cfg;

  [[nodiscard]] static std::int64_t router_columns(std::span<const std::int64_t> /*per_group*/) {
    return 0;
  }

  // Requires experts_per_group = {1, ..., 1} with one entry per modality.
  template <backend B>
  [[nodiscard]] plan_t<B> route(B& b, const RouteArgs<B>& args, Saved<B>& saved) const {
    using W = router_scalar_t<B>;
    using S = typename B::space;
    const std::string op = std::string(name) + "::route";
    check_route_args(b, op, args, 0);
    const auto groups = static_cast<std::int64_t>(args.experts_per_group.size());
    MMSPARSE_CHECK(groups == args.num_modalities,
                   op,
                   "experts_per_group",
                   "one group per modality (" + std::to_string(args.num_modalities) + ")",
                   groups);
    for (std::size_t g = 0; g < args.experts_per_group.size(); ++g) {
      MMSPARSE_CHECK(args.experts_per_group[g] == 1,
                     op,
                     "experts_per_group[" + std::to_string(g) + "]",
                     "1 (one expert per modality)",
                     args.experts_per_group[g]);
    }

    const std::int64_t n = args.x.rows;
    plan_t<B> plan;
    plan.num_tokens = n;
    plan.num_experts = args.num_modalities;
    plan.token = Tensor<std::int32_t, S>(n, 1);  // [N, 1]
    plan.gate = Tensor<W, S>(n, 1);              // [N, 1]
    b.bucket_sort(plan.token.span(), plan.offsets, args.modality, args.num_modalities);
    b.fill(plan.gate.view(), W{1});
    saved.num_tokens = n;
    return plan;
  }

  // Gates are the constant 1: nothing flows back.
  template <backend B>
  void backward(B& /*b*/,
                const RouteArgs<B>& args,
                const Saved<B>& saved,
                Span<const router_scalar_t<B>, typename B::space> dgate,
                const RouterGrads<B>& grads) const {
    const std::string op = std::string(name) + "::backward";
    check_saved_tokens(op, args, saved.num_tokens);
    check_router_grads(op, args, dgate, saved.num_tokens, grads, 0);
  }
};

#if !defined(__CUDACC__)
static_assert(router_for<ModalityHard, CpuBackend<float>>,
              "ModalityHard must model router_for<CpuBackend<float>>");
#endif

}  // namespace mmsparse

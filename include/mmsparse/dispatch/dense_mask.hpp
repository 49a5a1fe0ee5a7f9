// mmsparse/dispatch/dense_mask.hpp
//
// Dense mask: every expert runs on every token, rows [E * N] (row e*N + t is token t for expert
// e), and the gate is 0 where the plan did not select (e, t). The slow, obviously correct
// baseline of the dispatch tests and the naive point of the benchmarks (DESIGN.md "dispatch").
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#if !defined(__CUDACC__)  // the CPU backend (Eigen) stays out of nvcc translation units
#include <mmsparse/backend/cpu/backend.hpp>
#endif
#include <mmsparse/dispatch/concepts.hpp>
#include <mmsparse/dispatch/layout.hpp>
#include <mmsparse/routing/plan.hpp>

namespace mmsparse {

struct DenseMask {
  struct Config {};
  static constexpr std::string_view name = "dense_mask";

  Config cfg{};

  template <class W, class Space>
  [[nodiscard]] std::int64_t rows(const RoutingPlan<W, Space>& plan) const {
    return plan.num_experts * plan.num_tokens;
  }
  [[nodiscard]] std::int64_t max_rows(std::int64_t experts,
                                      std::int64_t tokens,
                                      std::int64_t /*slots*/) const {
    return experts * tokens;
  }
  // Row e*N + t reads token t and holds the slot of (e, t) in the plan, or -1 (gate 0) if expert
  // e did not take token t.
  template <backend B>
  void layout(B& b, layout_t<B>& layout, const plan_t<B>& plan) const {
    layout.offsets.resize(static_cast<std::size_t>(plan.num_experts + 1));
    for (std::int64_t e = 0; e <= plan.num_experts; ++e) {
      layout.offsets[static_cast<std::size_t>(e)] = e * plan.num_tokens;
    }
    b.dense_slots(layout.slot, plan.tokens(), plan.offsets, plan.num_tokens);
    b.iota_mod(layout.token, plan.num_tokens);
  }
};

#if !defined(__CUDACC__)
static_assert(dispatch_scheme_for<DenseMask, CpuBackend<float>>,
              "DenseMask must model dispatch_scheme_for<CpuBackend<float>>");
#endif

}  // namespace mmsparse

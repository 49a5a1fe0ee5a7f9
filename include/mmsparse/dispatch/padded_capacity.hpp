// mmsparse/dispatch/padded_capacity.hpp
//
// Padded capacity buffers, GShard style (Lepikhin et al. 2020; DESIGN.md "dispatch"): an [E, C, d]
// buffer, expert e's tokens in rows [e*C, e*C + n_e), zero padding rows after them, so the experts
// run as one uniform batched GEMM. C is the largest segment of the plan, or a fixed configured
// capacity (static shapes); the padding rows are computed, and counted as FLOPs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <vector>

#if !defined(__CUDACC__)  // the CPU backend (Eigen) stays out of nvcc translation units
#include <mmsparse/backend/cpu/backend.hpp>
#endif
#include <mmsparse/core/error.hpp>
#include <mmsparse/dispatch/concepts.hpp>
#include <mmsparse/dispatch/layout.hpp>
#include <mmsparse/routing/plan.hpp>

namespace mmsparse {

struct PaddedCapacity {
  struct Config {
    std::int64_t capacity = 0;  // rows per expert; 0: the largest segment of each plan
  };
  static constexpr std::string_view name = "padded_capacity";

  Config cfg{};

  // Rows per expert for `plan`. A fixed capacity must hold every segment: dropping tokens is the
  // router's decision (its capacity factor), never the dispatch's.
  template <class W, class Space>
  [[nodiscard]] std::int64_t capacity(const RoutingPlan<W, Space>& plan) const {
    MMSPARSE_CHECK(
        cfg.capacity >= 0, "PaddedCapacity", "capacity", ">= 0 (0: automatic)", cfg.capacity);
    std::int64_t largest = 0;
    for (std::int64_t e = 0; e < plan.num_experts; ++e) {
      largest = std::max(largest, plan.tokens_of(e));
    }
    if (cfg.capacity == 0) {
      return largest;
    }
    MMSPARSE_CHECK(cfg.capacity >= largest,
                   "PaddedCapacity",
                   "capacity",
                   ">= the largest expert segment " + std::to_string(largest),
                   cfg.capacity);
    return cfg.capacity;
  }
  template <class W, class Space>
  [[nodiscard]] std::int64_t rows(const RoutingPlan<W, Space>& plan) const {
    return plan.num_experts * capacity(plan);
  }
  [[nodiscard]] std::int64_t max_rows(std::int64_t experts,
                                      std::int64_t tokens,
                                      std::int64_t slots) const {
    return experts * (cfg.capacity > 0 ? cfg.capacity : std::min(tokens, slots));
  }
  // Row e*C + i holds slot offsets[e] + i of the plan while i < n_e, then padding.
  template <backend B>
  void layout(B& b, layout_t<B>& layout, const plan_t<B>& plan) const {
    const std::int64_t c = capacity(plan);
    layout.offsets.resize(static_cast<std::size_t>(plan.num_experts + 1));
    for (std::int64_t e = 0; e <= plan.num_experts; ++e) {
      layout.offsets[static_cast<std::size_t>(e)] = e * c;
    }
    place_slots_in_segments(b, layout, plan);
  }
};

#if !defined(__CUDACC__)
static_assert(dispatch_scheme_for<PaddedCapacity, CpuBackend<float>>,
              "PaddedCapacity must model dispatch_scheme_for<CpuBackend<float>>");
#endif

}  // namespace mmsparse

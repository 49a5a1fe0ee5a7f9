// mmsparse/dispatch/sorted_gather.hpp
//
// Sorted gather/scatter, dropless (DESIGN.md "dispatch"; MegaBlocks-style grouped GEMM, MoT §6.3):
// the buffer is the plan's own slots, already ordered by expert, so expert e's rows are exactly its
// plan segment and the experts run as one GEMM per segment. No padding, no wasted FLOPs.
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

struct SortedGather {
  struct Config {};
  static constexpr std::string_view name = "sorted_gather";

  Config cfg{};

  template <class W, class Space>
  [[nodiscard]] std::int64_t rows(const RoutingPlan<W, Space>& plan) const {
    return plan.slots();
  }
  [[nodiscard]] std::int64_t max_rows(std::int64_t /*experts*/,
                                      std::int64_t /*tokens*/,
                                      std::int64_t slots) const {
    return slots;
  }
  // Row r holds plan slot r.
  template <backend B>
  void layout(B& b, layout_t<B>& layout, const plan_t<B>& plan) const {
    layout.offsets.assign(plan.offsets.begin(), plan.offsets.end());
    place_slots_in_segments(b, layout, plan);
  }
};

#if !defined(__CUDACC__)
static_assert(dispatch_scheme_for<SortedGather, CpuBackend<float>>,
              "SortedGather must model dispatch_scheme_for<CpuBackend<float>>");
#endif

}  // namespace mmsparse

// mmsparse/dispatch/concepts.hpp
//
// What a dispatch scheme is (DESIGN.md "dispatch"): a policy that lays the slots of a RoutingPlan
// out as the rows of an expert buffer, a DispatchLayout: per row the plan slot it holds (-1: none)
// and the token it reads (-1: padding), per expert a segment of rows. Gates follow the slots, and
// gather, expert GEMMs, gate-weighted scatter-add and the backward are shared
// (dispatch/layout.hpp).
#pragma once

#include <concepts>
#include <cstdint>
#include <string_view>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/routing/concepts.hpp>

namespace mmsparse {

template <class W, class Space = host_space>
struct DispatchLayout {
  std::vector<std::int64_t> offsets;  // [E + 1] buffer rows of each expert (host)
  Span<std::int32_t, Space> token;    // [R] source token of each row (-1: padding)
  Span<W, Space> gate;                // [R] gate of each row (0: padding or unselected)
  Span<std::int32_t, Space> slot;     // [R] plan slot of each row (-1: none)

  [[nodiscard]] std::int64_t rows() const {
    return token.size;
  }
  [[nodiscard]] std::int64_t experts() const {
    return static_cast<std::int64_t>(offsets.size()) - 1;
  }
  [[nodiscard]] SegmentOffsets segments() const {
    return offsets;
  }
};

template <backend B>
using layout_t = DispatchLayout<router_scalar_t<B>, typename B::space>;

// A scheme has a nested Config, a name and three members:
//   rows(plan)                       buffer rows R for this plan (host-side, from plan.offsets)
//   max_rows(experts, tokens, slots) an upper bound of R over all plans of that size (workspace)
//   layout(b, layout, plan)          fills layout.offsets, layout.slot and layout.token (arrays
//                                    of rows(plan) entries); make_layout adds the gates
template <class D, class B>
concept dispatch_scheme_for = backend<B> &&
    requires(const D& d, B& b, const plan_t<B>& plan, layout_t<B>& layout, std::int64_t n) {
  typename D::Config;
  { D::name } -> std::convertible_to<std::string_view>;
  { d.rows(plan) } -> std::same_as<std::int64_t>;
  { d.max_rows(n, n, n) } -> std::same_as<std::int64_t>;
  d.layout(b, layout, plan);
};

}  // namespace mmsparse

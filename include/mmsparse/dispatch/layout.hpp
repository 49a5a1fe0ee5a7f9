// mmsparse/dispatch/layout.hpp
//
// The one code path behind every dispatch scheme (DESIGN.md "dispatch"): a scheme turns a plan into
// a layout (per buffer row: source token, gate, plan slot; per expert: a segment of rows), then
//   gather (x -> rows) -> experts over the segments -> gate-weighted scatter-add (rows -> y),
// and the backward walks the same layout: dy -> rows scaled by the gate, gate gradient per slot.
#pragma once

#include <cstdint>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/dispatch/concepts.hpp>
#include <mmsparse/routing/concepts.hpp>

namespace mmsparse {

// Bytes of workspace a layout of `rows` rows takes (take_layout).
template <backend B>
constexpr std::size_t layout_bytes(std::int64_t rows) {
  using Ws = Workspace<typename B::space>;
  return 2 * Ws::template bytes_for<std::int32_t>(rows) +
         Ws::template bytes_for<router_scalar_t<B>>(rows);
}

// A layout of `rows` rows whose arrays live in the backend's workspace (inside the caller's frame).
template <backend B>
[[nodiscard]] layout_t<B> take_layout(B& b, std::int64_t rows) {
  layout_t<B> layout;
  layout.token = b.workspace().template take_span<std::int32_t>(rows);
  layout.gate = b.workspace().template take_span<router_scalar_t<B>>(rows);
  layout.slot = b.workspace().template take_span<std::int32_t>(rows);
  return layout;
}

// A scheme's layout once it has set layout.offsets (each expert's segment, at least as long as
// its plan segment): each segment's rows hold the expert's plan slots in order and then padding
// (slot and token -1).
template <backend B>
void place_slots_in_segments(B& b, layout_t<B>& layout, const plan_t<B>& plan) {
  b.pad_segments(layout.slot, layout.offsets, plan.offsets);
  b.gather_values(layout.token,
                  plan.tokens(),
                  Span<const std::int32_t, typename B::space>(layout.slot),
                  std::int32_t{-1});
}

// Fills `layout` (arrays of scheme.rows(plan) rows) for `plan`: the scheme places slots and
// tokens, the gates follow the slots (0 where a row holds no slot).
template <class D, backend B>
  requires dispatch_scheme_for<D, B>
void make_layout(B& b, layout_t<B>& layout, const D& scheme, const plan_t<B>& plan) {
  const std::int64_t rows = scheme.rows(plan);
  MMSPARSE_CHECK(layout.token.size == rows && layout.gate.size == rows && layout.slot.size == rows,
                 "make_layout",
                 "layout",
                 rows,
                 layout.token.size);
  scheme.layout(b, layout, plan);
  MMSPARSE_ASSERT(static_cast<std::int64_t>(layout.offsets.size()) == plan.num_experts + 1);
  MMSPARSE_ASSERT(layout.offsets.back() == rows);
  const Span<const std::int32_t, typename B::space> slot = layout.slot;
  b.gather_values(layout.gate, plan.gates(), slot, router_scalar_t<B>{});
}

// xg [R, d] = x[token[r]] (padding rows: 0).
template <backend B>
void dispatch_gather(B& b,
                     View<typename B::scalar, typename B::space> xg,
                     View<const typename B::scalar, typename B::space> x,
                     const layout_t<B>& layout) {
  b.gather_rows(xg, x, Span<const std::int32_t, typename B::space>(layout.token));
}

// y [N, d] = sum over the rows r of token t of gate[r] * o[r]; y is overwritten, so a token no
// expert took gets exactly 0, and a token several experts took gets the sum (PAPERS.md §4.7).
template <backend B>
void dispatch_combine(B& b,
                      View<typename B::scalar, typename B::space> y,
                      View<const typename B::scalar, typename B::space> o,
                      const layout_t<B>& layout) {
  using T = typename B::scalar;
  using S = typename B::space;
  b.fill(y, T{});
  b.scatter_add_rows(y,
                     o,
                     Span<const std::int32_t, S>(layout.token),
                     Span<const router_scalar_t<B>, S>(layout.gate));
}

// Backward of dispatch_combine. dgate [S]: dL/dgate of each plan slot = <o[r], dy[token[r]]>;
// dout [R, d] = gate[r] * dy[token[r]], the gradient reaching the experts' outputs.
template <backend B>
void dispatch_combine_backward(B& b,
                               Span<router_scalar_t<B>, typename B::space> dgate,
                               View<typename B::scalar, typename B::space> dout,
                               View<const typename B::scalar, typename B::space> dy,
                               View<const typename B::scalar, typename B::space> o,
                               const layout_t<B>& layout) {
  using W = router_scalar_t<B>;
  using S = typename B::space;
  const Span<const std::int32_t, S> token = layout.token;
  auto frame = b.workspace().frame();
  auto row_dot = b.workspace().template take_span<W>(layout.rows());  // [R]
  b.gathered_row_dot(row_dot, o, dy, token);
  b.fill(dgate.as_column(), W{});
  b.scatter_values(dgate, Span<const W, S>(row_dot), Span<const std::int32_t, S>(layout.slot));
  b.gather_rows(dout, dy, token);
  b.scale_rows(dout, Span<const W, S>(layout.gate));
}

// Backward of dispatch_gather: dx[token[r]] += dxg[r] (accumulates).
template <backend B>
void dispatch_gather_backward(B& b,
                              View<typename B::scalar, typename B::space> dx,
                              View<const typename B::scalar, typename B::space> dxg,
                              const layout_t<B>& layout) {
  b.scatter_add_rows(dx,
                     dxg,
                     Span<const std::int32_t, typename B::space>(layout.token),
                     Span<const router_scalar_t<B>, typename B::space>());
}

}  // namespace mmsparse

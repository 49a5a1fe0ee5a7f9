// mmsparse/backend/concepts.hpp
//
// The backend concept: everything layer, dispatch and routing code may ask of
// the machine. A backend owns a workspace arena and supplies destination-first
// primitives over views in its memory space:
//   gemm, grouped_gemm, grouped_gemm_weight_grad       matrix products
//   gather_rows, scatter_add_rows, gathered_row_dot     dispersion
//   topk_rows, topk_cols, bucket_sort                   routing
//   fill, copy, axpy, scale_rows, sigmoid, softmax_rows, swiglu, swiglu_backward
// The CPU backend (backend/cpu) is the reference; CUDA (backend/cuda) plugs in
// without changing a layer.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <vector>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>
#include <mmsparse/backend/workspace.hpp>

namespace mmsparse {

enum class Trans { no, yes };

// A grouped GEMM: expert e multiplies rows [offsets[e], offsets[e+1]) of the
// input by block e of a stacked weight. `offsets` (E + 1 entries) live on the host.
using SegmentOffsets = std::span<const std::int64_t>;

template <class B>
concept backend = requires(B& b,
                           View<typename B::scalar, typename B::space> y,
                           View<const typename B::scalar, typename B::space> x,
                           View<router_t<typename B::scalar>, typename B::space> g,
                           View<const router_t<typename B::scalar>, typename B::space> cg,
                           Span<std::int32_t, typename B::space> idx,
                           Span<const std::int32_t, typename B::space> cidx,
                           Span<router_t<typename B::scalar>, typename B::space> w,
                           Span<const router_t<typename B::scalar>, typename B::space> cw,
                           SegmentOffsets offsets,
                           std::vector<std::int64_t>& host_offsets) {
  typename B::scalar;
  typename B::space;
  { B::name } -> std::convertible_to<const char*>;
  { b.workspace() } -> std::same_as<Workspace<typename B::space>&>;
  b.gemm(y, x, Trans::no, x, Trans::no, 1.0, 0.0);
  b.grouped_gemm(y, x, x, Trans::no, offsets, 1.0, 0.0);
  b.grouped_gemm_weight_grad(y, x, x, offsets, 1.0, 1.0);
  b.gather_rows(y, x, cidx);
  b.scatter_add_rows(y, x, cidx, cw);
  b.gathered_row_dot(w, x, x, cidx);
  b.topk_rows(idx, w, cg, std::int64_t{1});
  b.topk_cols(idx, cg, std::int64_t{1});
  b.bucket_sort(idx, host_offsets, cidx, std::int64_t{1});
  b.fill(y, typename B::scalar{});
  b.copy(y, x);
  b.axpy(y, x, 1.0);
  b.scale_rows(y, cw);
  b.sigmoid(g, cg);
  b.softmax_rows(g, cg);
  b.swiglu(y, x, x);
  b.swiglu_backward(y, y, x, x, x);
};

}  // namespace mmsparse

// mmsparse/backend/concepts.hpp
//
// The backend concept: everything layer, dispatch and routing code may ask of
// the machine. A backend owns a workspace arena and supplies destination-first
// primitives over views in its memory space:
//   gemm, grouped_gemm, grouped_gemm_weight_grad       matrix products
//   weights_updated                                     after an in-place weight change
//   gather_rows, scatter_add_rows, gathered_row_dot     dispersion
//   gather_values, scatter_values                       1-D index maps (int32 and router scalars)
//   topk_rows, topk_cols, bucket_sort                   routing
//   find_nonfinite, add_logistic_noise, sigmoid_backward, softmax_rows_backward,
//   logsumexp_rows, normalize_rows(_backward), transpose, map_index, scatter_add_cols,
//   copy_to_host, copy_from_host                        router math and host transfers
//   pad_segments, dense_slots, iota_mod                 dispatch layouts
//   fill, copy, axpy, scale_rows, sigmoid, softmax_rows, swiglu, swiglu_backward
//   rms_norm, layer_norm, cross_entropy (each with a _backward)  norms and the loss
//   rope, masked_softmax_rows (each with a _backward)  attention
//   for_each_head (optional: attention runs its heads in order without it)
// The CPU backend (backend/cpu) is the reference; CUDA (backend/cuda) plugs in
// without changing a layer.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <mmsparse/backend/workspace.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse {

enum class Trans { no, yes };

// A grouped GEMM: expert e multiplies rows [offsets[e], offsets[e+1]) of the
// input by block e of a stacked weight. `offsets` (E + 1 entries) live on the host.
using SegmentOffsets = std::span<const std::int64_t>;

// Validates grouped-GEMM segments over `rows` rows: E + 1 >= 2 non-decreasing offsets from >= 0
// to <= rows. Returns E. Every backend's grouped products call it first.
inline std::int64_t check_segment_offsets(const char* op,
                                          SegmentOffsets offsets,
                                          std::int64_t rows) {
  MMSPARSE_CHECK(offsets.size() >= 2, op, "offsets", "E + 1 >= 2 entries", offsets.size());
  MMSPARSE_CHECK(offsets.front() >= 0, op, "offsets[0]", ">= 0", offsets.front());
  for (std::size_t e = 1; e < offsets.size(); ++e) {
    MMSPARSE_CHECK(offsets[e] >= offsets[e - 1],
                   op,
                   "offsets",
                   "non-decreasing values",
                   "offsets[" + std::to_string(e) + "] = " + std::to_string(offsets[e]) + " < " +
                       std::to_string(offsets[e - 1]));
  }
  MMSPARSE_CHECK(offsets.back() <= rows,
                 op,
                 "offsets",
                 "a last value <= " + std::to_string(rows) + " rows",
                 offsets.back());
  return static_cast<std::int64_t>(offsets.size()) - 1;
}

// Whether some segment has 1..max_rows rows: one for a small-M kernel.
[[nodiscard]] inline bool has_short_segment(SegmentOffsets offsets, std::int64_t max_rows) {
  for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
    const std::int64_t count = offsets[e + 1] - offsets[e];
    if (count > 0 && count <= max_rows) {
      return true;
    }
  }
  return false;
}

// The rows K of each expert's block of a stacked weight w [E * K, N].
template <class T, class S>
std::int64_t expert_block_rows(const char* op, View<T, S> w, std::int64_t experts) {
  MMSPARSE_CHECK(w.rows % experts == 0,
                 op,
                 "w",
                 "rows divisible by the " + std::to_string(experts) + " experts",
                 w.shape());
  return w.rows / experts;
}

// Validates the grouped product C_e = A_e op(W_e) over `offsets` (into a and c) for a stacked
// w [E * K, N], op(W_e) being W_e [K, N] (Trans::no) or W_e^T [N, K] (Trans::yes), with each
// operand's rows at least its width apart. Returns the block rows K.
template <class T, class TW, class S>
std::int64_t check_grouped_gemm(const char* op,
                                View<T, S> c,
                                View<const T, S> a,
                                View<const TW, S> w,
                                Trans tw,
                                SegmentOffsets offsets) {
  const std::int64_t block = expert_block_rows(op, w, check_segment_offsets(op, offsets, a.rows));
  const std::int64_t k = tw == Trans::no ? block : w.cols;
  const std::int64_t n = tw == Trans::no ? w.cols : block;
  MMSPARSE_CHECK(a.cols == k, op, "a", "cols = " + std::to_string(k), a.shape());
  MMSPARSE_CHECK(c.rows == a.rows && c.cols == n, op, "c", (Shape{a.rows, n}), c.shape());
  MMSPARSE_CHECK(a.rows <= 1 || a.stride >= a.cols, op, "a.stride", ">= a.cols", a.stride);
  MMSPARSE_CHECK(w.rows <= 1 || w.stride >= w.cols, op, "w.stride", ">= w.cols", w.stride);
  MMSPARSE_CHECK(c.rows <= 1 || c.stride >= c.cols, op, "c.stride", ">= c.cols", c.stride);
  return block;
}

// Validates the grouped weight gradient W_e = A_e^T B_e over `offsets` (into a [T, K] and
// b [T, N]) for a stacked w [E * K, N]. Returns the block rows K.
template <class T, class S>
std::int64_t check_grouped_weight_grad(
    const char* op, View<T, S> w, View<const T, S> a, View<const T, S> b, SegmentOffsets offsets) {
  const std::int64_t block = expert_block_rows(op, w, check_segment_offsets(op, offsets, a.rows));
  MMSPARSE_CHECK(a.cols == block, op, "a", "cols = " + std::to_string(block), a.shape());
  MMSPARSE_CHECK(b.rows == a.rows && b.cols == w.cols, op, "b", (Shape{a.rows, w.cols}), b.shape());
  return block;
}

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
  b.weights_updated();  // weights changed in place: drop packed copies (a no-op without any)
  b.gather_rows(y, x, cidx);
  b.scatter_add_rows(y, x, cidx, cw);
  b.gathered_row_dot(w, x, x, cidx);
  b.gather_values(idx, cidx, cidx, std::int32_t{-1});
  b.gather_values(w, cw, cidx, router_t<typename B::scalar>{});
  b.scatter_values(w, cw, cidx);
  b.topk_rows(idx, w, cg, std::int64_t{1});
  b.topk_cols(idx, cg, std::int64_t{1});
  b.bucket_sort(idx, host_offsets, cidx, std::int64_t{1});
  b.pad_segments(idx, offsets, offsets);
  b.dense_slots(idx, cidx, offsets, std::int64_t{1});
  b.iota_mod(idx, std::int64_t{1});
  // router math (backend/cpu/router_kernels.hpp)
  { b.find_nonfinite(cg) } -> std::convertible_to<std::int64_t>;
  b.add_logistic_noise(g, cidx, std::uint64_t{0}, std::int64_t{1}, std::int64_t{0});
  b.sigmoid_backward(g, cg, cg);
  b.softmax_rows_backward(g, cg, cg);
  b.logsumexp_rows(w, cg);
  b.normalize_rows(g, cg);
  b.normalize_rows_backward(g, cg, cg, cg);
  b.transpose(View<std::int32_t, typename B::space>{},
              View<const std::int32_t, typename B::space>{});
  b.map_index(idx, cidx, std::int64_t{1}, std::int64_t{0});
  b.scatter_add_cols(g, cg, View<const std::int32_t, typename B::space>{});
  b.copy_to_host(std::span<router_t<typename B::scalar>>{}, cw);
  b.copy_from_host(w, std::span<const router_t<typename B::scalar>>{});
  b.copy_to_host(std::span<std::int32_t>{}, cidx);
  b.fill(y, typename B::scalar{});
  b.copy(y, x);
  b.copy(View<std::int32_t, typename B::space>{}, View<const std::int32_t, typename B::space>{});
  b.axpy(y, x, 1.0);
  b.scale_rows(y, cw);
  b.sigmoid(g, cg);
  b.softmax_rows(g, cg);
  b.swiglu(y, x, x);
  b.swiglu_backward(y, y, x, x, x);
  b.rms_norm(y, w, x, x, 1e-5);  // per-row statistics in accum_t (= router_t) spans
  b.rms_norm_backward(y, y, x, x, x, cw);
  b.layer_norm(y, w, w, x, x, x, 1e-5);
  b.layer_norm_backward(y, y, y, x, x, x, cw, cw);
  b.cross_entropy(w, w, x, cidx);
  b.cross_entropy_backward(y, x, cw, cidx, 1.0);
  b.rope(y, x, cidx, std::int64_t{2}, 1e4);  // attention (backend/cpu/attention.hpp)
  b.rope_backward(y, x, cidx, std::int64_t{2}, 1e4);
  b.masked_softmax_rows(y, x, cidx, 1.0);
  b.masked_softmax_rows_backward(y, x, x, cidx, 1.0);
  b.copy_from_host(idx, std::span<const std::int32_t>{});
};

}  // namespace mmsparse

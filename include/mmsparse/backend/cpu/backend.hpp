// mmsparse/backend/cpu/backend.hpp
//
// The CPU backend: host memory, OpenMP threads, a workspace arena, and a GEMM
// provider chosen at compile time (oneDNN where found, else Eigen); products with
// at most 16 rows go to the skinny kernels (skinny_*.hpp) with either provider.
// Every primitive of the backend concept (backend/concepts.hpp) forwards to the
// kernels of this folder. CpuBackend<double> is the project's oracle backend.
#pragma once

#include <array>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <Eigen/Core>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/backend/cpu/attention.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/backend/cpu/elementwise.hpp>
#include <mmsparse/backend/cpu/gather_scatter.hpp>
#include <mmsparse/backend/cpu/loss.hpp>
#include <mmsparse/backend/cpu/norm.hpp>
#include <mmsparse/backend/cpu/one_thread_ops.hpp>
#include <mmsparse/backend/cpu/router_kernels.hpp>
#include <mmsparse/backend/cpu/skinny_gemm.hpp>
#include <mmsparse/backend/cpu/skinny_gemm_transposed.hpp>
#include <mmsparse/backend/cpu/skinny_pack.hpp>
#include <mmsparse/backend/cpu/skinny_weight_grad.hpp>
#include <mmsparse/backend/cpu/sort.hpp>
#include <mmsparse/backend/cpu/topk.hpp>
#include <mmsparse/core/error.hpp>
#if defined(MMSPARSE_WITH_ONEDNN)
#include <mmsparse/backend/cpu/onednn_gemm.hpp>
#endif

namespace mmsparse {

namespace cpu {
#if defined(MMSPARSE_WITH_ONEDNN)
using DefaultGemm = OnednnGemm;
#else
using DefaultGemm = EigenGemm;
#endif
}  // namespace cpu

struct CpuOptions {
  int threads = 0;  // 0: leave OpenMP's default (OMP_NUM_THREADS or all cores)
  // Panel copies of the grouped_gemm weight blocks that segments of <= 16 rows multiply
  // (decode): about 2x the streaming rate, for a second copy of those blocks (skinny_pack.hpp).
  bool pack_skinny_weights = true;
};

template <class T, class Gemm = cpu::DefaultGemm>
class CpuBackend {
 public:
  using scalar = T;
  using space = host_space;
  using gemm_provider = Gemm;
  static constexpr const char* name = "cpu";

  CpuBackend() = default;
  explicit CpuBackend(CpuOptions options) : pack_skinny_(options.pack_skinny_weights) {
    if (options.threads > 0) {
#if defined(_OPENMP)
      omp_set_num_threads(options.threads);
#endif
      Eigen::setNbThreads(options.threads);
    }
  }
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  [[nodiscard]] Workspace<host_space>& workspace() {
    return workspace_;
  }
  [[nodiscard]] Gemm& gemm_provider_instance() {
    return gemm_;
  }
  [[nodiscard]] const cpu::SkinnyPackStats& skinny_pack_stats() const {
    return skinny_packs_.stats();
  }
  [[nodiscard]] static int threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
  }

  // ---- matrix products ----------------------------------------------------

  // Most rows of A (not transposed) the skinny kernels take from this backend: up to
  // skinny_lane_max_rows over f32 weights (the lane walk beats the provider there, with AVX2 and
  // with AVX-512 alike: docs/benchmarks.md), skinny_max_rows otherwise.
  template <class U>
  static constexpr std::int64_t skinny_rows =
      std::is_same_v<U, float> ? cpu::skinny_lane_max_rows : cpu::skinny_max_rows;

  // C = alpha * op(A) op(B) + beta * C. At most skinny_rows<U> rows of A (not transposed) times
  // B (not transposed), f32 or bf16: the skinny kernel, which streams B once (decode).
  template <class U>
  void gemm(View<U> c,
            View<const U> a,
            Trans ta,
            View<const U> b,
            Trans tb,
            double alpha = 1.0,
            double beta = 0.0) {
    if constexpr (cpu::skinny_supported_v<U>) {
      // Mismatched shapes go on to the provider, whose message names its own arguments.
      if (ta == Trans::no && tb == Trans::no && a.rows <= skinny_rows<U> && b.rows == a.cols &&
          c.rows == a.rows && c.cols == b.cols) {
        cpu::skinny_gemm(c, a, b, alpha, beta);
        return;
      }
    }
    gemm_.gemm(c, a, ta, b, tb, alpha, beta);
  }

  // For each expert e: C_e = alpha * A_e op(W_e) + beta * C_e, where X_e are rows
  // [offsets[e], offsets[e+1]) and W_e is block e of the stacked weight w [E * wr, wc].
  // With W not transposed (the forward), a segment of 1..skinny_rows<U> rows goes to the skinny
  // kernel (bf16 widened in registers): over a panel copy of W_e once W_e has been used twice
  // with the same weights (CpuOptions::pack_skinny_weights), otherwise over W_e itself (f32: the
  // lane walk); the other segments go to the provider (docs/design.md, "CPU GEMM provider").
  // Every skinny walk rounds alike, so the choice never changes a result.
  template <class U>
  void grouped_gemm(View<U> c,
                    View<const U> a,
                    View<const U> w,
                    Trans tw,
                    SegmentOffsets offsets,
                    double alpha = 1.0,
                    double beta = 0.0) {
    if constexpr (cpu::skinny_supported_v<U>) {
      if (tw == Trans::no && has_short_segment(offsets, skinny_rows<U>)) {
        skinny_grouped_gemm(c, a, w, offsets, alpha, beta);
        return;
      }
    }
    if constexpr (std::is_same_v<U, float>) {
      if (tw == Trans::yes && has_short_segment(offsets, cpu::skinny_transposed_max_rows)) {
        skinny_grouped_gemm_transposed(c, a, w, offsets, alpha, beta);
        return;
      }
    }
    if constexpr (requires { gemm_.grouped_gemm(c, a, w, tw, offsets, alpha, beta); }) {
      gemm_.grouped_gemm(c, a, w, tw, offsets, alpha, beta);  // may multiply packed weights
      return;
    }
    const auto experts = static_cast<std::int64_t>(offsets.size()) - 1;
    const std::int64_t block = w.rows / experts;
    for (std::int64_t e = 0; e < experts; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      if (count == 0) {
        continue;
      }
      gemm_.gemm(c.row_block(begin, count),
                 a.row_block(begin, count),
                 Trans::no,
                 w.row_block(e * block, block),
                 tw,
                 alpha,
                 beta);
    }
  }

  // For each expert e: W_e = alpha * A_e^T B_e + beta * W_e (the weight gradient of grouped_gemm).
  template <class U>
  void grouped_gemm_weight_grad(View<U> w,
                                View<const U> a,
                                View<const U> b,
                                SegmentOffsets offsets,
                                double alpha = 1.0,
                                double beta = 1.0) {
    if constexpr (std::is_same_v<U, float>) {
      if (has_short_segment(offsets, cpu::skinny_grad_max_rows)) {
        skinny_grouped_weight_grad(w, a, b, offsets, alpha, beta);
        return;
      }
    }
    if constexpr (requires { gemm_.grouped_gemm_weight_grad(w, a, b, offsets, alpha, beta); }) {
      gemm_.grouped_gemm_weight_grad(w, a, b, offsets, alpha, beta);
      return;
    }
    const auto experts = static_cast<std::int64_t>(offsets.size()) - 1;
    const std::int64_t block = w.rows / experts;
    for (std::int64_t e = 0; e < experts; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      auto we = w.row_block(e * block, block);
      if (count == 0) {
        if (beta != 1.0) {
          cpu::scale_rows_uniform(we, beta);
        }
        continue;
      }
      gemm_.gemm(we,
                 a.row_block(begin, count),
                 Trans::yes,
                 b.row_block(begin, count),
                 Trans::no,
                 alpha,
                 beta);
    }
  }

  // The weights changed in place (optimizer step, load): the GEMM provider drops its packed
  // copies of grouped_gemm weights, and so do the skinny panels. The optimizer calls it after
  // every step.
  void weights_updated() {
    skinny_packs_.weights_updated();
    if constexpr (requires { gemm_.weights_updated(); }) {
      gemm_.weights_updated();
    }
  }
  // Optional warm-up: packs the `blocks` blocks of a grouped_gemm weight ahead of first use.
  template <class U>
  void pack_weights(View<const U> w, Trans tw = Trans::no, std::int64_t blocks = 1) {
    if constexpr (requires { gemm_.pack_weights(w, tw, blocks); }) {
      gemm_.pack_weights(w, tw, blocks);
    }
  }

  // ---- dispersion ---------------------------------------------------------

  template <class U>
  void gather_rows(View<U> dst, View<const U> src, Span<const std::int32_t> index) {
    cpu::gather_rows(dst, src, index);
  }
  template <class U, class W>
  void scatter_add_rows(View<U> dst,
                        View<const U> src,
                        Span<const std::int32_t> index,
                        Span<const W> weight) {
    cpu::scatter_add_rows(dst, src, index, weight);
  }
  template <class W, class U>
  void gathered_row_dot(Span<W> out,
                        View<const U> a,
                        View<const U> b,
                        Span<const std::int32_t> index) {
    cpu::gathered_row_dot(out, a, b, index);
  }
  template <class U>
  void gather_values(Span<U> dst, Span<const U> src, Span<const std::int32_t> index, U fill) {
    cpu::gather_values(dst, src, index, fill);
  }
  template <class U>
  void scatter_values(Span<U> dst, Span<const U> src, Span<const std::int32_t> index) {
    cpu::scatter_values(dst, src, index);
  }

  // ---- routing ------------------------------------------------------------

  template <class W>
  void topk_rows(Span<std::int32_t> index, Span<W> value, View<const W> scores, std::int64_t k) {
    cpu::topk_rows(index, value, scores, k);
  }
  template <class W>
  void topk_cols(Span<std::int32_t> index, View<const W> scores, std::int64_t c) {
    cpu::topk_cols(index, scores, c);
  }
  void bucket_sort(Span<std::int32_t> order,
                   std::vector<std::int64_t>& offsets,
                   Span<const std::int32_t> keys,
                   std::int64_t buckets) {
    cpu::bucket_sort(order, offsets, keys, buckets);
  }
  void pad_segments(Span<std::int32_t> slot,
                    SegmentOffsets dst_offsets,
                    SegmentOffsets src_offsets) {
    cpu::pad_segments(slot, dst_offsets, src_offsets);
  }
  void dense_slots(Span<std::int32_t> grid,
                   Span<const std::int32_t> key,
                   SegmentOffsets offsets,
                   std::int64_t n) {
    cpu::dense_slots(grid, key, offsets, n);
  }
  void iota_mod(Span<std::int32_t> index, std::int64_t n) {
    cpu::iota_mod(index, n);
  }

  // ---- router math (router_kernels.hpp) -----------------------------------

  template <class W>
  [[nodiscard]] std::int64_t find_nonfinite(View<const W> x) {
    return cpu::find_nonfinite(x);
  }
  template <class W>
  void add_logistic_noise(View<W> y,
                          Span<const std::int32_t> row_id,
                          std::uint64_t seed,
                          std::int64_t row_stride,
                          std::int64_t col_offset) {
    cpu::add_logistic_noise(y, row_id, seed, row_stride, col_offset);
  }
  template <class W>
  void sigmoid_backward(View<W> dx, View<const W> dy, View<const W> y) {
    cpu::sigmoid_backward(dx, dy, y);
  }
  template <class W>
  void softmax_rows_backward(View<W> dx, View<const W> dy, View<const W> y) {
    cpu::softmax_rows_backward(dx, dy, y);
  }
  template <class W>
  void logsumexp_rows(Span<W> out, View<const W> x) {
    cpu::logsumexp_rows(out, x);
  }
  template <class W>
  void normalize_rows(View<W> y, View<const W> x) {
    cpu::normalize_rows(y, x);
  }
  template <class W>
  void normalize_rows_backward(View<W> dx, View<const W> dy, View<const W> y, View<const W> x) {
    cpu::normalize_rows_backward(dx, dy, y, x);
  }
  template <class U>
  void transpose(View<U> dst, View<const U> src) {
    cpu::transpose(dst, src);
  }
  void map_index(Span<std::int32_t> out,
                 Span<const std::int32_t> in,
                 std::int64_t divisor,
                 std::int64_t offset) {
    cpu::map_index(out, in, divisor, offset);
  }
  template <class W>
  void scatter_add_cols(View<W> dst, View<const W> src, View<const std::int32_t> col) {
    cpu::scatter_add_cols(dst, src, col);
  }
  template <class U>
  void copy_to_host(std::span<U> dst, Span<const U> src) {
    cpu::copy_to_host(dst, src);
  }
  template <class U>
  void copy_from_host(Span<U> dst, std::span<const U> src) {
    cpu::copy_from_host(dst, src);
  }

  // ---- element-wise -------------------------------------------------------

  template <class U>
  void fill(View<U> y, U value) {
    cpu::fill(y, value);
  }
  template <class To, class From>
  void copy(View<To> y, View<const From> x) {
    cpu::copy(y, x);
  }
  template <class U>
  void axpy(View<U> y, View<const U> x, double alpha) {
    cpu::axpy(y, x, alpha);
  }
  template <class U, class W>
  void scale_rows(View<U> y, Span<const W> w) {
    cpu::scale_rows(y, w);
  }
  template <class W>
  void sigmoid(View<W> y, View<const W> x) {
    cpu::sigmoid(y, x);
  }
  template <class W>
  void softmax_rows(View<W> y, View<const W> x) {
    cpu::softmax_rows(y, x);
  }
  template <class U>
  void swiglu(View<U> h, View<const U> a, View<const U> g) {
    cpu::swiglu(h, a, g);
  }
  template <class U>
  void swiglu_backward(View<U> da, View<U> dg, View<const U> dh, View<const U> a, View<const U> g) {
    cpu::swiglu_backward(da, dg, dh, a, g);
  }

  // ---- norms and loss (backward passes accumulate) --------------------------

  template <class U>
  void rms_norm(View<U> y, Span<accum_t<U>> rstd, View<const U> x, View<const U> w, double eps) {
    cpu::rms_norm(y, rstd, x, w, eps);
  }
  template <class U>
  void rms_norm_backward(View<U> dx,
                         View<U> dw,
                         View<const U> dy,
                         View<const U> x,
                         View<const U> w,
                         Span<const accum_t<U>> rstd) {
    cpu::rms_norm_backward(dx, dw, dy, x, w, rstd);
  }
  template <class U>
  void layer_norm(View<U> y,
                  Span<accum_t<U>> mean,
                  Span<accum_t<U>> rstd,
                  View<const U> x,
                  View<const U> w,
                  View<const U> bias,
                  double eps) {
    cpu::layer_norm(y, mean, rstd, x, w, bias, eps);
  }
  template <class U>
  void layer_norm_backward(View<U> dx,
                           View<U> dw,
                           View<U> dbias,
                           View<const U> dy,
                           View<const U> x,
                           View<const U> w,
                           Span<const accum_t<U>> mean,
                           Span<const accum_t<U>> rstd) {
    cpu::layer_norm_backward(dx, dw, dbias, dy, x, w, mean, rstd);
  }
  template <class U>
  void cross_entropy(Span<accum_t<U>> loss,
                     Span<accum_t<U>> lse,
                     View<const U> logits,
                     Span<const std::int32_t> target) {
    cpu::cross_entropy(loss, lse, logits, target);
  }
  template <class U>
  void cross_entropy_backward(View<U> dlogits,
                              View<const U> logits,
                              Span<const accum_t<U>> lse,
                              Span<const std::int32_t> target,
                              double scale) {
    cpu::cross_entropy_backward(dlogits, logits, lse, target, scale);
  }

  // ---- attention (backward passes overwrite; in place allowed) --------------

  template <class U>
  void rope(View<U> y,
            View<const U> x,
            Span<const std::int32_t> positions,
            std::int64_t head_dim,
            double theta) {
    cpu::rope_rotate(y, x, positions, head_dim, theta, /*inverse=*/false);
  }
  template <class U>
  void rope_backward(View<U> dx,
                     View<const U> dy,
                     Span<const std::int32_t> positions,
                     std::int64_t head_dim,
                     double theta) {
    cpu::rope_rotate(dx, dy, positions, head_dim, theta, /*inverse=*/true);
  }
  template <class U>
  void masked_softmax_rows(View<U> y,
                           View<const U> x,
                           Span<const std::int32_t> limit,
                           double scale) {
    cpu::masked_softmax_rows(y, x, limit, scale);
  }
  template <class U>
  void masked_softmax_rows_backward(
      View<U> dx, View<const U> y, View<const U> dy, Span<const std::int32_t> limit, double scale) {
    cpu::masked_softmax_rows_backward(dx, y, dy, limit, scale);
  }

  // Runs body(i, ops, scratch) for each i in [0, count), scratch being scratch_elems Us that no
  // other running item touches. With at least as many items as threads, each item's scratch within
  // cpu::head_scratch_max_bytes, the items are shared out among the threads, one thread each,
  // ops being cpu::OneThreadOps and scratch the thread's (cpu::thread_scratch); otherwise they
  // run in order with ops = *this, whose kernels use every thread, and scratch from the
  // workspace. Items must write disjoint outputs. Attention runs its heads (kv groups) this
  // way: over 128 tokens the heads side by side take 0.55-0.72 of the time of heads in order
  // (docs/benchmarks.md, "Attention heads side by side").
  template <class U, class F>
  void for_each_head(std::int64_t count, std::int64_t scratch_elems, F&& body) {
#if defined(_OPENMP)
    if (count >= threads() && threads() > 1 && !omp_in_parallel() &&
        scratch_elems * static_cast<std::int64_t>(sizeof(U)) <= cpu::head_scratch_max_bytes) {
      std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
      for (std::int64_t i = 0; i < count; ++i) {
        try {
          cpu::OneThreadOps ops;
          body(i, ops, cpu::thread_scratch<U>(scratch_elems));
        } catch (...) {
#pragma omp critical(mmsparse_for_each_head)
          if (!error) {
            error = std::current_exception();
          }
        }
      }
      if (error) {
        std::rethrow_exception(error);
      }
      return;
    }
#endif
    auto frame = workspace_.frame();
    U* scratch = workspace_.template take_span<U>(scratch_elems).data;
    for (std::int64_t i = 0; i < count; ++i) {
      body(i, *this, scratch);
    }
  }

 private:
  // grouped_gemm with W not transposed and at least one skinny segment. Everything is
  // validated before the first segment is written. The long segments go to the provider one by
  // one; with at least two skinny segments per thread, the skinny ones are shared out among the
  // threads whole (one parallel region for the call instead of one per segment: a MoD layer's 8
  // experts of 16-17 rows forward 6 % faster), otherwise each is split over the threads by
  // columns. Either way each output is summed in the same order.
  template <class U>
  void skinny_grouped_gemm(View<U> c,
                           View<const U> a,
                           View<const U> w,
                           SegmentOffsets offsets,
                           double alpha,
                           double beta) {
    const std::int64_t block =
        check_grouped_gemm("CpuBackend::grouped_gemm", c, a, w, Trans::no, offsets);
    struct Skinny {
      View<U> c;
      View<const U> a;
      View<const U> w;
      std::optional<cpu::SkinnyPanels<const U>> panels;
    };
    std::vector<Skinny> skinny;
    for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
      const std::int64_t begin = offsets[e];
      const std::int64_t count = offsets[e + 1] - begin;
      if (count == 0) {
        continue;
      }
      auto ce = c.row_block(begin, count);
      auto ae = a.row_block(begin, count);
      auto we = w.row_block(static_cast<std::int64_t>(e) * block, block);
      if (count <= skinny_rows<U>) {  // panels once packed (SkinnyPacks is not locked)
        static_assert(skinny_rows<U> <= cpu::skinny_panel_max_rows);
        skinny.push_back({ce, ae, we, pack_skinny_ ? skinny_packs_.find(we) : std::nullopt});
      } else {
        provider_segment(ce, ae, we, Trans::no, alpha, beta);
      }
    }
    auto multiply = [&](const Skinny& s) {
      if (s.panels) {
        cpu::skinny_gemm(s.c, s.a, *s.panels, alpha, beta);
      } else {
        cpu::skinny_gemm(s.c, s.a, s.w, alpha, beta);
      }
    };
    const auto jobs = static_cast<std::int64_t>(skinny.size());
#if defined(_OPENMP)
    if (jobs >= 2 * threads() && threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
      for (std::int64_t i = 0; i < jobs; ++i) {
        // One thread each (omp_in_parallel); validated above, so nothing here throws.
        multiply(skinny[static_cast<std::size_t>(i)]);
      }
      return;
    }
#endif
    for (const Skinny& s : skinny) {
      multiply(s);
    }
  }

  // C_e = alpha A_e op(W_e) + beta C_e for one segment on the provider: as a one-segment grouped
  // product over its own block where the provider has one (its packs are keyed by the block, so
  // they are the same as for the whole call), else as a plain product.
  template <class U>
  void provider_segment(
      View<U> ce, View<const U> ae, View<const U> we, Trans tw, double alpha, double beta) {
    const std::array<std::int64_t, 2> one = {0, ce.rows};
    if constexpr (requires {
                    gemm_.grouped_gemm(ce, ae, we, tw, SegmentOffsets(one), alpha, beta);
                  }) {
      gemm_.grouped_gemm(ce, ae, we, tw, SegmentOffsets(one), alpha, beta);
    } else {
      gemm_.gemm(ce, ae, Trans::no, we, tw, alpha, beta);
    }
  }

  // grouped_gemm with W transposed and at least one short segment: those go to the skinny
  // kernel, the others one by one to the provider.
  void skinny_grouped_gemm_transposed(View<float> c,
                                      View<const float> a,
                                      View<const float> w,
                                      SegmentOffsets offsets,
                                      double alpha,
                                      double beta) {
    cpu::skinny_grouped_gemm_transposed(c, a, w, offsets, alpha, beta);  // validates all
    const std::int64_t block = w.rows / (static_cast<std::int64_t>(offsets.size()) - 1);
    for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
      const std::int64_t begin = offsets[e];
      const std::int64_t count = offsets[e + 1] - begin;
      if (count <= cpu::skinny_transposed_max_rows) {
        continue;
      }
      provider_segment(c.row_block(begin, count),
                       a.row_block(begin, count),
                       w.row_block(static_cast<std::int64_t>(e) * block, block),
                       Trans::yes,
                       alpha,
                       beta);
    }
  }

  // grouped_gemm_weight_grad with at least one short segment: those go to the skinny kernel, the
  // others one by one to the provider.
  void skinny_grouped_weight_grad(View<float> w,
                                  View<const float> a,
                                  View<const float> b,
                                  SegmentOffsets offsets,
                                  double alpha,
                                  double beta) {
    cpu::skinny_grouped_weight_grad(w, a, b, offsets, alpha, beta);  // validates all segments
    const std::int64_t block = w.rows / (static_cast<std::int64_t>(offsets.size()) - 1);
    for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
      const std::int64_t begin = offsets[e];
      const std::int64_t count = offsets[e + 1] - begin;
      if (count > cpu::skinny_grad_max_rows) {
        gemm_.gemm(w.row_block(static_cast<std::int64_t>(e) * block, block),
                   a.row_block(begin, count),
                   Trans::yes,
                   b.row_block(begin, count),
                   Trans::no,
                   alpha,
                   beta);
      }
    }
  }

  Workspace<host_space> workspace_;
  Gemm gemm_;
  cpu::SkinnyPacks skinny_packs_;
  bool pack_skinny_ = true;
};

static_assert(backend<CpuBackend<float>>, "CpuBackend<float> must model mmsparse::backend");
static_assert(backend<CpuBackend<double>>, "CpuBackend<double> must model mmsparse::backend");

}  // namespace mmsparse

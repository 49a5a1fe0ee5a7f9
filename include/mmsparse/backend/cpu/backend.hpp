// mmsparse/backend/cpu/backend.hpp
//
// The CPU backend: host memory, OpenMP threads, a workspace arena, and a GEMM
// provider chosen at compile time (oneDNN where found, else Eigen). Every
// primitive of the backend concept (backend/concepts.hpp) forwards to the
// kernels of this folder. CpuBackend<double> is the project's oracle backend.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <Eigen/Core>

#include <mmsparse/core/error.hpp>
#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/backend/cpu/elementwise.hpp>
#include <mmsparse/backend/cpu/gather_scatter.hpp>
#include <mmsparse/backend/cpu/sort.hpp>
#include <mmsparse/backend/cpu/topk.hpp>

namespace mmsparse {

namespace cpu {
using DefaultGemm = EigenGemm;
}  // namespace cpu

struct CpuOptions {
  int threads = 0;  // 0: leave OpenMP's default (OMP_NUM_THREADS or all cores)
};

template <class T, class Gemm = cpu::DefaultGemm>
class CpuBackend {
 public:
  using scalar = T;
  using space = host_space;
  using gemm_provider = Gemm;
  static constexpr const char* name = "cpu";

  CpuBackend() = default;
  explicit CpuBackend(CpuOptions options) {
    if (options.threads > 0) {
#if defined(_OPENMP)
      omp_set_num_threads(options.threads);
#endif
      Eigen::setNbThreads(options.threads);
    }
  }
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  [[nodiscard]] Workspace<host_space>& workspace() { return workspace_; }
  [[nodiscard]] Gemm& gemm_provider_instance() { return gemm_; }
  [[nodiscard]] static int threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
  }

  // ---- matrix products ----------------------------------------------------

  // C = alpha * op(A) op(B) + beta * C
  template <class U>
  void gemm(View<U> c, View<const U> a, Trans ta, View<const U> b, Trans tb, double alpha = 1.0,
            double beta = 0.0) {
    gemm_.gemm(c, a, ta, b, tb, alpha, beta);
  }

  // For each expert e: C_e = alpha * A_e op(W_e) + beta * C_e, where X_e are rows
  // [offsets[e], offsets[e+1]) and W_e is block e of the stacked weight w [E * wr, wc].
  template <class U>
  void grouped_gemm(View<U> c, View<const U> a, View<const U> w, Trans tw, SegmentOffsets offsets,
                    double alpha = 1.0, double beta = 0.0) {
    const auto experts = static_cast<std::int64_t>(offsets.size()) - 1;
    const std::int64_t block = w.rows / experts;
    for (std::int64_t e = 0; e < experts; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      if (count == 0) {
        continue;
      }
      gemm_.gemm(c.row_block(begin, count), a.row_block(begin, count), Trans::no,
                 w.row_block(e * block, block), tw, alpha, beta);
    }
  }

  // For each expert e: W_e = alpha * A_e^T B_e + beta * W_e (the weight gradient of grouped_gemm).
  template <class U>
  void grouped_gemm_weight_grad(View<U> w, View<const U> a, View<const U> b,
                                SegmentOffsets offsets, double alpha = 1.0, double beta = 1.0) {
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
      gemm_.gemm(we, a.row_block(begin, count), Trans::yes, b.row_block(begin, count), Trans::no,
                 alpha, beta);
    }
  }

  // ---- dispersion ---------------------------------------------------------

  template <class U>
  void gather_rows(View<U> dst, View<const U> src, Span<const std::int32_t> index) {
    cpu::gather_rows(dst, src, index);
  }
  template <class U, class W>
  void scatter_add_rows(View<U> dst, View<const U> src, Span<const std::int32_t> index,
                        Span<const W> weight) {
    cpu::scatter_add_rows(dst, src, index, weight);
  }
  template <class W, class U>
  void gathered_row_dot(Span<W> out, View<const U> a, View<const U> b,
                        Span<const std::int32_t> index) {
    cpu::gathered_row_dot(out, a, b, index);
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
  void bucket_sort(Span<std::int32_t> order, std::vector<std::int64_t>& offsets,
                   Span<const std::int32_t> keys, std::int64_t buckets) {
    cpu::bucket_sort(order, offsets, keys, buckets);
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
  void swiglu_backward(View<U> da, View<U> dg, View<const U> dh, View<const U> a,
                       View<const U> g) {
    cpu::swiglu_backward(da, dg, dh, a, g);
  }

 private:
  Workspace<host_space> workspace_;
  Gemm gemm_;
};

static_assert(backend<CpuBackend<float>>, "CpuBackend<float> must model mmsparse::backend");
static_assert(backend<CpuBackend<double>>, "CpuBackend<double> must model mmsparse::backend");

}  // namespace mmsparse

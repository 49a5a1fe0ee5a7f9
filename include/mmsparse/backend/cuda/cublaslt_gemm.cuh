// mmsparse/backend/cuda/cublaslt_gemm.cuh
//
// GEMM provider of the CUDA backend on cuBLASLt: C = alpha op(A) op(B) + beta C on
// row-major views, mapped to column-major by swapping the operands (C^T = op(B)^T op(A)^T).
// fp32 (strict fp32 unless TF32 is allowed), bf16 with fp32 accumulation, fp64.
// Grouped GEMMs over expert segments run one of three ways (GroupedGemm, docs/design.md).
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/backend/cuda/kernels/elementwise.cuh>
#include <mmsparse/backend/cuda/memory.cuh>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse {

// How grouped_gemm and grouped_gemm_weight_grad run the expert segments.
enum class GroupedGemm {
  per_segment,      // one cublasLtMatmul per non-empty segment (the default)
  strided_batched,  // one batched cublasLtMatmul if all segments have one size, else per_segment
  cublas_grouped,   // one cublasGemmGroupedBatchedEx call over all non-empty segments
};

namespace gpu {

namespace detail {

template <class T>
struct GemmTypes;
template <>
struct GemmTypes<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  static constexpr cudaDataType_t scale = CUDA_R_32F;
  using scale_type = float;
};
template <>
struct GemmTypes<bf16> {
  static constexpr cudaDataType_t data = CUDA_R_16BF;
  static constexpr cudaDataType_t scale = CUDA_R_32F;
  using scale_type = float;
};
template <>
struct GemmTypes<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  static constexpr cudaDataType_t scale = CUDA_R_64F;
  using scale_type = double;
};

// D = op(X) op(Y) in column-major terms: X [m, k] after op, Y [k, n], C [m, n];
// `batch` problems, each `stride_*` elements after the previous one.
struct ColMajorProblem {
  cublasOperation_t op_x = CUBLAS_OP_N;
  cublasOperation_t op_y = CUBLAS_OP_N;
  std::int64_t m = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
  const void* x = nullptr;
  std::int64_t ldx = 1;
  std::int64_t stride_x = 0;
  const void* y = nullptr;
  std::int64_t ldy = 1;
  std::int64_t stride_y = 0;
  void* c = nullptr;
  std::int64_t ldc = 1;
  std::int64_t stride_c = 0;
  std::int64_t batch = 1;
};

// Leading dimension of a row-major view read as a column-major [cols, rows] matrix.
template <class T>
[[nodiscard]] std::int64_t leading_dim(View<T, device_space> v) {
  return v.rows <= 1 ? std::max<std::int64_t>(v.cols, 1) : v.stride;
}

// Row-major C [m, n] = op_a(A) op_b(B)  <=>  column-major C^T = op_b(B)^T op_a(A)^T:
// X = B's memory with op tb, Y = A's memory with op ta.
template <class T>
[[nodiscard]] ColMajorProblem col_major(View<T, device_space> c,
                                        View<const T, device_space> a,
                                        Trans ta,
                                        View<const T, device_space> b,
                                        Trans tb) {
  ColMajorProblem p;
  p.op_x = tb == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N;
  p.op_y = ta == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N;
  p.m = c.cols;
  p.n = c.rows;
  p.k = ta == Trans::no ? a.cols : a.rows;
  p.x = b.data;
  p.ldx = leading_dim(b);
  p.y = a.data;
  p.ldy = leading_dim(a);
  p.c = c.data;
  p.ldc = leading_dim(c);
  return p;
}

// Largest power of two (<= 256) dividing the address of every matrix of a batch:
// cuBLASLt picks its kernels by the alignment it is promised.
template <class T>
[[nodiscard]] std::uint32_t alignment_of(const void* p, std::int64_t batch, std::int64_t stride) {
  auto a = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p));
  if (batch > 1) {
    a |= static_cast<std::uint64_t>(stride) * sizeof(T);
  }
  std::uint32_t align = 256;
  while (align > 1 && a % align != 0) {
    align /= 2;
  }
  return align;
}

// Shapes of C = op(A) op(B); `a_name` / `b_name` name the operands in the messages.
template <class T>
void check_gemm_shapes(const char* op,
                       View<T, device_space> c,
                       View<const T, device_space> a,
                       Trans ta,
                       View<const T, device_space> b,
                       Trans tb,
                       const char* a_name = "a",
                       const char* b_name = "b") {
  const std::int64_t am = ta == Trans::no ? a.rows : a.cols;
  const std::int64_t ak = ta == Trans::no ? a.cols : a.rows;
  const std::int64_t bk = tb == Trans::no ? b.rows : b.cols;
  const std::int64_t bn = tb == Trans::no ? b.cols : b.rows;
  const auto of = [](const char* name) { return std::string("op(") + name + ")"; };
  MMSPARSE_CHECK(am == c.rows,
                 op,
                 a_name,
                 of(a_name) + " with " + std::to_string(c.rows) + " rows",
                 a.shape());
  MMSPARSE_CHECK(bn == c.cols,
                 op,
                 b_name,
                 of(b_name) + " with " + std::to_string(c.cols) + " columns",
                 b.shape());
  MMSPARSE_CHECK(
      bk == ak, op, b_name, of(b_name) + " with " + std::to_string(ak) + " rows", b.shape());
  const auto strided = [](const auto& v) { return v.rows <= 1 || v.stride >= v.cols; };
  MMSPARSE_CHECK(strided(a) && strided(b) && strided(c),
                 op,
                 "views",
                 "row strides >= columns",
                 "an overlapping view");
}

}  // namespace detail

class CublasLtGemm {
 public:
  static constexpr const char* name = "cublaslt";

  CublasLtGemm(cudaStream_t stream, std::size_t workspace_bytes, bool allow_tf32)
      : stream_(stream),
        allow_tf32_(allow_tf32),
        workspace_(static_cast<std::int64_t>(workspace_bytes), 1) {
    MMSPARSE_CUBLAS_CHECK(cublasLtCreate(&lt_));
    try {
      MMSPARSE_CUBLAS_CHECK(cublasCreate(&blas_));
      MMSPARSE_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
      MMSPARSE_CUBLAS_CHECK(cublasSetWorkspace(blas_, workspace_.data(), workspace_.bytes()));
    } catch (...) {
      release();
      throw;
    }
  }
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;
  ~CublasLtGemm() {
    release();
  }

  [[nodiscard]] std::size_t workspace_bytes() const {
    return workspace_.bytes();
  }
  [[nodiscard]] std::size_t cached_plans() const {
    return plans_.size();
  }

  // C = alpha op(A) op(B) + beta C
  template <class T>
  void gemm(const Context& ctx,
            View<T, device_space> c,
            View<const T, device_space> a,
            Trans ta,
            View<const T, device_space> b,
            Trans tb,
            double alpha,
            double beta) {
    detail::check_gemm_shapes("CudaBackend::gemm", c, a, ta, b, tb);
    run<T>(ctx, detail::col_major(c, a, ta, b, tb), alpha, beta);
  }

  // For each expert e: C_e = alpha A_e op(W_e) + beta C_e, A_e / C_e rows
  // [offsets[e], offsets[e+1]), W_e block e of the stacked w [E * wr, wc].
  template <class T>
  void grouped_gemm(const Context& ctx,
                    GroupedGemm mode,
                    View<T, device_space> c,
                    View<const T, device_space> a,
                    View<const T, device_space> w,
                    Trans tw,
                    SegmentOffsets offsets,
                    double alpha,
                    double beta) {
    const char* op = "CudaBackend::grouped_gemm";
    const std::int64_t experts = check_offsets(op, offsets, std::min(a.rows, c.rows), w.rows);
    const std::int64_t block = w.rows / experts;
    const auto we = w.row_block(0, block);
    detail::check_gemm_shapes(
        op, c.row_block(0, 0), a.row_block(0, 0), Trans::no, we, tw, "a", "w");
    std::vector<detail::ColMajorProblem> problems;
    for (std::int64_t e = 0; e < experts; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      if (count > 0) {
        problems.push_back(detail::col_major(c.row_block(begin, count),
                                             a.row_block(begin, count),
                                             Trans::no,
                                             w.row_block(e * block, block),
                                             tw));
      }
    }
    run_grouped<T>(ctx, mode, problems, alpha, beta, static_cast<std::size_t>(experts));
  }

  // For each expert e: W_e = alpha A_e^T B_e + beta W_e (the weight gradient of grouped_gemm
  // with tw = no); an expert with no rows gets W_e = beta W_e.
  template <class T>
  void grouped_gemm_weight_grad(const Context& ctx,
                                GroupedGemm mode,
                                View<T, device_space> w,
                                View<const T, device_space> a,
                                View<const T, device_space> b,
                                SegmentOffsets offsets,
                                double alpha,
                                double beta) {
    const char* op = "CudaBackend::grouped_gemm_weight_grad";
    const std::int64_t experts = check_offsets(op, offsets, std::min(a.rows, b.rows), w.rows);
    const std::int64_t block = w.rows / experts;
    detail::check_gemm_shapes(op,
                              w.row_block(0, block),
                              a.row_block(0, 0),
                              Trans::yes,
                              b.row_block(0, 0),
                              Trans::no,
                              "a",
                              "b");
    std::vector<detail::ColMajorProblem> problems;
    for (std::int64_t e = 0; e < experts; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      auto we = w.row_block(e * block, block);
      if (count > 0) {
        problems.push_back(detail::col_major(
            we, a.row_block(begin, count), Trans::yes, b.row_block(begin, count), Trans::no));
      } else if (beta != 1.0) {
        scale(ctx, we, beta);
      }
    }
    run_grouped<T>(ctx, mode, problems, alpha, beta, static_cast<std::size_t>(experts));
  }

  // Device bytes the cublas_grouped mode takes from the arena for E experts (pointer arrays).
  [[nodiscard]] static std::size_t grouped_workspace_bytes(std::int64_t experts) {
    return Workspace<device_space>::bytes_for<const void*>(3 * experts);
  }

 private:
  // Descriptors and the chosen algorithm of one problem shape, created once.
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t x = nullptr;
    cublasLtMatrixLayout_t y = nullptr;
    cublasLtMatrixLayout_t c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool has_algo = false;  // false: cuBLASLt has none, fall back to cublasGemmStridedBatchedEx

    Plan() = default;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {
      if (c != nullptr) {
        (void)cublasLtMatrixLayoutDestroy(c);
      }
      if (y != nullptr) {
        (void)cublasLtMatrixLayoutDestroy(y);
      }
      if (x != nullptr) {
        (void)cublasLtMatrixLayoutDestroy(x);
      }
      if (desc != nullptr) {
        (void)cublasLtMatmulDescDestroy(desc);
      }
    }
  };
  using PlanKey = std::array<std::int64_t, 17>;

  void release() noexcept {
    plans_.clear();
    if (blas_ != nullptr) {
      (void)cublasDestroy(blas_);
      blas_ = nullptr;
    }
    if (lt_ != nullptr) {
      (void)cublasLtDestroy(lt_);
      lt_ = nullptr;
    }
  }

  // Validates the segment bounds; returns E.
  static std::int64_t check_offsets(const char* op,
                                    SegmentOffsets offsets,
                                    std::int64_t rows,
                                    std::int64_t weight_rows) {
    const std::int64_t experts = check_segment_offsets(op, offsets, rows);
    MMSPARSE_CHECK(weight_rows % experts == 0,
                   op,
                   "w",
                   "rows divisible by E = " + std::to_string(experts),
                   weight_rows);
    return experts;
  }

  template <class T>
  PlanKey key_of(const detail::ColMajorProblem& p) const {
    return {static_cast<std::int64_t>(detail::GemmTypes<T>::data),
            static_cast<std::int64_t>(p.op_x),
            static_cast<std::int64_t>(p.op_y),
            p.m,
            p.n,
            p.k,
            p.ldx,
            p.ldy,
            p.ldc,
            p.batch,
            p.stride_x,
            p.stride_y,
            p.stride_c,
            detail::alignment_of<T>(p.x, p.batch, p.stride_x),
            detail::alignment_of<T>(p.y, p.batch, p.stride_y),
            detail::alignment_of<T>(p.c, p.batch, p.stride_c),
            allow_tf32_ ? 1 : 0};
  }

  [[nodiscard]] cublasComputeType_t compute_type(cudaDataType_t data) const {
    if (data == CUDA_R_64F) {
      return CUBLAS_COMPUTE_64F;
    }
    if (data == CUDA_R_32F && allow_tf32_) {
      return CUBLAS_COMPUTE_32F_FAST_TF32;
    }
    return CUBLAS_COMPUTE_32F;
  }

  template <class T>
  Plan& plan_for(const detail::ColMajorProblem& p) {
    const PlanKey key = key_of<T>(p);
    if (auto it = plans_.find(key); it != plans_.end()) {
      return *it->second;
    }
    constexpr cudaDataType_t data = detail::GemmTypes<T>::data;
    auto plan = std::make_unique<Plan>();
    MMSPARSE_CUBLAS_CHECK(
        cublasLtMatmulDescCreate(&plan->desc, compute_type(data), detail::GemmTypes<T>::scale));
    const std::int32_t op_x = p.op_x;
    const std::int32_t op_y = p.op_y;
    MMSPARSE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_x, sizeof op_x));
    MMSPARSE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_y, sizeof op_y));
    const bool tx = p.op_x != CUBLAS_OP_N;
    const bool ty = p.op_y != CUBLAS_OP_N;
    make_layout(plan->x, data, tx ? p.k : p.m, tx ? p.m : p.k, p.ldx, p.batch, p.stride_x);
    make_layout(plan->y, data, ty ? p.n : p.k, ty ? p.k : p.n, p.ldy, p.batch, p.stride_y);
    make_layout(plan->c, data, p.m, p.n, p.ldc, p.batch, p.stride_c);

    cublasLtMatmulPreference_t pref = nullptr;
    MMSPARSE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t max_bytes = workspace_.bytes();
    const std::uint32_t ax = detail::alignment_of<T>(p.x, p.batch, p.stride_x);
    const std::uint32_t ay = detail::alignment_of<T>(p.y, p.batch, p.stride_y);
    const std::uint32_t ac = detail::alignment_of<T>(p.c, p.batch, p.stride_c);
    cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_bytes, sizeof max_bytes);
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ax, sizeof ax);
    }
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ay, sizeof ay);
    }
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof ac);
    }
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof ac);
    }
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (status == CUBLAS_STATUS_SUCCESS) {
      // NOT_SUPPORTED means "no algorithm for this shape": the cuBLAS fallback handles it.
      const cublasStatus_t h = cublasLtMatmulAlgoGetHeuristic(
          lt_, plan->desc, plan->x, plan->y, plan->c, plan->c, pref, 1, &result, &found);
      if (h != CUBLAS_STATUS_SUCCESS && h != CUBLAS_STATUS_NOT_SUPPORTED) {
        status = h;
      }
    }
    (void)cublasLtMatmulPreferenceDestroy(pref);
    MMSPARSE_CUBLAS_CHECK(status);
    if (found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
      plan->algo = result.algo;
      plan->has_algo = true;
    }
    auto& ref = *plan;
    plans_.emplace(key, std::move(plan));
    return ref;
  }

  static void make_layout(cublasLtMatrixLayout_t& layout,
                          cudaDataType_t data,
                          std::int64_t rows,
                          std::int64_t cols,
                          std::int64_t ld,
                          std::int64_t batch,
                          std::int64_t stride) {
    MMSPARSE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(
        &layout, data, static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols), ld));
    if (batch > 1) {
      const auto count = static_cast<std::int32_t>(batch);
      MMSPARSE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
      MMSPARSE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
  }

  // One (possibly batched) problem. k = 0 is C = beta C, done by a kernel.
  template <class T>
  void run(const Context& ctx, const detail::ColMajorProblem& p, double alpha, double beta) {
    if (p.m == 0 || p.n == 0 || p.batch == 0) {
      return;
    }
    if (p.k == 0) {
      for (std::int64_t i = 0; i < p.batch; ++i) {
        if (beta != 1.0) {
          scale(ctx,
                View<T, device_space>(static_cast<T*>(p.c) + i * p.stride_c, p.n, p.m, p.ldc),
                beta);
        }
      }
      return;
    }
    using S = typename detail::GemmTypes<T>::scale_type;
    const S a = static_cast<S>(alpha);
    const S b = static_cast<S>(beta);
    Plan& plan = plan_for<T>(p);
    if (plan.has_algo) {
      MMSPARSE_CUBLAS_CHECK(cublasLtMatmul(lt_,
                                           plan.desc,
                                           &a,
                                           p.x,
                                           plan.x,
                                           p.y,
                                           plan.y,
                                           &b,
                                           p.c,
                                           plan.c,
                                           p.c,
                                           plan.c,
                                           &plan.algo,
                                           workspace_.data(),
                                           workspace_.bytes(),
                                           ctx.stream));
      return;
    }
    constexpr cudaDataType_t data = detail::GemmTypes<T>::data;
    MMSPARSE_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(blas_,
                                                        p.op_x,
                                                        p.op_y,
                                                        p.m,
                                                        p.n,
                                                        p.k,
                                                        &a,
                                                        p.x,
                                                        data,
                                                        p.ldx,
                                                        p.stride_x,
                                                        p.y,
                                                        data,
                                                        p.ldy,
                                                        p.stride_y,
                                                        &b,
                                                        p.c,
                                                        data,
                                                        p.ldc,
                                                        p.stride_c,
                                                        p.batch,
                                                        compute_type(data),
                                                        CUBLAS_GEMM_DEFAULT));
  }

  // The expert problems of one grouped call (empty segments already removed).
  template <class T>
  void run_grouped(const Context& ctx,
                   GroupedGemm mode,
                   const std::vector<detail::ColMajorProblem>& problems,
                   double alpha,
                   double beta,
                   std::size_t experts) {
    if (problems.empty()) {
      return;
    }
    if (mode == GroupedGemm::strided_batched && problems.size() == experts && uniform(problems)) {
      detail::ColMajorProblem p = problems.front();
      p.batch = static_cast<std::int64_t>(problems.size());
      p.stride_x = element_distance<T>(problems[0].x, problems[1 % problems.size()].x);
      p.stride_y = element_distance<T>(problems[0].y, problems[1 % problems.size()].y);
      p.stride_c = element_distance<T>(problems[0].c, problems[1 % problems.size()].c);
      if (problems.size() == 1 || evenly_spaced<T>(problems, p)) {
        run<T>(ctx, p, alpha, beta);
        return;
      }
    }
    if (mode == GroupedGemm::cublas_grouped && !std::is_same_v<T, double>) {
      run_cublas_grouped<T>(ctx, problems, alpha, beta);
      return;
    }
    for (const auto& p : problems) {
      run<T>(ctx, p, alpha, beta);
    }
  }

  static bool uniform(const std::vector<detail::ColMajorProblem>& problems) {
    const auto& f = problems.front();
    for (const auto& p : problems) {
      if (p.m != f.m || p.n != f.n || p.k != f.k || p.ldx != f.ldx || p.ldy != f.ldy ||
          p.ldc != f.ldc || p.op_x != f.op_x || p.op_y != f.op_y) {
        return false;
      }
    }
    return true;
  }

  template <class T>
  static std::int64_t element_distance(const void* from, const void* to) {
    return static_cast<std::int64_t>(static_cast<const T*>(to) - static_cast<const T*>(from));
  }

  template <class T>
  static bool evenly_spaced(const std::vector<detail::ColMajorProblem>& problems,
                            const detail::ColMajorProblem& batched) {
    for (std::size_t i = 1; i < problems.size(); ++i) {
      const auto s = static_cast<std::int64_t>(i);
      if (element_distance<T>(problems[0].x, problems[i].x) != s * batched.stride_x ||
          element_distance<T>(problems[0].y, problems[i].y) != s * batched.stride_y ||
          element_distance<T>(problems[0].c, problems[i].c) != s * batched.stride_c) {
        return false;
      }
    }
    return true;
  }

  // One cublasGemmGroupedBatchedEx call, one group per expert. The pointer arrays must be in
  // device memory: they are staged through the arena with an async copy (stream-ordered).
  template <class T>
  void run_cublas_grouped(const Context& ctx,
                          const std::vector<detail::ColMajorProblem>& problems,
                          double alpha,
                          double beta) {
    std::vector<detail::ColMajorProblem> live;
    for (const auto& p : problems) {
      if (p.k == 0) {
        run<T>(ctx, p, alpha, beta);  // C = beta C
      } else {
        live.push_back(p);
      }
    }
    if (live.empty()) {
      return;
    }
    const auto groups = static_cast<std::int64_t>(live.size());
    std::vector<cublasOperation_t> op_x;
    std::vector<cublasOperation_t> op_y;
    std::vector<std::int64_t> m, n, k, ldx, ldy, ldc, group_size;
    std::vector<float> alphas(live.size(), static_cast<float>(alpha));
    std::vector<float> betas(live.size(), static_cast<float>(beta));
    std::vector<const void*> pointers(3 * live.size());
    for (std::size_t i = 0; i < live.size(); ++i) {
      const auto& p = live[i];
      op_x.push_back(p.op_x);
      op_y.push_back(p.op_y);
      m.push_back(p.m);
      n.push_back(p.n);
      k.push_back(p.k);
      ldx.push_back(p.ldx);
      ldy.push_back(p.ldy);
      ldc.push_back(p.ldc);
      group_size.push_back(1);
      pointers[i] = p.x;
      pointers[live.size() + i] = p.y;
      pointers[2 * live.size() + i] = p.c;
    }
    auto& ws = *ctx.workspace;
    auto frame = ws.frame();
    auto device_pointers = ws.take_span<const void*>(3 * groups);
    MMSPARSE_CUDA_CHECK(cudaMemcpyAsync(device_pointers.data,
                                        pointers.data(),
                                        pointers.size() * sizeof(const void*),
                                        cudaMemcpyHostToDevice,
                                        ctx.stream));
    const void* const* xs = device_pointers.data;
    const void* const* ys = device_pointers.data + groups;
    void* const* cs = const_cast<void* const*>(device_pointers.data + 2 * groups);
    constexpr cudaDataType_t data = detail::GemmTypes<T>::data;
    MMSPARSE_CUBLAS_CHECK(cublasGemmGroupedBatchedEx_64(blas_,
                                                        op_x.data(),
                                                        op_y.data(),
                                                        m.data(),
                                                        n.data(),
                                                        k.data(),
                                                        alphas.data(),
                                                        xs,
                                                        data,
                                                        ldx.data(),
                                                        ys,
                                                        data,
                                                        ldy.data(),
                                                        betas.data(),
                                                        cs,
                                                        data,
                                                        ldc.data(),
                                                        groups,
                                                        group_size.data(),
                                                        compute_type(data)));
  }

  cudaStream_t stream_;
  bool allow_tf32_;
  Tensor<std::byte, device_space> workspace_;  // cuBLASLt / cuBLAS scratch, allocated once
  cublasLtHandle_t lt_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace gpu
}  // namespace mmsparse

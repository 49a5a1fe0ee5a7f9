// mmsparse/backend/cuda/backend.cuh
//
// The CUDA backend: one stream, one cuBLASLt handle (plus a cuBLAS handle for the grouped
// and fallback paths), a device Workspace arena (CUB scratch, staging; a warm forward never
// calls cudaMalloc), and every primitive of the backend concept (backend/concepts.hpp),
// validated on the host and run as CUB / cuBLASLt calls or the kernels of kernels/.
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/cub_ops.cuh>
#include <mmsparse/backend/cuda/cublaslt_gemm.cuh>
#include <mmsparse/backend/cuda/kernels/attention.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/backend/cuda/kernels/elementwise.cuh>
#include <mmsparse/backend/cuda/kernels/gather_scatter.cuh>
#include <mmsparse/backend/cuda/kernels/index.cuh>
#include <mmsparse/backend/cuda/kernels/loss.cuh>
#include <mmsparse/backend/cuda/kernels/norm.cuh>
#include <mmsparse/backend/cuda/kernels/router.cuh>
#include <mmsparse/backend/cuda/kernels/swiglu.cuh>
#include <mmsparse/backend/cuda/kernels/topk.cuh>
#include <mmsparse/backend/cuda/memory.cuh>
#include <mmsparse/backend/workspace.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse {

struct CudaOptions {
  int device = -1;                // -1: the calling thread's current device
  cudaStream_t stream = nullptr;  // null: the backend creates (and owns) a non-blocking stream
  std::size_t gemm_workspace_bytes = std::size_t{32} << 20;  // cuBLASLt scratch (Hopper: 32 MiB)
  GroupedGemm grouped_gemm = GroupedGemm::per_segment;
  bool allow_tf32 = false;  // fp32 GEMMs on TF32 tensor cores (10-bit mantissa inputs)
};

namespace gpu::detail {

inline void require(bool ok,
                    const char* op,
                    const char* arg,
                    const std::string& expected,
                    const std::string& actual) {
  MMSPARSE_CHECK(ok, op, arg, expected, actual);
}
inline void require_shape(const char* op, const char* arg, Shape actual, Shape expected) {
  MMSPARSE_CHECK(actual == expected, op, arg, expected, actual);
}
inline void require_size(const char* op,
                         const char* arg,
                         std::int64_t actual,
                         std::int64_t expected) {
  MMSPARSE_CHECK(actual == expected, op, arg, "size " + std::to_string(expected), actual);
}

// The owned (or borrowed) stream of a backend.
class Stream {
 public:
  explicit Stream(cudaStream_t borrowed) : stream_(borrowed), owned_(borrowed == nullptr) {
    if (owned_) {
      MMSPARSE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    }
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (owned_ && stream_ != nullptr) {
      (void)cudaStreamSynchronize(stream_);
      (void)cudaStreamDestroy(stream_);
    }
  }
  [[nodiscard]] cudaStream_t get() const {
    return stream_;
  }

 private:
  cudaStream_t stream_ = nullptr;
  bool owned_ = false;
};

[[nodiscard]] inline int select_device(int device) {
  int count = 0;
  MMSPARSE_CUDA_CHECK(cudaGetDeviceCount(&count));
  MMSPARSE_CHECK(count > 0, "CudaBackend", "device", "a CUDA device", "none");
  if (device >= 0) {
    MMSPARSE_CHECK(device < count,
                   "CudaBackend",
                   "options.device",
                   "an id in [0, " + std::to_string(count) + ")",
                   device);
    MMSPARSE_CUDA_CHECK(cudaSetDevice(device));
    return device;
  }
  int current = 0;
  MMSPARSE_CUDA_CHECK(cudaGetDevice(&current));
  return current;
}

[[nodiscard]] inline int sm_count(int device) {
  int count = 0;
  MMSPARSE_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

}  // namespace gpu::detail

template <class T>
class CudaBackend {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "CudaBackend runs fp32 or bf16 activations (CpuBackend<double> is the oracle)");

 public:
  using scalar = T;
  using space = device_space;
  using gemm_provider = gpu::CublasLtGemm;
  static constexpr const char* name = "cuda";

  CudaBackend() : CudaBackend(CudaOptions{}) {}
  explicit CudaBackend(CudaOptions options)
      : device_(gpu::detail::select_device(options.device)),
        sm_count_(gpu::detail::sm_count(device_)),
        stream_(options.stream),
        grouped_(options.grouped_gemm),
        gemm_(stream_.get(), options.gemm_workspace_bytes, options.allow_tf32) {}
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;
  ~CudaBackend() {
    (void)cudaStreamSynchronize(stream_.get());  // nothing of ours is in flight at teardown
  }

  // ---- resources ------------------------------------------------------------

  [[nodiscard]] Workspace<device_space>& workspace() {
    return workspace_;
  }
  [[nodiscard]] cudaStream_t stream() const {
    return stream_.get();
  }
  [[nodiscard]] int device() const {
    return device_;
  }
  [[nodiscard]] gpu::CublasLtGemm& gemm_provider_instance() {
    return gemm_;
  }
  void synchronize() {
    MMSPARSE_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  }

  // Device bytes the backend holds now: the arena plus the cuBLASLt scratch.
  [[nodiscard]] std::size_t workspace_bytes() const {
    return workspace_.capacity() + gemm_.workspace_bytes();
  }
  // Arena bytes a primitive takes (an engine adds these to a layer's workspace_bytes).
  [[nodiscard]] static std::size_t scatter_add_rows_workspace_bytes(std::int64_t src_rows,
                                                                    std::int64_t dst_rows) {
    return gpu::scatter_add_rows_workspace_bytes(src_rows, dst_rows);
  }
  [[nodiscard]] static std::size_t topk_cols_workspace_bytes(std::int64_t tokens,
                                                             std::int64_t experts,
                                                             std::int64_t c) {
    return gpu::topk_cols_workspace_bytes(tokens, experts, c);
  }
  [[nodiscard]] static std::size_t bucket_sort_workspace_bytes(std::int64_t items,
                                                               std::int64_t buckets) {
    return gpu::bucket_sort_host_workspace_bytes(items, buckets);
  }
  [[nodiscard]] static std::size_t grouped_gemm_workspace_bytes(std::int64_t experts) {
    return gpu::CublasLtGemm::grouped_workspace_bytes(experts);
  }
  [[nodiscard]] static std::size_t norm_backward_workspace_bytes(std::int64_t rows,
                                                                 std::int64_t cols) {
    return gpu::detail::column_sum_bytes<accum_t<T>>(rows, cols);
  }

  [[nodiscard]] GroupedGemm grouped_gemm_mode() const {
    return grouped_;
  }
  void set_grouped_gemm_mode(GroupedGemm mode) {
    grouped_ = mode;
  }

  // ---- host <-> device (tests, weights, plan metadata) ----------------------

  template <class U>
  [[nodiscard]] Tensor<std::remove_const_t<U>, device_space> to_device(View<U> host) {
    return gpu::to_device(host, stream());
  }
  template <class U>
  [[nodiscard]] Tensor<std::remove_const_t<U>, device_space> to_device(Span<U> host) {
    return gpu::to_device(host, stream());
  }
  template <class U>
  [[nodiscard]] Tensor<U, device_space> to_device(const Tensor<U>& host) {
    return gpu::to_device(host.view(), stream());
  }
  template <class U>
  [[nodiscard]] Tensor<U, device_space> to_device(const std::vector<U>& host) {
    return gpu::to_device(host, stream());
  }
  // These wait for the stream.
  template <class U>
  [[nodiscard]] Tensor<std::remove_const_t<U>> to_host(View<U, device_space> dev) {
    return gpu::to_host(dev, stream());
  }
  template <class U>
  [[nodiscard]] Tensor<std::remove_const_t<U>> to_host(Span<U, device_space> dev) {
    return gpu::to_host(dev, stream());
  }
  template <class U>
  [[nodiscard]] Tensor<U> to_host(const Tensor<U, device_space>& dev) {
    return gpu::to_host(dev.view(), stream());
  }
  template <class U>
  void upload(View<U, device_space> dst, View<const U> src) {
    gpu::copy_to_device(dst, src, stream());
  }
  template <class U>
  void download(View<U> dst, View<const U, device_space> src) {
    gpu::copy_to_host(dst, src, stream());
  }

  // ---- matrix products ------------------------------------------------------

  // C = alpha op(A) op(B) + beta C
  template <class U>
  void gemm(View<U, device_space> c,
            View<const U, device_space> a,
            Trans ta,
            View<const U, device_space> b,
            Trans tb,
            double alpha = 1.0,
            double beta = 0.0) {
    gemm_.gemm(ctx(), c, a, ta, b, tb, alpha, beta);
  }
  // For each expert e: C_e = alpha A_e op(W_e) + beta C_e (rows [offsets[e], offsets[e+1])).
  template <class U>
  void grouped_gemm(View<U, device_space> c,
                    View<const U, device_space> a,
                    View<const U, device_space> w,
                    Trans tw,
                    SegmentOffsets offsets,
                    double alpha = 1.0,
                    double beta = 0.0) {
    gemm_.grouped_gemm(ctx(), grouped_, c, a, w, tw, offsets, alpha, beta);
  }
  // For each expert e: W_e = alpha A_e^T B_e + beta W_e.
  template <class U>
  void grouped_gemm_weight_grad(View<U, device_space> w,
                                View<const U, device_space> a,
                                View<const U, device_space> b,
                                SegmentOffsets offsets,
                                double alpha = 1.0,
                                double beta = 1.0) {
    gemm_.grouped_gemm_weight_grad(ctx(), grouped_, w, a, b, offsets, alpha, beta);
  }
  // cuBLASLt reads the weights where they are: nothing is packed, nothing to drop.
  void weights_updated() {}
  template <class U>
  void pack_weights(View<const U, device_space> /*w*/,
                    Trans /*tw*/ = Trans::no,
                    std::int64_t /*blocks*/ = 1) {}

  // ---- dispersion -----------------------------------------------------------

  template <class U>
  void gather_rows(View<U, device_space> dst,
                   View<const U, device_space> src,
                   Span<const std::int32_t, device_space> index) {
    constexpr const char* op = "CudaBackend::gather_rows";
    gpu::detail::require_size(op, "src.cols", src.cols, dst.cols);
    gpu::detail::require_size(op, "index", index.size, dst.rows);
    gpu::gather_rows(ctx(), dst, src, index);
  }
  // Deterministic: no float atomics (gpu::scatter_add_rows).
  template <class U, class W>
  void scatter_add_rows(View<U, device_space> dst,
                        View<const U, device_space> src,
                        Span<const std::int32_t, device_space> index,
                        Span<const W, device_space> weight) {
    constexpr const char* op = "CudaBackend::scatter_add_rows";
    gpu::detail::require_size(op, "src.cols", src.cols, dst.cols);
    gpu::detail::require_size(op, "index", index.size, src.rows);
    gpu::detail::require(weight.empty() || weight.size == src.rows,
                         op,
                         "weight",
                         "size 0 or " + std::to_string(src.rows),
                         std::to_string(weight.size));
    gpu::scatter_add_rows(ctx(), dst, src, index, weight);
  }
  template <class W, class U>
  void gathered_row_dot(Span<W, device_space> out,
                        View<const U, device_space> a,
                        View<const U, device_space> b,
                        Span<const std::int32_t, device_space> index) {
    constexpr const char* op = "CudaBackend::gathered_row_dot";
    gpu::detail::require_size(op, "out", out.size, a.rows);
    gpu::detail::require_size(op, "index", index.size, a.rows);
    gpu::detail::require_size(op, "b.cols", b.cols, a.cols);
    gpu::gathered_row_dot(ctx(), out, a, b, index);
  }
  template <class U>
  void gather_values(Span<U, device_space> dst,
                     Span<const U, device_space> src,
                     Span<const std::int32_t, device_space> index,
                     U fill) {
    gpu::detail::require_size("CudaBackend::gather_values", "index", index.size, dst.size);
    gpu::gather_values(ctx(), dst, src, index, fill);
  }
  template <class U>
  void scatter_values(Span<U, device_space> dst,
                      Span<const U, device_space> src,
                      Span<const std::int32_t, device_space> index) {
    gpu::detail::require_size("CudaBackend::scatter_values", "index", index.size, src.size);
    gpu::scatter_values(ctx(), dst, src, index);
  }

  // ---- routing --------------------------------------------------------------

  template <class W>
  void topk_rows(Span<std::int32_t, device_space> index,
                 Span<W, device_space> value,
                 View<const W, device_space> scores,
                 std::int64_t k) {
    constexpr const char* op = "CudaBackend::topk_rows";
    gpu::detail::require(k >= 0 && k <= scores.cols,
                         op,
                         "k",
                         "in [0, " + std::to_string(scores.cols) + "]",
                         std::to_string(k));
    gpu::detail::require_size(op, "index", index.size, scores.rows * k);
    gpu::detail::require_size(op, "value", value.size, scores.rows * k);
    gpu::topk_rows(ctx(), index, value, scores, k);
  }
  template <class W>
  void topk_cols(Span<std::int32_t, device_space> index,
                 View<const W, device_space> scores,
                 std::int64_t c) {
    constexpr const char* op = "CudaBackend::topk_cols";
    gpu::detail::require(c >= 0 && c <= scores.rows,
                         op,
                         "c",
                         "in [0, " + std::to_string(scores.rows) + "]",
                         std::to_string(c));
    gpu::detail::require_size(op, "index", index.size, scores.cols * c);
    gpu::topk_cols(ctx(), index, scores, c);
  }
  // Copies the bucket offsets to the host: waits for the stream (docs/design.md, host syncs).
  void bucket_sort(Span<std::int32_t, device_space> order,
                   std::vector<std::int64_t>& offsets,
                   Span<const std::int32_t, device_space> keys,
                   std::int64_t buckets) {
    gpu::detail::require(
        buckets >= 0, "CudaBackend::bucket_sort", "buckets", ">= 0", std::to_string(buckets));
    gpu::bucket_sort(ctx(), order, offsets, keys, buckets);
  }
  void pad_segments(Span<std::int32_t, device_space> slot,
                    SegmentOffsets dst_offsets,
                    SegmentOffsets src_offsets) {
    constexpr const char* op = "CudaBackend::pad_segments";
    gpu::detail::require(
        !dst_offsets.empty() && dst_offsets.size() == src_offsets.size(),
        op,
        "dst_offsets",
        "as many entries as src_offsets (" + std::to_string(src_offsets.size()) + ")",
        std::to_string(dst_offsets.size()));
    gpu::detail::require(dst_offsets.back() <= slot.size,
                         op,
                         "slot",
                         "size >= " + std::to_string(dst_offsets.back()),
                         std::to_string(slot.size));
    for (std::size_t e = 0; e + 1 < src_offsets.size(); ++e) {
      gpu::detail::require(
          src_offsets[e + 1] - src_offsets[e] <= dst_offsets[e + 1] - dst_offsets[e],
          op,
          "dst_offsets",
          "segments at least as long as the source segments",
          "a shorter segment " + std::to_string(e));
    }
    gpu::pad_segments(ctx(), slot, dst_offsets, src_offsets);
  }
  void dense_slots(Span<std::int32_t, device_space> grid,
                   Span<const std::int32_t, device_space> key,
                   SegmentOffsets offsets,
                   std::int64_t n) {
    constexpr const char* op = "CudaBackend::dense_slots";
    const auto segments = static_cast<std::int64_t>(offsets.size()) - 1;
    gpu::detail::require(segments >= 0 && grid.size >= segments * n,
                         op,
                         "grid",
                         "size >= segments * n",
                         std::to_string(grid.size));
    gpu::detail::require(offsets.empty() || offsets.back() <= key.size,
                         op,
                         "key",
                         "an entry for every item",
                         std::to_string(key.size));
    gpu::dense_slots(ctx(), grid, key, offsets, n);
  }
  void iota_mod(Span<std::int32_t, device_space> index, std::int64_t n) {
    gpu::detail::require(
        n > 0 || index.size == 0, "CudaBackend::iota_mod", "n", "> 0", std::to_string(n));
    gpu::iota_mod(ctx(), index, n);
  }

  // ---- router math ------------------------------------------------------------

  // Waits for the stream: the answer goes to the host.
  template <class W>
  [[nodiscard]] std::int64_t find_nonfinite(View<const W, device_space> x) {
    return gpu::find_nonfinite(ctx(), x);
  }
  template <class W>
  void add_logistic_noise(View<W, device_space> y,
                          Span<const std::int32_t, device_space> row_id,
                          std::uint64_t seed,
                          std::int64_t row_stride,
                          std::int64_t col_offset) {
    gpu::detail::require(row_id.empty() || row_id.size == y.rows,
                         "CudaBackend::add_logistic_noise",
                         "row_id",
                         "size 0 or " + std::to_string(y.rows),
                         std::to_string(row_id.size));
    gpu::add_logistic_noise(ctx(), y, row_id, seed, row_stride, col_offset);
  }
  template <class W>
  void sigmoid_backward(View<W, device_space> dx,
                        View<const W, device_space> dy,
                        View<const W, device_space> y) {
    same_shapes("CudaBackend::sigmoid_backward", dx.shape(), {dy.shape(), y.shape()});
    gpu::sigmoid_backward(ctx(), dx, dy, y);
  }
  template <class W>
  void softmax_rows_backward(View<W, device_space> dx,
                             View<const W, device_space> dy,
                             View<const W, device_space> y) {
    same_shapes("CudaBackend::softmax_rows_backward", dx.shape(), {dy.shape(), y.shape()});
    gpu::softmax_rows_backward(ctx(), dx, dy, y);
  }
  template <class W>
  void logsumexp_rows(Span<W, device_space> out, View<const W, device_space> x) {
    gpu::detail::require_size("CudaBackend::logsumexp_rows", "out", out.size, x.rows);
    gpu::logsumexp_rows(ctx(), out, x);
  }
  template <class W>
  void normalize_rows(View<W, device_space> y, View<const W, device_space> x) {
    same_shapes("CudaBackend::normalize_rows", y.shape(), {x.shape()});
    gpu::normalize_rows(ctx(), y, x);
  }
  template <class W>
  void normalize_rows_backward(View<W, device_space> dx,
                               View<const W, device_space> dy,
                               View<const W, device_space> y,
                               View<const W, device_space> x) {
    same_shapes(
        "CudaBackend::normalize_rows_backward", dx.shape(), {dy.shape(), y.shape(), x.shape()});
    gpu::normalize_rows_backward(ctx(), dx, dy, y, x);
  }
  template <class U>
  void transpose(View<U, device_space> dst, View<const U, device_space> src) {
    gpu::detail::require_shape(
        "CudaBackend::transpose", "dst", dst.shape(), Shape{src.cols, src.rows});
    gpu::transpose(ctx(), dst, src);
  }
  void map_index(Span<std::int32_t, device_space> out,
                 Span<const std::int32_t, device_space> in,
                 std::int64_t divisor,
                 std::int64_t offset) {
    constexpr const char* op = "CudaBackend::map_index";
    gpu::detail::require_size(op, "out", out.size, in.size);
    gpu::detail::require(divisor > 0, op, "divisor", "> 0", std::to_string(divisor));
    gpu::map_index(ctx(), out, in, divisor, offset);
  }
  template <class W>
  void scatter_add_cols(View<W, device_space> dst,
                        View<const W, device_space> src,
                        View<const std::int32_t, device_space> col) {
    constexpr const char* op = "CudaBackend::scatter_add_cols";
    gpu::detail::require_shape(op, "col", col.shape(), src.shape());
    gpu::detail::require_size(op, "dst.rows", dst.rows, src.rows);
    gpu::scatter_add_cols(ctx(), dst, src, col);
  }
  // dst (host) = src (device); waits for the stream.
  template <class U>
  void copy_to_host(std::span<U> dst, Span<const U, device_space> src) {
    gpu::detail::require(static_cast<std::int64_t>(dst.size()) >= src.size,
                         "CudaBackend::copy_to_host",
                         "dst",
                         "room for " + std::to_string(src.size) + " values",
                         std::to_string(dst.size()));
    if (src.size > 0) {
      MMSPARSE_CUDA_CHECK(cudaMemcpyAsync(dst.data(),
                                          src.data,
                                          static_cast<std::size_t>(src.size) * sizeof(U),
                                          cudaMemcpyDeviceToHost,
                                          stream()));
    }
    synchronize();
  }
  // dst (device) = src (host), stream-ordered; src may be reused on return.
  template <class U>
  void copy_from_host(Span<U, device_space> dst, std::span<const U> src) {
    gpu::detail::require(dst.size >= static_cast<std::int64_t>(src.size()),
                         "CudaBackend::copy_from_host",
                         "dst",
                         "room for " + std::to_string(src.size()) + " values",
                         std::to_string(dst.size));
    if (!src.empty()) {
      MMSPARSE_CUDA_CHECK(cudaMemcpyAsync(
          dst.data, src.data(), src.size() * sizeof(U), cudaMemcpyHostToDevice, stream()));
    }
  }

  // ---- element-wise -----------------------------------------------------------

  template <class U>
  void fill(View<U, device_space> y, U value) {
    gpu::fill(ctx(), y, value);
  }
  template <class To, class From>
  void copy(View<To, device_space> y, View<const From, device_space> x) {
    gpu::detail::require_shape("CudaBackend::copy", "y", y.shape(), x.shape());
    gpu::copy(ctx(), y, x);
  }
  template <class U>
  void axpy(View<U, device_space> y, View<const U, device_space> x, double alpha) {
    gpu::detail::require_shape("CudaBackend::axpy", "x", x.shape(), y.shape());
    gpu::axpy(ctx(), y, x, alpha);
  }
  template <class U, class W>
  void scale_rows(View<U, device_space> y, Span<const W, device_space> w) {
    gpu::detail::require_size("CudaBackend::scale_rows", "w", w.size, y.rows);
    gpu::scale_rows(ctx(), y, w);
  }
  template <class W>
  void sigmoid(View<W, device_space> y, View<const W, device_space> x) {
    gpu::detail::require_shape("CudaBackend::sigmoid", "y", y.shape(), x.shape());
    gpu::sigmoid(ctx(), y, x);
  }
  template <class W>
  void softmax_rows(View<W, device_space> y, View<const W, device_space> x) {
    gpu::detail::require_shape("CudaBackend::softmax_rows", "y", y.shape(), x.shape());
    gpu::softmax_rows(ctx(), y, x);
  }
  template <class U>
  void swiglu(View<U, device_space> h,
              View<const U, device_space> a,
              View<const U, device_space> g) {
    same_shapes("CudaBackend::swiglu", h.shape(), {a.shape(), g.shape()});
    gpu::swiglu(ctx(), h, a, g);
  }
  template <class U>
  void swiglu_backward(View<U, device_space> da,
                       View<U, device_space> dg,
                       View<const U, device_space> dh,
                       View<const U, device_space> a,
                       View<const U, device_space> g) {
    same_shapes(
        "CudaBackend::swiglu_backward", dh.shape(), {da.shape(), dg.shape(), a.shape(), g.shape()});
    gpu::swiglu_backward(ctx(), da, dg, dh, a, g);
  }

  // ---- norms and loss (backward passes accumulate) -----------------------------

  template <class U>
  void rms_norm(View<U, device_space> y,
                Span<accum_t<U>, device_space> rstd,
                View<const U, device_space> x,
                View<const U, device_space> w,
                double eps) {
    constexpr const char* op = "CudaBackend::rms_norm";
    gpu::detail::require_shape(op, "y", y.shape(), x.shape());
    gpu::detail::require_size(op, "rstd", rstd.size, x.rows);
    check_norm_weight(op, "w", w, x.cols);
    gpu::rms_norm(ctx(), y, rstd, x, w, eps);
  }
  template <class U>
  void rms_norm_backward(View<U, device_space> dx,
                         View<U, device_space> dw,
                         View<const U, device_space> dy,
                         View<const U, device_space> x,
                         View<const U, device_space> w,
                         Span<const accum_t<U>, device_space> rstd) {
    constexpr const char* op = "CudaBackend::rms_norm_backward";
    same_shapes(op, x.shape(), {dx.shape(), dy.shape()});
    gpu::detail::require_size(op, "rstd", rstd.size, x.rows);
    check_norm_weight(op, "w", w, x.cols);
    check_norm_weight(op, "dw", View<const U, device_space>(dw), x.cols);
    gpu::rms_norm_backward(ctx(), dx, dw, dy, x, w, rstd);
  }
  template <class U>
  void layer_norm(View<U, device_space> y,
                  Span<accum_t<U>, device_space> mean,
                  Span<accum_t<U>, device_space> rstd,
                  View<const U, device_space> x,
                  View<const U, device_space> w,
                  View<const U, device_space> bias,
                  double eps) {
    constexpr const char* op = "CudaBackend::layer_norm";
    gpu::detail::require_shape(op, "y", y.shape(), x.shape());
    gpu::detail::require_size(op, "mean", mean.size, x.rows);
    gpu::detail::require_size(op, "rstd", rstd.size, x.rows);
    check_norm_weight(op, "w", w, x.cols);
    if (!bias.empty()) {
      check_norm_weight(op, "bias", bias, x.cols);
    }
    gpu::layer_norm(ctx(), y, mean, rstd, x, w, bias, eps);
  }
  template <class U>
  void layer_norm_backward(View<U, device_space> dx,
                           View<U, device_space> dw,
                           View<U, device_space> dbias,
                           View<const U, device_space> dy,
                           View<const U, device_space> x,
                           View<const U, device_space> w,
                           Span<const accum_t<U>, device_space> mean,
                           Span<const accum_t<U>, device_space> rstd) {
    constexpr const char* op = "CudaBackend::layer_norm_backward";
    same_shapes(op, x.shape(), {dx.shape(), dy.shape()});
    gpu::detail::require_size(op, "mean", mean.size, x.rows);
    gpu::detail::require_size(op, "rstd", rstd.size, x.rows);
    check_norm_weight(op, "w", w, x.cols);
    check_norm_weight(op, "dw", View<const U, device_space>(dw), x.cols);
    if (!dbias.empty()) {
      check_norm_weight(op, "dbias", View<const U, device_space>(dbias), x.cols);
    }
    gpu::layer_norm_backward(ctx(), dx, dw, dbias, dy, x, w, mean, rstd);
  }
  template <class U>
  void cross_entropy(Span<accum_t<U>, device_space> loss,
                     Span<accum_t<U>, device_space> lse,
                     View<const U, device_space> logits,
                     Span<const std::int32_t, device_space> target) {
    constexpr const char* op = "CudaBackend::cross_entropy";
    gpu::detail::require_size(op, "loss", loss.size, logits.rows);
    gpu::detail::require_size(op, "lse", lse.size, logits.rows);
    gpu::detail::require_size(op, "target", target.size, logits.rows);
    gpu::cross_entropy(ctx(), loss, lse, logits, target);
  }
  template <class U>
  void cross_entropy_backward(View<U, device_space> dlogits,
                              View<const U, device_space> logits,
                              Span<const accum_t<U>, device_space> lse,
                              Span<const std::int32_t, device_space> target,
                              double scale) {
    constexpr const char* op = "CudaBackend::cross_entropy_backward";
    gpu::detail::require_shape(op, "dlogits", dlogits.shape(), logits.shape());
    gpu::detail::require_size(op, "lse", lse.size, logits.rows);
    gpu::detail::require_size(op, "target", target.size, logits.rows);
    gpu::cross_entropy_backward(ctx(), dlogits, logits, lse, target, scale);
  }

  // ---- attention (backward passes overwrite; in place allowed) ------------------

  template <class U>
  void rope(View<U, device_space> y,
            View<const U, device_space> x,
            Span<const std::int32_t, device_space> positions,
            std::int64_t head_dim,
            double theta) {
    check_rope("CudaBackend::rope", y.shape(), x.shape(), positions.size, head_dim);
    gpu::rope_rotate(ctx(), y, x, positions, head_dim, theta, /*inverse=*/false);
  }
  template <class U>
  void rope_backward(View<U, device_space> dx,
                     View<const U, device_space> dy,
                     Span<const std::int32_t, device_space> positions,
                     std::int64_t head_dim,
                     double theta) {
    check_rope("CudaBackend::rope_backward", dx.shape(), dy.shape(), positions.size, head_dim);
    gpu::rope_rotate(ctx(), dx, dy, positions, head_dim, theta, /*inverse=*/true);
  }
  template <class U>
  void masked_softmax_rows(View<U, device_space> y,
                           View<const U, device_space> x,
                           Span<const std::int32_t, device_space> limit,
                           double scale) {
    constexpr const char* op = "CudaBackend::masked_softmax_rows";
    gpu::detail::require_shape(op, "y", y.shape(), x.shape());
    gpu::detail::require_size(op, "limit", limit.size, x.rows);
    gpu::masked_softmax_rows(ctx(), y, x, limit, scale);
  }
  template <class U>
  void masked_softmax_rows_backward(View<U, device_space> dx,
                                    View<const U, device_space> y,
                                    View<const U, device_space> dy,
                                    Span<const std::int32_t, device_space> limit,
                                    double scale) {
    constexpr const char* op = "CudaBackend::masked_softmax_rows_backward";
    same_shapes(op, y.shape(), {dx.shape(), dy.shape()});
    gpu::detail::require_size(op, "limit", limit.size, y.rows);
    gpu::masked_softmax_rows_backward(ctx(), dx, y, dy, limit, scale);
  }

 private:
  [[nodiscard]] gpu::Context ctx() {
    return {stream_.get(), &workspace_, sm_count_};
  }

  static void same_shapes(const char* op, Shape expected, std::initializer_list<Shape> others) {
    for (const Shape& s : others) {
      gpu::detail::require_shape(op, "operand", s, expected);
    }
  }
  template <class U>
  static void check_norm_weight(const char* op,
                                const char* arg,
                                View<const U, device_space> w,
                                std::int64_t d) {
    gpu::detail::require(w.rows >= 1 && w.cols == d,
                         op,
                         arg,
                         "shape [1, " + std::to_string(d) + "]",
                         "[" + std::to_string(w.rows) + ", " + std::to_string(w.cols) + "]");
  }
  static void check_rope(
      const char* op, Shape y, Shape x, std::int64_t positions, std::int64_t head_dim) {
    gpu::detail::require_shape(op, "y", y, x);
    gpu::detail::require_size(op, "positions", positions, x.rows);
    gpu::detail::require(head_dim > 0 && head_dim % 2 == 0 && x.cols % head_dim == 0,
                         op,
                         "head_dim",
                         "an even divisor of " + std::to_string(x.cols),
                         std::to_string(head_dim));
  }

  // Declaration order is construction order: device, stream, arena, then the GEMM handles;
  // they are released in reverse, the stream last.
  int device_;
  int sm_count_;
  gpu::detail::Stream stream_;
  GroupedGemm grouped_;
  Workspace<device_space> workspace_;
  gpu::CublasLtGemm gemm_;
};

static_assert(backend<CudaBackend<float>>, "CudaBackend<float> must model mmsparse::backend");
static_assert(backend<CudaBackend<bf16>>, "CudaBackend<bf16> must model mmsparse::backend");

}  // namespace mmsparse

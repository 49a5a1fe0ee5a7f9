// mmsparse/backend/cpu/one_thread_ops.hpp
//
// The kernels of one attention head (MoT §2.2 Eq. 3: the score and value products, the masked
// softmax and its backward), each on the calling thread alone: what CpuBackend::for_each_head
// hands to the heads it runs side by side. A head's products at a few hundred tokens are too
// small to split over threads well (docs/benchmarks.md, "Attention heads side by side"), so the
// threads take whole heads instead. Products: oneDNN's sgemm for f32 where found, else Eigen; both
// run on one thread inside a parallel region, as do the softmax kernels.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/backend/cpu/attention.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>
#if defined(MMSPARSE_WITH_ONEDNN)
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace mmsparse::cpu {

// The most scratch (scores, and their gradient) per head for which the heads run side by side:
// half of a Zen 3 core's L2. Beyond it (a 128-query tile over more than 256 keys backward, 512
// forward) each head's products are large enough to split over the threads as well, and heads
// side by side measured slower at 1024 tokens (their score tiles no longer stay in cache).
inline constexpr std::int64_t head_scratch_max_bytes = std::int64_t{256} << 10;

struct OneThreadOps {
  // C = alpha * op(A) op(B) + beta * C.
  template <class U>
  void gemm(View<U> c,
            View<const U> a,
            Trans ta,
            View<const U> b,
            Trans tb,
            double alpha = 1.0,
            double beta = 0.0) const {
    const char* op = "OneThreadOps::gemm";
    const std::int64_t m = ta == Trans::no ? a.rows : a.cols;
    const std::int64_t k = ta == Trans::no ? a.cols : a.rows;
    const std::int64_t kb = tb == Trans::no ? b.rows : b.cols;
    const std::int64_t n = tb == Trans::no ? b.cols : b.rows;
    MMSPARSE_CHECK(kb == k, op, "b", "op(b) with " + std::to_string(k) + " rows", kb);
    MMSPARSE_CHECK(c.rows == m && c.cols == n, op, "c", (Shape{m, n}), c.shape());
#if defined(MMSPARSE_WITH_ONEDNN)
    if constexpr (std::is_same_v<U, float>) {
      if (m == 0 || n == 0) {
        return;
      }
      if (k == 0) {  // sgemm leaves C as it is: C = beta * C
        for (std::int64_t i = 0; i < m; ++i) {
          for (std::int64_t j = 0; j < n; ++j) {
            c(i, j) = beta == 0.0 ? 0.0f : static_cast<float>(beta) * c(i, j);
          }
        }
        return;
      }
      // Row-major; a leading dimension of at least the row length even for a single row.
      const auto ld = [](const auto& v) { return std::max<std::int64_t>(v.stride, v.cols); };
      const auto status = dnnl::sgemm(ta == Trans::no ? 'N' : 'T',
                                      tb == Trans::no ? 'N' : 'T',
                                      m,
                                      n,
                                      k,
                                      static_cast<float>(alpha),
                                      a.data,
                                      ld(a),
                                      b.data,
                                      ld(b),
                                      static_cast<float>(beta),
                                      c.data,
                                      ld(c));
      MMSPARSE_CHECK(status == dnnl::status::success, op, "dnnl::sgemm", "success", "a failure");
      return;
    }
#endif
    EigenGemm{}.gemm(c, a, ta, b, tb, alpha, beta);
  }

  template <class U>
  void masked_softmax_rows(View<U> y,
                           View<const U> x,
                           Span<const std::int32_t> limit,
                           double scale) const {
    cpu::masked_softmax_rows(y, x, limit, scale);
  }
  template <class U>
  void masked_softmax_rows_backward(View<U> dx,
                                    View<const U> y,
                                    View<const U> dy,
                                    Span<const std::int32_t> limit,
                                    double scale) const {
    cpu::masked_softmax_rows_backward(dx, y, dy, limit, scale);
  }
};

// `count` Us of the calling thread's own, aligned as a workspace slice (256 bytes), that only
// grow: a steady-state call allocates nothing.
template <class U>
U* thread_scratch(std::int64_t count) {
  struct Buffer {
    void* data = nullptr;
    std::size_t bytes = 0;
    Buffer() = default;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() {
      SpaceAllocator<host_space>::deallocate(data);
    }
  };
  thread_local Buffer buffer;
  const std::size_t bytes = static_cast<std::size_t>(std::max<std::int64_t>(count, 1)) * sizeof(U);
  if (bytes > buffer.bytes) {
    SpaceAllocator<host_space>::deallocate(buffer.data);
    buffer.data = nullptr;
    buffer.bytes = 0;
    buffer.data = SpaceAllocator<host_space>::allocate(bytes);
    buffer.bytes = bytes;
  }
  return static_cast<U*>(buffer.data);
}

}  // namespace mmsparse::cpu

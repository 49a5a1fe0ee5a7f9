// mmsparse/backend/cpu/skinny_weight_grad.hpp
//
// Weight gradient from a few tokens per expert: W_e [K, N] = alpha A_e^T B_e + beta W_e, where
// A_e [m, K] and B_e [m, N] are the m rows of segment e and m is small (expert choice over a small
// batch, e.g. the tokens a mixture-of-depths layer keeps: MoMa §2.3-2.4). The gradient W is then
// the large operand: each 6 x 16 tile of it is loaded once, takes its m rank-1 updates in
// registers (skinny_gemm.hpp's micro-kernel) and is stored, so W streams through memory once;
// alpha A_e^T is packed per thread and B_e stays in L2. OpenMP over the tile rows of W.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <mmsparse/backend/cpu/skinny_gemm.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

// Most rows of a segment the kernel takes; longer segments have enough rows for a GEMM provider
// to reach its compute rate (docs/benchmarks.md, "Expert products of short segments").
inline constexpr std::int64_t skinny_grad_max_rows = 96;

namespace skinny_detail {

// Rows [r0, r1) of one weight block: W [r0:r1, :] = alpha A^T B + beta W over the m rows of A [m,
// K] and B [m, N]. `at` holds (r1 - r0) * m floats of the calling thread's scratch, `panels`
// m * (N rounded up to 16) and `edge` 16 * 6. B is copied into [m, 16] panels first: its rows N
// floats apart would share a few L1 sets (N a multiple of 1 KB) while a tile walks down them.
inline void weight_grad_rows(View<float> w,
                             View<const float> a,
                             View<const float> b,
                             float alpha,
                             float beta,
                             std::int64_t r0,
                             std::int64_t r1,
                             float* at,
                             float* panels,
                             float* edge) {
  const std::int64_t m = a.rows;
  const std::int64_t n = w.cols;
  if (m == 0 || beta != 1.0f) {
    for (std::int64_t i = r0; i < r1; ++i) {  // beta = 0 never reads W (it may hold NaN)
      float* row = w.row(i);
      for (std::int64_t j = 0; j < n; ++j) {
        row[j] = beta == 0.0f ? 0.0f : beta * row[j];
      }
    }
  }
  if (m == 0) {
    return;
  }
  for (std::int64_t k = 0; k < m; ++k) {  // at [r1 - r0, m] = alpha A[:, r0:r1]^T
    const float* src = a.row(k);
    for (std::int64_t i = r0; i < r1; ++i) {
      at[(i - r0) * m + k] = alpha * src[i];
    }
  }
  for (std::int64_t j = 0; j < n; j += tile_cols) {
    copy_panel(panels + j * m, b.data + j, b.stride, m, std::min<std::int64_t>(tile_cols, n - j));
  }
  const std::int64_t full = n / tile_cols * tile_cols;  // columns of whole tiles
  for (std::int64_t i = r0; i < r1; i += tile_rows) {
    const int mr = static_cast<int>(std::min<std::int64_t>(tile_rows, r1 - i));
    const float* ai = at + (i - r0) * m;
    // While a row of tiles is updated, the next one is fetched for writing, a line per row per
    // tile: each row of W is a run of a few KB, too short for the hardware to stream on its own
    // (8 experts x 16 rows, 1536 x 512 each: 1.76-1.84 ms -> 1.50-1.60).
    const std::int64_t next = std::min<std::int64_t>(tile_rows, r1 - (i + tile_rows));
    for (std::int64_t j = 0; j < full; j += tile_cols) {
      for (std::int64_t r = 0; r < next; ++r) {
        __builtin_prefetch(w.row(i + tile_rows + r) + j, 1, 3);
      }
      micro_kernel_rows<0>(mr, w.row(i) + j, w.stride, true, ai, m, panels + j * m, tile_cols, m);
    }
    if (full < n) {  // the last tile through `edge`: the kernel stores 16 columns
      const std::int64_t width = n - full;
      for (int r = 0; r < mr; ++r) {
        std::copy(w.row(i + r) + full, w.row(i + r) + n, edge + r * tile_cols);
      }
      micro_kernel_rows<0>(mr, edge, tile_cols, true, ai, m, panels + full * m, tile_cols, m);
      for (int r = 0; r < mr; ++r) {
        std::copy(edge + r * tile_cols, edge + r * tile_cols + width, w.row(i + r) + full);
      }
    }
  }
}

}  // namespace skinny_detail

// For each segment e of `offsets` (E + 1 non-decreasing row offsets into a and b) with at most
// skinny_grad_max_rows rows, empty ones included: W_e = alpha A_e^T B_e + beta W_e, W_e being
// block e of w [E * K, N] and A_e, B_e rows [offsets[e], offsets[e + 1]) of a [T, K], b [T, N].
// Longer segments are left to the caller. beta = 0 ignores what W held.
inline void skinny_grouped_weight_grad(View<float> w,
                                       View<const float> a,
                                       View<const float> b,
                                       std::span<const std::int64_t> offsets,
                                       double alpha,
                                       double beta) {
  constexpr const char* op = "skinny_grouped_weight_grad";
  const std::int64_t block = check_grouped_weight_grad(op, w, a, b, offsets);
  const std::int64_t experts = static_cast<std::int64_t>(offsets.size()) - 1;
  MMSPARSE_CHECK(a.rows <= 1 || a.stride >= a.cols, op, "a.stride", ">= a.cols", a.stride);
  MMSPARSE_CHECK(b.rows <= 1 || b.stride >= b.cols, op, "b.stride", ">= b.cols", b.stride);
  MMSPARSE_CHECK(w.rows <= 1 || w.stride >= w.cols, op, "w.stride", ">= w.cols", w.stride);
  if (w.cols == 0 || block == 0) {
    return;
  }
  std::int64_t work = 0;
  for (std::int64_t e = 0; e < experts; ++e) {
    work += std::max<std::int64_t>(1, offsets[e + 1] - offsets[e]) * block * w.cols;
  }
  const auto fa = static_cast<float>(alpha);
  const auto fb = static_cast<float>(beta);
  auto run = [&](int t, int nt) {
    float* at = skinny_detail::thread_buffer<float>(0, block * skinny_grad_max_rows);
    constexpr std::int64_t width = skinny_detail::tile_cols;
    float* panels = skinny_detail::thread_buffer<float>(
        1, skinny_grad_max_rows * (w.cols + width - 1) / width * width);
    float* edge = skinny_detail::thread_buffer<float>(2, width * skinny_detail::tile_rows);
    // Whole 6-row tiles per thread, so that the threads' rows of W never share a tile.
    const std::int64_t tiles = (block + skinny_detail::tile_rows - 1) / skinny_detail::tile_rows;
    const std::int64_t r0 = std::min(block, tiles * t / nt * skinny_detail::tile_rows);
    const std::int64_t r1 = std::min(block, tiles * (t + 1) / nt * skinny_detail::tile_rows);
    for (std::int64_t e = 0; e < experts && r0 < r1; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      if (count > skinny_grad_max_rows) {
        continue;
      }
      skinny_detail::weight_grad_rows(w.row_block(e * block, block),
                                      a.row_block(begin, count),
                                      b.row_block(begin, count),
                                      fa,
                                      fb,
                                      r0,
                                      r1,
                                      at,
                                      panels,
                                      edge);
    }
  };
#if defined(_OPENMP)
  if (work >= skinny_detail::parallel_min && !omp_in_parallel() && omp_get_max_threads() > 1) {
#pragma omp parallel
    run(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  run(0, 1);
}

}  // namespace mmsparse::cpu

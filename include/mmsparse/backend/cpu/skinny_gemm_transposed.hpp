// mmsparse/backend/cpu/skinny_gemm_transposed.hpp
//
// Few rows times a transposed weight: C_e [m, K] = alpha A_e [m, N] W_e^T + beta C_e, W_e [K, N]
// row-major, m small: the input gradient of an expert that took a few tokens (expert choice over
// a small batch, e.g. the tokens a mixture-of-depths layer keeps: MoMa §2.3-2.4). Each output is
// a dot product of a row of A with a row of W, both contiguous, so W streams from memory once in
// its own order. Two walks: dot tiles (a 512-column slice of 4 rows of W stays in L1 while every
// row of A passes it in 3-row groups, 12 vectors of partial sums added across their lanes at the
// end) and, for 15-18 and 31-34 rows, lanes (16 rows of A in the lanes of two vectors, each
// element of 6 rows of W broadcast once: one FMA chain per output, nothing added across lanes).
// AVX2/FMA kernels (portable loops elsewhere); OpenMP over the rows of W.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <mmsparse/backend/cpu/skinny_gemm.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

// Most rows of a segment the kernel takes; longer segments go to the GEMM provider, which is
// faster from 40 rows on (docs/benchmarks.md, "Expert products of short segments"). 36 covers the
// 32-35 rows per expert of a mixture-of-depths layer's inner experts at 256 kept tokens.
inline constexpr std::int64_t skinny_transposed_max_rows = 36;

namespace skinny_transposed_detail {

inline constexpr int a_rows = 3;  // rows of A per register tile
inline constexpr int w_rows = 4;  // rows of W per register tile: 12 accumulators, 3 + 1 loads
inline constexpr int tile = a_rows * w_rows;
inline constexpr std::int64_t slice = 512;  // columns of A and W per pass (2 KB per row)
inline constexpr std::int64_t vector_width = 8;

#if defined(__AVX2__) && defined(__FMA__)
// acc[r * IR + i] (8 partial sums each) += A[r, j0:j1) . W[i, j0:j1) for r < RR, i < IR; with
// `ahead` (not null), also prefetches ahead[i * ldw + p0:p1) for i < 4 (a share of the next rows of
// W): a line per row every 16 columns, inside the loop so that the requests overlap the FMAs.
template <int RR, int IR>
void dot_tile(__m256* acc,
              const float* a,
              std::int64_t lda,
              const float* w,
              std::int64_t ldw,
              std::int64_t j0,
              std::int64_t j1,
              const float* ahead,
              std::int64_t p0,
              std::int64_t p1) {
  __m256 s[RR * IR];
#pragma GCC unroll 12
  for (int q = 0; q < RR * IR; ++q) {
    s[q] = acc[q];
  }
  std::int64_t j = j0;
  for (; j + vector_width <= j1; j += vector_width) {
    if (ahead != nullptr && (j & 15) == 0 && j >= p0 && j < p1) {
#pragma GCC unroll 4
      for (int i = 0; i < w_rows; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(ahead + i * ldw + j), _MM_HINT_T0);
      }
    }
    // Each load feeds several FMAs: the empty asm keeps the value in a register (g++ would
    // fold the load into every FMA that uses it, loading A four times per step).
    __m256 x[RR];
#pragma GCC unroll 3
    for (int r = 0; r < RR; ++r) {
      x[r] = _mm256_loadu_ps(a + r * lda + j);
      asm("" : "+x"(x[r]));
    }
#pragma GCC unroll 8
    for (int i = 0; i < IR; ++i) {
      __m256 y = _mm256_loadu_ps(w + i * ldw + j);
      asm("" : "+x"(y));
#pragma GCC unroll 3
      for (int r = 0; r < RR; ++r) {
        s[r * IR + i] = _mm256_fmadd_ps(x[r], y, s[r * IR + i]);
      }
    }
  }
  if (j < j1) {  // the last 1..7 columns, masked
    alignas(32) std::int32_t lanes[vector_width];
    for (std::int64_t l = 0; l < vector_width; ++l) {
      lanes[l] = j + l < j1 ? -1 : 0;
    }
    const __m256i mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
    __m256 x[RR];
#pragma GCC unroll 3
    for (int r = 0; r < RR; ++r) {
      x[r] = _mm256_maskload_ps(a + r * lda + j, mask);
    }
#pragma GCC unroll 8
    for (int i = 0; i < IR; ++i) {
      const __m256 y = _mm256_maskload_ps(w + i * ldw + j, mask);
#pragma GCC unroll 3
      for (int r = 0; r < RR; ++r) {
        s[r * IR + i] = _mm256_fmadd_ps(x[r], y, s[r * IR + i]);
      }
    }
  }
#pragma GCC unroll 12
  for (int q = 0; q < RR * IR; ++q) {
    acc[q] = s[q];
  }
}

using Partial = __m256;
inline void clear(Partial& p) {
  p = _mm256_setzero_ps();
}
inline float total(const Partial& p) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
#else
// The same partial sums (8 lanes, lane l taking the columns j = l mod 8) in a portable loop.
struct Partial {
  float lane[vector_width];
};
inline void clear(Partial& p) {
  std::fill(p.lane, p.lane + vector_width, 0.0f);
}
inline float total(const Partial& p) {
  return ((p.lane[0] + p.lane[4]) + (p.lane[2] + p.lane[6])) +
         ((p.lane[1] + p.lane[5]) + (p.lane[3] + p.lane[7]));
}
template <int RR, int IR>
void dot_tile(Partial* acc,
              const float* a,
              std::int64_t lda,
              const float* w,
              std::int64_t ldw,
              std::int64_t j0,
              std::int64_t j1,
              const float* /*ahead: no prefetch*/,
              std::int64_t /*p0*/,
              std::int64_t /*p1*/) {
  for (int r = 0; r < RR; ++r) {
    for (int i = 0; i < IR; ++i) {
      for (std::int64_t j = j0; j < j1; ++j) {
        acc[r * IR + i].lane[(j - j0) % vector_width] += a[r * lda + j] * w[i * ldw + j];
      }
    }
  }
}
#endif

// dot_tile for runtime tile sizes 1..3 x 1..3.
template <int RR>
void dot_tile_rows(int ir,
                   Partial* acc,
                   const float* a,
                   std::int64_t lda,
                   const float* w,
                   std::int64_t ldw,
                   std::int64_t j0,
                   std::int64_t j1,
                   const float* ahead,
                   std::int64_t p0,
                   std::int64_t p1) {
  switch (ir) {
    case 1:
      dot_tile<RR, 1>(acc, a, lda, w, ldw, j0, j1, ahead, p0, p1);
      break;
    case 2:
      dot_tile<RR, 2>(acc, a, lda, w, ldw, j0, j1, ahead, p0, p1);
      break;
    case 3:
      dot_tile<RR, 3>(acc, a, lda, w, ldw, j0, j1, ahead, p0, p1);
      break;
    default:
      dot_tile<RR, w_rows>(acc, a, lda, w, ldw, j0, j1, ahead, p0, p1);
      break;
  }
}
inline void dot_tile_any(int rr,
                         int ir,
                         Partial* acc,
                         const float* a,
                         std::int64_t lda,
                         const float* w,
                         std::int64_t ldw,
                         std::int64_t j0,
                         std::int64_t j1,
                         const float* ahead,
                         std::int64_t p0,
                         std::int64_t p1) {
  switch (rr) {
    case 1:
      dot_tile_rows<1>(ir, acc, a, lda, w, ldw, j0, j1, ahead, p0, p1);
      break;
    case 2:
      dot_tile_rows<2>(ir, acc, a, lda, w, ldw, j0, j1, ahead, p0, p1);
      break;
    default:
      dot_tile_rows<a_rows>(ir, acc, a, lda, w, ldw, j0, j1, ahead, p0, p1);
      break;
  }
}

// ---- the lane walk: 16 rows of A in the lanes of two vectors --------------------------------
// The forward's lane kernel (skinny_gemm.hpp) reading W^T: per column k, element k of each of 6
// rows of W is broadcast once and meets 16 rows of A, so each output is one FMA chain over k in
// a register (nothing added up across lanes), and the next tile's rows are prefetched into L2.

inline constexpr int lane_rows = 16;   // rows of A per lane group: two 8-float vectors
inline constexpr int lane_w_rows = 6;  // rows of W per lane tile: 12 accumulators

// Whether a segment of m rows takes the lane walk: groups of 16 rows, the last one full but for
// at most one row, then at most two rows beside them (15-18 and 31-34 rows). Elsewhere the empty
// lanes, or the dot tiles of the rows beside them, cost more than the lanes save (docs/design.md,
// "Short segments in training").
constexpr bool lanes_pay(std::int64_t m) {
  return m >= 15 && (m % 16 <= 2 || m % 16 == 15);
}

// Columns [i0, i1) of C = alpha A W^T + beta C for one segment: C [m, K], A [m, N], W [K, N].
// `partials` holds ceil(m / 3) * 9 Partials of the calling thread's scratch.
inline void columns(View<float> c,
                    View<const float> a,
                    View<const float> w,
                    float alpha,
                    float beta,
                    std::int64_t i0,
                    std::int64_t i1,
                    Partial* partials) {
  const std::int64_t m = a.rows;
  const std::int64_t n = a.cols;
  const std::int64_t row_groups = (m + a_rows - 1) / a_rows;
  for (std::int64_t i = i0; i < i1; i += w_rows) {
    const int ir = static_cast<int>(std::min<std::int64_t>(w_rows, i1 - i));
    for (std::int64_t q = 0; q < row_groups * tile; ++q) {
      clear(partials[q]);
    }
    for (std::int64_t j0 = 0; j0 < n; j0 += slice) {  // the slice of W stays in L1
      const std::int64_t j1 = std::min(n, j0 + slice);
      // Each row group prefetches its share of the lines of the next rows' slice, so that the
      // requests spread over the whole pass (issued in one burst, they queue behind each other
      // and the memory latency shows: docs/benchmarks.md, "Expert products of short segments").
      const std::int64_t share = ((j1 - j0 + 15) / 16 + row_groups - 1) / row_groups * 16;
      const float* ahead = i + 2 * w_rows <= i1 ? w.row(i + w_rows) : nullptr;
      for (std::int64_t g = 0; g < row_groups; ++g) {
        const std::int64_t r = g * a_rows;
        dot_tile_any(static_cast<int>(std::min<std::int64_t>(a_rows, m - r)),
                     ir,
                     partials + g * tile,
                     a.row(r),
                     a.stride,
                     w.row(i),
                     w.stride,
                     j0,
                     j1,
                     ahead,
                     j0 + g * share,
                     j0 + (g + 1) * share);
      }
    }
    for (std::int64_t r = 0; r < m; ++r) {
      const Partial* p = partials + (r / a_rows) * tile;
      const std::int64_t rr = r % a_rows;
      for (int ii = 0; ii < ir; ++ii) {  // a tile keeps its sums at r * ir + i
        const float v = alpha * total(p[rr * ir + ii]);
        float& out = c.row(r)[i + ii];
        out = beta == 0.0f ? v : v + beta * out;
      }
    }
  }
}

// The RR <= 2 rows of A beside the lane groups against the nc <= NC rows of W of a lane tile, over
// columns [j0, j1) (that slice of those rows is in L1): partial sums at acc[r * nc + i].
template <int RR, int NC = lane_w_rows>
void rest_tile(int nc,
               Partial* acc,
               const float* a,
               std::int64_t lda,
               const float* w,
               std::int64_t ldw,
               std::int64_t j0,
               std::int64_t j1) {
  if constexpr (NC > 1) {
    if (nc < NC) {
      rest_tile<RR, NC - 1>(nc, acc, a, lda, w, ldw, j0, j1);
      return;
    }
  }
  dot_tile<RR, NC>(acc, a, lda, w, ldw, j0, j1, nullptr, 0, 0);
}

// Columns [i0, i1) of C for one segment whose rows lanes_pay(): its rows in groups of 16 lanes,
// A^T packed once per group, and the one or two rows past the groups beside them. Per tile of 6
// rows of W, slice by slice of 512 columns, every group passes the slice (the first one streams
// it from memory and prefetches the next tile's), then the rows beside the lanes take it from L1.
// `partials` as for columns().
inline void lane_columns(View<float> c,
                         View<const float> a,
                         View<const float> w,
                         float alpha,
                         float beta,
                         std::int64_t i0,
                         std::int64_t i1,
                         Partial* partials) {
  const std::int64_t m = a.rows;
  const std::int64_t n = a.cols;
  const std::int64_t beside = m % lane_rows <= 2 ? m % lane_rows : 0;
  const std::int64_t in_lanes = m - beside;
  const std::int64_t groups = (in_lanes + lane_rows - 1) / lane_rows;
  auto rows_of = [&](std::int64_t g) {
    return std::min<std::int64_t>(lane_rows, in_lanes - g * lane_rows);
  };
  float* at = skinny_detail::thread_buffer<float>(0, groups * lane_rows * n);  // [g][n][16]
  for (std::int64_t g = 0; g < groups; ++g) {
    skinny_detail::transpose_to_lanes(
        at + g * lane_rows * n, lane_rows, a.row(g * lane_rows), a.stride, rows_of(g), n);
  }
  float* out = skinny_detail::thread_buffer<float>(1, groups * lane_w_rows * lane_rows);
  for (std::int64_t i = i0; i < i1; i += lane_w_rows) {
    const int nc = static_cast<int>(std::min<std::int64_t>(lane_w_rows, i1 - i));
    const float* ahead = i + 2 * lane_w_rows <= i1 ? w.row(i + lane_w_rows) : nullptr;
    for (int q = 0; q < 2 * lane_w_rows; ++q) {
      clear(partials[q]);
    }
    for (std::int64_t j0 = 0; j0 < n; j0 += slice) {
      const std::int64_t j1 = std::min(n, j0 + slice);
      for (std::int64_t g = 0; g < groups; ++g) {
        skinny_detail::lane_kernel_cols<2, lane_w_rows, skinny_detail::LaneWalk::transposed>(
            nc,
            out + g * lane_w_rows * lane_rows,
            j0 > 0,
            at + (g * n + j0) * lane_rows,
            w.row(i) + j0,
            w.stride,
            j1 - j0,
            g == 0 && ahead != nullptr ? ahead + j0 : nullptr);
      }
      if (beside == 1) {
        rest_tile<1>(nc, partials, a.row(in_lanes), a.stride, w.row(i), w.stride, j0, j1);
      } else if (beside == 2) {
        rest_tile<2>(nc, partials, a.row(in_lanes), a.stride, w.row(i), w.stride, j0, j1);
      }
    }
    for (std::int64_t r = 0; r < m; ++r) {  // row r of output j: lanes, or partials beside them
      float* crow = c.row(r) + i;
      for (int j = 0; j < nc; ++j) {
        const float sum = r < in_lanes
                              ? out[((r / lane_rows) * lane_w_rows + j) * lane_rows + r % lane_rows]
                              : total(partials[(r - in_lanes) * nc + j]);
        const float v = alpha * sum;
        crow[j] = beta == 0.0f ? v : v + beta * crow[j];
      }
    }
  }
}

}  // namespace skinny_transposed_detail

// For each segment e of `offsets` (E + 1 non-decreasing row offsets into a and c) with 1 to
// skinny_transposed_max_rows rows: C_e = alpha A_e W_e^T + beta C_e, W_e being block e of
// w [E * K, N] and A_e, C_e rows [offsets[e], offsets[e + 1]) of a [T, N], c [T, K]. Other
// segments are left to the caller. beta = 0 ignores what C held. C must not overlap A or W.
inline void skinny_grouped_gemm_transposed(View<float> c,
                                           View<const float> a,
                                           View<const float> w,
                                           std::span<const std::int64_t> offsets,
                                           double alpha,
                                           double beta) {
  namespace detail = skinny_transposed_detail;
  constexpr const char* op = "skinny_grouped_gemm_transposed";
  const std::int64_t block = check_grouped_gemm(op, c, a, w, Trans::yes, offsets);
  const auto experts = static_cast<std::int64_t>(offsets.size()) - 1;
  if (block == 0) {
    return;
  }
  std::int64_t work = 0;
  for (std::int64_t e = 0; e < experts; ++e) {
    const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - offsets[e];
    work += count <= skinny_transposed_max_rows ? count * block * w.cols : 0;
  }
  const auto fa = static_cast<float>(alpha);
  const auto fb = static_cast<float>(beta);
  auto run = [&](int t, int nt) {
    constexpr std::int64_t groups =
        (skinny_transposed_max_rows + detail::a_rows - 1) / detail::a_rows;
    auto* partials = skinny_detail::thread_buffer<detail::Partial>(0, groups * detail::tile);
    // Output columns in runs of 16 (one cache line of C) per thread.
    const std::int64_t runs = (block + 15) / 16;
    const std::int64_t i0 = std::min(block, runs * t / nt * 16);
    const std::int64_t i1 = std::min(block, runs * (t + 1) / nt * 16);
    for (std::int64_t e = 0; e < experts && i0 < i1; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      if (count == 0 || count > skinny_transposed_max_rows) {
        continue;
      }
      const auto ce = c.row_block(begin, count);
      if (w.cols == 0) {  // an empty product: C = beta C
        for (std::int64_t r = 0; r < count; ++r) {
          for (std::int64_t i = i0; i < i1; ++i) {
            ce.row(r)[i] = fb == 0.0f ? 0.0f : fb * ce.row(r)[i];
          }
        }
        continue;
      }
      const auto ae = a.row_block(begin, count);
      const auto we = w.row_block(e * block, block);
      if (detail::lanes_pay(count)) {
        detail::lane_columns(ce, ae, we, fa, fb, i0, i1, partials);
      } else {
        detail::columns(ce, ae, we, fa, fb, i0, i1, partials);
      }
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

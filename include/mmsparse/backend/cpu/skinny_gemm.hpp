// mmsparse/backend/cpu/skinny_gemm.hpp
//
// Small-M GEMM for decode and short expert segments: C [M, N] = alpha A [M, K] W [K, N] + beta C
// with M <= 16 (18 for f32 W row-major and for panels), streaming the weight W once from memory
// (f32, or bf16 widened in registers: half the bytes). Three walks, which all sum each output in
// the same order (one FMA chain over k from zero), so they round alike and the backend may pick any
// of them:
//  - f32 W row-major: the lane kernel, rows of A in vector lanes and each element of W broadcast
//    once, reading W along its rows without a copy (a 17th and 18th row beside the lanes);
//  - W packed once into 16-column panels (SkinnyPanels), which each thread reads as one
//    contiguous run: the fastest for a few rows (decode);
//  - bf16 W row-major: 16-column tiles copied out of W a few rows at a time.
// Register-tiled AVX2/FMA micro-kernels (portable loops elsewhere); OpenMP over the columns.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

// Largest M the skinny path takes (decode, and the few rows per expert of a short segment).
inline constexpr std::int64_t skinny_max_rows = 16;
// Largest M the lane walk of an f32 row-major W takes: 16 rows in lanes and one or two more
// beside them (the 16-17 rows per expert of a MoD layer's experts: docs/benchmarks.md,
// "Expert products of short segments").
inline constexpr std::int64_t skinny_lane_max_rows = 18;
// Largest M the panels take: three row chunks of the micro-kernel, as for 13-16 rows (8 experts'
// 512x1536 weights from memory, 17-18 rows: 1.25-1.33 ms in panels, 1.44-1.63 row-major).
inline constexpr std::int64_t skinny_panel_max_rows = 18;

// Activations (A, C) and weights (W) the skinny path multiplies; double goes to the providers.
template <class T>
inline constexpr bool skinny_supported_v = std::is_same_v<T, float> || std::is_same_v<T, bf16>;

namespace skinny_detail {

inline constexpr int tile_cols = 16;  // NR: two 8-float vectors
inline constexpr int tile_rows = 6;   // MR: 12 accumulators + 2 weights + 1 broadcast <= 16 ymm
inline constexpr std::int64_t block_k = 16;    // KC: rows of W per pass over a column block
inline constexpr std::int64_t block_n = 2048;  // NC: columns whose float accumulators stay in L2
inline constexpr int prefetch_tiles = 4;       // W is prefetched this many tiles ahead in its row
// Row stride of the float accumulators [M, NC]: the last tile of a block may store 16 columns.
inline constexpr std::int64_t acc_stride = block_n + tile_cols;
inline constexpr std::int64_t parallel_min = 1 << 18;  // M*N*K below this runs on one thread
// Panels: rows of a panel per pass when M needs several row chunks (a 4 KB slice of f32 and the
// 16 rows of A it meets share L1 with the next slice; 256-row slices beside 16 KB of A ran 10-15 %
// slower from memory), and how far ahead of the FMAs the kernel prefetches the panel it streams.
inline constexpr std::int64_t panel_block_k = 64;
inline constexpr int panel_prefetch_bytes = 1024;

#if defined(__AVX2__) && defined(__FMA__)
inline void load_tile_row(const float* w, __m256& lo, __m256& hi) {
  lo = _mm256_loadu_ps(w);
  hi = _mm256_loadu_ps(w + 8);
}
// bf16 is the top half of a float: zero-extend to 32 bits and shift into place.
inline void load_tile_row(const bf16* w, __m256& lo, __m256& hi) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  lo = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(bits)), 16));
  hi = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(bits, 1)), 16));
}

// out [MR, 8 NV] (row stride ldo) = A [MR, kc] W [kc, 8 NV], or += where `accumulate`: 2 NV MR
// <= 12 accumulators, NV even (a 16-column tile is NV = 2). A non-zero Prefetch asks for the line
// |Prefetch| bytes past each row of W: into L1 where positive (the panel streamed from memory),
// into L2 where negative (the next slice, while this one is reused).
template <int MR, int Prefetch, class TW, int NV = 2>
void micro_kernel(float* out,
                  std::int64_t ldo,
                  bool accumulate,
                  const float* a,
                  std::int64_t lda,
                  const TW* w,
                  std::int64_t ldw,
                  std::int64_t kc) {
  static_assert(NV % 2 == 0 && MR * NV <= 12, "accumulators and W's vectors fit 16 registers");
  // Every loop over MR is unrolled, so that the accumulators live in registers: a loop left
  // rolled makes g++ keep the arrays on the stack and store them at every k.
  __m256 c[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 6
    for (int v = 0; v < NV; ++v) {
      c[m][v] = accumulate ? _mm256_loadu_ps(out + m * ldo + 8 * v) : _mm256_setzero_ps();
    }
  }
  for (std::int64_t k = 0; k < kc; ++k) {
    if constexpr (Prefetch > 0) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k * ldw) + Prefetch, _MM_HINT_T0);
    } else if constexpr (Prefetch < 0) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k * ldw) - Prefetch, _MM_HINT_T1);
    }
    __m256 wk[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; v += 2) {
      load_tile_row(w + k * ldw + 8 * v, wk[v], wk[v + 1]);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 x = _mm256_broadcast_ss(a + m * lda + k);
#pragma GCC unroll 6
      for (int v = 0; v < NV; ++v) {
        c[m][v] = _mm256_fmadd_ps(x, wk[v], c[m][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 6
    for (int v = 0; v < NV; ++v) {
      _mm256_storeu_ps(out + m * ldo + 8 * v, c[m][v]);
    }
  }
}
#else
// The same sums in the same order as the AVX2 kernel (each continues from `out`), so the
// row-major and panel layouts round alike here too.
template <int MR, int Prefetch, class TW, int NV = 2>
void micro_kernel(float* out,
                  std::int64_t ldo,
                  bool accumulate,
                  const float* a,
                  std::int64_t lda,
                  const TW* w,
                  std::int64_t ldw,
                  std::int64_t kc) {
  constexpr int width = 8 * NV;
  float acc[MR][width];
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < width; ++j) {
      acc[m][j] = accumulate ? out[m * ldo + j] : 0.0f;
    }
  }
  for (std::int64_t k = 0; k < kc; ++k) {
    float wk[width];
    for (int j = 0; j < width; ++j) {
      wk[j] = scalar_cast<float>(w[k * ldw + j]);
    }
    for (int m = 0; m < MR; ++m) {
      const float x = a[m * lda + k];
      for (int j = 0; j < width; ++j) {
        acc[m][j] += x * wk[j];
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < width; ++j) {
      out[m * ldo + j] = acc[m][j];
    }
  }
}
#endif

// The micro-kernel for a runtime row count 1..MR (MR = tile_rows for 16-column tiles, 2 for
// 48-column ones).
template <int Prefetch, class TW, int NV = 2, int MR = 12 / NV>
void micro_kernel_rows(int mr,
                       float* out,
                       std::int64_t ldo,
                       bool accumulate,
                       const float* a,
                       std::int64_t lda,
                       const TW* w,
                       std::int64_t ldw,
                       std::int64_t kc) {
  if constexpr (MR > 1) {
    if (mr < MR) {
      micro_kernel_rows<Prefetch, TW, NV, MR - 1>(mr, out, ldo, accumulate, a, lda, w, ldw, kc);
      return;
    }
  }
  micro_kernel<MR, Prefetch, TW, NV>(out, ldo, accumulate, a, lda, w, ldw, kc);
}

// Scratch of the calling thread that only grows: a steady-state call allocates nothing.
// Float buffers: 0 the lane kernel's A^T, 1 accumulators, 2 bf16 A widened (drive).
template <class U>
U* thread_buffer(int which, std::int64_t count) {
  thread_local std::vector<U> buffers[3];
  auto& b = buffers[which];
  if (static_cast<std::int64_t>(b.size()) < count) {
    b.resize(static_cast<std::size_t>(count));
  }
  return b.data();
}

// panel [kc][16] = W [kc, width <= 16], zero-padded. Rows of W a power of two apart fall into one
// L1 set; the micro-kernels read the contiguous panel instead, once per chunk of rows of A. The
// rows of W are prefetched a few tiles ahead (the copy of each row walks it front to back).
template <class TW>
void copy_panel(TW* panel, const TW* w, std::int64_t ldw, std::int64_t kc, std::int64_t width) {
  for (std::int64_t kk = 0; kk < kc; ++kk) {
    const TW* row = w + kk * ldw;
    __builtin_prefetch(row + prefetch_tiles * tile_cols, 0, 1);
    if (width == tile_cols) {
      std::copy(row, row + tile_cols, panel + kk * tile_cols);
    } else {
      std::copy(row, row + width, panel + kk * tile_cols);
      std::fill(panel + kk * tile_cols + width, panel + (kk + 1) * tile_cols, TW{});
    }
  }
}

// Rows [r0, r0 + mr) of the c-th of `chunks` near-equal chunks of M rows, each at most
// tile_rows: a tile of W is reused from L1 by every chunk.
struct RowChunk {
  std::int64_t r0;
  int mr;
};
inline RowChunk row_chunk(std::int64_t m, std::int64_t chunks, std::int64_t c) {
  const std::int64_t r0 = m * c / chunks;
  return {r0, static_cast<int>(m * (c + 1) / chunks - r0)};
}

// Row-major W: acc [M, nc] (row stride acc_stride) = A W[:, nb:nb+nc) for each column block of
// one thread's columns [n_begin, n_end); `done(0, M, nb, nb + nc, acc, acc_stride, 1)` then folds
// the block into C. Within a block, W is walked KC rows at a time, 16 columns per tile: KC short
// runs that each read their row front to back, few enough for the hardware to stream alongside the
// software prefetch.
template <class TW, class Done>
void row_major_columns(std::int64_t m,
                       std::int64_t k,
                       const float* a,
                       std::int64_t lda,
                       View<const TW> w,
                       std::int64_t n_begin,
                       std::int64_t n_end,
                       Done&& done) {
  const std::int64_t chunks = (m + tile_rows - 1) / tile_rows;
  float* acc = thread_buffer<float>(1, m * acc_stride);   // [M, NC]
  TW* panel = thread_buffer<TW>(0, block_k * tile_cols);  // [KC, 16]
  for (std::int64_t nb = n_begin; nb < n_end; nb += block_n) {
    const std::int64_t nc = std::min(block_n, n_end - nb);
    for (std::int64_t kb = 0; kb < k; kb += block_k) {
      const std::int64_t kc = std::min(block_k, k - kb);
      for (std::int64_t n0 = 0; n0 < nc; n0 += tile_cols) {
        const std::int64_t width = std::min<std::int64_t>(tile_cols, nc - n0);
        copy_panel(panel, w.data + kb * w.stride + nb + n0, w.stride, kc, width);
        for (std::int64_t ch = 0; ch < chunks; ++ch) {
          const RowChunk r = row_chunk(m, chunks, ch);
          micro_kernel_rows<0>(r.mr,
                               acc + r.r0 * acc_stride + n0,
                               acc_stride,
                               kb > 0,
                               a + r.r0 * lda + kb,
                               lda,
                               panel,
                               std::int64_t{tile_cols},
                               kc);
        }
      }
    }
    done(0, m, nb, nb + nc, acc, acc_stride, std::int64_t{1});
  }
}

// ---- the lane kernel: f32 W row-major -------------------------------------------------------

inline constexpr std::int64_t lane_block_k = 32;  // rows of W per pass over a thread's columns
inline constexpr int lane_prefetch_bytes = 256;   // W is prefetched this far ahead in its row

// How a lane kernel reads the [kc, NC] tile of W it multiplies: `rows`, element (k, j) at
// w[k ldw + j] (W row-major: the forward, each row prefetched lane_prefetch_bytes ahead into L1);
// `transposed`, at w[j ldw + k] (W^T row-major: the input gradient, with `ahead`, when not null,
// the same NC rows of the next tile prefetched into L2, a line per row every 16 k).
enum class LaneWalk { rows, transposed };

#if defined(__AVX2__) && defined(__FMA__)
// The lane kernel's prefetch at step k: row k of W lane_prefetch_bytes ahead into L1 (rows), or
// every 16 k a line of each of the NC rows of the next tile into L2 (transposed, `ahead`).
template <int NC, LaneWalk Walk>
inline void lane_prefetch(const float* w, std::int64_t ldw, std::int64_t k, const float* ahead) {
  if constexpr (Walk == LaneWalk::rows) {
    _mm_prefetch(reinterpret_cast<const char*>(w + k * ldw) + lane_prefetch_bytes, _MM_HINT_T0);
  } else if (ahead != nullptr && (k & 15) == 0) {
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + j * ldw + k), _MM_HINT_T1);
    }
  }
}

// acc [NC][8 MV] (+)= A [8 MV, kc] W [kc, NC], the rows of A in the lanes of MV vectors (at is
// A^T, [kc][8 MV]) and column j of the tile in acc + 8 MV j. Per k, each of the NC elements of W
// is broadcast once and multiplies all the rows: W is read once, in its own order.
template <int MV, int NC, LaneWalk Walk = LaneWalk::rows>
void lane_kernel(float* acc,
                 bool accumulate,
                 const float* at,
                 const float* w,
                 std::int64_t ldw,
                 std::int64_t kc,
                 const float* ahead = nullptr) {
  constexpr int mp = 8 * MV;
#if defined(__AVX512F__)
  if constexpr (MV == 2) {
    // The 16 rows in the lanes of one 512-bit vector: half the broadcasts and FMA instructions of
    // two 256-bit ones, each output the same FMA chain (docs/design.md, "Small M").
    __m512 c[NC];
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) {
      c[j] = accumulate ? _mm512_loadu_ps(acc + j * mp) : _mm512_setzero_ps();
    }
    for (std::int64_t k = 0; k < kc; ++k) {
      lane_prefetch<NC, Walk>(w, ldw, k, ahead);
      __m512 a = _mm512_loadu_ps(at + k * mp);
      asm("" : "+v"(a));  // loaded once per k
#pragma GCC unroll 16
      for (int j = 0; j < NC; ++j) {
        const float* wj = Walk == LaneWalk::rows ? w + k * ldw + j : w + j * ldw + k;
        c[j] = _mm512_fmadd_ps(a, _mm512_set1_ps(*wj), c[j]);
      }
    }
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) {
      _mm512_storeu_ps(acc + j * mp, c[j]);
    }
    return;
  }
#endif
  __m256 c[NC][MV];  // every loop below is unrolled, so that c stays in registers
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) {
      c[j][v] = accumulate ? _mm256_loadu_ps(acc + j * mp + v * 8) : _mm256_setzero_ps();
    }
  }
  for (std::int64_t k = 0; k < kc; ++k) {
    lane_prefetch<NC, Walk>(w, ldw, k, ahead);
    __m256 a[MV];
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) {
      a[v] = _mm256_loadu_ps(at + k * mp + v * 8);
      asm("" : "+x"(a[v]));  // loaded once per k: g++ would fold the load into every FMA
    }
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) {
      const float* wj = Walk == LaneWalk::rows ? w + k * ldw + j : w + j * ldw + k;
      const __m256 b = _mm256_broadcast_ss(wj);
#pragma GCC unroll 4
      for (int v = 0; v < MV; ++v) {
        c[j][v] = _mm256_fmadd_ps(a[v], b, c[j][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) {
      _mm256_storeu_ps(acc + j * mp + v * 8, c[j][v]);
    }
  }
}
#else
// The same sums in the same order as the micro-kernel's portable loop.
template <int MV, int NC, LaneWalk Walk = LaneWalk::rows>
void lane_kernel(float* acc,
                 bool accumulate,
                 const float* at,
                 const float* w,
                 std::int64_t ldw,
                 std::int64_t kc,
                 const float* /*ahead: no prefetch*/ = nullptr) {
  constexpr int mp = 8 * MV;
  for (int j = 0; j < NC; ++j) {
    for (int i = 0; i < mp; ++i) {
      float sum = accumulate ? acc[j * mp + i] : 0.0f;
      for (std::int64_t k = 0; k < kc; ++k) {
        sum += at[k * mp + i] * (Walk == LaneWalk::rows ? w[k * ldw + j] : w[j * ldw + k]);
      }
      acc[j * mp + i] = sum;
    }
  }
}
#endif

// The lane kernel for the last tile of a thread's columns: nc <= NC columns.
template <int MV, int NC, LaneWalk Walk = LaneWalk::rows>
void lane_kernel_cols(int nc,
                      float* acc,
                      bool accumulate,
                      const float* at,
                      const float* w,
                      std::int64_t ldw,
                      std::int64_t kc,
                      const float* ahead = nullptr) {
  if constexpr (NC > 1) {
    if (nc < NC) {
      lane_kernel_cols<MV, NC - 1, Walk>(nc, acc, accumulate, at, w, ldw, kc, ahead);
      return;
    }
  }
  lane_kernel<MV, NC, Walk>(acc, accumulate, at, w, ldw, kc, ahead);
}

// at [k][lanes] = A^T for the m <= lanes rows of A [m, k], zero in the lanes past m.
inline void transpose_to_lanes(float* at,
                               std::int64_t lanes,
                               const float* a,
                               std::int64_t lda,
                               std::int64_t m,
                               std::int64_t k) {
  for (std::int64_t i = 0; i < lanes; ++i) {
    for (std::int64_t kk = 0; kk < k; ++kk) {
      at[kk * lanes + i] = i < m ? a[i * lda + kk] : 0.0f;
    }
  }
}

// Row-major f32 W through the lane kernel: A^T packed once per thread ([K][8 MV], zero past M),
// then K in lane_block_k slices, each walking the thread's columns [n_begin, n_end) NC at a time
// (lane_block_k short runs along the rows of W, which the hardware streams), the accumulators
// [columns][8 MV] staying in L2; done() folds them into C.
template <int MV, int NC, class Done>
void lane_columns(std::int64_t m,
                  std::int64_t k,
                  const float* a,
                  std::int64_t lda,
                  View<const float> w,
                  std::int64_t n_begin,
                  std::int64_t n_end,
                  Done&& done) {
  constexpr std::int64_t mp = 8 * MV;
  float* at = thread_buffer<float>(0, k * mp);
  transpose_to_lanes(at, mp, a, lda, m, k);
  float* acc = thread_buffer<float>(1, (n_end - n_begin) * mp);
  for (std::int64_t kb = 0; kb < k; kb += lane_block_k) {
    const std::int64_t kc = std::min(lane_block_k, k - kb);
    for (std::int64_t j = n_begin; j < n_end; j += NC) {
      const int nc = static_cast<int>(std::min<std::int64_t>(NC, n_end - j));
      lane_kernel_cols<MV, NC>(nc,
                               acc + (j - n_begin) * mp,
                               kb > 0,
                               at + kb * mp,
                               w.data + kb * w.stride + j,
                               w.stride,
                               kc);
    }
  }
  done(0, m, n_begin, n_end, acc, std::int64_t{1}, mp);  // row i of column j at acc[j mp + i]
}

// 17 or 18 rows: the first 16 through the lane kernel (two vectors, 6 columns) and the last one or
// two through the row-major micro-kernel 48 columns wide, so that its 6 FMA chains per row
// interleave (a 16-column tile of one row waits on its two), on each [KC, 48] span of W from L1
// right after the lane kernel brought it from memory; a thread's last span, when narrower, 16
// columns at a time. (Rows past 18, in 16-row groups and a micro-kernel rest, ran at 0.93-1.33x
// oneDNN, and three vectors of lanes for 17-24 rows at 0.9-1.0x: those go to the provider.)
template <class Done>
void lane_columns_and_rest(std::int64_t m,
                           std::int64_t k,
                           const float* a,
                           std::int64_t lda,
                           View<const float> w,
                           std::int64_t n_begin,
                           std::int64_t n_end,
                           Done&& done) {
  constexpr std::int64_t mp = 16;
  constexpr int nc = 6;
  constexpr std::int64_t span = 48;  // 8 lane tiles, 3 micro-kernel tiles
  const std::int64_t rest = m - mp;  // 1 or 2
  const std::int64_t cols = n_end - n_begin;
  const std::int64_t rest_stride = (cols + tile_cols - 1) / tile_cols * tile_cols;
  float* at = thread_buffer<float>(0, k * mp + lane_block_k * tile_cols);
  float* edge = at + k * mp;  // [KC, 16]: the last tile of W when n is not whole tiles
  transpose_to_lanes(at, mp, a, lda, mp, k);
  float* acc = thread_buffer<float>(1, cols * mp + rest * rest_stride);
  float* rest_acc = acc + cols * mp;  // [rest, cols], row-major
  const float* ar = a + mp * lda;     // the rest's rows of A
  for (std::int64_t kb = 0; kb < k; kb += lane_block_k) {
    const std::int64_t kc = std::min(lane_block_k, k - kb);
    const float* wk = w.data + kb * w.stride;
    for (std::int64_t j0 = n_begin; j0 < n_end; j0 += span) {
      const std::int64_t j1 = std::min(n_end, j0 + span);
      for (std::int64_t j = j0; j < j1; j += nc) {
        lane_kernel_cols<2, nc>(static_cast<int>(std::min<std::int64_t>(nc, j1 - j)),
                                acc + (j - n_begin) * mp,
                                kb > 0,
                                at + kb * mp,
                                wk + j,
                                w.stride,
                                kc);
      }
      if (j1 - j0 == span) {
        micro_kernel_rows<0, float, 6>(static_cast<int>(rest),
                                       rest_acc + (j0 - n_begin),
                                       rest_stride,
                                       kb > 0,
                                       ar + kb,
                                       lda,
                                       wk + j0,
                                       w.stride,
                                       kc);
        continue;
      }
      for (std::int64_t j = j0; j < j1; j += tile_cols) {
        const float* tile = wk + j;
        std::int64_t ldw = w.stride;
        if (j1 - j < tile_cols) {  // n's last tile: the kernel reads 16 columns
          copy_panel(edge, tile, w.stride, kc, j1 - j);
          tile = edge;
          ldw = tile_cols;
        }
        micro_kernel_rows<0>(static_cast<int>(rest),
                             rest_acc + (j - n_begin),
                             rest_stride,
                             kb > 0,
                             ar + kb,
                             lda,
                             tile,
                             ldw,
                             kc);
      }
    }
  }
  done(0, mp, n_begin, n_end, acc, std::int64_t{1}, mp);  // row i of column j at acc[j mp + i]
  done(mp, m, n_begin, n_end, rest_acc, rest_stride, std::int64_t{1});
}

// The lane tile for M rows: 12 accumulators, plus MV vectors of A and one broadcast of W.
template <class Done>
void lane_columns(std::int64_t m,
                  std::int64_t k,
                  const float* a,
                  std::int64_t lda,
                  View<const float> w,
                  std::int64_t n_begin,
                  std::int64_t n_end,
                  Done&& done) {
  if (m <= 8) {
    lane_columns<1, 12>(m, k, a, lda, w, n_begin, n_end, done);
  } else if (m <= 16) {
    lane_columns<2, 6>(m, k, a, lda, w, n_begin, n_end, done);
  } else {
    lane_columns_and_rest(m, k, a, lda, w, n_begin, n_end, done);
  }
}

}  // namespace skinny_detail

// W [k, n] packed for the skinny kernel: panel p holds columns [16 p, 16 p + 16) as a contiguous
// [k, 16] block (zero past column n), and the panels follow one another. pack_skinny_panels
// writes it; SkinnyPacks (skinny_pack.hpp) keeps one per weight block.
template <class TW>
struct SkinnyPanels {
  TW* data = nullptr;
  std::int64_t k = 0;
  std::int64_t n = 0;

  static constexpr std::int64_t width = skinny_detail::tile_cols;
  [[nodiscard]] static std::int64_t count(std::int64_t cols) {
    return (cols + width - 1) / width;
  }
  [[nodiscard]] static std::int64_t size(std::int64_t rows, std::int64_t cols) {
    return count(cols) * rows * width;
  }
  [[nodiscard]] TW* panel(std::int64_t p) const {
    return data + p * k * width;
  }
  operator SkinnyPanels<const TW>() const {  // NOLINT: as View<T> to View<const T>
    return {data, k, n};
  }
};

// out = W in the panel layout; out.data holds SkinnyPanels<TW>::size(w.rows, w.cols) elements.
// Row by row: each row of W is read front to back once and lands 16 elements in every panel,
// whose writes each advance by one row (a walk down the panels would touch a page per element).
template <class TW>
void pack_skinny_panels(SkinnyPanels<TW> out, View<const TW> w) {
  constexpr const char* op = "pack_skinny_panels";
  MMSPARSE_CHECK(out.k == w.rows && out.n == w.cols, op, "out", w.shape(), (Shape{out.k, out.n}));
  MMSPARSE_CHECK(w.rows <= 1 || w.stride >= w.cols, op, "w.stride", ">= w.cols", w.stride);
  constexpr std::int64_t width = SkinnyPanels<TW>::width;
  const std::int64_t panels = SkinnyPanels<TW>::count(w.cols);
  const std::int64_t full = w.cols / width;  // panels without zero padding
#pragma omp parallel if (w.rows * w.cols >= skinny_detail::parallel_min)
  {
    std::int64_t p0 = 0;
    std::int64_t p1 = panels;
#if defined(_OPENMP)
    p0 = panels * omp_get_thread_num() / omp_get_num_threads();
    p1 = panels * (omp_get_thread_num() + 1) / omp_get_num_threads();
#endif
    for (std::int64_t k = 0; k < w.rows; ++k) {
      const TW* row = w.row(k);
      for (std::int64_t p = p0; p < p1; ++p) {
        TW* dst = out.panel(p) + k * width;
        if (p < full) {
          std::copy(row + p * width, row + (p + 1) * width, dst);
        } else {
          std::copy(row + p * width, row + w.cols, dst);
          std::fill(dst + (w.cols - p * width), dst + width, TW{});
        }
      }
    }
  }
}

namespace skinny_detail {

// Panel-packed W: the same for the panels of one thread's tiles [n_begin, n_end), one panel at a
// time. With M <= tile_rows the whole of K accumulates in registers and the panel streams by once;
// otherwise K goes in panel_block_k slices: the first row chunk streams a slice into L1, and the
// others, which reuse it from there, fetch the next slice into L2 meanwhile.
template <class TW, class Done>
void panel_columns(std::int64_t m,
                   std::int64_t k,
                   const float* a,
                   std::int64_t lda,
                   SkinnyPanels<const TW> w,
                   std::int64_t n_begin,
                   std::int64_t n_end,
                   Done&& done) {
  const std::int64_t chunks = (m + tile_rows - 1) / tile_rows;
  const std::int64_t step = chunks == 1 ? k : panel_block_k;
  constexpr int next_slice_bytes = static_cast<int>(panel_block_k * tile_cols * sizeof(TW));
  float* acc = thread_buffer<float>(1, m * tile_cols);  // [M, 16]
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += tile_cols) {
    const TW* panel = w.panel(n0 / tile_cols);
    for (std::int64_t kb = 0; kb < k; kb += step) {
      const std::int64_t kc = std::min(step, k - kb);
      for (std::int64_t ch = 0; ch < chunks; ++ch) {
        const RowChunk r = row_chunk(m, chunks, ch);
        auto kernel = ch == 0 ? micro_kernel_rows<panel_prefetch_bytes, TW>
                              : micro_kernel_rows<-next_slice_bytes, TW>;
        kernel(r.mr,
               acc + r.r0 * tile_cols,
               std::int64_t{tile_cols},
               kb > 0,
               a + r.r0 * lda + kb,
               lda,
               panel + kb * tile_cols,
               std::int64_t{tile_cols},
               kc);
      }
    }
    done(0, m, n0, std::min(n_end, n0 + tile_cols), acc, std::int64_t{tile_cols}, std::int64_t{1});
  }
}

// What the walks share: checks of A and C, bf16 A widened once, 16-column tiles split over the
// threads, and the fold of float accumulators into C. `columns(a, lda, n_begin, n_end, done)`
// multiplies one thread's columns and calls done(i0, i1, j0, j1, acc, row_stride, col_stride) per
// block: the sum of row i and column j (i0 <= i < i1, j0 <= j < j1) is
// acc[(i - i0) row_stride + (j - j0) col_stride]. A walk takes at most max_rows rows.
template <class T, class Columns>
void drive(const char* op,
           View<T> c,
           View<const T> a,
           std::int64_t w_cols,
           double alpha,
           double beta,
           std::int64_t max_rows,
           Columns&& columns) {
  MMSPARSE_CHECK(
      a.rows <= max_rows, op, "a", "at most " + std::to_string(max_rows) + " rows", a.shape());
  MMSPARSE_CHECK(c.rows == a.rows && c.cols == w_cols, op, "c", (Shape{a.rows, w_cols}), c.shape());
  MMSPARSE_CHECK(a.rows <= 1 || a.stride >= a.cols, op, "a.stride", ">= a.cols", a.stride);
  MMSPARSE_CHECK(c.rows <= 1 || c.stride >= c.cols, op, "c.stride", ">= c.cols", c.stride);
  const std::int64_t m = c.rows;
  const std::int64_t n = c.cols;
  const std::int64_t k = a.cols;
  if (m == 0 || n == 0) {
    return;
  }
  const auto fa = static_cast<float>(alpha);
  const auto fb = static_cast<float>(beta);
  // C[:, j0:j1) = fa * acc + fb * C; beta = 0 never reads C (it may hold NaN).
  auto done = [&](std::int64_t i0,
                  std::int64_t i1,
                  std::int64_t j0,
                  std::int64_t j1,
                  const float* acc,
                  std::int64_t row_stride,
                  std::int64_t col_stride) {
    for (std::int64_t i = i0; i < i1; ++i) {
      T* row = c.row(i);
      const float* acc_row = acc + (i - i0) * row_stride;
      for (std::int64_t j = j0; j < j1; ++j) {
        const float v = fa * acc_row[(j - j0) * col_stride];
        row[j] = scalar_cast<T>(beta == 0.0 ? v : v + fb * scalar_cast<float>(row[j]));
      }
    }
  };
  if (k == 0) {
    const float zero[tile_cols] = {};
    for (std::int64_t j = 0; j < n; j += tile_cols) {
      done(0, m, j, std::min(n, j + tile_cols), zero, 0, 0);
    }
    return;
  }
  // A as float rows: the caller's memory, or widened once by the calling thread.
  const float* ap = nullptr;
  std::int64_t lda = 0;
  if constexpr (std::is_same_v<T, float>) {
    ap = a.data;
    lda = a.stride;
  } else {
    float* wide = thread_buffer<float>(2, m * k);
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < k; ++j) {
        wide[i * k + j] = scalar_cast<float>(a(i, j));
      }
    }
    ap = wide;
    lda = k;
  }
  const std::int64_t tiles = (n + tile_cols - 1) / tile_cols;
  int threads = 1;
#if defined(_OPENMP)
  if (m * n * k >= parallel_min && !omp_in_parallel()) {
    threads = static_cast<int>(std::min<std::int64_t>(omp_get_max_threads(), tiles));
  }
#endif
  auto run = [&](int t, int nt) {
    // Whole 16-column tiles per thread: no two threads write one cache line of C.
    const std::int64_t n_begin = std::min(n, tiles * t / nt * tile_cols);
    const std::int64_t n_end = std::min(n, tiles * (t + 1) / nt * tile_cols);
    if (n_begin < n_end) {
      columns(ap, lda, n_begin, n_end, done);
    }
  };
  if (threads <= 1) {
    run(0, 1);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
  run(omp_get_thread_num(), omp_get_num_threads());
#endif
}

}  // namespace skinny_detail

// C [M, N] = alpha A [M, K] W [K, N] + beta C for M <= skinny_max_rows (skinny_lane_max_rows for
// f32 W). A and C are float or bf16 (T), W float or bf16 (TW); products accumulate in float and C
// is rounded once. beta = 0 ignores what C held. C must not overlap A or W.
template <class T, class TW>
void skinny_gemm(View<T> c, View<const T> a, View<const TW> w, double alpha, double beta) {
  static_assert(skinny_supported_v<T> && skinny_supported_v<TW>,
                "skinny_gemm multiplies float or bf16; double goes to the GEMM provider");
  constexpr const char* op = "skinny_gemm";
  MMSPARSE_CHECK(w.rows == a.cols, op, "w", "rows = a.cols = " + std::to_string(a.cols), w.shape());
  MMSPARSE_CHECK(w.rows <= 1 || w.stride >= w.cols, op, "w.stride", ">= w.cols", w.stride);
  constexpr std::int64_t max_rows =
      std::is_same_v<TW, float> ? skinny_lane_max_rows : skinny_max_rows;
  skinny_detail::drive(op,
                       c,
                       a,
                       w.cols,
                       alpha,
                       beta,
                       max_rows,
                       [&](auto ap, auto lda, auto n0, auto n1, auto& done) {
                         if constexpr (std::is_same_v<TW, float>) {
                           skinny_detail::lane_columns(c.rows, a.cols, ap, lda, w, n0, n1, done);
                         } else {
                           skinny_detail::row_major_columns(
                               c.rows, a.cols, ap, lda, w, n0, n1, done);
                         }
                       });
}

// The same with W packed into panels (pack_skinny_panels), M <= skinny_panel_max_rows: each
// thread streams its panels as one contiguous run of memory.
template <class T, class TW>
void skinny_gemm(View<T> c, View<const T> a, SkinnyPanels<const TW> w, double alpha, double beta) {
  static_assert(skinny_supported_v<T> && skinny_supported_v<TW>,
                "skinny_gemm multiplies float or bf16; double goes to the GEMM provider");
  constexpr const char* op = "skinny_gemm";
  MMSPARSE_CHECK(w.k == a.cols, op, "w", "rows = a.cols = " + std::to_string(a.cols), w.k);
  skinny_detail::drive(op,
                       c,
                       a,
                       w.n,
                       alpha,
                       beta,
                       skinny_panel_max_rows,
                       [&](auto ap, auto lda, auto n0, auto n1, auto& done) {
                         skinny_detail::panel_columns(c.rows, a.cols, ap, lda, w, n0, n1, done);
                       });
}

}  // namespace mmsparse::cpu

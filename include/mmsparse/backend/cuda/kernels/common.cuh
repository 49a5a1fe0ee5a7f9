// mmsparse/backend/cuda/kernels/common.cuh
//
// What every kernel of the CUDA backend shares: the launch Context (stream,
// workspace arena, SM count), launch-shape helpers, 16-byte packs for vector
// loads, and accumulation in accum_t<T> (fp32 for bf16 storage: __nv_bfloat16
// and mmsparse::bf16 have the same bits, converted by the CUDA intrinsics).
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/memory.cuh>
#include <mmsparse/backend/workspace.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

static_assert(sizeof(bf16) == sizeof(__nv_bfloat16) && alignof(bf16) == alignof(__nv_bfloat16),
              "mmsparse::bf16 must have the layout of __nv_bfloat16");

// Where and how a launcher runs: every launch goes on `stream`; scratch comes from `workspace`.
struct Context {
  cudaStream_t stream = nullptr;
  Workspace<device_space>* workspace = nullptr;
  int sm_count = 1;
};

inline constexpr int block_threads = 256;

// Blocks for a grid-stride loop over `items` work items of `threads` each: enough to fill
// the GPU a few times over, never more than the items.
[[nodiscard]] inline unsigned grid_blocks(const Context& ctx, std::int64_t items, int threads) {
  const std::int64_t needed = ceil_div(std::max<std::int64_t>(items, 1), threads);
  return static_cast<unsigned>(std::min<std::int64_t>(needed, std::int64_t{ctx.sm_count} * 32));
}

// Blocks of a kernel that gives one warp to each row (block_threads per block).
[[nodiscard]] inline unsigned warp_row_blocks(const Context& ctx, std::int64_t rows) {
  return grid_blocks(ctx, rows, block_threads / 32);
}

// Threads of a block that walks one row of `units` work items: a multiple of a warp, <= 256.
[[nodiscard]] inline int row_threads(std::int64_t units) {
  return static_cast<int>(clamp_i64(round_up(units, 32), 32, block_threads));
}

// Grid-stride loops: for (auto i = thread_index(); i < n; i += thread_count()).
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE std::int64_t thread_index() {
  return std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
}
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE std::int64_t thread_count() {
  return std::int64_t{gridDim.x} * blockDim.x;
}
// Warp-per-row loops: for (auto r = warp_index(); r < rows; r += warp_count()).
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE std::int64_t warp_index() {
  return thread_index() / 32;
}
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE std::int64_t warp_count() {
  return thread_count() / 32;
}
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE int lane_index() {
  return static_cast<int>(threadIdx.x % 32);
}

// ---- scalars ----------------------------------------------------------------

template <class T>
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE accum_t<T> to_acc(T v) {
  if constexpr (std::is_same_v<T, bf16>) {
    __nv_bfloat16_raw raw;
    raw.x = v.bits;
    return __bfloat162float(__nv_bfloat16(raw));
  } else {
    return static_cast<accum_t<T>>(v);
  }
}

template <class T>
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE T from_acc(accum_t<T> v) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __nv_bfloat16_raw raw = __float2bfloat16_rn(v);
    bf16 out;
    out.bits = raw.x;
    return out;
  } else {
    return static_cast<T>(v);
  }
}

// Conversion between any two scalars through float (bf16) or directly.
template <class To, class From>
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, bf16>) {
    return static_cast<To>(to_acc(v));
  } else if constexpr (std::is_same_v<To, bf16>) {
    return from_acc<bf16>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

MMSPARSE_DEVICE MMSPARSE_FORCEINLINE float exp_acc(float x) {
  return expf(x);
}
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE double exp_acc(double x) {
  return exp(x);
}
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE float log_acc(float x) {
  return logf(x);
}
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE double log_acc(double x) {
  return log(x);
}
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE float sqrt_acc(float x) {
  return sqrtf(x);
}
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE double sqrt_acc(double x) {
  return sqrt(x);
}

// The overflow-free logistic function, as the CPU backend computes it.
template <class A>
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE A sigmoid_acc(A x) {
  if (x >= A{0}) {
    return A{1} / (A{1} + exp_acc(-x));
  }
  const A e = exp_acc(x);
  return e / (A{1} + e);
}

// ---- 16-byte packs ------------------------------------------------------------

template <class T>
struct alignas(16) Pack {
  static constexpr int size = static_cast<int>(16 / sizeof(T));
  T v[size];
};

[[nodiscard]] inline bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// True when every row of `v` can be read as whole 16-byte packs.
template <class T, class S>
[[nodiscard]] bool packable(View<T, S> v) {
  constexpr std::int64_t n = Pack<std::remove_const_t<T>>::size;
  return aligned16(v.data) && v.cols % n == 0 && (v.rows <= 1 || v.stride % n == 0);
}

// ---- warp reductions (fixed order: deterministic) ----------------------------

template <class A>
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <class A>
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE A warp_max(A v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// ---- block reductions (blockDim.x a multiple of 32; fixed order: deterministic) -----

// Room for one partial per warp, for any accumulator type.
struct BlockScratch {
  alignas(16) double slot[32];
};

// The sum of v over the block, returned to every thread.
template <class A>
MMSPARSE_DEVICE A block_sum(A v, BlockScratch& scratch) {
  auto* shared = reinterpret_cast<A*>(scratch.slot);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int warps = static_cast<int>(blockDim.x / 32);
  v = warp_sum(v);
  __syncthreads();  // the scratch may still be read by the previous reduction
  if (lane == 0) {
    shared[warp] = v;
  }
  __syncthreads();
  return warp_sum(lane < warps ? shared[lane] : A{});
}

// The maximum of v over the block, returned to every thread.
template <class A>
MMSPARSE_DEVICE A block_max(A v, BlockScratch& scratch) {
  auto* shared = reinterpret_cast<A*>(scratch.slot);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int warps = static_cast<int>(blockDim.x / 32);
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) {
    shared[warp] = v;
  }
  __syncthreads();
  return warp_max(lane < warps ? shared[lane] : shared[0]);
}

// Blocks of a kernel that gives one block to each row (grid-stride past the cap).
[[nodiscard]] inline unsigned row_blocks(const Context& ctx, std::int64_t rows) {
  return static_cast<unsigned>(std::clamp<std::int64_t>(rows, 1, std::int64_t{ctx.sm_count} * 16));
}

// ---- the generic 2-D launch ------------------------------------------------------

inline constexpr int tile_cols = 32;
inline constexpr int tile_rows = 8;

// Calls f(i, j) for every i < rows, j < units, with j contiguous across a warp.
template <class F>
__global__ void for_each_2d_kernel(std::int64_t rows, std::int64_t units, F f) {
  for (std::int64_t i = std::int64_t{blockIdx.y} * tile_rows + threadIdx.y; i < rows;
       i += std::int64_t{gridDim.y} * tile_rows) {
    for (std::int64_t j = std::int64_t{blockIdx.x} * tile_cols + threadIdx.x; j < units;
         j += std::int64_t{gridDim.x} * tile_cols) {
      f(i, j);
    }
  }
}

template <class F>
void for_each_2d(const Context& ctx, std::int64_t rows, std::int64_t units, F f) {
  if (rows == 0 || units == 0) {
    return;
  }
  const auto gx = static_cast<unsigned>(std::min<std::int64_t>(ceil_div(units, tile_cols), 1024));
  const std::int64_t budget = std::max<std::int64_t>(std::int64_t{ctx.sm_count} * 64 / gx, 1);
  const auto gy = static_cast<unsigned>(
      std::min<std::int64_t>({ceil_div(rows, tile_rows), budget, std::int64_t{65535}}));
  for_each_2d_kernel<<<dim3(gx, gy), dim3(tile_cols, tile_rows), 0, ctx.stream>>>(rows, units, f);
  MMSPARSE_CUDA_CHECK_LAUNCH(for_each_2d_kernel);
}

}  // namespace mmsparse::gpu

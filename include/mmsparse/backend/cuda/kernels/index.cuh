// mmsparse/backend/cuda/kernels/index.cuh
//
// Integer and 1-D index maps of the CUDA backend (backend/cpu/{gather_scatter,sort,
// router_kernels}.hpp): gather_values, scatter_values, pad_segments, dense_slots, iota_mod,
// map_index, transpose. Host segment offsets are staged into the arena by an async copy.
// Indices outside the target range are treated as padding (never read or written).
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cstdint>
#include <span>

#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/backend/workspace.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

template <class U>
__global__ void gather_values_kernel(Span<U, device_space> dst,
                                     Span<const U, device_space> src,
                                     const std::int32_t* __restrict__ index,
                                     U fill) {
  for (std::int64_t r = thread_index(); r < dst.size; r += thread_count()) {
    const std::int32_t i = index[r];
    dst[r] = (i < 0 || i >= src.size) ? fill : src[i];
  }
}

template <class U>
__global__ void scatter_values_kernel(Span<U, device_space> dst,
                                      Span<const U, device_space> src,
                                      const std::int32_t* __restrict__ index) {
  for (std::int64_t r = thread_index(); r < src.size; r += thread_count()) {
    const std::int32_t i = index[r];
    if (i >= 0 && i < dst.size) {
      dst[i] = src[r];
    }
  }
}

template <int = 0>
__global__ void pad_segments_kernel(std::int32_t* __restrict__ slot,
                                    const std::int64_t* __restrict__ dst_offsets,
                                    const std::int64_t* __restrict__ src_offsets,
                                    std::int64_t segments) {
  const std::int64_t first = dst_offsets[0];
  for (std::int64_t k = thread_index(); k < dst_offsets[segments] - first; k += thread_count()) {
    const std::int64_t r = first + k;
    const std::int64_t e = segment_of(dst_offsets, segments, r);
    const std::int64_t i = r - dst_offsets[e];
    const std::int64_t count = src_offsets[e + 1] - src_offsets[e];
    slot[r] = i < count ? static_cast<std::int32_t>(src_offsets[e] + i) : std::int32_t{-1};
  }
}

template <int = 0>
__global__ void dense_slots_kernel(std::int32_t* __restrict__ grid,
                                   const std::int32_t* __restrict__ key,
                                   const std::int64_t* __restrict__ offsets,
                                   std::int64_t segments,
                                   std::int64_t n) {
  const std::int64_t first = offsets[0];
  for (std::int64_t k = thread_index(); k < offsets[segments] - first; k += thread_count()) {
    const std::int64_t s = first + k;
    const std::int64_t e = segment_of(offsets, segments, s);
    const std::int32_t column = key[s];
    if (column >= 0 && column < n) {
      grid[e * n + column] = static_cast<std::int32_t>(s);
    }
  }
}

template <int = 0>
__global__ void iota_mod_kernel(Span<std::int32_t, device_space> index, std::int64_t n) {
  for (std::int64_t r = thread_index(); r < index.size; r += thread_count()) {
    index[r] = static_cast<std::int32_t>(r % n);
  }
}

template <int = 0>
__global__ void map_index_kernel(Span<std::int32_t, device_space> out,
                                 Span<const std::int32_t, device_space> in,
                                 std::int64_t divisor,
                                 std::int64_t offset) {
  for (std::int64_t i = thread_index(); i < in.size; i += thread_count()) {
    const std::int32_t v = in[i];
    out[i] = v < 0 ? v : static_cast<std::int32_t>(v / divisor + offset);
  }
}

template <class U>
struct TransposeOp {
  View<U, device_space> dst;
  View<const U, device_space> src;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    dst(j, i) = src(i, j);
  }
};

}  // namespace detail

// E + 1 host offsets -> device, inside the caller's workspace frame (stream-ordered copy).
[[nodiscard]] inline Span<const std::int64_t, device_space> stage_offsets(
    const Context& ctx, std::span<const std::int64_t> offsets) {
  auto dev = ctx.workspace->take_span<std::int64_t>(static_cast<std::int64_t>(offsets.size()));
  if (!offsets.empty()) {
    MMSPARSE_CUDA_CHECK(cudaMemcpyAsync(dev.data,
                                        offsets.data(),
                                        offsets.size() * sizeof(std::int64_t),
                                        cudaMemcpyHostToDevice,
                                        ctx.stream));
  }
  return dev;
}

template <class U>
void gather_values(const Context& ctx,
                   Span<U, device_space> dst,
                   Span<const U, device_space> src,
                   Span<const std::int32_t, device_space> index,
                   U fill) {
  if (dst.size == 0) {
    return;
  }
  detail::gather_values_kernel<<<grid_blocks(ctx, dst.size, block_threads),
                                 block_threads,
                                 0,
                                 ctx.stream>>>(dst, src, index.data, fill);
  MMSPARSE_CUDA_CHECK_LAUNCH(gather_values_kernel);
}

template <class U>
void scatter_values(const Context& ctx,
                    Span<U, device_space> dst,
                    Span<const U, device_space> src,
                    Span<const std::int32_t, device_space> index) {
  if (src.size == 0) {
    return;
  }
  detail::scatter_values_kernel<<<grid_blocks(ctx, src.size, block_threads),
                                  block_threads,
                                  0,
                                  ctx.stream>>>(dst, src, index.data);
  MMSPARSE_CUDA_CHECK_LAUNCH(scatter_values_kernel);
}

// As cpu::pad_segments: destination segment e gets src_offsets[e], ... then -1 padding.
inline void pad_segments(const Context& ctx,
                         Span<std::int32_t, device_space> slot,
                         std::span<const std::int64_t> dst_offsets,
                         std::span<const std::int64_t> src_offsets) {
  const auto segments = static_cast<std::int64_t>(src_offsets.size()) - 1;
  const std::int64_t rows = dst_offsets.back() - dst_offsets.front();
  if (segments <= 0 || rows <= 0) {
    return;
  }
  auto frame = ctx.workspace->frame();
  const auto dst = stage_offsets(ctx, dst_offsets);
  const auto src = stage_offsets(ctx, src_offsets);
  detail::
      pad_segments_kernel<<<grid_blocks(ctx, rows, block_threads), block_threads, 0, ctx.stream>>>(
          slot.data, dst.data, src.data, segments);
  MMSPARSE_CUDA_CHECK_LAUNCH(pad_segments_kernel);
}

// As cpu::dense_slots: grid [segments * n] = -1, then grid[e * n + key[s]] = s.
inline void dense_slots(const Context& ctx,
                        Span<std::int32_t, device_space> grid,
                        Span<const std::int32_t, device_space> key,
                        std::span<const std::int64_t> offsets,
                        std::int64_t n) {
  const auto segments = static_cast<std::int64_t>(offsets.size()) - 1;
  if (segments <= 0 || n <= 0) {
    return;
  }
  MMSPARSE_CUDA_CHECK(cudaMemsetAsync(grid.data,
                                      0xff,
                                      static_cast<std::size_t>(segments * n) * sizeof(std::int32_t),
                                      ctx.stream));  // all bits set: -1
  const std::int64_t items = offsets.back() - offsets.front();
  if (items <= 0) {
    return;
  }
  auto frame = ctx.workspace->frame();
  const auto dev = stage_offsets(ctx, offsets);
  detail::
      dense_slots_kernel<<<grid_blocks(ctx, items, block_threads), block_threads, 0, ctx.stream>>>(
          grid.data, key.data, dev.data, segments, n);
  MMSPARSE_CUDA_CHECK_LAUNCH(dense_slots_kernel);
}

inline void iota_mod(const Context& ctx, Span<std::int32_t, device_space> index, std::int64_t n) {
  if (index.size == 0) {
    return;
  }
  detail::iota_mod_kernel<<<grid_blocks(ctx, index.size, block_threads),
                            block_threads,
                            0,
                            ctx.stream>>>(index, n);
  MMSPARSE_CUDA_CHECK_LAUNCH(iota_mod_kernel);
}

inline void map_index(const Context& ctx,
                      Span<std::int32_t, device_space> out,
                      Span<const std::int32_t, device_space> in,
                      std::int64_t divisor,
                      std::int64_t offset) {
  if (in.size == 0) {
    return;
  }
  detail::
      map_index_kernel<<<grid_blocks(ctx, in.size, block_threads), block_threads, 0, ctx.stream>>>(
          out, in, divisor, offset);
  MMSPARSE_CUDA_CHECK_LAUNCH(map_index_kernel);
}

// dst [c, r] = src [r, c]^T
template <class U>
void transpose(const Context& ctx, View<U, device_space> dst, View<const U, device_space> src) {
  for_each_2d(ctx, src.rows, src.cols, detail::TransposeOp<U>{dst, src});
}

}  // namespace mmsparse::gpu

// mmsparse/backend/cuda/kernels/topk.cuh
//
// Top-k selection for routing with the CPU backend's tie rule (PAPERS.md §4.6): a higher
// score wins, equal scores go to the lower index (-0 and +0 are equal).
//   topk_rows: per token its k best experts, best first (one thread per token, k passes).
//   topk_cols: per expert its C best tokens, in ascending token order: one stable radix sort
//              of (expert, descending score) keys over all N x E scores, then one sort of
//              the C winners of each expert by token. Scores must be finite (routers check).
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cub/device/device_radix_sort.cuh>

#include <mmsparse/backend/cuda/cub_ops.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/backend/workspace.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

template <class W>
__global__ void topk_rows_kernel(std::int32_t* __restrict__ index,
                                 W* __restrict__ value,
                                 View<const W, device_space> scores,
                                 std::int64_t k) {
  for (std::int64_t t = thread_index(); t < scores.rows; t += thread_count()) {
    const W* s = scores.row(t);
    W last{};
    std::int32_t last_index = -1;
    for (std::int64_t j = 0; j < k; ++j) {
      // The best entry ranked after the previous pick in (score desc, index asc) order.
      std::int32_t best = -1;
      W best_score{};
      for (std::int32_t i = 0; i < scores.cols; ++i) {
        const W v = s[i];
        if (last_index >= 0 && !ranks_before(last, last_index, v, i)) {
          continue;
        }
        if (best < 0 || ranks_before(v, i, best_score, best)) {
          best = i;
          best_score = v;
        }
      }
      index[t * k + j] = best;
      value[t * k + j] = best_score;
      last = best_score;
      last_index = best;
    }
  }
}

// An unsigned key whose ascending order is the descending order of the float (-0 == +0).
MMSPARSE_DEVICE MMSPARSE_FORCEINLINE std::uint32_t descending_key(float s) {
  const std::uint32_t u = s == 0.0f ? 0u : __float_as_uint(s);
  const std::uint32_t ascending = (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
  return ~ascending;
}

// Item (t, e) of the row-major scores -> key (e, descending score), value t. Items are laid
// out token-major, so among equal keys the lower token comes first and stays first.
template <class Key>
__global__ void topk_cols_keys_kernel(Key* __restrict__ key,
                                      std::int32_t* __restrict__ token,
                                      View<const float, device_space> scores) {
  const std::int64_t n = scores.rows * scores.cols;
  for (std::int64_t i = thread_index(); i < n; i += thread_count()) {
    const std::int64_t t = i / scores.cols;
    const std::int64_t e = i % scores.cols;
    key[i] = (static_cast<Key>(e) << 32) | descending_key(scores(t, e));
    token[i] = static_cast<std::int32_t>(t);
  }
}

// The first c tokens of each expert's sorted segment -> key e * N + t (sorts by token).
template <class Key>
__global__ void topk_cols_winners_kernel(Key* __restrict__ key,
                                         const std::int32_t* __restrict__ token,
                                         std::int64_t tokens,
                                         std::int64_t experts,
                                         std::int64_t c) {
  const std::int64_t n = experts * c;
  for (std::int64_t i = thread_index(); i < n; i += thread_count()) {
    const std::int64_t e = i / c;
    const std::int64_t t = token[e * tokens + i % c];
    key[i] = static_cast<Key>(e * tokens + t);
  }
}

template <class Key>
__global__ void topk_cols_index_kernel(std::int32_t* __restrict__ index,
                                       const Key* __restrict__ key,
                                       std::int64_t tokens,
                                       std::int64_t experts,
                                       std::int64_t c) {
  const std::int64_t n = experts * c;
  for (std::int64_t i = thread_index(); i < n; i += thread_count()) {
    index[i] = static_cast<std::int32_t>(static_cast<std::int64_t>(key[i]) - (i / c) * tokens);
  }
}

struct TopkColsScratch {
  std::size_t cub_bytes = 0;
  std::size_t total = 0;
};

[[nodiscard]] inline TopkColsScratch topk_cols_scratch(std::int64_t tokens,
                                                       std::int64_t experts,
                                                       std::int64_t c) {
  using WS = Workspace<device_space>;
  const std::int64_t all = tokens * experts;
  const std::int64_t winners = experts * c;
  std::size_t first = 0;
  std::size_t second = 0;
  MMSPARSE_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(nullptr,
                                      first,
                                      static_cast<const std::uint64_t*>(nullptr),
                                      static_cast<std::uint64_t*>(nullptr),
                                      static_cast<const std::int32_t*>(nullptr),
                                      static_cast<std::int32_t*>(nullptr),
                                      static_cast<int>(all),
                                      0,
                                      32 + key_bits(static_cast<std::uint64_t>(experts - 1))));
  MMSPARSE_CUDA_CHECK(
      cub::DeviceRadixSort::SortKeys(nullptr,
                                     second,
                                     static_cast<const std::uint64_t*>(nullptr),
                                     static_cast<std::uint64_t*>(nullptr),
                                     static_cast<int>(winners),
                                     0,
                                     key_bits(static_cast<std::uint64_t>(all - 1))));
  TopkColsScratch s;
  s.cub_bytes = std::max({first, second, std::size_t{1}});
  s.total = 2 * WS::bytes_for<std::uint64_t>(all) + 2 * WS::bytes_for<std::int32_t>(all) +
            2 * WS::bytes_for<std::uint64_t>(winners) +
            WS::bytes_for<std::byte>(static_cast<std::int64_t>(s.cub_bytes));
  return s;
}

}  // namespace detail

// index [N * k], value [N * k]: token t's k best experts, best first.
template <class W>
void topk_rows(const Context& ctx,
               Span<std::int32_t, device_space> index,
               Span<W, device_space> value,
               View<const W, device_space> scores,
               std::int64_t k) {
  if (scores.rows == 0 || k == 0) {
    return;
  }
  detail::topk_rows_kernel<<<grid_blocks(ctx, scores.rows, 128), 128, 0, ctx.stream>>>(
      index.data, value.data, scores, k);
  MMSPARSE_CUDA_CHECK_LAUNCH(topk_rows_kernel);
}

// Workspace bytes topk_cols takes for scores [tokens, experts] and capacity c.
[[nodiscard]] inline std::size_t topk_cols_workspace_bytes(std::int64_t tokens,
                                                           std::int64_t experts,
                                                           std::int64_t c) {
  if (tokens == 0 || experts == 0 || c == 0) {
    return 0;
  }
  return detail::topk_cols_scratch(tokens, experts, c).total;
}

// index [E * c]: expert e's c best tokens at [e * c, (e + 1) * c), ascending token order.
template <class W>
void topk_cols(const Context& ctx,
               Span<std::int32_t, device_space> index,
               View<const W, device_space> scores,
               std::int64_t c) {
  static_assert(std::is_same_v<W, float>, "CUDA topk_cols sorts fp32 router scores");
  const std::int64_t tokens = scores.rows;
  const std::int64_t experts = scores.cols;
  if (tokens == 0 || experts == 0 || c == 0) {
    return;
  }
  MMSPARSE_CHECK(tokens * experts < (std::int64_t{1} << 31) && experts < (std::int64_t{1} << 31),
                 "CudaBackend::topk_cols",
                 "scores",
                 "fewer than 2^31 entries",
                 scores.shape());
  const auto scratch = detail::topk_cols_scratch(tokens, experts, c);
  const std::int64_t all = tokens * experts;
  const std::int64_t winners = experts * c;
  auto& ws = *ctx.workspace;
  auto frame = ws.frame();
  auto key_in = ws.take_span<std::uint64_t>(all);   // [N * E]
  auto key_out = ws.take_span<std::uint64_t>(all);  // [N * E], expert-major after the sort
  auto token_in = ws.take_span<std::int32_t>(all);
  auto token_out = ws.take_span<std::int32_t>(all);
  auto win_in = ws.take_span<std::uint64_t>(winners);  // [E * c]
  auto win_out = ws.take_span<std::uint64_t>(winners);
  auto temp = ws.take_span<std::byte>(static_cast<std::int64_t>(scratch.cub_bytes));

  detail::
      topk_cols_keys_kernel<<<grid_blocks(ctx, all, block_threads), block_threads, 0, ctx.stream>>>(
          key_in.data, token_in.data, scores);
  MMSPARSE_CUDA_CHECK_LAUNCH(topk_cols_keys_kernel);
  std::size_t bytes = scratch.cub_bytes;
  MMSPARSE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.data,
      bytes,
      key_in.data,
      key_out.data,
      token_in.data,
      token_out.data,
      static_cast<int>(all),
      0,
      32 + detail::key_bits(static_cast<std::uint64_t>(experts - 1)),
      ctx.stream));
  detail::topk_cols_winners_kernel<<<grid_blocks(ctx, winners, block_threads),
                                     block_threads,
                                     0,
                                     ctx.stream>>>(win_in.data, token_out.data, tokens, experts, c);
  MMSPARSE_CUDA_CHECK_LAUNCH(topk_cols_winners_kernel);
  bytes = scratch.cub_bytes;
  MMSPARSE_CUDA_CHECK(
      cub::DeviceRadixSort::SortKeys(temp.data,
                                     bytes,
                                     win_in.data,
                                     win_out.data,
                                     static_cast<int>(winners),
                                     0,
                                     detail::key_bits(static_cast<std::uint64_t>(all - 1)),
                                     ctx.stream));
  detail::topk_cols_index_kernel<<<grid_blocks(ctx, winners, block_threads),
                                   block_threads,
                                   0,
                                   ctx.stream>>>(index.data, win_out.data, tokens, experts, c);
  MMSPARSE_CUDA_CHECK_LAUNCH(topk_cols_index_kernel);
}

}  // namespace mmsparse::gpu

// mmsparse/backend/cuda/cub_ops.cuh
//
// The CUB collectives of the CUDA backend, two-phase calls hidden behind launchers
// whose scratch comes from the workspace arena (STYLE.md §12: CUB's API stays inside):
//   bucket_sort_device  histogram + exclusive scan + stable scatter (a radix sort on the
//                       bucket id, stable, so items keep ascending order in their bucket)
//   bucket_sort         the same, with the offsets copied to the host: a stream sync.
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <cub/device/device_histogram.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/backend/workspace.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

// Bits a radix sort needs for keys in [0, max_key].
[[nodiscard]] inline int key_bits(std::uint64_t max_key) {
  return std::max(1, static_cast<int>(std::bit_width(max_key)));
}

// keys outside [0, buckets) -> bucket `buckets` (left out, sorted last); item ids 0..n-1.
template <class Bucket>
__global__ void bucket_keys_kernel(Bucket* __restrict__ bucket,
                                   std::int32_t* __restrict__ item,
                                   const std::int32_t* __restrict__ keys,
                                   std::int64_t n,
                                   std::int64_t buckets) {
  for (std::int64_t i = thread_index(); i < n; i += thread_count()) {
    const std::int32_t k = keys[i];
    bucket[i] = (k < 0 || k >= buckets) ? static_cast<Bucket>(buckets) : static_cast<Bucket>(k);
    item[i] = static_cast<std::int32_t>(i);
  }
}

// Scratch of one bucket sort, laid out the same way by the query and the call.
struct BucketSortScratch {
  std::size_t cub_bytes = 0;
  std::size_t total = 0;
};

[[nodiscard]] inline BucketSortScratch bucket_sort_scratch(std::int64_t n, std::int64_t buckets) {
  using WS = Workspace<device_space>;
  BucketSortScratch s;
  const auto items = static_cast<int>(n);
  std::size_t sort_bytes = 0;
  std::size_t hist_bytes = 0;
  std::size_t scan_bytes = 0;
  MMSPARSE_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(nullptr,
                                      sort_bytes,
                                      static_cast<const std::uint32_t*>(nullptr),
                                      static_cast<std::uint32_t*>(nullptr),
                                      static_cast<const std::int32_t*>(nullptr),
                                      static_cast<std::int32_t*>(nullptr),
                                      items,
                                      0,
                                      key_bits(static_cast<std::uint64_t>(buckets))));
  MMSPARSE_CUDA_CHECK(
      cub::DeviceHistogram::HistogramEven(nullptr,
                                          hist_bytes,
                                          static_cast<const std::uint32_t*>(nullptr),
                                          static_cast<std::int32_t*>(nullptr),
                                          static_cast<int>(buckets + 2),
                                          std::uint32_t{0},
                                          static_cast<std::uint32_t>(buckets + 1),
                                          items));
  MMSPARSE_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr,
                                                    scan_bytes,
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr),
                                                    static_cast<int>(buckets + 1)));
  s.cub_bytes = std::max({sort_bytes, hist_bytes, scan_bytes, std::size_t{1}});
  s.total = 2 * WS::bytes_for<std::uint32_t>(n) + WS::bytes_for<std::int32_t>(n) +
            WS::bytes_for<std::int32_t>(buckets + 1) +
            WS::bytes_for<std::byte>(static_cast<std::int64_t>(s.cub_bytes));
  return s;
}

}  // namespace detail

// Workspace bytes bucket_sort_device takes for n items and `buckets` buckets.
[[nodiscard]] inline std::size_t bucket_sort_workspace_bytes(std::int64_t n, std::int64_t buckets) {
  return n == 0 ? 0 : detail::bucket_sort_scratch(n, buckets).total;
}

// order [n]: items of bucket 0, then bucket 1, ..., each in ascending item order, then the
// items left out (keys < 0 or >= buckets). offsets [buckets + 1] on the device:
// bucket b is order[offsets[b] .. offsets[b+1]); offsets[buckets] = items kept. No host sync.
inline void bucket_sort_device(const Context& ctx,
                               Span<std::int32_t, device_space> order,
                               Span<std::int32_t, device_space> offsets,
                               Span<const std::int32_t, device_space> keys,
                               std::int64_t buckets) {
  const std::int64_t n = keys.size;
  MMSPARSE_ASSERT(order.size == n && offsets.size == buckets + 1);
  MMSPARSE_CHECK(n < (std::int64_t{1} << 31) && buckets < (std::int64_t{1} << 31) - 2,
                 "bucket_sort",
                 "keys",
                 "fewer than 2^31 items and buckets",
                 n);
  if (n == 0) {
    MMSPARSE_CUDA_CHECK(
        cudaMemsetAsync(offsets.data,
                        0,
                        static_cast<std::size_t>(offsets.size) * sizeof(std::int32_t),
                        ctx.stream));
    return;
  }
  const auto scratch = detail::bucket_sort_scratch(n, buckets);
  auto& ws = *ctx.workspace;
  auto frame = ws.frame();
  auto bucket_in = ws.take_span<std::uint32_t>(n);
  auto bucket_out = ws.take_span<std::uint32_t>(n);
  auto item = ws.take_span<std::int32_t>(n);
  auto counts = ws.take_span<std::int32_t>(buckets + 1);
  auto temp = ws.take_span<std::byte>(static_cast<std::int64_t>(scratch.cub_bytes));

  detail::bucket_keys_kernel<<<grid_blocks(ctx, n, block_threads), block_threads, 0, ctx.stream>>>(
      bucket_in.data, item.data, keys.data, n, buckets);
  MMSPARSE_CUDA_CHECK_LAUNCH(bucket_keys_kernel);

  const auto items = static_cast<int>(n);
  std::size_t bytes = scratch.cub_bytes;
  // Stable scatter: LSD radix sort keeps equal buckets in ascending item order.
  MMSPARSE_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(temp.data,
                                      bytes,
                                      bucket_in.data,
                                      bucket_out.data,
                                      item.data,
                                      order.data,
                                      items,
                                      0,
                                      detail::key_bits(static_cast<std::uint64_t>(buckets)),
                                      ctx.stream));
  bytes = scratch.cub_bytes;
  MMSPARSE_CUDA_CHECK(cub::DeviceHistogram::HistogramEven(temp.data,
                                                          bytes,
                                                          bucket_in.data,
                                                          counts.data,
                                                          static_cast<int>(buckets + 2),
                                                          std::uint32_t{0},
                                                          static_cast<std::uint32_t>(buckets + 1),
                                                          items,
                                                          ctx.stream));
  bytes = scratch.cub_bytes;
  MMSPARSE_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(
      temp.data, bytes, counts.data, offsets.data, static_cast<int>(buckets + 1), ctx.stream));
}

// Counting sort of item ids by key, as cpu::bucket_sort: `order` receives the kept items
// (bucket by bucket, ascending inside a bucket), `offsets` (host) the bucket bounds.
// Waits for the stream: the host needs the bucket sizes (they size the grouped GEMM).
inline void bucket_sort(const Context& ctx,
                        Span<std::int32_t, device_space> order,
                        std::vector<std::int64_t>& offsets,
                        Span<const std::int32_t, device_space> keys,
                        std::int64_t buckets) {
  const std::int64_t n = keys.size;
  auto& ws = *ctx.workspace;
  auto frame = ws.frame();
  auto all = ws.take_span<std::int32_t>(n);
  auto dev_offsets = ws.take_span<std::int32_t>(buckets + 1);
  bucket_sort_device(ctx, all, dev_offsets, keys, buckets);

  std::vector<std::int32_t> host(static_cast<std::size_t>(buckets + 1));
  MMSPARSE_CUDA_CHECK(cudaMemcpyAsync(host.data(),
                                      dev_offsets.data,
                                      host.size() * sizeof(std::int32_t),
                                      cudaMemcpyDeviceToHost,
                                      ctx.stream));
  MMSPARSE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  const std::int64_t kept = host.back();
  MMSPARSE_CHECK(order.size >= kept,
                 "CudaBackend::bucket_sort",
                 "order",
                 "room for every kept item (" + std::to_string(kept) + ")",
                 order.size);
  offsets.assign(host.begin(), host.end());
  if (kept > 0) {
    MMSPARSE_CUDA_CHECK(cudaMemcpyAsync(order.data,
                                        all.data,
                                        static_cast<std::size_t>(kept) * sizeof(std::int32_t),
                                        cudaMemcpyDeviceToDevice,
                                        ctx.stream));
  }
}

// Workspace bytes of bucket_sort (device scratch plus the sorted copy).
[[nodiscard]] inline std::size_t bucket_sort_host_workspace_bytes(std::int64_t n,
                                                                  std::int64_t buckets) {
  using WS = Workspace<device_space>;
  return WS::bytes_for<std::int32_t>(n) + WS::bytes_for<std::int32_t>(buckets + 1) +
         bucket_sort_workspace_bytes(n, buckets);
}

}  // namespace mmsparse::gpu

#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>

namespace mm = mmsparse;

TEST_CASE("bucket_sort is a stable counting sort that drops negative keys", "[backend][cpu]") {
  mm::CpuBackend<float> b;
  mm::Rng rng(8);
  const std::int64_t n = 500;
  const std::int64_t buckets = 6;
  std::vector<std::int32_t> keys(n);
  for (auto& k : keys) {
    k = static_cast<std::int32_t>(rng.integer(-1, buckets));
  }
  keys[0] = 5;  // bucket 4 may be empty or not; make bucket 3 certainly empty:
  for (auto& k : keys) {
    if (k == 3) {
      k = 2;
    }
  }
  std::vector<std::int32_t> order(n, -7);
  std::vector<std::int64_t> offsets;
  b.bucket_sort(mm::Span<std::int32_t>(order.data(), n),
                offsets,
                mm::Span<const std::int32_t>(keys.data(), n),
                buckets);
  REQUIRE(offsets.size() == buckets + 1);
  REQUIRE(offsets[0] == 0);
  REQUIRE(offsets[3] == offsets[4]);  // empty bucket
  std::vector<std::int32_t> want;
  for (std::int32_t bucket = 0; bucket < buckets; ++bucket) {
    REQUIRE(offsets[bucket] == static_cast<std::int64_t>(want.size()));
    for (std::int32_t i = 0; i < n; ++i) {
      if (keys[i] == bucket) {
        want.push_back(i);
      }
    }
  }
  REQUIRE(offsets[buckets] == static_cast<std::int64_t>(want.size()));
  for (std::size_t i = 0; i < want.size(); ++i) {
    REQUIRE(order[i] == want[i]);
  }
}

TEST_CASE("pad_segments lays segments out at new offsets with -1 padding", "[backend][cpu]") {
  mm::CpuBackend<float> b;
  const std::vector<std::int64_t> src = {0, 2, 2, 5};  // segments of 2, 0, 3 items
  const std::vector<std::int64_t> dst = {0, 3, 6, 9};  // capacity 3 each
  std::vector<std::int32_t> slot(9, 77);
  b.pad_segments(mm::Span<std::int32_t>(slot.data(), 9), dst, src);
  CHECK(slot == std::vector<std::int32_t>{0, 1, -1, -1, -1, -1, 2, 3, 4});
  std::vector<std::int32_t> same(5, 77);  // equal offsets: the identity
  b.pad_segments(mm::Span<std::int32_t>(same.data(), 5), src, src);
  CHECK(same == std::vector<std::int32_t>{0, 1, 2, 3, 4});
}

TEST_CASE("dense_slots and iota_mod build a dense [segments, n] grid", "[backend][cpu]") {
  mm::CpuBackend<float> b;
  const std::vector<std::int64_t> offsets = {0, 2, 2, 5};  // segment 1 empty
  const std::vector<std::int32_t> key = {1, 3, 0, 2, 3};
  std::vector<std::int32_t> grid(12, 77);
  b.dense_slots(mm::Span<std::int32_t>(grid.data(), 12),
                mm::Span<const std::int32_t>(key.data(), 5),
                offsets,
                4);
  CHECK(grid == std::vector<std::int32_t>{-1, 0, -1, 1, -1, -1, -1, -1, 2, -1, 3, 4});
  std::vector<std::int32_t> tokens(12, 77);
  b.iota_mod(mm::Span<std::int32_t>(tokens.data(), 12), 4);
  CHECK(tokens == std::vector<std::int32_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3});
}

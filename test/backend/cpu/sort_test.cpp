#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

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
  b.bucket_sort(mm::Span<std::int32_t>(order.data(), n), offsets,
                mm::Span<const std::int32_t>(keys.data(), n), buckets);
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

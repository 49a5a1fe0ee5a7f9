// mmsparse/backend/cpu/sort.hpp
//
// Counting sort of items into buckets (histogram + exclusive scan + stable
// scatter): order lists the items of bucket 0, then bucket 1, ..., each in
// ascending item order; offsets[b] .. offsets[b+1] delimit bucket b. Items with
// a negative key (dropped tokens) are left out.
// Segment index maps for the dispatch schemes (dispatch/): pad_segments lays
// segments out at new offsets with -1 padding, dense_slots places them on a
// dense [segments, n] grid keyed by item, iota_mod numbers rows modulo n.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

inline void bucket_sort(Span<std::int32_t> order,
                        std::vector<std::int64_t>& offsets,
                        Span<const std::int32_t> keys,
                        std::int64_t buckets) {
  offsets.assign(static_cast<std::size_t>(buckets + 1), 0);
  for (std::int64_t i = 0; i < keys.size; ++i) {
    if (keys[i] >= 0) {
      ++offsets[static_cast<std::size_t>(keys[i]) + 1];
    }
  }
  for (std::int64_t b = 0; b < buckets; ++b) {
    offsets[static_cast<std::size_t>(b + 1)] += offsets[static_cast<std::size_t>(b)];
  }
  std::vector<std::int64_t> cursor(offsets.begin(), offsets.end() - 1);
  for (std::int64_t i = 0; i < keys.size; ++i) {
    if (keys[i] >= 0) {
      order[cursor[static_cast<std::size_t>(keys[i])]++] = static_cast<std::int32_t>(i);
    }
  }
}

// For each segment e: rows [dst_offsets[e], dst_offsets[e+1]) of `slot` get the source ids
// src_offsets[e], src_offsets[e] + 1, ... while the source segment lasts, then -1 (padding).
// Every destination segment must be at least as long as its source segment.
inline void pad_segments(Span<std::int32_t> slot,
                         std::span<const std::int64_t> dst_offsets,
                         std::span<const std::int64_t> src_offsets) {
  const auto segments = static_cast<std::int64_t>(src_offsets.size()) - 1;
#pragma omp parallel for schedule(static) if (slot.size > (1 << 16))
  for (std::int64_t e = 0; e < segments; ++e) {
    const auto u = static_cast<std::size_t>(e);
    const std::int64_t src = src_offsets[u];
    const std::int64_t count = src_offsets[u + 1] - src;
    const std::int64_t begin = dst_offsets[u];
    const std::int64_t end = dst_offsets[u + 1];
    for (std::int64_t i = 0; i < count; ++i) {
      slot[begin + i] = static_cast<std::int32_t>(src + i);
    }
    std::fill(slot.data + begin + count, slot.data + end, std::int32_t{-1});
  }
}

// Dense [segments, n] grid of source ids: grid[e * n + key[s]] = s for every item s of
// segment e (items [offsets[e], offsets[e+1])), -1 where segment e holds no item of that key.
// Keys lie in [0, n) and are distinct within a segment.
inline void dense_slots(Span<std::int32_t> grid,
                        Span<const std::int32_t> key,
                        std::span<const std::int64_t> offsets,
                        std::int64_t n) {
  const auto segments = static_cast<std::int64_t>(offsets.size()) - 1;
#pragma omp parallel for schedule(static) if (segments * n > (1 << 16))
  for (std::int64_t e = 0; e < segments; ++e) {
    std::int32_t* row = grid.data + e * n;
    std::fill(row, row + n, std::int32_t{-1});
    const auto u = static_cast<std::size_t>(e);
    for (std::int64_t s = offsets[u]; s < offsets[u + 1]; ++s) {
      row[key[s]] = static_cast<std::int32_t>(s);
    }
  }
}

// index[r] = r mod n: the token of every row of a dense [segments, n] grid.
inline void iota_mod(Span<std::int32_t> index, std::int64_t n) {
#pragma omp parallel for schedule(static) if (index.size > (1 << 16))
  for (std::int64_t r = 0; r < index.size; ++r) {
    index[r] = static_cast<std::int32_t>(r % n);
  }
}

}  // namespace mmsparse::cpu

// mmsparse/backend/cpu/sort.hpp
//
// Counting sort of items into buckets (histogram + exclusive scan + stable
// scatter): order lists the items of bucket 0, then bucket 1, ..., each in
// ascending item order; offsets[b] .. offsets[b+1] delimit bucket b. Items with
// a negative key (dropped tokens) are left out.
#pragma once

#include <cstdint>
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

}  // namespace mmsparse::cpu

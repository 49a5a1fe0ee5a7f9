// mmsparse/backend/cpu/topk.hpp
//
// Top-k selection for routing, with one tie rule on every backend: a higher
// score wins, and among equal scores the lower index wins (PAPERS.md §4.6).
//   topk_rows: per token, its k best experts (token choice), best first.
//   topk_cols: per expert, its C best tokens (expert choice, MoD), in ascending
//              token order so gathers walk memory forwards.
// Scores must be finite (routers check this before selecting).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

template <class W>
void topk_rows(Span<std::int32_t> index, Span<W> value, View<const W> scores, std::int64_t k) {
  const std::int64_t n = scores.rows;
  const std::int64_t e = scores.cols;
#pragma omp parallel for schedule(static) if (n * e > (1 << 14))
  for (std::int64_t t = 0; t < n; ++t) {
    std::vector<std::int32_t> order(static_cast<std::size_t>(e));
    std::iota(order.begin(), order.end(), 0);
    const W* s = scores.row(t);
    std::partial_sort(
        order.begin(), order.begin() + k, order.end(), [s](std::int32_t a, std::int32_t b) {
          return s[a] > s[b] || (s[a] == s[b] && a < b);
        });
    for (std::int64_t j = 0; j < k; ++j) {
      index[t * k + j] = order[static_cast<std::size_t>(j)];
      value[t * k + j] = s[order[static_cast<std::size_t>(j)]];
    }
  }
}

template <class W>
void topk_cols(Span<std::int32_t> index, View<const W> scores, std::int64_t c) {
  const std::int64_t n = scores.rows;
  const std::int64_t e = scores.cols;
#pragma omp parallel for schedule(dynamic) if (n * e > (1 << 14))
  for (std::int64_t x = 0; x < e; ++x) {
    std::vector<std::int32_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    auto better = [&](std::int32_t a, std::int32_t b) {
      const W sa = scores(a, x);
      const W sb = scores(b, x);
      return sa > sb || (sa == sb && a < b);
    };
    if (c < n) {
      std::nth_element(order.begin(), order.begin() + c, order.end(), better);
    }
    std::sort(order.begin(), order.begin() + c);
    std::copy(order.begin(), order.begin() + c, index.data + x * c);
  }
}

}  // namespace mmsparse::cpu

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>

namespace mm = mmsparse;

namespace {

// Reference: full sort by (score desc, index asc).
std::vector<std::int32_t> ranked(const std::vector<double>& s) {
  std::vector<std::int32_t> order(s.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return s[a] > s[b]; });
  return order;
}

}  // namespace

TEST_CASE("topk_rows picks each row's k best, best first, lower index on ties", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(5);
  const std::int64_t n = 50;
  const std::int64_t e = 7;
  mm::Tensor<double> scores(n, e);
  for (std::int64_t i = 0; i < scores.size(); ++i) {
    scores.data()[i] = static_cast<double>(rng.integer(0, 4));  // many exact ties
  }
  for (std::int64_t k : {1, 2, 7}) {
    std::vector<std::int32_t> idx(n * k);
    std::vector<double> val(n * k);
    b.topk_rows(mm::Span<std::int32_t>(idx.data(), n * k),
                mm::Span<double>(val.data(), n * k),
                mm::View<const double>(scores),
                k);
    for (std::int64_t t = 0; t < n; ++t) {
      std::vector<double> row(scores.data() + t * e, scores.data() + (t + 1) * e);
      auto want = ranked(row);
      for (std::int64_t j = 0; j < k; ++j) {
        REQUIRE(idx[t * k + j] == want[j]);
        REQUIRE(val[t * k + j] == row[want[j]]);
      }
    }
  }
}

TEST_CASE("topk_cols picks each column's C best rows in ascending row order", "[backend][cpu]") {
  mm::CpuBackend<float> b;
  mm::Rng rng(6);
  const std::int64_t n = 64;
  const std::int64_t e = 5;
  mm::Tensor<float> scores(n, e);
  for (std::int64_t i = 0; i < scores.size(); ++i) {
    scores.data()[i] = static_cast<float>(rng.integer(0, 6)) * 0.25f;
  }
  for (std::int64_t c : {1, 13, 64}) {
    std::vector<std::int32_t> idx(e * c);
    b.topk_cols(mm::Span<std::int32_t>(idx.data(), e * c), mm::View<const float>(scores), c);
    for (std::int64_t x = 0; x < e; ++x) {
      std::vector<double> col(n);
      for (std::int64_t t = 0; t < n; ++t) {
        col[t] = scores(t, x);
      }
      auto want = ranked(col);
      want.resize(c);
      std::sort(want.begin(), want.end());
      for (std::int64_t j = 0; j < c; ++j) {
        REQUIRE(idx[x * c + j] == want[j]);
      }
    }
  }
}

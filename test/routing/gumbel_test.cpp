// test/routing/gumbel_test.cpp
//
// Gumbel-sigmoid noise: the counter layout, the host reference against the backend, independence
// of row order and batch split (counter-based), reproducibility per seed, and the Logistic(0, 1)
// moments (mean 0, variance pi^2 / 3).
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/routing/gumbel.hpp>

using namespace mmsparse;

TEST_CASE("gumbel: counter is token * total_columns + column", "[routing][cpu]") {
  REQUIRE(gumbel_counter(0, 0, 8) == 0u);
  REQUIRE(gumbel_counter(3, 5, 8) == 29u);
  REQUIRE(gumbel_noise(7, 3, 5, 8) == logistic_noise(7, 29));
}

TEMPLATE_TEST_CASE("gumbel: the backend adds the host reference draw",
                   "[routing][cpu]",
                   float,
                   double) {
  using W = router_t<TestType>;
  CpuBackend<TestType> b;
  // the rows of tokens {6, 2, 9}, router columns [3, 7) of 10
  const std::vector<std::int32_t> tokens{6, 2, 9};
  Tensor<W> z(3, 4);
  z.fill(W{0});
  add_gumbel_noise(b, z.view(), Span<const std::int32_t>(tokens.data(), 3), 11, 10, 3);
  for (std::int64_t r = 0; r < 3; ++r) {
    for (std::int64_t c = 0; c < 4; ++c) {
      REQUIRE(
          static_cast<double>(z(r, c)) ==
          Approx(gumbel_noise(11, tokens[static_cast<std::size_t>(r)], 3 + c, 10)).epsilon(1e-6));
    }
  }
  // the same (token, column) draws the same value from a whole-batch call
  Tensor<W> all(10, 10);
  all.fill(W{0});
  add_gumbel_noise(b, all.view(), Span<const std::int32_t>{}, 11, 10, 0);
  for (std::int64_t r = 0; r < 3; ++r) {
    for (std::int64_t c = 0; c < 4; ++c) {
      REQUIRE(z(r, c) == all(tokens[static_cast<std::size_t>(r)], 3 + c));
    }
  }
}

TEST_CASE("gumbel: reproducible per seed, different across seeds, Logistic(0, 1) moments",
          "[routing][cpu]") {
  CpuBackend<double> b;
  const std::int64_t n = 20000;
  Tensor<double> a(n, 1);
  Tensor<double> again(n, 1);
  Tensor<double> other(n, 1);
  a.fill(0.0);
  again.fill(0.0);
  other.fill(0.0);
  add_gumbel_noise(b, a.view(), Span<const std::int32_t>{}, 1, 1, 0);
  add_gumbel_noise(b, again.view(), Span<const std::int32_t>{}, 1, 1, 0);
  add_gumbel_noise(b, other.view(), Span<const std::int32_t>{}, 2, 1, 0);
  double mean = 0.0;
  double var = 0.0;
  std::int64_t same = 0;
  std::set<double> distinct;
  for (std::int64_t i = 0; i < n; ++i) {
    REQUIRE(std::isfinite(a[i]));
    REQUIRE(a[i] == again[i]);
    same += a[i] == other[i];
    mean += a[i] / static_cast<double>(n);
    distinct.insert(a[i]);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    var += (a[i] - mean) * (a[i] - mean) / static_cast<double>(n - 1);
  }
  const double pi = 3.141592653589793;
  REQUIRE(same == 0);
  REQUIRE(static_cast<std::int64_t>(distinct.size()) == n);
  REQUIRE(std::fabs(mean) < 0.05);                      // sd of the mean: 1.81 / sqrt(n) = 0.013
  REQUIRE(var == Approx(pi * pi / 3.0).epsilon(0.05));  // 3.29
}

#include <cmath>
#include <cstdint>

#include <catch2/catch.hpp>

#include <mmsparse/core/rng.hpp>

namespace mm = mmsparse;

TEST_CASE("counter-based draws are reproducible and independent of order", "[core][cpu]") {
  REQUIRE(mm::hash64(1, 5) == mm::hash64(1, 5));
  REQUIRE(mm::hash64(1, 5) != mm::hash64(2, 5));
  REQUIRE(mm::hash64(1, 5) != mm::hash64(1, 6));
  mm::Rng a(42);
  mm::Rng b(42);
  for (int i = 0; i < 100; ++i) {
    REQUIRE(a.uniform() == b.uniform());
  }
}

TEST_CASE("uniform_open stays in (0, 1) with the right mean", "[core][cpu]") {
  double sum = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double u = mm::uniform_open(3, static_cast<std::uint64_t>(i));
    REQUIRE(u > 0.0);
    REQUIRE(u < 1.0);
    sum += u;
  }
  REQUIRE(std::fabs(sum / n - 0.5) < 5e-3);
}

TEST_CASE("logistic noise has mean 0 and variance pi^2 / 3", "[core][cpu]") {
  double s = 0;
  double s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double x = mm::logistic_noise(11, static_cast<std::uint64_t>(i));
    REQUIRE(std::isfinite(x));
    s += x;
    s2 += x * x;
  }
  const double mean = s / n;
  const double var = s2 / n - mean * mean;
  REQUIRE(std::fabs(mean) < 0.03);
  REQUIRE(std::fabs(var - 3.289868133696453) < 0.05);
}

TEST_CASE("Rng::normal has unit variance", "[core][cpu]") {
  mm::Rng rng(5);
  double s = 0;
  double s2 = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double x = rng.normal();
    s += x;
    s2 += x * x;
  }
  REQUIRE(std::fabs(s / n) < 0.02);
  REQUIRE(std::fabs(s2 / n - 1.0) < 0.02);
  for (int i = 0; i < 1000; ++i) {
    const auto k = rng.integer(-3, 4);
    REQUIRE(k >= -3);
    REQUIRE(k < 4);
  }
}

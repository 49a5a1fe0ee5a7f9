// Warm-up + cosine schedule: shape, endpoints, and argument errors.
#include <cmath>

#include <catch2/catch.hpp>

#include <mmsparse/train/schedule.hpp>

using namespace mmsparse;

TEST_CASE("schedule: linear warm-up then cosine to min_lr", "[train][cpu]") {
  const WarmupCosine s{.peak_lr = 1e-3, .min_lr = 1e-5, .warmup = 10, .total = 110};
  CHECK(s.lr_at(0) == Approx(1e-4));
  CHECK(s.lr_at(4) == Approx(5e-4));
  CHECK(s.lr_at(9) == Approx(1e-3));
  CHECK(s.lr_at(10) == Approx(1e-3));                        // the decay starts at the peak
  CHECK(s.lr_at(60) == Approx(1e-5 + 0.5 * (1e-3 - 1e-5)));  // half way: the cosine's midpoint
  const double at85 = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1.0 + std::cos(3.141592653589793 * 0.75));
  CHECK(s.lr_at(85) == Approx(at85));
  CHECK(s.lr_at(110) == 1e-5);
  CHECK(s.lr_at(5000) == 1e-5);
  for (int t = 11; t < 110; ++t) {
    CHECK(s.lr_at(t) < s.lr_at(t - 1));  // strictly decreasing after the warm-up
  }
  const WarmupCosine no_warmup{.peak_lr = 2.0, .min_lr = 0.0, .warmup = 0, .total = 4};
  CHECK(no_warmup.lr_at(0) == 2.0);
  CHECK(no_warmup.lr_at(2) == Approx(1.0));
}

TEST_CASE("schedule: argument errors", "[train][cpu]") {
  const WarmupCosine s{.peak_lr = 1.0, .min_lr = 0.0, .warmup = 5, .total = 5};
  REQUIRE_THROWS_WITH(s.lr_at(1), Catch::Contains("[WarmupCosine::lr_at] total"));
  const WarmupCosine ok{.peak_lr = 1.0, .min_lr = 0.0, .warmup = 0, .total = 5};
  REQUIRE_THROWS_WITH(ok.lr_at(-1), Catch::Contains("step"));
}

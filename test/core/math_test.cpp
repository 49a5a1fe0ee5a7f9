#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>

#include <mmsparse/core/math.hpp>

namespace mm = mmsparse;

TEST_CASE("expert-choice capacity: clamp(ceil(cf * N / E), 1, N), 0 for an empty group",
          "[core][cpu]") {
  REQUIRE(mm::expert_choice_capacity(1.0, 4096, 4) == 1024);
  REQUIRE(mm::expert_choice_capacity(1.0, 10, 4) == 3);    // ceil(2.5)
  REQUIRE(mm::expert_choice_capacity(1.0, 3, 8) == 1);     // ceil(0.375) = 1
  REQUIRE(mm::expert_choice_capacity(0.01, 10, 4) == 1);   // rounds to 0 -> 1
  REQUIRE(mm::expert_choice_capacity(16.0, 10, 4) == 10);  // above N -> N
  REQUIRE(mm::expert_choice_capacity(1.0, 0, 4) == 0);
  // 0.1f * 30 is 3.0000000447 in float: still 3, not 4
  REQUIRE(mm::expert_choice_capacity(static_cast<double>(0.1f) * 10.0, 30, 10) == 3);
  // Brute force against the definition in exact rational arithmetic (cf = p / q).
  for (std::int64_t n = 1; n < 60; ++n) {
    for (std::int64_t e = 1; e < 9; ++e) {
      for (std::int64_t p = 1; p < 9; ++p) {
        const std::int64_t q = 4;
        const std::int64_t exact = (p * n + q * e - 1) / (q * e);  // ceil(p n / (q e))
        const std::int64_t want = std::min(std::max<std::int64_t>(exact, 1), n);
        REQUIRE(mm::expert_choice_capacity(static_cast<double>(p) / q, n, e) == want);
      }
    }
  }
}

TEST_CASE("token-choice capacity", "[core][cpu]") {
  REQUIRE(mm::token_choice_capacity(1.25, 2, 4096, 8, false) == 1280);
  REQUIRE(mm::token_choice_capacity(1.0, 1, 10, 4, false) == 3);
  REQUIRE(mm::token_choice_capacity(0.001, 1, 10, 4, false) == 1);
  REQUIRE(mm::token_choice_capacity(1.0, 2, 10, 4, true) == 10);
}

TEST_CASE("depth capacity: clamp(ceil(c * N), 1, N)", "[core][cpu]") {
  REQUIRE(mm::depth_capacity(0.25, 4096) == 1024);
  REQUIRE(mm::depth_capacity(0.125, 10) == 2);
  REQUIRE(mm::depth_capacity(0.01, 10) == 1);
  REQUIRE(mm::depth_capacity(1.0, 10) == 10);
  REQUIRE(mm::depth_capacity(0.25, 0) == 0);
}

TEST_CASE("SwiGLU hidden width: (2/3) * 4d rounded up to 256", "[core][cpu]") {
  REQUIRE(mm::swiglu_hidden(512) == 1536);   // 1365 -> 1536 (MoMa 90M)
  REQUIRE(mm::swiglu_hidden(1024) == 2816);  // 2730 -> 2816
  REQUIRE(mm::swiglu_hidden(4096) == 11008);
  REQUIRE(mm::swiglu_hidden(96, 32) == 256);
  REQUIRE(mm::ceil_div(7, 2) == 4);
  REQUIRE(mm::round_up(257, 256) == 512);
}

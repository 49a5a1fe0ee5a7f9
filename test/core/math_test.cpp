#include <cmath>
#include <cstdint>

#include <catch2/catch.hpp>

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

TEST_CASE("top-k tie rule: higher score first, then the lower index", "[core][cpu]") {
  STATIC_REQUIRE(mm::ranks_before(2.0f, 5, 1.0f, 0));
  STATIC_REQUIRE(!mm::ranks_before(1.0f, 0, 2.0f, 5));
  STATIC_REQUIRE(mm::ranks_before(1.0, 3, 1.0, 4));
  STATIC_REQUIRE(!mm::ranks_before(1.0, 4, 1.0, 3));
  STATIC_REQUIRE(!mm::ranks_before(1.0, 3, 1.0, 3));  // irreflexive: a strict order
  REQUIRE(mm::ranks_before(-0.0f, 1, 0.0f, 2));       // signed zeros tie
  REQUIRE(!mm::ranks_before(0.0f, 2, -0.0f, 1));
  // A strict total order on distinct (score, index) pairs: exactly one of a<b, b<a.
  const float scores[] = {0.5f, -1.0f, 0.5f, 2.0f, -0.0f, 0.0f, 0.5f};
  for (std::int64_t a = 0; a < 7; ++a) {
    for (std::int64_t b = 0; b < 7; ++b) {
      const bool ab = mm::ranks_before(scores[a], a, scores[b], b);
      const bool ba = mm::ranks_before(scores[b], b, scores[a], a);
      REQUIRE((a == b ? !ab && !ba : ab != ba));
    }
  }
}

TEST_CASE("segment_of finds the segment holding an item, skipping empty ones", "[core][cpu]") {
  static constexpr std::int64_t offsets[] = {0, 3, 3, 3, 7, 8, 8, 10};  // 7 segments, 3 empty
  constexpr std::int64_t segments = 7;
  for (std::int64_t i = 0; i < 10; ++i) {
    std::int64_t want = -1;  // by definition: the e with offsets[e] <= i < offsets[e + 1]
    for (std::int64_t e = 0; e < segments; ++e) {
      if (offsets[e] <= i && i < offsets[e + 1]) {
        want = e;
      }
    }
    REQUIRE(mm::segment_of(offsets, segments, i) == want);
  }
  const std::int64_t shifted[] = {5, 6, 9};  // segments need not start at 0
  REQUIRE(mm::segment_of(shifted, 2, 5) == 0);
  REQUIRE(mm::segment_of(shifted, 2, 8) == 1);
  STATIC_REQUIRE(mm::segment_of(offsets, segments, 9) == 6);
}

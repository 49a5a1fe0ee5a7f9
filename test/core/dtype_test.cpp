#include <cmath>
#include <cstdint>
#include <limits>

#include <catch2/catch.hpp>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/rng.hpp>

namespace mm = mmsparse;

TEST_CASE("bf16 round-trips representable values exactly", "[core][cpu]") {
  for (float f : {0.0f, 1.0f, -2.0f, 0.5f, 3.0f, 65280.0f, -0.15625f}) {
    REQUIRE(static_cast<float>(mm::bf16(f)) == f);
  }
}

TEST_CASE("bf16 rounds to nearest even with relative error <= 2^-8", "[core][cpu]") {
  mm::Rng rng(7);
  for (int i = 0; i < 10000; ++i) {
    const auto f = static_cast<float>(rng.normal() * 100.0);
    const float r = static_cast<float>(mm::bf16(f));
    REQUIRE(std::fabs(r - f) <= std::ldexp(std::fabs(f), -8));
  }
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  REQUIRE(static_cast<float>(mm::bf16(1.0f + 0x1.0p-8f)) == 1.0f);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6.
  REQUIRE(static_cast<float>(mm::bf16(1.0f + 3 * 0x1.0p-8f)) == 1.0f + 0x1.0p-6f);
}

TEST_CASE("bf16 keeps infinities and NaN", "[core][cpu]") {
  const float inf = std::numeric_limits<float>::infinity();
  REQUIRE(static_cast<float>(mm::bf16(inf)) == inf);
  REQUIRE(static_cast<float>(mm::bf16(-inf)) == -inf);
  REQUIRE(std::isnan(static_cast<float>(mm::bf16(std::nanf("")))));
}

TEST_CASE("router_t is never narrower than float", "[core][cpu]") {
  STATIC_REQUIRE(std::is_same_v<mm::router_t<mm::bf16>, float>);
  STATIC_REQUIRE(std::is_same_v<mm::router_t<float>, float>);
  STATIC_REQUIRE(std::is_same_v<mm::router_t<double>, double>);
  REQUIRE(mm::dtype_name<mm::bf16>() == "bf16");
}

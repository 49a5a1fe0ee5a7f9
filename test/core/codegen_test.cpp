// The build's compiler flags against a known g++ miscompile: with AVX-512 enabled, g++ 12.2's
// SLP vectorizer builds the constant {8, 8, 8, 0} of four 64-bit integers as a broadcast of 8.
// cmake/MmsparseTargets.cmake adds -fno-tree-slp-vectorize where -march=native enables AVX-512;
// this test fails on such a machine without it (the routing tests' expected counts were the
// first casualty).
#include <cstddef>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

namespace {

// Out of line, so the constant is built at run time, as in a test's expected value.
[[gnu::noinline]] std::vector<std::int64_t> counts_with_a_trailing_zero() {
  return std::vector<std::int64_t>{8, 8, 8, 0};
}

[[gnu::noinline]] std::vector<std::int64_t> counts_with_zeros_at_both_ends() {
  return std::vector<std::int64_t>{0, 8, 8, 0};
}

// Lane i of a four-lane constant against its value, one scalar at a time: an expected vector
// written as a constant could be miscompiled the same way and hide the fault.
void check_lanes(const std::vector<std::int64_t>& got, std::int64_t first, std::int64_t last) {
  REQUIRE(got.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    INFO("lane " << i);
    CHECK(got[i] == (i == 0 ? first : i == 3 ? last : 8));
  }
}

}  // namespace

TEST_CASE("Vector constants keep their zero lanes (g++ AVX-512 SLP miscompile)", "[core][cpu]") {
  check_lanes(counts_with_a_trailing_zero(), 8, 0);
  check_lanes(counts_with_zeros_at_both_ends(), 0, 0);
}

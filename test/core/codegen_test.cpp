// The build's compiler flags against a known g++ miscompile: with AVX-512 enabled, g++ 12.2's
// SLP vectorizer builds the constant {8, 8, 8, 0} of four 64-bit integers as a broadcast of 8.
// cmake/MmsparseTargets.cmake adds -fno-tree-slp-vectorize where -march=native enables AVX-512;
// this test fails on such a machine without it (the routing tests' expected counts were the
// first casualty).
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

}  // namespace

TEST_CASE("Vector constants keep their zero lanes (g++ AVX-512 SLP miscompile)", "[core][cpu]") {
  const auto a = counts_with_a_trailing_zero();
  REQUIRE(a.size() == 4);
  CHECK(a[0] == 8);
  CHECK(a[1] == 8);
  CHECK(a[2] == 8);
  CHECK(a[3] == 0);
  const auto b = counts_with_zeros_at_both_ends();
  REQUIRE(b.size() == 4);
  CHECK(b[0] == 0);
  CHECK(b[1] == 8);
  CHECK(b[2] == 8);
  CHECK(b[3] == 0);
}

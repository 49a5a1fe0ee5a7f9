#include <string>

#include <catch2/catch.hpp>

#include <mmsparse/core/error.hpp>

namespace mm = mmsparse;

TEST_CASE("MMSPARSE_CHECK throws an Error naming op, argument, expected and actual",
          "[core][cpu]") {
  const int got = 3;
  try {
    MMSPARSE_CHECK(got == 4, "layer::forward", "x", "4 columns", got);
    FAIL("no exception");
  } catch (const mm::Error& e) {
    REQUIRE(std::string(e.what()) == "[layer::forward] x: expected 4 columns, got 3");
  }
  REQUIRE_NOTHROW([] { MMSPARSE_CHECK(true, "op", "arg", 1, 2); }());
}

TEST_CASE("Error is an invalid_argument", "[core][cpu]") {
  REQUIRE_THROWS_AS([] { MMSPARSE_CHECK(false, "op", "arg", 1, 2); }(), std::invalid_argument);
}

TEST_CASE("MMSPARSE_CHECK evaluates its message only on failure", "[core][cpu]") {
  int evaluated = 0;
  auto actual = [&] {
    ++evaluated;
    return 1;
  };
  MMSPARSE_CHECK(true, "op", "arg", 1, actual());
  REQUIRE(evaluated == 0);
  REQUIRE_THROWS([&] { MMSPARSE_CHECK(false, "op", "arg", 1, actual()); }());
  REQUIRE(evaluated == 1);
}

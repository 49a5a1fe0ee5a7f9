#include <cstdint>

#include <catch2/catch.hpp>

#include <mmsparse/backend/workspace.hpp>

namespace mm = mmsparse;

TEST_CASE("workspace frames return their buffers and the arena settles", "[backend][cpu]") {
  mm::Workspace<mm::host_space> ws;
  auto pass = [&] {
    auto f = ws.frame();
    auto a = ws.take<float>(100, 64);
    auto b = ws.take<double>(10, 10);
    {
      auto inner = ws.frame();
      auto c = ws.take<int>(1000, 1);
      c(999, 0) = 1;
    }
    a(99, 63) = 1.0f;
    b(9, 9) = 2.0;
    REQUIRE(reinterpret_cast<std::uintptr_t>(a.data) % mm::Workspace<mm::host_space>::alignment ==
            0);
    REQUIRE(reinterpret_cast<std::uintptr_t>(b.data) % mm::Workspace<mm::host_space>::alignment ==
            0);
  };
  pass();
  pass();
  const auto allocations = ws.allocations();
  for (int i = 0; i < 5; ++i) {
    pass();
  }
  REQUIRE(ws.allocations() == allocations);  // steady state: nothing allocated
  REQUIRE(ws.high_water() >= 100 * 64 * sizeof(float) + 100 * sizeof(double));
}

TEST_CASE("workspace reserve sizes the arena up front", "[backend][cpu]") {
  mm::Workspace<mm::host_space> ws;
  ws.reserve(1 << 20);
  const auto allocations = ws.allocations();
  {
    auto f = ws.frame();
    auto a = ws.take<float>(1000, 200);
    a(0, 0) = 1.0f;
  }
  REQUIRE(ws.allocations() == allocations);
  auto f = ws.frame();
  REQUIRE_THROWS_AS(ws.reserve(1 << 22), mm::Error);
}

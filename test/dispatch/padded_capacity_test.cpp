// Tests of dispatch/padded_capacity.hpp: an [E, C] buffer with expert e's slots first in its block
// and zero padding after them; C the largest segment or a fixed capacity.
#include <algorithm>
#include <cstdint>
#include <string>

#include <catch2/catch.hpp>

#include "dispatch/dispatch_checks.hpp"
#include <mmsparse/dispatch/padded_capacity.hpp>

namespace mm = mmsparse;

template <class W>
std::int64_t largest_segment(const mm::RoutingPlan<W>& plan) {
  std::int64_t c = 0;
  for (std::int64_t e = 0; e < plan.num_experts; ++e) {
    c = std::max(c, plan.tokens_of(e));
  }
  return c;
}

TEMPLATE_TEST_CASE("PaddedCapacity pads every expert to the largest segment",
                   "[dispatch][cpu]",
                   float,
                   double) {
  using W = mm::router_t<TestType>;
  const mm::PaddedCapacity scheme{};
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    auto plan = mm::test::random_plan<W>(41, 5, 0.35, seed, /*empty_expert=*/2);
    const std::int64_t c = largest_segment(plan);
    REQUIRE(scheme.capacity(plan) == c);
    REQUIRE(scheme.rows(plan) == 5 * c);
    mm::CpuBackend<TestType> b;
    mm::test::LayoutStorage<W> storage(scheme.rows(plan));
    mm::make_layout(b, storage.layout, scheme, plan);
    const auto& layout = storage.layout;
    for (std::int64_t e = 0; e <= 5; ++e) {
      REQUIRE(layout.offsets[e] == e * c);
    }
    for (std::int64_t e = 0; e < 5; ++e) {  // slots first, in plan order, then padding
      for (std::int64_t i = 0; i < c; ++i) {
        const std::int32_t want =
            i < plan.tokens_of(e) ? static_cast<std::int32_t>(plan.offsets[e] + i) : -1;
        REQUIRE(layout.slot[e * c + i] == want);
      }
    }
    mm::test::check_layout(layout, plan, [](std::int64_t) { return -1; });
    mm::test::check_round_trip<TestType>(scheme, plan, 7, seed + 20);
  }
}

TEMPLATE_TEST_CASE("PaddedCapacity with a fixed capacity", "[dispatch][cpu]", float, double) {
  using W = mm::router_t<TestType>;
  auto plan = mm::test::random_plan<W>(30, 4, 0.4, 31);
  const std::int64_t largest = largest_segment(plan);
  SECTION("a capacity above the largest segment adds padding rows") {
    const mm::PaddedCapacity scheme{{largest + 3}};
    REQUIRE(scheme.rows(plan) == 4 * (largest + 3));
    mm::CpuBackend<TestType> b;
    mm::test::LayoutStorage<W> storage(scheme.rows(plan));
    mm::make_layout(b, storage.layout, scheme, plan);
    mm::test::check_layout(storage.layout, plan, [](std::int64_t) { return -1; });
    mm::test::check_round_trip<TestType>(scheme, plan, 6, 32);
  }
  SECTION("a capacity below the largest segment would drop tokens: rejected") {
    const mm::PaddedCapacity scheme{{largest - 1}};
    try {
      (void)scheme.rows(plan);
      FAIL("no exception");
    } catch (const mm::Error& e) {
      REQUIRE(std::string(e.what()).find("[PaddedCapacity] capacity") != std::string::npos);
    }
  }
  SECTION("a negative capacity is rejected") {
    const mm::PaddedCapacity scheme{{-1}};
    REQUIRE_THROWS_AS(scheme.rows(plan), mm::Error);
  }
}

TEMPLATE_TEST_CASE("PaddedCapacity edge cases", "[dispatch][cpu]", float, double) {
  using W = mm::router_t<TestType>;
  const mm::PaddedCapacity scheme{};
  SECTION("no tokens") {
    auto plan = mm::test::random_plan<W>(0, 3, 0.5, 41);
    REQUIRE(scheme.rows(plan) == 0);
    mm::test::check_round_trip<TestType>(scheme, plan, 3, 42);
  }
  SECTION("one expert holds every token, the others none") {
    auto plan = mm::test::random_plan<W>(9, 1, 1.0, 43);
    mm::test::check_round_trip<TestType>(scheme, plan, 3, 44);
  }
  SECTION("all experts empty but one") {
    auto plan = mm::test::random_plan<W>(12, 3, 0.5, 45, /*empty_expert=*/0);
    mm::test::check_round_trip<TestType>(scheme, plan, 3, 46);
  }
}

// Tests of dispatch/sorted_gather.hpp: the buffer is the plan itself (row r = slot r), and the
// shared gather / combine / backward agree with naive loops over the plan.
#include <cstdint>

#include <catch2/catch.hpp>

#include "dispatch/dispatch_checks.hpp"
#include <mmsparse/dispatch/sorted_gather.hpp>

namespace mm = mmsparse;

TEMPLATE_TEST_CASE("SortedGather lays out the plan's slots in order",
                   "[dispatch][cpu]",
                   float,
                   double) {
  using W = mm::router_t<TestType>;
  const mm::SortedGather scheme{};
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    auto plan = mm::test::random_plan<W>(37, 6, 0.3, seed, /*empty_expert=*/static_cast<int>(seed));
    REQUIRE(scheme.rows(plan) == plan.slots());
    mm::CpuBackend<TestType> b;
    mm::test::LayoutStorage<W> storage(scheme.rows(plan));
    mm::make_layout(b, storage.layout, scheme, plan);
    REQUIRE(storage.layout.offsets == plan.offsets);
    for (std::int64_t r = 0; r < storage.layout.rows(); ++r) {
      REQUIRE(storage.layout.slot[r] == r);
    }
    mm::test::check_layout(storage.layout, plan, [](std::int64_t) { return -1; });
    mm::test::check_round_trip<TestType>(scheme, plan, 9, seed + 10);
  }
}

TEMPLATE_TEST_CASE("SortedGather handles tokens with several experts, none, and empty plans",
                   "[dispatch][cpu]",
                   float,
                   double) {
  using W = mm::router_t<TestType>;
  const mm::SortedGather scheme{};
  SECTION("dense plan: every token in every expert") {
    auto plan = mm::test::random_plan<W>(11, 4, 1.0, 5);
    REQUIRE(plan.slots() == 44);
    mm::test::check_round_trip<TestType>(scheme, plan, 5, 6);
  }
  SECTION("sparse plan: most tokens in no expert") {
    auto plan = mm::test::random_plan<W>(50, 3, 0.05, 7);
    mm::test::check_round_trip<TestType>(scheme, plan, 4, 8);
  }
  SECTION("no tokens") {
    auto plan = mm::test::random_plan<W>(0, 3, 0.5, 9);
    REQUIRE(scheme.rows(plan) == 0);
    mm::test::check_round_trip<TestType>(scheme, plan, 4, 10);
  }
  SECTION("tokens but no slots") {
    auto plan = mm::test::random_plan<W>(6, 2, 0.0, 11);
    REQUIRE(scheme.rows(plan) == 0);
    mm::test::check_round_trip<TestType>(scheme, plan, 4, 12);
  }
}

TEST_CASE("make_layout rejects arrays of the wrong size", "[dispatch][cpu]") {
  auto plan = mm::test::random_plan<float>(10, 3, 0.5, 13);
  mm::CpuBackend<float> b;
  mm::test::LayoutStorage<float> storage(plan.slots() + 1);
  try {
    mm::make_layout(b, storage.layout, mm::SortedGather{}, plan);
    FAIL("no exception");
  } catch (const mm::Error& e) {
    REQUIRE(std::string(e.what()).find("[make_layout] layout") != std::string::npos);
  }
  REQUIRE(storage.slot[0] == -7);  // nothing written
}

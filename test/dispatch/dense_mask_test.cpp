// Tests of dispatch/dense_mask.hpp: rows [E * N], row e*N + t reads token t, gate 0 where the plan
// did not select (e, t).
#include <cstdint>

#include <catch2/catch.hpp>

#include "dispatch/dispatch_checks.hpp"
#include <mmsparse/dispatch/dense_mask.hpp>

namespace mm = mmsparse;

TEMPLATE_TEST_CASE("DenseMask runs every expert on every token", "[dispatch][cpu]", float, double) {
  using W = mm::router_t<TestType>;
  const mm::DenseMask scheme{};
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    const std::int64_t n = 23;
    auto plan = mm::test::random_plan<W>(n, 4, 0.4, seed, /*empty_expert=*/1);
    REQUIRE(scheme.rows(plan) == 4 * n);
    mm::CpuBackend<TestType> b;
    mm::test::LayoutStorage<W> storage(scheme.rows(plan));
    mm::make_layout(b, storage.layout, scheme, plan);
    const auto& layout = storage.layout;
    for (std::int64_t e = 0; e <= 4; ++e) {
      REQUIRE(layout.offsets[e] == e * n);
    }
    for (std::int64_t r = 0; r < layout.rows(); ++r) {
      REQUIRE(layout.token[r] == r % n);
    }
    // The grid: (e, t) holds the slot of token t in expert e's segment.
    for (std::int64_t e = 0; e < 4; ++e) {
      for (std::int64_t s = plan.offsets[e]; s < plan.offsets[e + 1]; ++s) {
        REQUIRE(layout.slot[e * n + plan.token[s]] == s);
      }
    }
    mm::test::check_layout(layout, plan, [n](std::int64_t r) { return r % n; });
    mm::test::check_round_trip<TestType>(scheme, plan, 6, seed + 30);
  }
}

TEMPLATE_TEST_CASE("DenseMask edge cases", "[dispatch][cpu]", float, double) {
  using W = mm::router_t<TestType>;
  const mm::DenseMask scheme{};
  SECTION("no tokens") {
    auto plan = mm::test::random_plan<W>(0, 2, 0.5, 51);
    REQUIRE(scheme.rows(plan) == 0);
    mm::test::check_round_trip<TestType>(scheme, plan, 3, 52);
  }
  SECTION("no slots: every row is masked") {
    auto plan = mm::test::random_plan<W>(5, 3, 0.0, 53);
    REQUIRE(scheme.rows(plan) == 15);
    mm::test::check_round_trip<TestType>(scheme, plan, 3, 54);
  }
  SECTION("every slot taken") {
    auto plan = mm::test::random_plan<W>(7, 3, 1.0, 55);
    mm::test::check_round_trip<TestType>(scheme, plan, 3, 56);
  }
}

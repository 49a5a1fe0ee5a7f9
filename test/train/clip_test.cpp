// Global-norm clipping over the whole gradient arena.
#include <cmath>
#include <cstdint>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/train/clip.hpp>

using namespace mmsparse;

TEST_CASE("clip: scales every slice by one factor when the norm is too large", "[train][cpu]") {
  using B = CpuBackend<double>;
  B b;
  ParamArena<double, B> arena;
  const auto a = arena.add("a", {3, 3});
  const auto c = arena.add("c", {1, 5});
  arena.allocate(b);
  Rng rng(4);
  rng.fill_normal(arena.grad(a), 3.0);
  rng.fill_normal(arena.grad(c), 3.0);
  double ss = 0.0;
  for (const auto id : {a, c}) {
    auto g = arena.grad(id);
    for (std::int64_t i = 0; i < g.size(); ++i) {
      ss += g.data[i] * g.data[i];
    }
  }
  const double norm = std::sqrt(ss);
  REQUIRE(norm > 1.0);
  const double before_a = arena.grad(a)(1, 2);
  const double before_c = arena.grad(c)(0, 4);
  CHECK(grad_norm(arena) == Approx(norm).epsilon(1e-14));
  CHECK(clip_grad_norm(arena, 1.0) == Approx(norm).epsilon(1e-14));
  CHECK(grad_norm(arena) == Approx(1.0).epsilon(1e-5));
  CHECK(arena.grad(a)(1, 2) / before_a == Approx(arena.grad(c)(0, 4) / before_c));
  // Below the limit nothing changes.
  const double after = arena.grad(a)(0, 0);
  CHECK(clip_grad_norm(arena, 10.0) == Approx(1.0).epsilon(1e-5));
  CHECK(arena.grad(a)(0, 0) == after);
  REQUIRE_THROWS_WITH(clip_grad_norm(arena, 0.0), Catch::Contains("max_norm"));
}

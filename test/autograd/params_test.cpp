// ParamArena: named, aligned slices of one value buffer and one gradient buffer; layers' views
// alias the arena, so zero_grad and whole-arena loops see every parameter.
#include <cstdint>

#include <catch2/catch.hpp>

#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/backend/cpu/backend.hpp>

using namespace mmsparse;

TEST_CASE("params: slices are aligned views of one buffer", "[autograd][cpu]") {
  using B = CpuBackend<float>;
  B b;
  ParamArena<float, B> arena;
  const auto w = arena.add("layer0.w", {3, 5});
  const auto n = arena.add("layer0.norm", {1, 5}, /*decay=*/false);
  const auto h = arena.add("head", {5, 7});
  CHECK(arena.count() == 15 + 5 + 35);
  CHECK(arena.slices()[1].offset == 16);  // 15 floats rounded up to 64 bytes
  CHECK(arena.slices()[2].offset == 32);
  CHECK(arena.size() == 32 + 35);
  CHECK_FALSE(arena.slices()[1].decay);
  arena.allocate(b);
  CHECK(arena.value(w).data == arena.values().data);
  CHECK(arena.value(h).data == arena.values().data + 32);
  CHECK(arena.grad("head").data == arena.grads().data + 32);
  CHECK(reinterpret_cast<std::uintptr_t>(arena.value(n).data) % 64 == 0);
  CHECK(arena.value(n).shape() == (Shape{1, 5}));
  CHECK(arena.id("head") == h);
  CHECK(arena.find("missing") == -1);

  // A parameter Var writes its gradient into the arena; zero_grad clears all of them at once.
  Tape tape;
  arena.value(w).data[0] = 2.f;
  Var<float, B> x(b, Tensor<float>::from({1.f, 1.f, 1.f}, 3), false);
  auto y = linear(tape, b, x, arena.var(b, w));
  Tensor<float> seed(1, 5);
  seed.fill(1.f);
  tape.backward(y, View<const float>(seed.view()));
  CHECK(arena.grads()(0, 0) == 1.f);
  arena.zero_grad(b);
  for (std::int64_t i = 0; i < arena.size(); ++i) {
    CHECK(arena.grads()(0, i) == 0.f);
  }
}

TEST_CASE("params: errors name the slice", "[autograd][cpu]") {
  using B = CpuBackend<double>;
  B b;
  ParamArena<double, B> arena;
  arena.add("w", {2, 2});
  REQUIRE_THROWS_WITH(arena.add("w", {1, 1}), Catch::Contains("[ParamArena::add] name"));
  REQUIRE_THROWS_WITH(arena.values(), Catch::Contains("not allocated"));
  arena.allocate(b);
  REQUIRE_THROWS_WITH(arena.add("v", {1, 1}), Catch::Contains("after allocate()"));
  REQUIRE_THROWS_WITH(arena.value("nope"), Catch::Contains("[ParamArena] name"));
  REQUIRE_THROWS_WITH(arena.grad(5), Catch::Contains("grad"));
}

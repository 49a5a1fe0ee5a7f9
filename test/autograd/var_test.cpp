// Var: shared handles, lazily zeroed gradients, borrowed buffers, and the no-grad error.
#include <catch2/catch.hpp>

#include <mmsparse/autograd/var.hpp>
#include <mmsparse/backend/cpu/backend.hpp>

using namespace mmsparse;

TEST_CASE("var: copies share value and gradient", "[autograd][cpu]") {
  CpuBackend<float> b;
  Var<float, CpuBackend<float>> a(b, Tensor<float>::from({1.f, 2.f, 3.f, 4.f}, 2));
  auto c = a;
  CHECK(c.same(a));
  CHECK_FALSE(a.has_grad());
  auto g = c.grad();  // allocated and zeroed on first use
  CHECK(a.has_grad());
  CHECK(g.shape() == (Shape{2, 2}));
  CHECK(g(1, 1) == 0.f);
  g(1, 1) = 5.f;
  CHECK(a.grad()(1, 1) == 5.f);
  a.zero_grad();
  CHECK(c.grad()(1, 1) == 0.f);
  c.value()(0, 0) = 9.f;
  CHECK(a.value()(0, 0) == 9.f);
}

TEST_CASE("var: borrowed value and gradient buffers", "[autograd][cpu]") {
  CpuBackend<double> b;
  Tensor<double> value = Tensor<double>::from({1.0, 2.0, 3.0}, 3);
  Tensor<double> grad(1, 3);
  grad.fill(7.0);
  Var<double, CpuBackend<double>> p(b, value.view(), grad.view());
  CHECK(p.has_grad());
  CHECK(p.grad().data == grad.data());  // no copy, no zeroing: the arena owns it
  CHECK(p.grad()(0, 2) == 7.0);
  Tensor<double> wrong(3, 1);
  REQUIRE_THROWS_WITH((Var<double, CpuBackend<double>>(b, value.view(), wrong.view())),
                      Catch::Contains("[Var] grad: expected [1, 3], got [3, 1]"));
}

TEST_CASE("var: asking a no-grad variable for its gradient is an error", "[autograd][cpu]") {
  CpuBackend<double> b;
  Var<double, CpuBackend<double>> c(b, Tensor<double>(2, 2), false);
  CHECK_FALSE(c.requires_grad());
  REQUIRE_THROWS_AS(c.grad(), Error);
  REQUIRE_THROWS_WITH(
      c.grad(),
      Catch::Contains("[Var::grad] requires_grad") && Catch::Contains("no-grad variable"));
  Var<double, CpuBackend<double>> empty;
  CHECK_FALSE(empty.defined());
  REQUIRE_THROWS_WITH(empty.value(), Catch::Contains("an empty Var"));
}

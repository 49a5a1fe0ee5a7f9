// NoGrad: records nothing inside the scope, nests, and restores the previous state on exit.
#include <catch2/catch.hpp>

#include <mmsparse/autograd/no_grad.hpp>
#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/backend/cpu/backend.hpp>

using namespace mmsparse;

TEST_CASE("no_grad: records nothing, nests, restores", "[autograd][cpu]") {
  CpuBackend<double> b;
  Tape tape;
  Var<double, CpuBackend<double>> x(b, Tensor<double>::from({1.0, -2.0, 3.0, 0.5}, 2), true);
  CHECK(tape.recording());
  {
    NoGrad outer(tape);
    CHECK_FALSE(tape.recording());
    {
      NoGrad inner(tape);
      CHECK_FALSE(tape.recording());
    }
    CHECK_FALSE(tape.recording());  // the inner scope restores "off", not "on"
    auto y = add(tape, b, x, x);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.value()(1, 0) == 6.0);  // the forward still computes
    CHECK(tape.size() == 0);
    tape.record([] {});
    CHECK(tape.size() == 0);
  }
  CHECK(tape.recording());
  auto y = add(tape, b, x, x);
  CHECK(y.requires_grad());
  CHECK(tape.size() == 1);
  // Backward with only no-grad work recorded before is still "nothing recorded".
  Tape other;
  {
    NoGrad ng(other);
    (void)add(other, b, x, x);
  }
  Var<double, CpuBackend<double>> root(b, Tensor<double>(1, 1), true);
  REQUIRE_THROWS_WITH(other.backward(root), Catch::Contains("nothing recorded"));
}

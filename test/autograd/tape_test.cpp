// The tape: reverse replay, accumulation, activations freed after their backward step, and
// the error paths (backward before forward, backward twice, mismatched seed gradient).
#include <memory>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>

using namespace mmsparse;

namespace {
using B64 = CpuBackend<double>;
using V64 = Var<double, B64>;
}  // namespace

TEST_CASE("tape: steps replay in reverse order of recording", "[autograd][cpu]") {
  B64 b;
  Tape tape;
  V64 root(b, Tensor<double>(1, 1), true);
  std::vector<int> order;
  for (int i = 0; i < 4; ++i) {
    tape.record([&order, i] { order.push_back(i); });
  }
  CHECK(tape.size() == 4);
  tape.backward(root);
  CHECK(order == std::vector<int>{3, 2, 1, 0});
  CHECK(tape.size() == 0);
  CHECK(root.grad()(0, 0) == 1.0);
}

TEST_CASE("tape: a variable used twice accumulates both gradients", "[autograd][cpu]") {
  B64 b;
  Tape tape;
  Rng rng(5);
  Tensor<double> xv = rng.normal_tensor<double>(3, 4);
  V64 x(b, xv.view(), true);
  auto y = add(tape, b, x, x);  // y = 2x
  auto z = add(tape, b, y, x);  // z = 3x
  Tensor<double> seed(3, 4);
  rng.fill_uniform(seed.view(), -1.0, 1.0);
  tape.backward(z, View<const double>(seed.view()));
  for (std::int64_t i = 0; i < seed.size(); ++i) {
    CHECK(x.grad().data[i] == Approx(3.0 * seed[i]).epsilon(1e-15));
  }
  // A second forward + backward adds on top (no implicit zeroing).
  auto z2 = add(tape, b, x, x);
  tape.backward(z2, View<const double>(seed.view()));
  for (std::int64_t i = 0; i < seed.size(); ++i) {
    CHECK(x.grad().data[i] == Approx(5.0 * seed[i]).epsilon(1e-15));
  }
  x.zero_grad();
  CHECK(x.grad()(1, 2) == 0.0);
}

TEST_CASE("tape: a step's saved context is freed once the step has run", "[autograd][cpu]") {
  B64 b;
  Tape tape;
  V64 root(b, Tensor<double>(1, 1), true);
  auto first = std::make_shared<int>(1);
  auto last = std::make_shared<int>(2);
  std::weak_ptr<int> first_w = first;
  std::weak_ptr<int> last_w = last;
  bool last_alive_when_first_ran = true;
  bool first_alive_when_last_ran = false;
  tape.record([first = std::move(first), &last_w, &last_alive_when_first_ran] {
    last_alive_when_first_ran = !last_w.expired();
  });
  tape.record([last = std::move(last), &first_w, &first_alive_when_last_ran] {
    first_alive_when_last_ran = !first_w.expired();
  });
  CHECK_FALSE(first_w.expired());
  tape.backward(root);
  CHECK(first_alive_when_last_ran);        // still waiting for its own step
  CHECK_FALSE(last_alive_when_first_ran);  // freed right after the last step ran
  CHECK(first_w.expired());
}

TEST_CASE("tape: backward before any forward is an error", "[autograd][cpu]") {
  B64 b;
  Tape tape;
  V64 root(b, Tensor<double>(1, 1), true);
  REQUIRE_THROWS_AS(tape.backward(root), Error);
  REQUIRE_THROWS_WITH(
      tape.backward(root),
      Catch::Contains("[Tape::backward]") && Catch::Contains("run a forward pass first"));
  REQUIRE_THROWS_AS(tape.backward(), Error);
}

TEST_CASE("tape: backward twice without a new forward is an error", "[autograd][cpu]") {
  B64 b;
  Tape tape;
  Tensor<double> xv(2, 2);
  xv.fill(0.5);
  V64 x(b, xv.view(), true);
  V64 w(b, Tensor<double>::from({1.0, 2.0, 3.0, 4.0}, 2), true);
  auto y = linear(tape, b, x, w);
  Tensor<double> seed(2, 2);
  seed.fill(1.0);
  tape.backward(y, View<const double>(seed.view()));
  REQUIRE_THROWS_AS(tape.backward(y, View<const double>(seed.view())), Error);
  REQUIRE_THROWS_WITH(tape.backward(y, View<const double>(seed.view())),
                      Catch::Contains("backward already ran"));
  // A new forward makes backward legal again.
  auto y2 = linear(tape, b, x, w);
  REQUIRE_NOTHROW(tape.backward(y2, View<const double>(seed.view())));
}

TEST_CASE("tape: a seed gradient of the wrong shape is an error", "[autograd][cpu]") {
  B64 b;
  Tape tape;
  V64 x(b, Tensor<double>::from({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, 3), true);
  V64 w(b, Tensor<double>::from({1.0, 2.0, 3.0}, 1), true);
  auto y = linear(tape, b, x, w);  // [2, 1]
  Tensor<double> seed(1, 2);
  seed.fill(1.0);
  REQUIRE_THROWS_AS(tape.backward(y, View<const double>(seed.view())), Error);
  REQUIRE_THROWS_WITH(tape.backward(y, View<const double>(seed.view())),
                      Catch::Contains("seed: expected [2, 1], got [1, 2]"));
  // A non-scalar root needs an explicit seed.
  REQUIRE_THROWS_WITH(tape.backward(y), Catch::Contains("root") && Catch::Contains("[2, 1]"));
  // Nothing ran: the tape still holds the forward, and a correct seed works.
  Tensor<double> good(2, 1);
  good.fill(1.0);
  tape.backward(y, View<const double>(good.view()));
  CHECK(w.grad()(0, 0) == 1.0 + 4.0);  // column 0 of x: rows [1, 2, 3] and [4, 5, 6]
}

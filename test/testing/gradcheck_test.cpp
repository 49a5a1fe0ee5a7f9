// The gradient checker itself: it passes a correct gradient, catches a wrong one (naming the
// tensor and the element), samples subsets deterministically, and throws when a perturbation
// flips a routing decision.
#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/core/rng.hpp>
#include <mmsparse/testing/gradcheck.hpp>

using namespace mmsparse;

namespace {
// L(x, w) = sum_ij sin(x_ij) * w_ij^2
double loss_of(View<const double> x, View<const double> w) {
  double s = 0.0;
  for (std::int64_t i = 0; i < x.rows; ++i) {
    for (std::int64_t j = 0; j < x.cols; ++j) {
      s += std::sin(x(i, j)) * w(i, j) * w(i, j);
    }
  }
  return s;
}
}  // namespace

TEST_CASE("gradcheck: a correct gradient passes, a wrong one is caught", "[testing][cpu][grad]") {
  Rng rng(9);
  Tensor<double> x = rng.normal_tensor<double>(4, 5);
  Tensor<double> w = rng.normal_tensor<double>(4, 5);
  Tensor<double> dx(4, 5), dw(4, 5);
  for (std::int64_t i = 0; i < x.size(); ++i) {
    dx[i] = std::cos(x[i]) * w[i] * w[i];
    dw[i] = 2.0 * std::sin(x[i]) * w[i];
  }
  auto loss = [&] { return loss_of(x.view(), w.view()); };
  const std::vector<GradcheckInput> inputs = {{"x", x.view(), dx.view()},
                                              {"w", w.view(), dw.view()}};
  const auto good = gradcheck(loss, inputs);
  INFO(good.str());
  CHECK(good.ok(1e-8));
  CHECK(good.results[0].checked == 20);
  CHECK(good.results[1].scale > 0.1);

  // Values are restored after the check.
  const double before = x(2, 3);
  (void)gradcheck(loss, inputs);
  CHECK(x(2, 3) == before);

  dw(2, 3) += 1e-3;  // one wrong element
  const auto bad = gradcheck(loss, inputs);
  CHECK_FALSE(bad.ok(1e-6));
  CHECK(bad.results[0].rel_error < 1e-8);
  CHECK(bad.results[1].worst_row == 2);
  CHECK(bad.results[1].worst_col == 3);
  CHECK(bad.results[1].max_abs_error == Approx(1e-3).epsilon(1e-4));
  CHECK_THAT(bad.str(), Catch::Contains("w: rel_error"));
}

TEST_CASE("gradcheck: random subsets are deterministic and without repeats", "[testing][cpu]") {
  Rng rng(1);
  Tensor<double> x = rng.normal_tensor<double>(10, 10);
  Tensor<double> g(10, 10);
  for (std::int64_t i = 0; i < x.size(); ++i) {
    g[i] = 2.0 * x[i];
  }
  int calls = 0;
  auto loss = [&] {
    ++calls;
    double s = 0.0;
    for (std::int64_t i = 0; i < x.size(); ++i) {
      s += x[i] * x[i];
    }
    return s;
  };
  GradcheckOptions opt;
  opt.max_elements = 7;
  const std::vector<GradcheckInput> inputs = {{"x", x.view(), g.view()}};
  const auto a = gradcheck(loss, inputs, opt);
  CHECK(calls == 14);  // two evaluations per element
  CHECK(a.results[0].checked == 7);
  CHECK(a.ok(1e-8));
  g(a.results[0].worst_row, a.results[0].worst_col) += 1.0;  // an element the subset contains
  const auto b = gradcheck(loss, inputs, opt);
  CHECK_FALSE(b.ok(1e-3));
}

TEST_CASE("gradcheck: a flipped routing decision throws, naming the element", "[testing][cpu]") {
  // A one-expert "router" that takes token 0 when x(0, 0) > 0.5, else token 1.
  Tensor<double> x(1, 2);
  x(0, 0) = 0.5 + 1e-7;  // within eps = 1e-6 of the threshold
  x(0, 1) = 2.0;
  Tensor<double> g(1, 2);
  g(0, 0) = 1.0;
  g(0, 1) = 1.0;
  RoutingPlan<double> plan;
  auto route = [&] {
    plan.num_tokens = 2;
    plan.num_experts = 1;
    plan.offsets = {0, 1};
    plan.token = Tensor<std::int32_t>(1, 1);
    plan.gate = Tensor<double>(1, 1);
    plan.token[0] = x(0, 0) > 0.5 ? 0 : 1;
    plan.gate[0] = 1.0;
  };
  auto loss = [&] {
    route();
    return x(0, 0) + x(0, 1);
  };
  auto signature = [&] { return plan_signature(plan); };
  const std::vector<GradcheckInput> inputs = {{"x", x.view(), g.view()}};
  REQUIRE_THROWS_AS(gradcheck(loss, inputs, {}, signature), Error);
  REQUIRE_THROWS_WITH(gradcheck(loss, inputs, {}, signature),
                      Catch::Contains("[gradcheck] plan") && Catch::Contains("x(0, 0)") &&
                          Catch::Contains("slot 0 holds token 1 instead of 0"));
  CHECK(x(0, 0) == 0.5 + 1e-7);  // the value is restored before the plans are compared

  // Away from the threshold the same check passes.
  x(0, 0) = 0.9;
  const auto ok = gradcheck(loss, inputs, {}, signature);
  CHECK(ok.ok(1e-8));
}

TEST_CASE("gradcheck: argument errors", "[testing][cpu]") {
  Tensor<double> x(2, 2), g(2, 3);
  auto loss = [] { return 0.0; };
  const std::vector<GradcheckInput> inputs = {{"x", x.view(), g.view()}};
  REQUIRE_THROWS_WITH(gradcheck(loss, inputs), Catch::Contains("x.grad: expected [2, 2]"));
  GradcheckOptions bad;
  bad.eps = 0.0;
  REQUIRE_THROWS_WITH(gradcheck(loss, inputs, bad), Catch::Contains("eps"));
}

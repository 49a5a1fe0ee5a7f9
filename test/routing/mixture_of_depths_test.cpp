// test/routing/mixture_of_depths_test.cpp
//
// MixtureOfDepths against a double-precision oracle (sigmoid scores, top C = depth_capacity of
// each routing group, lower token on ties), in float and double, batch and per-sequence groups;
// capacity rounding, exact ties, Gumbel noise, invalid arguments, non-finite logits, and backward
// against central finite differences.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "routing/naive_router.hpp"
#include <mmsparse/routing/mixture_of_depths.hpp>

using namespace mmsparse;

namespace {

template <class T>
struct Case {
  naive::Inputs<T> in;
  std::vector<std::int64_t> per_group{1};
  RouteArgs<CpuBackend<T>> args;

  Case(std::int64_t n, std::int64_t d, std::uint64_t seed, double w_scale = 1.0)
      : in(naive::random_inputs<T>(n, d, 1, 1, seed, w_scale)) {
    bind();
  }
  void bind() {
    args.x = in.x.view();
    args.modality = in.modality.span();
    args.router_weight = in.w.view();
    args.num_modalities = 1;
    args.experts_per_group = per_group;
  }
};

template <class T>
naive::Plan oracle(const Case<T>& c, const MixtureOfDepths::Config& cfg) {
  const std::int64_t n = c.in.x.rows();
  const bool noise = cfg.gumbel && c.args.training;
  const auto s =
      naive::sigmoid(naive::logits(c.in.x, c.in.w, naive::all_tokens(n), 0, 1, noise, c.args.seed));
  return naive::top_tokens(
      s, 1, naive::groups_of(n, c.args.sequence_length), [&](std::int64_t n_q) {
        return depth_capacity(cfg.capacity, n_q);
      });
}

template <class T>
plan_t<CpuBackend<T>> route(const MixtureOfDepths& r, const Case<T>& c) {
  CpuBackend<T> b;
  MixtureOfDepths::Saved<CpuBackend<T>> saved;
  return r.route(b, c.args, saved);
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEMPLATE_TEST_CASE("mixture_of_depths: plan equals the naive oracle",
                   "[routing][cpu]",
                   float,
                   double) {
  const double tie_guard = std::is_same_v<TestType, float> ? 1e-4 : 1e-10;
  const double gate_tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-12;
  int compared = 0;
  int total = 0;
  for (double capacity : {0.125, 0.25, 0.5, 1.0}) {
    for (std::int64_t len : {0, 16}) {
      for (std::uint64_t seed : {1u, 2u, 3u, 4u}) {
        INFO("capacity=" << capacity << " L=" << len << " seed=" << seed);
        Case<TestType> c(64, 6, seed);
        c.args.sequence_length = len;
        const MixtureOfDepths r{{capacity, false}};
        const auto plan = route(r, c);
        const auto ref = oracle(c, r.cfg);
        ++total;
        if (ref.margin < tie_guard) {
          continue;
        }
        ++compared;
        naive::require_plan(plan, ref, gate_tol);
        const std::int64_t groups = len == 0 ? 1 : 64 / len;
        REQUIRE(plan.slots() == groups * depth_capacity(capacity, 64 / groups));
      }
    }
  }
  REQUIRE(compared >= total - 2);
}

TEST_CASE("mixture_of_depths: capacity rounding, one token, no tokens", "[routing][cpu]") {
  Case<double> c(10, 4, 5);
  REQUIRE(route(MixtureOfDepths{{1e-3, false}}, c).slots() == 1);  // ceil rounds up to 1
  REQUIRE(route(MixtureOfDepths{{0.25, false}}, c).slots() == 3);  // ceil(2.5)
  const auto all = route(MixtureOfDepths{{1.0, false}}, c);
  REQUIRE(all.slots() == 10);
  naive::require_plan(all, oracle(c, MixtureOfDepths::Config{1.0, false}), 1e-12);
  REQUIRE(route(MixtureOfDepths{}, Case<double>(1, 4, 5)).slots() == 1);
  const auto none = route(MixtureOfDepths{}, Case<double>(0, 4, 5));
  REQUIRE(none.num_experts == 1);
  REQUIRE(none.slots() == 0);
}

TEST_CASE("mixture_of_depths: exact ties go to the lower token", "[routing][cpu]") {
  Case<float> c(16, 2, 1);
  for (std::int64_t t = 0; t < 16; ++t) {
    c.in.x(t, 0) = t % 2 == 0 ? 1.0f : 2.0f;  // two score levels, exact
    c.in.x(t, 1) = -1.0f;
  }
  c.in.w(0, 0) = 0.5f;
  c.in.w(1, 0) = 0.25f;
  const auto plan = route(MixtureOfDepths{{0.75, false}}, c);  // C = 12: 8 odd + 4 lowest even
  REQUIRE(plan.slots() == 12);
  const std::vector<std::int32_t> expected{0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15};
  for (std::int64_t s = 0; s < 12; ++s) {
    REQUIRE(plan.token[s] == expected[static_cast<std::size_t>(s)]);
  }
}

TEST_CASE("mixture_of_depths: Gumbel noise in training only, reproducible", "[routing][cpu]") {
  Case<double> c(64, 6, 8);
  c.args.seed = 12;
  const MixtureOfDepths noisy{{0.25, true}};
  const auto eval_plan = route(noisy, c);
  REQUIRE(naive::signature(eval_plan) == naive::signature(route(MixtureOfDepths{}, c)));
  c.args.training = true;
  const auto a = route(noisy, c);
  REQUIRE(naive::signature(a) != naive::signature(eval_plan));
  REQUIRE(naive::signature(a) == naive::signature(route(noisy, c)));
  naive::require_plan(a, oracle(c, noisy.cfg), 1e-12);
}

TEST_CASE("mixture_of_depths: invalid arguments and non-finite logits throw", "[routing][cpu]") {
  auto error = [](const MixtureOfDepths& r, const Case<float>& c) {
    return error_of([&] { (void)route(r, c); });
  };
  for (double capacity : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    REQUIRE_THAT(error(MixtureOfDepths{{capacity, false}}, Case<float>(8, 3, 1)),
                 Catch::Contains("capacity"));
  }
  {
    Case<float> c(8, 3, 1);
    c.per_group = {2};
    c.bind();
    REQUIRE_THAT(error(MixtureOfDepths{}, c), Catch::Contains("experts_per_group"));
  }
  {
    Case<float> c(8, 3, 1);
    Tensor<float> w(3, 2);
    c.args.router_weight = w.view();
    REQUIRE_THAT(error(MixtureOfDepths{}, c), Catch::Contains("router_weight"));
  }
  {
    Case<float> c(8, 3, 1);
    c.args.sequence_length = 3;
    REQUIRE_THAT(error(MixtureOfDepths{}, c), Catch::Contains("sequence_length"));
  }
  {
    Case<float> c(8, 3, 1);
    c.in.x(6, 2) = std::numeric_limits<float>::infinity();
    const auto msg = error(MixtureOfDepths{}, c);
    REQUIRE_THAT(msg, Catch::Contains("[mixture_of_depths::route] router logits"));
    REQUIRE_THAT(msg, Catch::Contains("token 6, expert 0"));
  }
}

TEST_CASE("mixture_of_depths: backward equals central finite differences", "[routing][cpu]") {
  for (std::int64_t len : {0, 10}) {
    for (bool noise : {false, true}) {
      INFO("L=" << len << " noise=" << noise);
      Case<double> c(30, 4, 17, 0.8);
      c.args.sequence_length = len;
      c.args.training = noise;
      c.args.seed = 4;
      const MixtureOfDepths r{{0.3, noise}};
      CpuBackend<double> b;
      MixtureOfDepths::Saved<CpuBackend<double>> saved;
      const auto plan = r.route(b, c.args, saved);
      const auto weights = naive::loss_weights(plan.slots(), 5);
      const Tensor<double> dgate = Tensor<double>::from(weights);
      Tensor<double> dx(30, 4);
      Tensor<double> dw(4, 1);
      dx.fill(0.0);
      dw.fill(0.0);
      r.backward(b, c.args, saved, dgate.span(), {dx.view(), dw.view(), 1.0});
      auto eval = [&]() {
        MixtureOfDepths::Saved<CpuBackend<double>> s;
        const auto p = r.route(b, c.args, s);
        return naive::Eval{naive::signature(p), naive::weighted_gates(p, weights)};
      };
      const auto gx = naive::central_differences(c.in.x, eval);
      const auto gw = naive::central_differences(c.in.w, eval);
      REQUIRE(naive::max_abs(gw) > 1e-3);
      REQUIRE(naive::relative_error(dx, gx) < 1e-6);
      REQUIRE(naive::relative_error(dw, gw) < 1e-6);
      // tokens that skip the block get no gradient
      std::vector<bool> routed(30, false);
      for (std::int64_t s = 0; s < plan.slots(); ++s) {
        routed[static_cast<std::size_t>(plan.token[s])] = true;
      }
      for (std::int64_t t = 0; t < 30; ++t) {
        if (!routed[static_cast<std::size_t>(t)]) {
          for (std::int64_t j = 0; j < 4; ++j) {
            REQUIRE(dx(t, j) == 0.0);
          }
        }
      }
    }
  }
}

// test/routing/expert_choice_test.cpp
//
// ExpertChoice against a double-precision oracle (scores, stable sort with the lower-token tie
// rule, C = expert_choice_capacity per routing group), in float and double, sigmoid and softmax
// gates, whole-batch and per-sequence groups; invariants, capacity rounding, exact ties, Gumbel
// noise, determinism, non-finite logits, invalid arguments, and backward against central
// finite differences.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "routing/naive_router.hpp"
#include <mmsparse/routing/expert_choice.hpp>

using namespace mmsparse;

namespace {

template <class T>
struct Case {
  naive::Inputs<T> in;
  std::vector<std::int64_t> per_group;
  RouteArgs<CpuBackend<T>> args;

  Case(std::int64_t n, std::int64_t d, std::int64_t e, std::uint64_t seed, double w_scale = 1.0)
      : in(naive::random_inputs<T>(n, d, e, 1, seed, w_scale)), per_group{e} {
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
naive::Plan oracle(const Case<T>& c, const ExpertChoice::Config& cfg) {
  const std::int64_t n = c.in.x.rows();
  const std::int64_t e = c.in.w.cols();
  const bool noise = cfg.gumbel && c.args.training;
  const auto z = naive::logits(c.in.x, c.in.w, naive::all_tokens(n), 0, e, noise, c.args.seed);
  const auto s = cfg.gate == GateFn::sigmoid ? naive::sigmoid(z) : naive::softmax(z);
  return naive::top_tokens(
      s, e, naive::groups_of(n, c.args.sequence_length), [&](std::int64_t n_q) {
        return expert_choice_capacity(cfg.capacity_factor, n_q, e);
      });
}

template <class T>
plan_t<CpuBackend<T>> route(const ExpertChoice& r, const Case<T>& c) {
  CpuBackend<T> b;
  ExpertChoice::Saved<CpuBackend<T>> saved;
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

struct Dims {
  std::int64_t n, e;
  double capacity_factor;
  std::int64_t sequence_length;
};

}  // namespace

TEMPLATE_TEST_CASE("expert_choice: plan equals the naive oracle", "[routing][cpu]", float, double) {
  const double tie_guard = std::is_same_v<TestType, float> ? 1e-4 : 1e-10;
  const double gate_tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-12;
  int compared = 0;
  int total = 0;
  for (const Dims s : {Dims{40, 4, 1.0, 0},
                       Dims{48, 8, 2.0, 0},
                       Dims{48, 3, 0.5, 12},
                       Dims{7, 8, 1.0, 0},
                       Dims{30, 5, 1.3, 10},
                       Dims{64, 2, 1.0, 16}}) {
    for (GateFn gate : {GateFn::sigmoid, GateFn::softmax}) {
      for (std::uint64_t seed : {11u, 12u, 13u}) {
        INFO("n=" << s.n << " e=" << s.e << " c=" << s.capacity_factor << " L=" << s.sequence_length
                  << " softmax=" << (gate == GateFn::softmax) << " seed=" << seed);
        Case<TestType> c(s.n, 6, s.e, seed);
        c.args.sequence_length = s.sequence_length;
        const ExpertChoice r{{s.capacity_factor, gate, false}};
        const auto plan = route(r, c);
        const auto ref = oracle(c, r.cfg);
        ++total;
        if (ref.margin < tie_guard) {
          continue;  // a near-tie the two precisions may break differently
        }
        ++compared;
        naive::require_plan(plan, ref, gate_tol);
        // invariants: exactly C per expert per group, ascending within each group
        const auto groups = naive::groups_of(s.n, s.sequence_length);
        std::int64_t per_expert = 0;
        for (std::size_t q = 0; q + 1 < groups.size(); ++q) {
          per_expert += expert_choice_capacity(s.capacity_factor, groups[q + 1] - groups[q], s.e);
        }
        for (std::int64_t x = 0; x < s.e; ++x) {
          REQUIRE(plan.tokens_of(x) == per_expert);
        }
      }
    }
  }
  REQUIRE(compared >= total - 2);
}

TEST_CASE("expert_choice: capacity rounds up to 1 and down to N", "[routing][cpu]") {
  Case<double> c(10, 4, 3, 5);
  const auto small = route(ExpertChoice{{1e-3, GateFn::sigmoid, false}}, c);
  REQUIRE(small.tokens_per_expert() == std::vector<std::int64_t>{1, 1, 1});
  const auto large = route(ExpertChoice{{100.0, GateFn::sigmoid, false}}, c);
  REQUIRE(large.tokens_per_expert() == std::vector<std::int64_t>{10, 10, 10});
  for (std::int64_t s = 0; s < large.slots(); ++s) {
    REQUIRE(large.token[s] == s % 10);
  }
  naive::require_plan(large, oracle(c, ExpertChoice::Config{100.0, GateFn::sigmoid, false}), 1e-12);
}

TEST_CASE("expert_choice: no tokens, one token, fewer tokens than experts", "[routing][cpu]") {
  for (std::int64_t n : {0, 1, 3}) {
    Case<float> c(n, 4, 6, 9);
    const auto plan = route(ExpertChoice{}, c);
    REQUIRE(plan.num_experts == 6);
    REQUIRE(plan.num_tokens == n);
    for (std::int64_t x = 0; x < 6; ++x) {
      REQUIRE(plan.tokens_of(x) == (n == 0 ? 0 : 1));
    }
    naive::require_plan(plan, oracle(c, ExpertChoice::Config{}), 1e-5);
  }
}

TEST_CASE("expert_choice: exact ties go to the lower token", "[routing][cpu]") {
  // Integer x and dyadic w: every logit is exact, so equal rows give bit-equal scores.
  for (GateFn gate : {GateFn::sigmoid, GateFn::softmax}) {
    for (std::int64_t len : {0, 6}) {
      Case<float> c(18, 3, 4, 1);
      for (std::int64_t t = 0; t < 18; ++t) {
        for (std::int64_t j = 0; j < 3; ++j) {
          c.in.x(t, j) = static_cast<float>(j + 1);  // every token identical
        }
      }
      for (std::int64_t i = 0; i < c.in.w.size(); ++i) {
        c.in.w.data()[i] = 0.25f * static_cast<float>(i % 5) - 0.5f;
      }
      c.args.sequence_length = len;
      const auto plan = route(ExpertChoice{{1.0, gate, false}}, c);
      const std::int64_t groups = len == 0 ? 1 : 18 / len;
      const std::int64_t n_q = 18 / groups;
      const std::int64_t cap = expert_choice_capacity(1.0, n_q, 4);
      for (std::int64_t x = 0; x < 4; ++x) {
        REQUIRE(plan.tokens_of(x) == groups * cap);
        for (std::int64_t q = 0; q < groups; ++q) {
          for (std::int64_t j = 0; j < cap; ++j) {
            REQUIRE(plan.token[plan.offsets[static_cast<std::size_t>(x)] + q * cap + j] ==
                    q * n_q + j);
          }
        }
      }
    }
  }
}

TEST_CASE("expert_choice: same inputs and seed give the same plan", "[routing][cpu]") {
  Case<float> c(50, 8, 4, 21);
  c.args.training = true;
  c.args.seed = 77;
  const ExpertChoice r{{1.0, GateFn::sigmoid, true}};
  const auto a = route(r, c);
  const auto b = route(r, c);
  REQUIRE(naive::signature(a) == naive::signature(b));
  REQUIRE(naive::gates(a) == naive::gates(b));
}

TEST_CASE("expert_choice: Gumbel noise in training only, reproducible per seed", "[routing][cpu]") {
  Case<double> c(64, 6, 4, 31);
  const ExpertChoice noisy{{1.0, GateFn::sigmoid, true}};
  const ExpertChoice clean{{1.0, GateFn::sigmoid, false}};
  c.args.seed = 5;
  const auto eval_plan = route(noisy, c);  // training = false: no noise
  const auto clean_plan = route(clean, c);
  REQUIRE(naive::signature(eval_plan) == naive::signature(clean_plan));
  REQUIRE(naive::gates(eval_plan) == naive::gates(clean_plan));

  c.args.training = true;
  const auto train_a = route(noisy, c);
  const auto train_b = route(noisy, c);
  REQUIRE(naive::signature(train_a) != naive::signature(clean_plan));
  REQUIRE(naive::signature(train_a) == naive::signature(train_b));
  REQUIRE(naive::gates(train_a) == naive::gates(train_b));
  naive::require_plan(train_a, oracle(c, noisy.cfg), 1e-12);  // the noise of gumbel_noise()
  c.args.seed = 6;
  const auto other_seed = route(noisy, c);
  REQUIRE(naive::signature(other_seed) != naive::signature(train_a));
  naive::require_plan(other_seed, oracle(c, noisy.cfg), 1e-12);
  REQUIRE(naive::signature(route(clean, c)) == naive::signature(clean_plan));  // gumbel off
}

TEST_CASE("expert_choice: bf16 activations route like their float widening", "[routing][cpu]") {
  Case<bf16> c(40, 8, 4, 41);
  Tensor<float> xf(40, 8);
  for (std::int64_t i = 0; i < xf.size(); ++i) {
    xf.data()[i] = static_cast<float>(c.in.x.data()[i]);
  }
  Case<float> f(40, 8, 4, 41);
  f.in.x = std::move(xf);
  f.in.w = c.in.w.clone();
  f.bind();
  const auto pb = route(ExpertChoice{}, c);
  const auto pf = route(ExpertChoice{}, f);
  REQUIRE(naive::signature(pb) == naive::signature(pf));
  REQUIRE(naive::gates(pb) == naive::gates(pf));
}

TEST_CASE("expert_choice: non-finite logits throw naming the token and expert", "[routing][cpu]") {
  {
    Case<float> c(12, 4, 3, 2);
    c.in.x(5, 1) = std::numeric_limits<float>::quiet_NaN();
    const auto msg = error_of([&] { (void)route(ExpertChoice{}, c); });
    REQUIRE_THAT(msg, Catch::Contains("[expert_choice::route] router logits"));
    REQUIRE_THAT(msg, Catch::Contains("token 5, expert 0"));
  }
  {
    Case<double> c(12, 4, 3, 2);
    c.in.w(2, 2) = std::numeric_limits<double>::infinity();
    const auto msg = error_of([&] { (void)route(ExpertChoice{}, c); });
    REQUIRE_THAT(msg, Catch::Contains("token 0, expert 2"));
  }
}

TEST_CASE("expert_choice: invalid arguments throw naming the argument", "[routing][cpu]") {
  auto route_error = [](const ExpertChoice& r, const Case<float>& c) {
    return error_of([&] { (void)route(r, c); });
  };
  for (double cf : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN()}) {
    REQUIRE_THAT(route_error(ExpertChoice{{cf, GateFn::sigmoid, false}}, Case<float>(12, 4, 3, 1)),
                 Catch::Contains("capacity_factor"));
  }
  {
    Case<float> c(12, 4, 3, 1);
    c.args.sequence_length = 5;
    REQUIRE_THAT(route_error(ExpertChoice{}, c), Catch::Contains("sequence_length"));
    c.args.sequence_length = -1;
    REQUIRE_THAT(route_error(ExpertChoice{}, c), Catch::Contains("sequence_length"));
  }
  {
    Case<float> c(12, 4, 3, 1);
    c.per_group = {3, 3};
    c.bind();
    REQUIRE_THAT(route_error(ExpertChoice{}, c), Catch::Contains("router_weight"));
    Tensor<float> w(4, 6);
    c.args.router_weight = w.view();
    REQUIRE_THAT(route_error(ExpertChoice{}, c), Catch::Contains("experts_per_group"));
    c.per_group = {0};
    c.bind();
    REQUIRE_THAT(route_error(ExpertChoice{}, c), Catch::Contains("experts_per_group[0]"));
  }
  {
    Case<float> c(12, 4, 3, 1);
    Tensor<float> w(5, 3);
    c.args.router_weight = w.view();
    REQUIRE_THAT(route_error(ExpertChoice{}, c), Catch::Contains("router_weight"));
  }
  {
    Case<float> c(12, 4, 3, 1);
    c.in.modality[3] = 1;
    REQUIRE_THAT(route_error(ExpertChoice{}, c), Catch::Contains("modality[3]"));
  }
  {
    Case<float> c(12, 4, 3, 1);
    CpuBackend<float> b;
    ExpertChoice::Saved<CpuBackend<float>> saved;
    const auto plan = ExpertChoice{}.route(b, c.args, saved);
    Tensor<float> dgate(plan.slots(), 1);
    Tensor<float> dx(12, 4);
    Tensor<float> dw(4, 3);
    Tensor<float> bad_dx(12, 5);
    Tensor<float> bad_dw(4, 2);
    auto backward = [&](Span<const float> dg,
                        View<float> gx,
                        View<float> gw,
                        const RouteArgs<CpuBackend<float>>& a) {
      return error_of([&] { ExpertChoice{}.backward(b, a, saved, dg, {gx, gw, 1.0}); });
    };
    REQUIRE(backward(dgate.span(), dx.view(), dw.view(), c.args) == "no error");
    REQUIRE_THAT(backward(dgate.span().subspan(1, plan.slots() - 1), dx.view(), dw.view(), c.args),
                 Catch::Contains("dgate"));
    REQUIRE_THAT(backward(dgate.span(), bad_dx.view(), dw.view(), c.args),
                 Catch::Contains("grads.dx"));
    REQUIRE_THAT(backward(dgate.span(), dx.view(), bad_dw.view(), c.args),
                 Catch::Contains("grads.drouter_weight"));
    Case<float> other(10, 4, 3, 1);
    REQUIRE_THAT(backward(dgate.span(), dx.view(), dw.view(), other.args),
                 Catch::Contains("args.x"));
  }
}

TEST_CASE("expert_choice: backward equals central finite differences", "[routing][cpu]") {
  struct Variant {
    GateFn gate;
    std::int64_t sequence_length;
    bool noise;
  };
  for (const Variant v : {Variant{GateFn::sigmoid, 0, false},
                          Variant{GateFn::softmax, 0, false},
                          Variant{GateFn::sigmoid, 8, true},
                          Variant{GateFn::softmax, 12, true}}) {
    INFO("softmax=" << (v.gate == GateFn::softmax) << " L=" << v.sequence_length
                    << " noise=" << v.noise);
    Case<double> c(24, 5, 4, 61, 0.7);
    c.args.sequence_length = v.sequence_length;
    c.args.training = v.noise;
    c.args.seed = 3;
    const ExpertChoice r{{1.5, v.gate, v.noise}};
    CpuBackend<double> b;
    ExpertChoice::Saved<CpuBackend<double>> saved;
    const auto plan = r.route(b, c.args, saved);
    const auto weights = naive::loss_weights(plan.slots(), 99);
    const Tensor<double> dgate = Tensor<double>::from(weights);
    // analytic, accumulated on top of non-zero gradients
    auto dx = naive::random_inputs<double>(24, 5, 4, 1, 7).x;
    auto dw = naive::random_inputs<double>(5, 4, 4, 1, 8).x;
    const auto dx0 = dx.clone();
    const auto dw0 = dw.clone();
    r.backward(b, c.args, saved, dgate.span(), {dx.view(), dw.view(), 1.0});
    for (std::int64_t i = 0; i < dx.size(); ++i) {
      dx.data()[i] -= dx0.data()[i];
    }
    for (std::int64_t i = 0; i < dw.size(); ++i) {
      dw.data()[i] -= dw0.data()[i];
    }
    auto eval = [&]() {
      ExpertChoice::Saved<CpuBackend<double>> s;
      const auto p = r.route(b, c.args, s);
      return naive::Eval{naive::signature(p), naive::weighted_gates(p, weights)};
    };
    const auto gx = naive::central_differences(c.in.x, eval);
    const auto gw = naive::central_differences(c.in.w, eval);
    REQUIRE(naive::max_abs(gx) > 1e-3);
    REQUIRE(naive::relative_error(dx, gx) < 1e-6);
    REQUIRE(naive::relative_error(dw, gw) < 1e-6);
  }
}

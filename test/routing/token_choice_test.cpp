// test/routing/token_choice_test.cpp
//
// TokenChoice against a double-precision oracle (softmax, top-k with the lower-expert tie rule,
// GShard priority capacity per routing group, renormalisation, balance and z losses), in float
// and double; dropless and capacity invariants, GShard priority order, an expert with no token,
// exact ties, closed-form aux losses, Gumbel noise, invalid arguments, non-finite logits, and
// backward (gates + aux losses) against central finite differences.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "routing/naive_router.hpp"
#include <mmsparse/routing/token_choice.hpp>

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

naive::TokenChoiceOptions options(const TokenChoice::Config& cfg) {
  return {cfg.k, cfg.capacity_factor, cfg.dropless, cfg.renormalize, cfg.balance_coef, cfg.z_coef};
}

template <class T>
naive::Plan oracle(const Case<T>& c, const TokenChoice::Config& cfg) {
  const std::int64_t n = c.in.x.rows();
  const bool noise = cfg.gumbel && c.args.training;
  const auto z =
      naive::logits(c.in.x, c.in.w, naive::all_tokens(n), 0, c.in.w.cols(), noise, c.args.seed);
  return naive::token_choice(z, naive::groups_of(n, c.args.sequence_length), options(cfg));
}

template <class T>
plan_t<CpuBackend<T>> route(const TokenChoice& r, const Case<T>& c) {
  CpuBackend<T> b;
  TokenChoice::Saved<CpuBackend<T>> saved;
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

TokenChoice::Config config(
    std::int64_t k, double capacity_factor, bool dropless, bool renormalize, bool gumbel = false) {
  TokenChoice::Config cfg;
  cfg.k = k;
  cfg.capacity_factor = capacity_factor;
  cfg.dropless = dropless;
  cfg.renormalize = renormalize;
  cfg.gumbel = gumbel;
  return cfg;
}

template <class W>
std::vector<std::int64_t> experts_per_token(const RoutingPlan<W>& plan) {
  std::vector<std::int64_t> n(static_cast<std::size_t>(plan.num_tokens), 0);
  for (std::int64_t s = 0; s < plan.slots(); ++s) {
    ++n[static_cast<std::size_t>(plan.token[s])];
  }
  return n;
}

struct Dims {
  std::int64_t n, e, k;
  double capacity_factor;
  std::int64_t sequence_length;
};

}  // namespace

TEMPLATE_TEST_CASE("token_choice: plan and aux losses equal the naive oracle",
                   "[routing][cpu]",
                   float,
                   double) {
  const double tie_guard = std::is_same_v<TestType, float> ? 2e-5 : 1e-10;
  const double tol = std::is_same_v<TestType, float> ? 1e-5 : 1e-12;
  int compared = 0;
  int total = 0;
  for (const Dims s : {Dims{40, 4, 2, 1.25, 0},
                       Dims{48, 8, 2, 1.0, 0},
                       Dims{48, 6, 1, 0.5, 12},
                       Dims{33, 5, 3, 1.0, 11},
                       Dims{20, 3, 3, 1.0, 0},
                       Dims{5, 8, 2, 1.25, 0}}) {
    for (int mode = 0; mode < 3; ++mode) {  // capacity, capacity + renormalize, dropless
      for (std::uint64_t seed : {1u, 2u, 3u}) {
        INFO("n=" << s.n << " e=" << s.e << " k=" << s.k << " c=" << s.capacity_factor
                  << " L=" << s.sequence_length << " mode=" << mode << " seed=" << seed);
        Case<TestType> c(s.n, 6, s.e, seed);
        c.args.sequence_length = s.sequence_length;
        const TokenChoice r{config(s.k, s.capacity_factor, mode == 2, mode == 1)};
        const auto plan = route(r, c);
        const auto ref = oracle(c, r.cfg);
        ++total;
        if (ref.margin < tie_guard) {
          continue;
        }
        ++compared;
        naive::require_plan(plan, ref, tol);
        REQUIRE(plan.aux.balance == Approx(ref.balance).epsilon(tol * 10));
        REQUIRE(plan.aux.z == Approx(ref.z).epsilon(tol * 10));
        const auto per_token = experts_per_token(plan);
        if (mode == 2) {
          REQUIRE(plan.dropped == 0);
          for (auto v : per_token) {
            REQUIRE(v == s.k);  // dropless: exactly k experts per token
          }
        } else {
          const auto groups = naive::groups_of(s.n, s.sequence_length);
          for (std::size_t q = 0; q + 1 < groups.size(); ++q) {
            const std::int64_t cap = token_choice_capacity(
                s.capacity_factor, s.k, groups[q + 1] - groups[q], s.e, false);
            for (std::int64_t x = 0; x < s.e; ++x) {
              std::int64_t in_group = 0;
              for (std::int64_t i = plan.offsets[static_cast<std::size_t>(x)];
                   i < plan.offsets[static_cast<std::size_t>(x + 1)];
                   ++i) {
                in_group += plan.token[i] >= groups[q] && plan.token[i] < groups[q + 1];
              }
              REQUIRE(in_group <= cap);
            }
          }
          std::int64_t kept = 0;
          for (auto v : per_token) {
            REQUIRE(v <= s.k);
            kept += v;
          }
          REQUIRE(kept + plan.dropped == s.n * s.k);
        }
      }
    }
  }
  REQUIRE(compared * 5 >= total * 4);  // near-ties are rare
}

TEST_CASE("token_choice: GShard priority, first choices before second choices", "[routing][cpu]") {
  // Tokens 0..3 prefer expert 0 then 1, tokens 4..7 prefer expert 1 then 0; C = 4.
  Case<double> c(8, 1, 2, 1);
  for (std::int64_t t = 0; t < 8; ++t) {
    c.in.x(t, 0) = t < 4 ? 1.0 : -1.0;
  }
  c.in.w(0, 0) = 1.0;
  c.in.w(0, 1) = -1.0;
  const auto plan = route(TokenChoice{config(2, 0.5, false, false)}, c);
  REQUIRE(token_choice_capacity(0.5, 2, 8, 2, false) == 4);
  REQUIRE(plan.tokens_per_expert() == std::vector<std::int64_t>{4, 4});
  for (std::int64_t s = 0; s < 8; ++s) {
    REQUIRE(plan.token[s] == s);  // expert 0: tokens 0..3, expert 1: tokens 4..7
  }
  REQUIRE(plan.dropped == 8);
  naive::require_plan(plan, oracle(c, config(2, 0.5, false, false)), 1e-12);
}

TEST_CASE("token_choice: exact ties go to the lower expert; an expert may get no token",
          "[routing][cpu]") {
  Case<float> c(8, 1, 4, 1);
  for (std::int64_t t = 0; t < 8; ++t) {
    c.in.x(t, 0) = 1.0f;
  }
  const float w[4] = {0.5f, 2.0f, 2.0f, -3.0f};  // experts 1 and 2 tie exactly
  for (std::int64_t j = 0; j < 4; ++j) {
    c.in.w(0, j) = w[j];
  }
  const auto top1 = route(TokenChoice{config(1, 1.0, true, false)}, c);
  REQUIRE(top1.tokens_per_expert() == std::vector<std::int64_t>{0, 8, 0, 0});
  const auto top2 = route(TokenChoice{config(2, 1.0, true, false)}, c);
  REQUIRE(top2.tokens_per_expert() == std::vector<std::int64_t>{0, 8, 8, 0});
  const auto top3 = route(TokenChoice{config(3, 1.0, true, true)}, c);
  REQUIRE(top3.tokens_per_expert() == std::vector<std::int64_t>{8, 8, 8, 0});
  // with a capacity: C = ceil(1.25 * 2 * 8 / 4) = 5 per expert, the rest dropped in token order
  const auto capped = route(TokenChoice{config(2, 1.25, false, false)}, c);
  REQUIRE(capped.tokens_per_expert() == std::vector<std::int64_t>{0, 5, 5, 0});
  REQUIRE(capped.dropped == 6);
  for (std::int64_t s = 0; s < 5; ++s) {
    REQUIRE(capped.token[s] == s);
  }
}

TEST_CASE("token_choice: aux losses at perfect balance have their closed form", "[routing][cpu]") {
  // w = 0: p = 1/E, every token picks experts 0..k-1 (ties), f_i = 1/k there;
  // balance = coef * E * sum_{i<k} (1/k)(1/E) = coef, z = coef_z * log(E)^2.
  for (std::int64_t k : {1, 2, 3}) {
    Case<double> c(12, 3, 5, 2);
    c.in.w.fill(0.0);
    TokenChoice::Config cfg = config(k, 1.0, true, false);
    cfg.balance_coef = 0.02;
    cfg.z_coef = 0.003;
    const auto plan = route(TokenChoice{cfg}, c);
    REQUIRE(plan.aux.balance == Approx(0.02).epsilon(1e-12));
    REQUIRE(plan.aux.z == Approx(0.003 * std::log(5.0) * std::log(5.0)).epsilon(1e-12));
    REQUIRE(plan.aux.total() == Approx(plan.aux.balance + plan.aux.z));
  }
}

TEST_CASE("token_choice: capacity rounds up to 1 and down to N", "[routing][cpu]") {
  Case<double> c(16, 3, 4, 3);
  const auto tiny = route(TokenChoice{config(2, 1e-3, false, false)}, c);
  std::int64_t chosen = 0;  // experts picked by at least one token
  const auto all = route(TokenChoice{config(2, 1.0, true, false)}, c);
  for (std::int64_t x = 0; x < 4; ++x) {
    REQUIRE(tiny.tokens_of(x) <= 1);
    chosen += all.tokens_of(x) > 0;
  }
  REQUIRE(tiny.slots() == chosen);
  REQUIRE(tiny.dropped == 16 * 2 - chosen);
  naive::require_plan(tiny, oracle(c, config(2, 1e-3, false, false)), 1e-12);
  const auto huge = route(TokenChoice{config(2, 100.0, false, false)}, c);  // C = N: no drops
  REQUIRE(huge.dropped == 0);
  REQUIRE(naive::signature(huge) == naive::signature(all));
}

TEST_CASE("token_choice: no tokens and a single token", "[routing][cpu]") {
  const auto none = route(TokenChoice{}, Case<float>(0, 3, 4, 1));
  REQUIRE(none.num_experts == 4);
  REQUIRE(none.slots() == 0);
  REQUIRE(none.aux.total() == 0.0f);
  Case<double> one(1, 3, 4, 1);
  const auto plan = route(TokenChoice{}, one);
  REQUIRE(plan.slots() == 2);  // C = max(1, ceil(1.25 * 2 / 4)) = 1 per expert, 2 experts chosen
  naive::require_plan(plan, oracle(one, TokenChoice::Config{}), 1e-12);
}

TEST_CASE("token_choice: Gumbel noise in training only, reproducible, deterministic",
          "[routing][cpu]") {
  Case<double> c(64, 6, 4, 9);
  c.args.seed = 1234;
  const TokenChoice noisy{config(2, 1.25, false, false, true)};
  const auto eval_plan = route(noisy, c);
  const auto clean_plan = route(TokenChoice{config(2, 1.25, false, false)}, c);
  REQUIRE(naive::signature(eval_plan) == naive::signature(clean_plan));
  REQUIRE(naive::gates(eval_plan) == naive::gates(clean_plan));
  c.args.training = true;
  const auto a = route(noisy, c);
  const auto b = route(noisy, c);
  REQUIRE(naive::signature(a) != naive::signature(clean_plan));
  REQUIRE(naive::signature(a) == naive::signature(b));
  REQUIRE(naive::gates(a) == naive::gates(b));
  REQUIRE(a.aux.z == b.aux.z);
  naive::require_plan(a, oracle(c, noisy.cfg), 1e-12);
}

TEST_CASE("token_choice: invalid arguments and non-finite logits throw", "[routing][cpu]") {
  auto error = [](const TokenChoice& r, const Case<float>& c) {
    return error_of([&] { (void)route(r, c); });
  };
  REQUIRE_THAT(error(TokenChoice{config(0, 1.0, false, false)}, Case<float>(8, 3, 4, 1)),
               Catch::Contains("] k:"));
  REQUIRE_THAT(error(TokenChoice{config(5, 1.0, false, false)}, Case<float>(8, 3, 4, 1)),
               Catch::Contains("] k:"));
  REQUIRE(error(TokenChoice{config(4, 1.0, false, false)}, Case<float>(8, 3, 4, 1)) == "no error");
  REQUIRE_THAT(error(TokenChoice{config(2, 0.0, false, false)}, Case<float>(8, 3, 4, 1)),
               Catch::Contains("capacity_factor"));
  {
    TokenChoice::Config cfg;
    cfg.balance_coef = -1.0;
    REQUIRE_THAT(error(TokenChoice{cfg}, Case<float>(8, 3, 4, 1)), Catch::Contains("balance_coef"));
    cfg = {};
    cfg.z_coef = std::numeric_limits<double>::quiet_NaN();
    REQUIRE_THAT(error(TokenChoice{cfg}, Case<float>(8, 3, 4, 1)), Catch::Contains("z_coef"));
  }
  {
    Case<float> c(8, 3, 4, 1);
    c.args.sequence_length = 3;
    REQUIRE_THAT(error(TokenChoice{}, c), Catch::Contains("sequence_length"));
  }
  {
    Case<float> c(8, 3, 4, 1);
    Tensor<float> w(3, 5);
    c.args.router_weight = w.view();
    REQUIRE_THAT(error(TokenChoice{}, c), Catch::Contains("router_weight"));
  }
  {
    Case<float> c(8, 3, 4, 1);
    c.in.modality[7] = -1;
    REQUIRE_THAT(error(TokenChoice{}, c), Catch::Contains("modality[7]"));
  }
  {
    Case<float> c(8, 3, 4, 1);
    c.in.w(1, 3) = std::numeric_limits<float>::quiet_NaN();
    const auto msg = error(TokenChoice{}, c);
    REQUIRE_THAT(msg, Catch::Contains("[token_choice::route] router logits"));
    REQUIRE_THAT(msg, Catch::Contains("token 0, expert 3"));
  }
}

TEST_CASE("token_choice: backward (gates and aux losses) equals central finite differences",
          "[routing][cpu]") {
  struct Variant {
    bool dropless, renormalize, noise;
    std::int64_t sequence_length;
    double aux_scale;
  };
  for (const Variant v : {Variant{false, false, false, 0, 1.0},
                          Variant{false, true, false, 0, 1.0},
                          Variant{true, true, false, 0, 2.5},
                          Variant{true, false, true, 0, 0.0},
                          Variant{false, true, true, 10, 1.0}}) {
    INFO("dropless=" << v.dropless << " renormalize=" << v.renormalize << " noise=" << v.noise
                     << " L=" << v.sequence_length << " aux_scale=" << v.aux_scale);
    Case<double> c(30, 5, 4, 71, 0.8);
    c.args.sequence_length = v.sequence_length;
    c.args.training = v.noise;
    c.args.seed = 8;
    TokenChoice::Config cfg = config(2, 0.9, v.dropless, v.renormalize, v.noise);
    cfg.balance_coef = 0.05;  // large enough to matter in the gradient
    cfg.z_coef = 0.02;
    const TokenChoice r{cfg};
    CpuBackend<double> b;
    TokenChoice::Saved<CpuBackend<double>> saved;
    const auto plan = r.route(b, c.args, saved);
    if (!v.dropless) {
      REQUIRE(plan.dropped > 0);  // the drops are part of what is differentiated
    }
    const auto weights = naive::loss_weights(plan.slots(), 15);
    const Tensor<double> dgate = Tensor<double>::from(weights);
    Tensor<double> dx(30, 5);
    Tensor<double> dw(5, 4);
    dx.fill(0.0);
    dw.fill(0.0);
    r.backward(b, c.args, saved, dgate.span(), {dx.view(), dw.view(), v.aux_scale});
    auto eval = [&]() {
      TokenChoice::Saved<CpuBackend<double>> s;
      const auto p = r.route(b, c.args, s);
      return naive::Eval{
          naive::signature(p),
          naive::weighted_gates(p, weights) + v.aux_scale * static_cast<double>(p.aux.total())};
    };
    const auto gx = naive::central_differences(c.in.x, eval);
    const auto gw = naive::central_differences(c.in.w, eval);
    REQUIRE(naive::max_abs(gw) > 1e-3);
    REQUIRE(naive::relative_error(dx, gx) < 1e-6);
    REQUIRE(naive::relative_error(dw, gw) < 1e-6);
  }
}

// test/routing/modality_aware_test.cpp
//
// ModalityAware<Inner> (MoMa's hierarchy) against a composition of naive oracles: split the
// tokens by modality, route each group with its own router columns and experts (global noise
// counters), map back and concatenate. Inner = ExpertChoice, TokenChoice, MixtureOfDepths; group
// sizes 1t1i, 4t4i, 2t6i, three modalities; empty and full modalities, one token, per-sequence
// groups; no cross-modality routing; Gumbel noise; errors; backward by finite differences.
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "routing/naive_router.hpp"
#include <mmsparse/routing/mixture_of_depths.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/modality_hard.hpp>
#include <mmsparse/routing/token_choice.hpp>

using namespace mmsparse;

static_assert(router_for<ModalityAware<TokenChoice>, CpuBackend<double>>);
static_assert(router_for<ModalityAware<MixtureOfDepths>, CpuBackend<bf16>>);
static_assert(group_router_for<ExpertChoice, CpuBackend<float>>);
static_assert(!group_router_for<ModalityHard, CpuBackend<float>>);

namespace {

template <class T, class Inner>
struct Case {
  naive::Inputs<T> in;
  std::vector<std::int64_t> per_group;
  RouteArgs<CpuBackend<T>> args;

  Case(const ModalityAware<Inner>& r,
       std::int64_t n,
       std::int64_t d,
       std::vector<std::int64_t> groups,
       std::uint64_t seed,
       int only = -1,
       double w_scale = 1.0)
      : in(naive::random_inputs<T>(n,
                                   d,
                                   r.router_columns(groups),
                                   static_cast<std::int64_t>(groups.size()),
                                   seed,
                                   w_scale,
                                   only)),
        per_group(std::move(groups)) {
    args.x = in.x.view();
    args.modality = in.modality.span();
    args.router_weight = in.w.view();
    args.num_modalities = static_cast<std::int64_t>(per_group.size());
    args.experts_per_group = per_group;
  }
};

// The inner oracle of one group on logits z of its tokens (rows), routing groups `groups`.
naive::Plan inner_oracle(const ExpertChoice::Config& cfg,
                         const naive::Matrix& z,
                         const std::vector<std::int64_t>& groups,
                         std::int64_t experts) {
  const auto s = cfg.gate == GateFn::sigmoid ? naive::sigmoid(z) : naive::softmax(z);
  return naive::top_tokens(s, experts, groups, [&](std::int64_t n_q) {
    return expert_choice_capacity(cfg.capacity_factor, n_q, experts);
  });
}
naive::Plan inner_oracle(const TokenChoice::Config& cfg,
                         const naive::Matrix& z,
                         const std::vector<std::int64_t>& groups,
                         std::int64_t experts) {
  naive::Plan p = naive::token_choice(
      z,
      groups,
      {cfg.k, cfg.capacity_factor, cfg.dropless, cfg.renormalize, cfg.balance_coef, cfg.z_coef});
  p.token.resize(static_cast<std::size_t>(experts));  // an empty group still has E segments
  p.gate.resize(static_cast<std::size_t>(experts));
  return p;
}
naive::Plan inner_oracle(const MixtureOfDepths::Config& cfg,
                         const naive::Matrix& z,
                         const std::vector<std::int64_t>& groups,
                         std::int64_t /*experts*/) {
  return naive::top_tokens(naive::sigmoid(z), 1, groups, [&](std::int64_t n_q) {
    return depth_capacity(cfg.capacity, n_q);
  });
}

template <class T, class Inner>
naive::Plan oracle(const ModalityAware<Inner>& r, const Case<T, Inner>& c) {
  const std::int64_t n = c.in.x.rows();
  const bool noise = r.cfg.gumbel && c.args.training;
  std::vector<naive::Plan> parts;
  std::int64_t col0 = 0;
  for (std::size_t g = 0; g < c.per_group.size(); ++g) {
    const std::int64_t cols = r.inner().router_columns(std::span(&c.per_group[g], 1));
    const auto tokens = naive::tokens_of_modality(c.in.modality, static_cast<ModalityId>(g));
    const auto z = naive::logits(c.in.x, c.in.w, tokens, col0, cols, noise, c.args.seed);
    const auto groups = naive::sequence_groups(tokens, n, c.args.sequence_length);
    parts.push_back(naive::to_global(inner_oracle(r.cfg, z, groups, c.per_group[g]), tokens));
    col0 += cols;
  }
  return naive::concat(parts);
}

template <class T, class Inner>
plan_t<CpuBackend<T>> route(const ModalityAware<Inner>& r, const Case<T, Inner>& c) {
  CpuBackend<T> b;
  typename ModalityAware<Inner>::template Saved<CpuBackend<T>> saved;
  return r.route(b, c.args, saved);
}

// Every slot of group g's experts holds a token of modality g.
template <class W, class T, class Inner>
void require_within_modality(const RoutingPlan<W>& plan, const Case<T, Inner>& c, bool depth) {
  std::int64_t e = 0;
  for (std::size_t g = 0; g < c.per_group.size(); ++g) {
    const std::int64_t experts = depth ? 1 : c.per_group[g];
    for (std::int64_t x = e; x < e + experts; ++x) {
      for (std::int64_t s = plan.offsets[static_cast<std::size_t>(x)];
           s < plan.offsets[static_cast<std::size_t>(x + 1)];
           ++s) {
        REQUIRE(c.in.modality[plan.token[s]] == static_cast<ModalityId>(g));
      }
    }
    e += experts;
  }
  REQUIRE(plan.num_experts == e);
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

const std::vector<std::vector<std::int64_t>> layouts{{1, 1}, {4, 4}, {2, 6}, {2, 3, 1}};

template <class T, class Inner>
void check_against_oracle(const ModalityAware<Inner>& r, bool depth) {
  const double tie_guard = std::is_same_v<T, float> ? 2e-5 : 1e-10;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  int compared = 0;
  int total = 0;
  for (const auto& layout : layouts) {
    const std::vector<std::int64_t> groups =
        depth ? std::vector<std::int64_t>(layout.size(), 1) : layout;
    for (std::int64_t len : {0, 12}) {
      for (int only : {-1, 0, 1}) {  // random mix, all of modality 0, all of modality 1
        for (std::uint64_t seed : {1u, 2u}) {
          INFO("groups=" << groups.size() << " E0=" << groups[0] << " L=" << len << " only=" << only
                         << " seed=" << seed);
          Case<T, Inner> c(r, 48, 5, groups, seed, only);
          c.args.sequence_length = len;
          const auto plan = route(r, c);
          const auto ref = oracle(r, c);
          require_within_modality(plan, c, depth);
          ++total;
          if (ref.margin < tie_guard) {
            continue;
          }
          ++compared;
          naive::require_plan(plan, ref, tol);
          REQUIRE(static_cast<double>(plan.aux.balance) == Approx(ref.balance).epsilon(tol * 10));
          REQUIRE(static_cast<double>(plan.aux.z) == Approx(ref.z).epsilon(tol * 10));
        }
      }
    }
  }
  REQUIRE(compared * 5 >= total * 4);
}

}  // namespace

TEMPLATE_TEST_CASE("modality_aware: equals the per-modality composition of naive oracles",
                   "[routing][cpu]",
                   float,
                   double) {
  SECTION("expert choice, sigmoid") {
    check_against_oracle<TestType>(ModalityAware<ExpertChoice>{{1.0, GateFn::sigmoid, false}},
                                   false);
  }
  SECTION("expert choice, softmax, capacity 2") {
    check_against_oracle<TestType>(ModalityAware<ExpertChoice>{{2.0, GateFn::softmax, false}},
                                   false);
  }
  SECTION("token choice top-1 with capacity") {
    TokenChoice::Config cfg;
    cfg.k = 1;
    cfg.capacity_factor = 1.0;
    check_against_oracle<TestType>(ModalityAware<TokenChoice>{cfg}, false);
  }
  SECTION("mixture of depths per modality") {
    check_against_oracle<TestType>(ModalityAware<MixtureOfDepths>{{0.25, false}}, true);
  }
}

TEST_CASE("modality_aware: token choice k = 2, renormalised, on 4t4i and 2t6i", "[routing][cpu]") {
  TokenChoice::Config cfg;
  cfg.k = 2;
  cfg.renormalize = true;
  const ModalityAware<TokenChoice> r{cfg};
  for (const std::vector<std::int64_t>& groups : {std::vector<std::int64_t>{4, 4}, {2, 6}}) {
    for (std::uint64_t seed : {3u, 4u, 5u}) {
      Case<double, TokenChoice> c(r, 40, 4, groups, seed);
      const auto plan = route(r, c);
      require_within_modality(plan, c, false);
      naive::require_plan(plan, oracle(r, c), 1e-12);
    }
  }
}

TEST_CASE("modality_aware: a single token, and no tokens at all", "[routing][cpu]") {
  const ModalityAware<ExpertChoice> r{};
  Case<float, ExpertChoice> one(r, 1, 3, {2, 3}, 4, /*only=*/1);
  const auto plan = route(r, one);
  REQUIRE(plan.tokens_per_expert() == std::vector<std::int64_t>{0, 0, 1, 1, 1});
  Case<float, ExpertChoice> none(r, 0, 3, {2, 3}, 4);
  const auto empty = route(r, none);
  REQUIRE(empty.num_experts == 5);
  REQUIRE(empty.slots() == 0);
}

TEST_CASE("modality_aware: Gumbel noise uses global token and column counters", "[routing][cpu]") {
  const ModalityAware<ExpertChoice> r{{1.0, GateFn::sigmoid, true}};
  Case<double, ExpertChoice> c(r, 60, 5, {2, 3, 2}, 6);
  c.args.seed = 99;
  const auto eval_plan = route(r, c);
  naive::require_plan(eval_plan, oracle(r, c), 1e-12);
  c.args.training = true;
  const auto a = route(r, c);
  REQUIRE(naive::signature(a) != naive::signature(eval_plan));
  REQUIRE(naive::signature(a) == naive::signature(route(r, c)));
  naive::require_plan(a, oracle(r, c), 1e-12);
}

TEST_CASE("modality_aware: invalid arguments and non-finite logits throw", "[routing][cpu]") {
  {
    const ModalityAware<ExpertChoice> r{};
    Case<float, ExpertChoice> c(r, 10, 3, {2, 2}, 1);
    c.args.num_modalities = 3;
    REQUIRE_THAT(error_of([&] { (void)route(r, c); }), Catch::Contains("experts_per_group"));
  }
  {
    const ModalityAware<ExpertChoice> r{};
    Case<float, ExpertChoice> c(r, 10, 3, {2, 2}, 1);
    Tensor<float> w(3, 5);
    c.args.router_weight = w.view();
    REQUIRE_THAT(error_of([&] { (void)route(r, c); }), Catch::Contains("router_weight"));
  }
  {
    TokenChoice::Config cfg;
    cfg.k = 2;
    const ModalityAware<TokenChoice> r{cfg};
    Case<float, TokenChoice> c(r, 10, 3, {4, 1}, 1);
    REQUIRE_THAT(error_of([&] { (void)route(r, c); }), Catch::Contains("] k:"));
  }
  {
    const ModalityAware<MixtureOfDepths> r{};
    Case<float, MixtureOfDepths> c(r, 10, 3, {1, 2}, 1);
    REQUIRE_THAT(error_of([&] { (void)route(r, c); }), Catch::Contains("experts_per_group"));
  }
  {
    const ModalityAware<ExpertChoice> r{};
    Case<float, ExpertChoice> c(r, 12, 3, {2, 3}, 1);
    c.args.sequence_length = 5;
    REQUIRE_THAT(error_of([&] { (void)route(r, c); }), Catch::Contains("sequence_length"));
  }
  {
    const ModalityAware<ExpertChoice> r{};
    Case<float, ExpertChoice> c(r, 12, 3, {2, 3}, 1);
    for (std::int64_t t = 0; t < 12; ++t) {
      c.in.modality[t] = t == 7 ? 1 : 0;
    }
    c.in.x(7, 1) = std::numeric_limits<float>::quiet_NaN();
    const auto msg = error_of([&] { (void)route(r, c); });
    REQUIRE_THAT(msg, Catch::Contains("[modality_aware::route] router logits"));
    REQUIRE_THAT(msg, Catch::Contains("token 7, expert 2"));  // group 1's first column
  }
}

TEST_CASE("modality_aware: backward equals central finite differences", "[routing][cpu]") {
  auto check = [](const auto& r, std::vector<std::int64_t> groups, std::int64_t len, bool noise) {
    using R = std::decay_t<decltype(r)>;
    using Saved = typename R::template Saved<CpuBackend<double>>;
    INFO("router=" << R::name << " L=" << len << " noise=" << noise);
    Case<double, typename std::decay_t<decltype(r.inner())>> c(
        r, 30, 4, std::move(groups), 23, -1, 0.8);
    c.args.sequence_length = len;
    c.args.training = noise;
    c.args.seed = 2;
    CpuBackend<double> b;
    Saved saved;
    const auto plan = r.route(b, c.args, saved);
    const auto weights = naive::loss_weights(plan.slots(), 31);
    const Tensor<double> dgate = Tensor<double>::from(weights);
    Tensor<double> dx(c.in.x.rows(), c.in.x.cols());
    Tensor<double> dw(c.in.w.rows(), c.in.w.cols());
    dx.fill(0.0);
    dw.fill(0.0);
    r.backward(b, c.args, saved, dgate.span(), {dx.view(), dw.view(), 1.0});
    auto eval = [&]() {
      Saved s;
      const auto p = r.route(b, c.args, s);
      return naive::Eval{naive::signature(p),
                         naive::weighted_gates(p, weights) + static_cast<double>(p.aux.total())};
    };
    const auto gx = naive::central_differences(c.in.x, eval);
    const auto gw = naive::central_differences(c.in.w, eval);
    REQUIRE(naive::max_abs(gw) > 1e-3);
    REQUIRE(naive::relative_error(dx, gx) < 1e-6);
    REQUIRE(naive::relative_error(dw, gw) < 1e-6);
  };
  check(ModalityAware<ExpertChoice>{{1.0, GateFn::sigmoid, false}}, {2, 3}, 0, false);
  check(ModalityAware<ExpertChoice>{{1.5, GateFn::softmax, true}}, {3, 2, 2}, 10, true);
  TokenChoice::Config tc;
  tc.k = 2;
  tc.capacity_factor = 0.8;
  tc.renormalize = true;
  tc.balance_coef = 0.05;
  tc.z_coef = 0.02;
  check(ModalityAware<TokenChoice>{tc}, {3, 4}, 0, false);
  tc.gumbel = true;
  check(ModalityAware<TokenChoice>{tc}, {2, 3}, 15, true);
  check(ModalityAware<MixtureOfDepths>{{0.4, false}}, {1, 1}, 10, false);
}

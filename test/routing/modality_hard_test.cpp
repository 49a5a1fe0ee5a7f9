// test/routing/modality_hard_test.cpp
//
// ModalityHard against a loop over the modality ids: one segment per modality, tokens ascending,
// gates 1; edge cases (no tokens, one modality absent, a single token); invalid arguments; a
// backward that leaves the gradients untouched.
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "routing/naive_router.hpp"
#include <mmsparse/routing/modality_hard.hpp>

using namespace mmsparse;

namespace {

template <class T>
struct Fixture {
  naive::Inputs<T> in;
  std::vector<std::int64_t> per_group;
  RouteArgs<CpuBackend<T>> args;

  Fixture(std::int64_t n, std::int64_t m, std::uint64_t seed, int only = -1)
      : in(naive::random_inputs<T>(n, 3, 0, m, seed, 1.0, only)),
        per_group(static_cast<std::size_t>(m), 1) {
    args.x = in.x.view();
    args.modality = in.modality.span();
    args.router_weight = in.w.view();
    args.num_modalities = m;
    args.experts_per_group = per_group;
  }
};

naive::Plan oracle(const Tensor<ModalityId>& modality, std::int64_t m) {
  naive::Plan p;
  for (ModalityId g = 0; g < m; ++g) {
    p.token.push_back(naive::tokens_of_modality(modality, g));
    p.gate.emplace_back(p.token.back().size(), 1.0);
  }
  return p;
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

TEMPLATE_TEST_CASE("modality_hard: one expert per modality, tokens ascending, gate 1",
                   "[routing][cpu]",
                   float,
                   double) {
  for (std::int64_t m : {1, 2, 3}) {
    for (std::uint64_t seed : {1u, 2u, 3u}) {
      for (std::int64_t n : {0, 1, 17, 64}) {
        INFO("m=" << m << " seed=" << seed << " n=" << n);
        Fixture<TestType> f(n, m, seed);
        CpuBackend<TestType> b;
        ModalityHard::Saved<CpuBackend<TestType>> saved;
        const auto plan = ModalityHard{}.route(b, f.args, saved);
        REQUIRE(plan.num_tokens == n);
        REQUIRE(plan.slots() == n);
        REQUIRE(plan.aux.total() == 0);
        naive::require_plan(plan, oracle(f.in.modality, m), 0.0);
      }
    }
  }
}

TEST_CASE("modality_hard: a modality with no tokens gets an empty segment", "[routing][cpu]") {
  Fixture<float> f(20, 3, 7, /*only=*/2);
  CpuBackend<float> b;
  ModalityHard::Saved<CpuBackend<float>> saved;
  const auto plan = ModalityHard{}.route(b, f.args, saved);
  REQUIRE(plan.tokens_per_expert() == std::vector<std::int64_t>{0, 0, 20});
  naive::require_plan(plan, oracle(f.in.modality, 3), 0.0);
}

TEST_CASE("modality_hard: backward leaves the gradients unchanged", "[routing][cpu]") {
  Fixture<double> f(12, 2, 5);
  CpuBackend<double> b;
  ModalityHard::Saved<CpuBackend<double>> saved;
  const auto plan = ModalityHard{}.route(b, f.args, saved);
  Tensor<double> dgate(plan.slots(), 1);
  dgate.fill(1.5);
  Tensor<double> dx(12, 3);
  dx.fill(0.25);
  Tensor<double> dw(3, 0);
  ModalityHard{}.backward(b, f.args, saved, dgate.span(), {dx.view(), dw.view(), 1.0});
  for (std::int64_t i = 0; i < dx.size(); ++i) {
    REQUIRE(dx.data()[i] == 0.25);
  }
  Tensor<double> short_dgate(plan.slots() - 1, 1);
  const auto msg = error_of([&] {
    ModalityHard{}.backward(b, f.args, saved, short_dgate.span(), {dx.view(), dw.view(), 1.0});
  });
  REQUIRE_THAT(msg, Catch::Contains("dgate"));
}

TEST_CASE("modality_hard: invalid arguments throw naming the argument", "[routing][cpu]") {
  CpuBackend<float> b;
  ModalityHard::Saved<CpuBackend<float>> saved;
  auto route = [&](const RouteArgs<CpuBackend<float>>& a) {
    return error_of([&] { (void)ModalityHard{}.route(b, a, saved); });
  };
  {
    Fixture<float> f(10, 2, 1);
    const std::vector<std::int64_t> three{1, 1, 1};
    f.args.experts_per_group = three;
    REQUIRE_THAT(route(f.args), Catch::Contains("experts_per_group"));
  }
  {
    Fixture<float> f(10, 2, 1);
    const std::vector<std::int64_t> two{1, 2};
    f.args.experts_per_group = two;
    REQUIRE_THAT(route(f.args), Catch::Contains("experts_per_group[1]"));
  }
  {
    Fixture<float> f(10, 2, 1);
    f.in.modality[4] = 2;
    REQUIRE_THAT(route(f.args), Catch::Contains("modality[4]"));
  }
  {
    Fixture<float> f(10, 2, 1);
    f.args.modality = f.in.modality.span().subspan(0, 9);
    REQUIRE_THAT(route(f.args), Catch::Contains("modality"));
  }
  {
    Fixture<float> f(10, 2, 1);
    Tensor<float> w(3, 2);
    f.args.router_weight = w.view();
    REQUIRE_THAT(route(f.args), Catch::Contains("router_weight"));
  }
  {
    Fixture<float> f(10, 2, 1);
    f.args.x = f.in.x.view().col_block(0, 0);
    REQUIRE_THAT(route(f.args), Catch::Contains("] x:"));
  }
  {
    Fixture<float> f(10, 2, 1);
    f.args.num_modalities = 0;
    REQUIRE_THAT(route(f.args), Catch::Contains("num_modalities"));
  }
  {
    Fixture<float> f(10, 2, 1);
    f.args.sequence_length = 3;
    REQUIRE_THAT(route(f.args), Catch::Contains("sequence_length"));
  }
  REQUIRE(route(Fixture<float>(10, 2, 1).args) == "no error");
}

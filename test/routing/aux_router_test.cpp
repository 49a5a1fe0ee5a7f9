// Auxiliary router (routing/aux_router.hpp): the forward against its formula, the BCE gradients
// against central differences (double), training on the real top-C decisions of an expert-choice
// router where selection is learnable (precision and recall on held-out tokens), argument errors.
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/autograd/params.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/routing/aux_router.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/testing/gradcheck.hpp>
#include <mmsparse/train/adamw.hpp>

namespace mm = mmsparse;

namespace {

using Cpu = mm::CpuBackend<double>;
using Aux = mm::AuxRouter<double, Cpu>;

double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}

// p(r, e) = sigmoid(sum_k silu(sum_j x(r, j) W1(j, k)) W2(k, e)), by loops.
double naive(const mm::Tensor<double>& x, const Aux::Weights& w, std::int64_t r, std::int64_t e) {
  double z = 0.0;
  for (std::int64_t k = 0; k < w.w1.cols; ++k) {
    double a = 0.0;
    for (std::int64_t j = 0; j < x.cols(); ++j) {
      a += x(r, j) * w.w1(j, k);
    }
    z += a * sigmoid(a) * w.w2(k, e);
  }
  return sigmoid(z);
}

// Targets of an expert-choice router (the real top-C decisions): [n * E], 1 where selected.
std::vector<std::int32_t> expert_choice_targets(Cpu& b,
                                                const mm::Tensor<double>& x,
                                                const mm::Tensor<double>& router,
                                                double capacity) {
  mm::ExpertChoice ec{{capacity, mm::GateFn::sigmoid, false}};
  const std::int64_t n = x.rows();
  const std::int64_t e = router.cols();
  std::vector<mm::ModalityId> modality(static_cast<std::size_t>(n), 0);
  const std::int64_t experts[1] = {e};
  mm::RouteArgs<Cpu> args;
  args.x = x.view();
  args.modality = {modality.data(), n};
  args.router_weight = router.view();
  args.experts_per_group = experts;
  mm::ExpertChoice::Saved<Cpu> saved;
  const auto plan = ec.route(b, args, saved);
  std::vector<std::int32_t> target(static_cast<std::size_t>(n * e), 0);
  for (std::int64_t x_e = 0; x_e < e; ++x_e) {
    for (auto s = plan.offsets[static_cast<std::size_t>(x_e)];
         s < plan.offsets[static_cast<std::size_t>(x_e + 1)];
         ++s) {
      target[static_cast<std::size_t>(plan.token[s] * e + x_e)] = 1;
    }
  }
  return target;
}

}  // namespace

TEST_CASE("AuxRouter forward is sigmoid(silu(x W1) W2)", "[routing][cpu]") {
  Cpu b;
  Aux aux({12, 3, 0, 7});
  CHECK(aux.config().hidden == 6);  // d / 2 (MoMa §2.4)
  CHECK(Aux::parameter_shapes(aux.config())[0].second == (mm::Shape{12, 6}));
  CHECK(Aux::parameter_shapes(aux.config())[1].second == (mm::Shape{6, 3}));
  mm::Rng rng(3);
  const auto x = rng.normal_tensor<double>(9, 12);
  mm::Tensor<double> p(9, 3);
  aux.forward(b, x.view(), p.view());
  const auto decided = aux.decide(b, x.view());
  for (std::int64_t r = 0; r < 9; ++r) {
    for (std::int64_t e = 0; e < 3; ++e) {
      const double expect = naive(x, aux.weights(), r, e);
      CHECK(p(r, e) == Approx(expect).epsilon(1e-13));
      CHECK(decided[static_cast<std::size_t>(r * 3 + e)] == (expect > 0.5 ? 1 : 0));
    }
  }
}

TEST_CASE("AuxRouter BCE gradients match central differences (double)", "[routing][cpu][grad]") {
  Cpu b;
  Aux aux({10, 2, 0, 11});
  mm::Rng rng(13);
  mm::Tensor<double> x = rng.normal_tensor<double>(14, 10);
  std::vector<std::int32_t> target;
  for (std::int64_t i = 0; i < 14 * 2; ++i) {
    target.push_back(static_cast<std::int32_t>(rng.integer(0, 2)));
  }
  mm::Tensor<double> w1(10, 5), w2(5, 2), dw1(10, 5), dw2(5, 2), dx(14, 10);
  rng.fill_normal(w1.view(), 0.8);
  rng.fill_normal(w2.view(), 0.8);
  aux.bind({w1.view(), w2.view()});
  for (auto* t : {&dw1, &dw2, &dx}) {
    t->fill(0.0);
  }
  const double scale = 1.7;
  const auto fit = aux.fit(b, x.view(), target, {dw1.view(), dw2.view()}, dx.view(), scale);
  CHECK(fit.pairs == 28);
  mm::Tensor<double> s1(10, 5), s2(5, 2);  // scratch gradients of the numeric evaluations
  auto loss = [&] { return scale * aux.fit(b, x.view(), target, {s1.view(), s2.view()}).loss(); };
  const std::vector<mm::GradcheckInput> inputs = {
      {"w1", w1.view(), dw1.view()}, {"w2", w2.view(), dw2.view()}, {"x", x.view(), dx.view()}};
  const auto report = mm::gradcheck(loss, inputs);
  INFO(report.str());
  CHECK(report.ok(1e-7));
  for (const auto& r : report.results) {
    CHECK(r.scale > 0.0);
  }
  // The loss is the mean BCE, by its formula.
  mm::Tensor<double> p(14, 2);
  aux.forward(b, x.view(), p.view());
  double bce = 0.0;
  for (std::int64_t i = 0; i < 28; ++i) {
    const double q = p.data()[i];
    bce -= target[static_cast<std::size_t>(i)] == 1 ? std::log(q) : std::log(1.0 - q);
  }
  CHECK(fit.loss() == Approx(bce / 28.0).epsilon(1e-12));
}

TEST_CASE("AuxRouter learns expert-choice decisions: precision and recall on held-out tokens",
          "[routing][cpu]") {
  // Expert choice over a batch: each of 2 experts takes the top half of the batch by x . w_e, so
  // selection is (up to batch noise around the median) a half-space the MLP can learn.
  Cpu b;
  constexpr std::int64_t d = 16, e = 2, n = 512;
  mm::Rng rng(21);
  const auto router = rng.normal_tensor<double>(d, e);
  Aux aux({d, e, 0, 5});
  mm::ParamArena<double, Cpu> arena;
  const auto i1 = arena.add("w1", {d, d / 2});
  const auto i2 = arena.add("w2", {d / 2, e});
  arena.allocate(b);
  b.copy(arena.value(i1), mm::View<const double>(aux.weights().w1));
  b.copy(arena.value(i2), mm::View<const double>(aux.weights().w2));
  aux.bind({arena.value(i1), arena.value(i2)});
  mm::AdamW<double, Cpu> opt(arena, {0.9, 0.99, 1e-8, 0.0});
  mm::AuxRouterFit first;
  mm::AuxRouterFit last;
  for (int step = 0; step < 300; ++step) {
    const auto x = rng.normal_tensor<double>(n, d);
    const auto target = expert_choice_targets(b, x, router, 1.0);
    arena.zero_grad(b);
    const auto fit = aux.fit(b, x.view(), target, {arena.grad(i1), arena.grad(i2)});
    (step == 0 ? first : last) = fit;
    opt.step(b, step < 200 ? 1e-2 : 2e-3);
  }
  CHECK(last.loss() < 0.5 * first.loss());
  // Held-out batches: decisions of the trained router against the real top-C.
  mm::AuxRouterFit held;
  for (int k = 0; k < 4; ++k) {
    const auto x = rng.normal_tensor<double>(n, d);
    const auto target = expert_choice_targets(b, x, router, 1.0);
    const auto decided = aux.decide(b, x.view());
    for (std::size_t i = 0; i < target.size(); ++i) {
      held.true_pos += decided[i] == 1 && target[i] == 1;
      held.false_pos += decided[i] == 1 && target[i] == 0;
      held.false_neg += decided[i] == 0 && target[i] == 1;
      held.true_neg += decided[i] == 0 && target[i] == 0;
    }
  }
  INFO("held-out precision " << held.precision() << ", recall " << held.recall());
  CHECK(held.true_pos + held.false_neg == 4 * n);  // C = n / 2 per expert
  CHECK(held.precision() > 0.9);
  CHECK(held.recall() > 0.9);
}

TEST_CASE("AuxRouter rejects bad arguments and names them", "[routing][cpu]") {
  Cpu b;
  Aux aux({8, 2, 0, 1});
  mm::Tensor<double> x(4, 8), dw1(8, 4), dw2(4, 2), p(4, 2);
  x.fill(0.5);
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const mm::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<std::int32_t> short_target(7, 0);
  CHECK_THAT(message([&] {
               (void)aux.fit(b, x.view(), short_target, {dw1.view(), dw2.view()});
             }),
             Catch::Contains("[AuxRouter::fit] target"));
  std::vector<std::int32_t> bad(8, 0);
  bad[3] = 2;
  CHECK_THAT(message([&] {
               (void)aux.fit(b, x.view(), bad, {dw1.view(), dw2.view()});
             }),
             Catch::Contains("target[3]"));
  mm::Tensor<double> wide(4, 9);
  CHECK_THAT(message([&] { aux.forward(b, wide.view(), p.view()); }),
             Catch::Contains("[AuxRouter::forward] x"));
  mm::Tensor<double> w2_wrong(5, 2);
  CHECK_THAT(message([&] { aux.bind({dw1.view(), w2_wrong.view()}); }), Catch::Contains("w2"));
  CHECK_THAT(message([] { Aux a({0, 1, 0, 0}); }), Catch::Contains("[AuxRouter] d"));
}

// Gradient checks in double of the sparse FFN through its tape adapter (autograd/ops.hpp), for
// every routing policy x dispatch scheme: inputs, expert weights and router weights against
// central differences (testing/gradcheck.hpp), with the routing plan asserted unchanged by every
// perturbation, Gumbel noise on (fixed seed, training mode) and the aux losses in the loss.
// The three dispatch schemes must give the same gradients.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/autograd/no_grad.hpp>
#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/dense_mask.hpp>
#include <mmsparse/dispatch/padded_capacity.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/mixture_of_depths.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/modality_hard.hpp>
#include <mmsparse/routing/token_choice.hpp>
#include <mmsparse/testing/gradcheck.hpp>

using namespace mmsparse;

namespace {

using B64 = CpuBackend<double>;
constexpr std::int64_t n = 16, d = 8, f = 12;
constexpr double aux_scale = 1.0;

struct Case {
  std::vector<std::int64_t> experts;
  std::int64_t modalities = 1;
  std::uint64_t seed = 11;
};

struct Grads {
  std::vector<std::vector<double>> g;  // x, router, w1, w3, w2
  double aux = 0.0;
  GradcheckReport report;
};

std::vector<double> flat(View<const double> v) {
  std::vector<double> out;
  for (std::int64_t i = 0; i < v.rows; ++i) {
    for (std::int64_t j = 0; j < v.cols; ++j) {
      out.push_back(v(i, j));
    }
  }
  return out;
}

double dot(View<const double> a, View<const double> c) {
  double s = 0.0;
  for (std::int64_t i = 0; i < a.rows; ++i) {
    for (std::int64_t j = 0; j < a.cols; ++j) {
      s += a(i, j) * c(i, j);
    }
  }
  return s;
}

template <class R, class D>
Grads run_case(const typename R::Config& rc, const Case& c) {
  using Layer = SparseFfn<double, R, D, B64>;
  B64 b;
  Tape tape;
  typename Layer::Config cfg;
  cfg.d = d;
  cfg.hidden = f;
  cfg.experts = c.experts;
  cfg.modalities = c.modalities;
  cfg.router = rc;
  Layer layer(cfg);

  ParamArena<double, B64> arena;
  const auto ids = declare_layer<Layer>(arena, "ffn", cfg);
  arena.allocate(b);
  Rng rng(c.seed);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const double scale = i == 0 ? 1.0 : 0.4;  // router logits of order 1: clear top-k margins
    rng.fill_normal(arena.value(ids[i]), scale);
  }
  layer.bind(layer_weights<Layer>(arena, ids, false));
  const auto grads = layer_weights<Layer>(arena, ids, true);

  Tensor<double> xv = rng.normal_tensor<double>(n, d);
  std::vector<ModalityId> modality(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    modality[static_cast<std::size_t>(i)] = static_cast<ModalityId>(c.modalities == 1     ? 0
                                                                    : (i * 7 + 3) % 5 < 3 ? 0
                                                                                          : 1);
  }
  const Span<const ModalityId> mod(modality.data(), n);
  Tensor<double> r = rng.normal_tensor<double>(n, d);  // dL/dy
  typename Layer::ForwardOptions opt;
  opt.training = true;  // Gumbel noise on where the router has it, from a fixed seed
  opt.seed = 1234;

  // Analytic: L = <y, r> + aux_scale * aux, through the tape.
  Var<double, B64> x(b, xv.view(), true);
  auto out = sparse_ffn(tape, b, layer, grads, x, mod, opt);
  out.aux.grad()(0, 0) = aux_scale;
  tape.backward(out.y, View<const double>(r.view()));

  Grads result;
  result.aux = out.aux.value()(0, 0);
  result.g.push_back(flat(x.grad()));
  for (const auto id : ids) {
    result.g.push_back(flat(arena.grad(id)));
  }

  typename Layer::Saved saved;
  Tensor<double> y(n, d);
  auto loss = [&] {
    const auto stats = layer.forward(b, View<const double>(xv.view()), mod, y.view(), saved, opt);
    return dot(y.view(), r.view()) + aux_scale * stats.aux.total();
  };
  auto plan = [&] { return plan_signature(saved.plan); };
  std::vector<GradcheckInput> inputs = {{"x", xv.view(), x.grad()}};
  const char* names[] = {"router", "w1", "w3", "w2"};
  for (std::size_t i = 0; i < ids.size(); ++i) {
    inputs.push_back({names[i], arena.value(ids[i]), arena.grad(ids[i])});
  }
  GradcheckOptions go;
  go.max_elements = 80;
  result.report = gradcheck(loss, inputs, go, plan);
  return result;
}

template <class R>
void check_all_schemes(const typename R::Config& rc, const Case& c, bool expect_router_grad) {
  const Grads sg = run_case<R, SortedGather>(rc, c);
  const Grads pc = run_case<R, PaddedCapacity>(rc, c);
  const Grads dm = run_case<R, DenseMask>(rc, c);
  for (const Grads* g : {&sg, &pc, &dm}) {
    INFO(R::name << "\n" << g->report.str());
    CHECK(g->report.ok(1e-6));
    for (const auto& res : g->report.results) {
      if (res.name != "router" || expect_router_grad) {
        CHECK(res.scale > 0.0);  // a check over all-zero gradients would prove nothing
      }
    }
  }
  // Same gradients whatever the dispatch scheme.
  for (std::size_t k = 0; k < sg.g.size(); ++k) {
    for (std::size_t i = 0; i < sg.g[k].size(); ++i) {
      CHECK(pc.g[k][i] == Approx(sg.g[k][i]).margin(1e-12).epsilon(1e-10));
      CHECK(dm.g[k][i] == Approx(sg.g[k][i]).margin(1e-12).epsilon(1e-10));
    }
  }
  CHECK(pc.aux == Approx(sg.aux).margin(1e-15));
}

}  // namespace

TEST_CASE("sparse_ffn grad: ModalityHard (1t1i)", "[autograd][cpu][grad]") {
  check_all_schemes<ModalityHard>({}, {{1, 1}, 2}, false);
}

TEST_CASE("sparse_ffn grad: TokenChoice top-2 with capacity, aux losses, Gumbel",
          "[autograd][cpu][grad]") {
  TokenChoice::Config rc;
  rc.k = 2;
  rc.capacity_factor = 1.0;
  rc.gumbel = true;
  rc.balance_coef = 0.1;
  rc.z_coef = 0.05;
  check_all_schemes<TokenChoice>(rc, {{4}, 1}, true);
}

TEST_CASE("sparse_ffn grad: TokenChoice dropless, renormalised, aux losses",
          "[autograd][cpu][grad]") {
  TokenChoice::Config rc;
  rc.k = 2;
  rc.dropless = true;
  rc.renormalize = true;
  rc.balance_coef = 0.1;
  rc.z_coef = 0.05;
  check_all_schemes<TokenChoice>(rc, {{4}, 1}, true);
}

TEST_CASE("sparse_ffn grad: ExpertChoice sigmoid (Gumbel) and softmax", "[autograd][cpu][grad]") {
  ExpertChoice::Config rc;
  rc.capacity_factor = 1.0;
  SECTION("sigmoid + Gumbel") {
    rc.gate = GateFn::sigmoid;
    rc.gumbel = true;
    check_all_schemes<ExpertChoice>(rc, {{4}, 1}, true);
  }
  SECTION("softmax") {
    rc.gate = GateFn::softmax;
    check_all_schemes<ExpertChoice>(rc, {{4}, 1}, true);
  }
}

TEST_CASE("sparse_ffn grad: MixtureOfDepths", "[autograd][cpu][grad]") {
  MixtureOfDepths::Config rc;
  rc.capacity = 0.5;
  rc.gumbel = true;
  check_all_schemes<MixtureOfDepths>(rc, {{1}, 1}, true);
}

TEST_CASE("sparse_ffn grad: ModalityAware<ExpertChoice> (2t2i)", "[autograd][cpu][grad]") {
  ExpertChoice::Config rc;
  rc.capacity_factor = 1.0;
  rc.gumbel = true;
  check_all_schemes<ModalityAware<ExpertChoice>>(rc, {{2, 2}, 2}, true);
}

TEST_CASE("sparse_ffn grad: ModalityAware<TokenChoice> (2t2i)", "[autograd][cpu][grad]") {
  TokenChoice::Config rc;
  rc.k = 1;
  rc.capacity_factor = 1.5;
  rc.balance_coef = 0.1;
  rc.z_coef = 0.05;
  check_all_schemes<ModalityAware<TokenChoice>>(rc, {{2, 2}, 2}, true);
}

TEST_CASE("sparse_ffn grad: aux losses left out of the loss contribute nothing",
          "[autograd][cpu][grad]") {
  // With aux in the loss the router gradient differs from the one without (aux_scale = 0).
  using Layer = SparseFfn<double, TokenChoice, SortedGather, B64>;
  B64 b;
  Layer::Config cfg;
  cfg.d = d;
  cfg.hidden = f;
  cfg.experts = {4};
  cfg.router.k = 2;
  cfg.router.balance_coef = 0.5;
  cfg.router.z_coef = 0.5;
  Layer layer(cfg);
  ParamArena<double, B64> arena;
  const auto ids = declare_layer<Layer>(arena, "ffn", cfg);
  arena.allocate(b);
  Rng rng(77);
  for (const auto id : ids) {
    rng.fill_normal(arena.value(id), 0.5);
  }
  layer.bind(layer_weights<Layer>(arena, ids, false));
  const auto grads = layer_weights<Layer>(arena, ids, true);
  Tensor<double> xv = rng.normal_tensor<double>(n, d);
  Tensor<double> r = rng.normal_tensor<double>(n, d);
  const std::vector<ModalityId> modality(static_cast<std::size_t>(n), 0);
  const Span<const ModalityId> mod(modality.data(), n);

  auto router_grad = [&](bool with_aux) {
    Tape tape;
    arena.zero_grad(b);
    Var<double, B64> x(b, xv.view(), true);
    auto out = sparse_ffn(tape, b, layer, grads, x, mod);
    if (with_aux) {
      out.aux.grad()(0, 0) = 1.0;
    }
    tape.backward(out.y, View<const double>(r.view()));
    return flat(arena.grad(ids[0]));
  };
  const auto without = router_grad(false);
  const auto with = router_grad(true);

  // Oracle for "without": finite differences of <y, r> alone.
  Tensor<double> y(n, d);
  Layer::Saved saved;
  auto loss = [&] {
    (void)layer.forward(b, View<const double>(xv.view()), mod, y.view(), saved);
    return dot(y.view(), r.view());
  };
  Tensor<double> g(arena.value(ids[0]).shape());
  for (std::int64_t i = 0; i < g.size(); ++i) {
    g[i] = without[static_cast<std::size_t>(i)];
  }
  const std::vector<GradcheckInput> inputs = {{"router", arena.value(ids[0]), g.view()}};
  const auto report = gradcheck(loss, inputs, {}, [&] { return plan_signature(saved.plan); });
  INFO(report.str());
  CHECK(report.ok(1e-6));
  double diff = 0.0;
  for (std::size_t i = 0; i < with.size(); ++i) {
    diff = std::max(diff, std::fabs(with[i] - without[i]));
  }
  CHECK(diff > 1e-3);  // the aux losses do reach the router when they are in the loss
}

namespace {
// Gradients (x, router, w1, w3, w2) of <y, r> + aux through the tape, in scalar T, from values
// drawn in double.
template <class T, class R>
std::vector<std::vector<double>> grads_in(const typename R::Config& rc,
                                          std::vector<std::int64_t> experts,
                                          std::int64_t modalities) {
  using Bk = CpuBackend<T>;
  using Layer = SparseFfn<T, R, SortedGather, Bk>;
  Bk b;
  Tape tape;
  typename Layer::Config cfg;
  cfg.d = d;
  cfg.hidden = f;
  cfg.experts = std::move(experts);
  cfg.modalities = modalities;
  cfg.router = rc;
  Layer layer(cfg);
  ParamArena<T, Bk> arena;
  const auto ids = declare_layer<Layer>(arena, "ffn", cfg);
  arena.allocate(b);
  Rng rng(31);
  auto fill = [&](View<T> v, double stddev) {
    for (std::int64_t i = 0; i < v.rows; ++i) {
      for (std::int64_t j = 0; j < v.cols; ++j) {
        v(i, j) = static_cast<T>(stddev * rng.normal());
      }
    }
  };
  for (std::size_t i = 0; i < ids.size(); ++i) {
    fill(arena.value(ids[i]), i == 0 ? 1.0 : 0.4);
  }
  layer.bind(layer_weights<Layer>(arena, ids, false));
  Tensor<T> xv(n, d), r(n, d);
  fill(xv.view(), 1.0);
  fill(r.view(), 1.0);
  std::vector<ModalityId> modality(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    modality[static_cast<std::size_t>(i)] = static_cast<ModalityId>(i % modalities);
  }
  Var<T, Bk> x(b, xv.view(), true);
  auto out = sparse_ffn(tape,
                        b,
                        layer,
                        layer_weights<Layer>(arena, ids, true),
                        x,
                        Span<const ModalityId>(modality.data(), n));
  out.aux.grad()(0, 0) = T{1};
  tape.backward(out.y, View<const T>(r.view()));
  std::vector<std::vector<double>> g;
  auto push = [&](View<const T> v) {
    g.emplace_back();
    for (std::int64_t i = 0; i < v.rows; ++i) {
      for (std::int64_t j = 0; j < v.cols; ++j) {
        g.back().push_back(static_cast<double>(v(i, j)));
      }
    }
  };
  push(x.grad());
  for (const auto id : ids) {
    push(arena.grad(id));
  }
  return g;
}

template <class R>
void check_float_matches_double(const typename R::Config& rc,
                                std::vector<std::int64_t> experts,
                                std::int64_t modalities) {
  const auto g64 = grads_in<double, R>(rc, experts, modalities);
  const auto g32 = grads_in<float, R>(rc, experts, modalities);
  for (std::size_t k = 0; k < g64.size(); ++k) {
    double err = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < g64[k].size(); ++i) {
      err = std::max(err, std::fabs(g64[k][i] - g32[k][i]));
      scale = std::max(scale, std::fabs(g64[k][i]));
    }
    INFO(R::name << " tensor " << k << ": max error " << err << ", scale " << scale);
    CHECK(scale > 0.0);
    CHECK(err <= 1e-4 * scale);
  }
}
}  // namespace

TEST_CASE("sparse_ffn grad: float gradients agree with double gradients", "[autograd][cpu][grad]") {
  SECTION("ModalityAware<ExpertChoice> 2t2i") {
    ExpertChoice::Config rc;
    rc.capacity_factor = 1.0;
    check_float_matches_double<ModalityAware<ExpertChoice>>(rc, {2, 2}, 2);
  }
  SECTION("TokenChoice top-2 with capacity and aux losses") {
    TokenChoice::Config rc;
    rc.k = 2;
    rc.capacity_factor = 1.0;
    rc.balance_coef = 0.1;
    rc.z_coef = 0.05;
    check_float_matches_double<TokenChoice>(rc, {4}, 1);
  }
}

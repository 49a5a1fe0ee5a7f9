// Tests of layers/sparse_ffn.hpp, backward: for every router, dx and every weight gradient (w1,
// w3, w2, router) agree across the three dispatch schemes, accumulate (+=), and in double match
// central finite differences of L = Σ c ⊙ y + aux (the routing plan held fixed, and checked to be).
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>

#include "cases/sparse_ffn_cases.hpp"
#include "layers/layer_checks.hpp"
#include <mmsparse/layers/sparse_ffn.hpp>

namespace mm = mmsparse;
namespace cases = mmsparse::cases;

namespace {

template <class V, class T>
struct VariantScalar {
  using variant = V;
  using scalar = T;
};

template <class Vs>
struct variant_scalars;
template <class... V>
struct variant_scalars<std::tuple<V...>> {
  using type = std::tuple<VariantScalar<V, float>..., VariantScalar<V, double>...>;
};
using VariantScalars = typename variant_scalars<mm::test::Variants>::type;

// Gradients of one backward call.
template <class T>
struct Grads {
  mm::Tensor<T> dx;
  mm::Tensor<mm::router_t<T>> router;
  mm::Tensor<T> w1, w3, w2;
};

template <class T>
void fill_random(mm::Tensor<T>& t, mm::Rng& rng) {
  rng.fill_normal(t.view(), 0.1);
}

template <class L>
struct Run {
  using T = typename L::backend_type::scalar;
  using W = mm::router_t<T>;
  const cases::SparseFfnCase& c;
  L layer;
  mm::CpuBackend<T> b;
  mm::Tensor<T> x;
  std::vector<mm::ModalityId> ids;
  mm::Tensor<T> cw;  // loss weights c [N, d]

  template <class V>
  Run(const cases::SparseFfnCase& kase, V)
      : c(kase),
        layer(cases::layer_config<L, V>(kase)),
        x(mm::test::input_of<T>(kase)),
        ids(cases::modalities_of(kase)) {
    mm::Rng rng(kase.seed + 1000);
    cw = rng.normal_tensor<T>(kase.tokens, kase.d);
  }
  mm::Span<const mm::ModalityId> modality() const {
    return {ids.data(), c.tokens};
  }
  // L = Σ c ⊙ y + aux.total(), and the plan it routed with; `magnitude` gets Σ |terms|, the
  // scale of L's rounding error.
  double loss(typename L::Saved& saved, double* magnitude = nullptr) {
    mm::Tensor<T> y(c.tokens, c.d);
    const auto stats = layer.forward(b, x.view(), modality(), y.view(), saved);
    double l = static_cast<double>(stats.aux.total());
    double m = std::abs(l);
    for (std::int64_t i = 0; i < y.size(); ++i) {
      const double term = static_cast<double>(cw.data()[i]) * static_cast<double>(y.data()[i]);
      l += term;
      m += std::abs(term);
    }
    if (magnitude != nullptr) {
      *magnitude = m;
    }
    return l;
  }
  // Gradients accumulated onto `prefill` by one backward (returned minus prefill by the caller).
  Grads<T> backward(const Grads<T>& prefill, int calls) {
    typename L::Saved saved;
    (void)loss(saved);
    Grads<T> g{prefill.dx.clone(),
               prefill.router.clone(),
               prefill.w1.clone(),
               prefill.w3.clone(),
               prefill.w2.clone()};
    for (int i = 0; i < calls; ++i) {
      layer.backward(b,
                     saved,
                     cw.view(),
                     g.dx.view(),
                     {g.router.view(), g.w1.view(), g.w3.view(), g.w2.view()},
                     /*aux_scale=*/1.0);
    }
    return g;
  }
};

template <class W>
bool same_plan(const mm::RoutingPlan<W>& a, const mm::RoutingPlan<W>& b) {
  if (a.offsets != b.offsets || a.slots() != b.slots()) {
    return false;
  }
  for (std::int64_t s = 0; s < a.slots(); ++s) {
    if (a.token[s] != b.token[s]) {
      return false;
    }
  }
  return true;
}

template <class T>
mm::Tensor<double> minus(const mm::Tensor<T>& a, const mm::Tensor<T>& b) {
  mm::Tensor<double> d(a.rows(), a.cols());
  for (std::int64_t i = 0; i < a.size(); ++i) {
    d.data()[i] = static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i]);
  }
  return d;
}

// Central differences of run.loss at 6 entries of `param` (half of them random, half among the
// entries with a non-zero analytic gradient), against `analytic`: the error may be
// gradcheck_tolerance relative to the gradient, plus the rounding floor of the difference quotient
// (a few ulps of Σ |terms of L|, divided by the step).
template <class R, class P>
void check_fd(R& run,
              mm::View<P> param_view,
              const mm::Tensor<double>& analytic,
              const char* what,
              std::uint64_t seed) {
  const std::int64_t size = param_view.size();
  if (size == 0) {
    return;
  }
  // Entry i in row-major order (weights may have padded rows; the gradient is contiguous).
  auto param = [&](std::int64_t i) -> P& {
    return param_view(i / param_view.cols, i % param_view.cols);
  };
  INFO("finite differences of " << what);
  using L = decltype(run.layer);
  typename L::Saved base;
  double magnitude = 0;
  (void)run.loss(base, &magnitude);
  mm::Rng rng(seed);
  std::vector<std::int64_t> nonzero;
  for (std::int64_t i = 0; i < size; ++i) {
    if (analytic.data()[i] != 0.0) {
      nonzero.push_back(i);
    }
  }
  std::vector<double> fd, an;
  const double h = cases::gradcheck_step;
  for (int k = 0; k < 6; ++k) {
    const std::int64_t i = k % 2 == 0 || nonzero.empty()
                               ? rng.integer(0, size)
                               : nonzero[static_cast<std::size_t>(
                                     rng.integer(0, static_cast<std::int64_t>(nonzero.size())))];
    const P keep = param(i);
    typename L::Saved plus, minus_saved;
    param(i) = static_cast<P>(keep + h);
    const double lp = run.loss(plus);
    param(i) = static_cast<P>(keep - h);
    const double lm = run.loss(minus_saved);
    param(i) = keep;
    REQUIRE(same_plan(plus.plan, base.plan));  // a flipped decision is not a gradient
    REQUIRE(same_plan(minus_saved.plan, base.plan));
    fd.push_back((lp - lm) / (2 * h));
    an.push_back(analytic.data()[i]);
  }
  double err = 0;
  double norm = 0;
  for (std::size_t k = 0; k < fd.size(); ++k) {
    err += (fd[k] - an[k]) * (fd[k] - an[k]);
    norm += an[k] * an[k];
  }
  const double floor = 64 * 2.2e-16 * magnitude / h;  // per entry
  INFO("|fd - analytic| = " << std::sqrt(err) << ", |analytic| = " << std::sqrt(norm)
                            << ", rounding floor " << floor);
  CHECK(std::sqrt(err) <= cases::gradcheck_tolerance * std::sqrt(norm) +
                              floor * std::sqrt(static_cast<double>(fd.size())));
}

}  // namespace

TEMPLATE_LIST_TEST_CASE(
    "SparseFfn backward agrees across dispatch schemes and with finite "
    "differences",
    "[layers][cpu]",
    VariantScalars) {
  using T = typename TestType::scalar;
  using V = typename TestType::variant;
  using R = typename V::router;
  using W = mm::router_t<T>;
  using Sorted = mm::SparseFfn<T, R, mm::SortedGather, mm::CpuBackend<T>>;
  using Padded = mm::SparseFfn<T, R, mm::PaddedCapacity, mm::CpuBackend<T>>;
  using Dense = mm::SparseFfn<T, R, mm::DenseMask, mm::CpuBackend<T>>;
  const double tol = cases::output_tolerance<T>;
  std::vector<cases::SparseFfnCase> all = cases::layer_cases();
  all.push_back(cases::edge_cases()[0]);  // a modality without tokens
  all.push_back(cases::edge_cases()[3]);  // one token
  all.push_back(cases::edge_cases()[6]);  // weights with padded rows
  for (const auto& c : all) {
    INFO("case " << c.name << ", router " << V::name << ", seed " << c.seed);
    Run<Sorted> sorted(c, V{});
    Run<Padded> padded(c, V{});
    Run<Dense> dense(c, V{});
    const auto shapes = Sorted::parameter_shapes(sorted.layer.config());
    mm::Rng rng(c.seed + 2000);
    Grads<T> prefill{mm::Tensor<T>(c.tokens, c.d),
                     mm::Tensor<W>(shapes[0].second),
                     mm::Tensor<T>(shapes[1].second),
                     mm::Tensor<T>(shapes[2].second),
                     mm::Tensor<T>(shapes[3].second)};
    fill_random(prefill.dx, rng);
    fill_random(prefill.router, rng);
    fill_random(prefill.w1, rng);
    fill_random(prefill.w3, rng);
    fill_random(prefill.w2, rng);

    const auto gs = sorted.backward(prefill, 1);
    const auto gp = padded.backward(prefill, 1);
    const auto gd = dense.backward(prefill, 1);
    const auto gs2 = sorted.backward(prefill, 2);
    auto check_same = [&](const auto& a, const auto& b2, const auto& p, const char* what) {
      INFO("gradient " << what);
      const auto da = minus(a, p);
      const auto db = minus(b2, p);
      CHECK(mm::test::rel_error(da, db) < tol);
    };
    check_same(gs.dx, gp.dx, prefill.dx, "dx (sorted vs padded)");
    check_same(gs.dx, gd.dx, prefill.dx, "dx (sorted vs dense)");
    check_same(gs.router, gp.router, prefill.router, "router (sorted vs padded)");
    check_same(gs.router, gd.router, prefill.router, "router (sorted vs dense)");
    check_same(gs.w1, gp.w1, prefill.w1, "w1 (sorted vs padded)");
    check_same(gs.w1, gd.w1, prefill.w1, "w1 (sorted vs dense)");
    check_same(gs.w3, gp.w3, prefill.w3, "w3 (sorted vs padded)");
    check_same(gs.w3, gd.w3, prefill.w3, "w3 (sorted vs dense)");
    check_same(gs.w2, gp.w2, prefill.w2, "w2 (sorted vs padded)");
    check_same(gs.w2, gd.w2, prefill.w2, "w2 (sorted vs dense)");
    // Accumulation (+=): a second call adds the same gradient again.
    auto check_twice = [&](const auto& once, const auto& twice, const auto& p, const char* what) {
      INFO("accumulation of " << what);
      auto g1 = minus(once, p);
      const auto g2 = minus(twice, p);
      for (std::int64_t i = 0; i < g1.size(); ++i) {
        g1.data()[i] *= 2;
      }
      CHECK(mm::test::rel_error(g2, g1) < tol);
    };
    check_twice(gs.dx, gs2.dx, prefill.dx, "dx");
    check_twice(gs.router, gs2.router, prefill.router, "router");
    check_twice(gs.w1, gs2.w1, prefill.w1, "w1");
    check_twice(gs.w2, gs2.w2, prefill.w2, "w2");
    // The gradient reaches the router unless the gates are constants (hard routing).
    if (sorted.layer.router_columns() > 0 && c.tokens > 1) {
      const auto dr = minus(gs.router, prefill.router);
      double norm = 0;
      for (std::int64_t i = 0; i < dr.size(); ++i) {
        norm += dr.data()[i] * dr.data()[i];
      }
      CHECK(norm > 0);
    }

    if constexpr (std::is_same_v<T, double>) {
      // Finite differences (the slow part): sorted gather on two mixed batches (4t4i, three
      // modalities), the other schemes (whose gradients equal sorted gather's, above) on one.
      const bool sorted_fd =
          c.name == "4t4i" || c.name == "3mod_2t2i2s" || c.name == "padded_rows_2t2i";
      const bool others_fd = c.name == "3mod_2t2i2s";
      if (!sorted_fd) {
        continue;
      }
      auto fd_all = [&](auto& run, const Grads<T>& g, std::uint64_t seed) {
        INFO("dispatch " << decltype(run.layer)::dispatch_type::name);
        auto w = run.layer.weights();
        check_fd(run, run.x.view(), minus(g.dx, prefill.dx), "x", seed);
        check_fd(run, w.router, minus(g.router, prefill.router), "router", seed + 1);
        check_fd(run, w.w1, minus(g.w1, prefill.w1), "w1", seed + 2);
        check_fd(run, w.w3, minus(g.w3, prefill.w3), "w3", seed + 3);
        check_fd(run, w.w2, minus(g.w2, prefill.w2), "w2", seed + 4);
      };
      fd_all(sorted, gs, c.seed + 10);
      if (others_fd) {
        fd_all(padded, gp, c.seed + 20);
        fd_all(dense, gd, c.seed + 30);
      }
    }
  }
}

TEST_CASE("SparseFfn backward validates its arguments", "[layers][cpu]") {
  using L = mm::SparseFfn<float,
                          mm::ModalityAware<mm::ExpertChoice>,
                          mm::SortedGather,
                          mm::CpuBackend<float>>;
  L layer({.d = 16, .hidden = 32, .experts = {2, 2}});
  mm::CpuBackend<float> b;
  mm::Rng rng(1);
  auto x = rng.normal_tensor<float>(8, 16);
  std::vector<mm::ModalityId> ids{0, 1, 1, 0, 1, 0, 1, 1};
  mm::Tensor<float> y(8, 16), dx(8, 16), g1(64, 32), g3(64, 32), g2(128, 16);
  mm::Tensor<float> gr(16, 4);
  L::Saved saved;
  auto message = [&](auto call) -> std::string {
    try {
      call();
    } catch (const mm::Error& e) {
      return e.what();
    }
    return "no exception";
  };
  CHECK(mm::test::contains(
      message([&] {
        layer.backward(b, saved, y.view(), dx.view(), {gr.view(), g1.view(), g3.view(), g2.view()});
      }),
      "[SparseFfn::backward] saved"));
  (void)layer.forward(b, x.view(), mm::Span<const mm::ModalityId>(ids.data(), 8), y.view(), saved);
  mm::Tensor<float> short_dy(7, 16), wrong_g2(128, 15), wrong_router(16, 3);
  CHECK(mm::test::contains(
      message([&] {
        layer.backward(
            b, saved, short_dy.view(), dx.view(), {gr.view(), g1.view(), g3.view(), g2.view()});
      }),
      "[SparseFfn::backward] dy: expected [8, 16], got [7, 16]"));
  CHECK(mm::test::contains(
      message([&] {
        layer.backward(
            b, saved, y.view(), short_dy.view(), {gr.view(), g1.view(), g3.view(), g2.view()});
      }),
      "[SparseFfn::backward] dx"));
  CHECK(mm::test::contains(
      message([&] {
        layer.backward(
            b, saved, y.view(), dx.view(), {gr.view(), g1.view(), g3.view(), wrong_g2.view()});
      }),
      "[SparseFfn::backward] grads.w2: expected [128, 16], got [128, 15]"));
  CHECK(mm::test::contains(
      message([&] {
        layer.backward(
            b, saved, y.view(), dx.view(), {wrong_router.view(), g1.view(), g3.view(), g2.view()});
      }),
      "[SparseFfn::backward] grads.router"));
}

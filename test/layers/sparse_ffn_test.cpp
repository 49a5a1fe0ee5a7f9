// Tests of layers/sparse_ffn.hpp, forward: every router x dispatch scheme x scalar against the
// double oracle of the plan (testing/oracle.hpp) and against the dense-mask layer; edge cases;
// invalid arguments (mmsparse::Error naming the argument, y untouched); workspace steady state.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "cases/sparse_ffn_cases.hpp"
#include "layers/layer_checks.hpp"
#include <mmsparse/layers/sparse_ffn.hpp>
#include <mmsparse/layers/swiglu_ffn.hpp>
#include <mmsparse/testing/oracle.hpp>

namespace mm = mmsparse;
namespace cases = mmsparse::cases;
using mm::test::AllCombos;

namespace {

std::vector<cases::SparseFfnCase> all_cases() {
  std::vector<cases::SparseFfnCase> all = cases::layer_cases();
  all.insert(all.end(), cases::edge_cases().begin(), cases::edge_cases().end());
  return all;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("SparseFfn forward equals the double oracle and the dense mask",
                        "[layers][cpu]",
                        AllCombos) {
  using T = typename TestType::scalar;
  using V = typename TestType::variant;
  using L = typename TestType::layer;
  using Dense = mm::SparseFfn<T, typename V::router, mm::DenseMask, mm::CpuBackend<T>>;
  const double tol = cases::output_tolerance<T>;
  mm::CpuBackend<T> b;
  for (const auto& c : all_cases()) {
    INFO("case " << c.name << ", router " << V::name << ", dispatch " << TestType::dispatch::name
                 << ", seed " << c.seed);
    L layer(cases::layer_config<L, V>(c));
    Dense dense(cases::layer_config<Dense, V>(c));
    auto w = layer.weights();
    dense.bind({w.router, w.w1, w.w3, w.w2});
    const auto x = mm::test::input_of<T>(c);
    const auto ids = cases::modalities_of(c);
    const mm::Span<const mm::ModalityId> modality(ids.data(), c.tokens);

    mm::Tensor<T> y(c.tokens, c.d);
    y.fill(T{77});
    typename L::Saved saved;
    const auto stats = layer.forward(b, x.view(), modality, y.view(), saved);
    const auto& plan = saved.plan;
    REQUIRE(plan.num_tokens == c.tokens);
    REQUIRE(plan.num_experts == layer.num_experts());
    // The case table's slot count (which sizes the benchmarks' dense baselines) is the plan's.
    CHECK(plan.slots() + plan.dropped == V::planned_slots(c));

    // (a) the oracle from the plan's (expert, token, gate) triples, in double
    const auto ref = mm::oracle_sparse_ffn<T>(
        x.view(), mm::plan_assignments(plan), w.w1, w.w3, w.w2, layer.num_experts());
    CHECK(mm::test::rel_error(y, ref) < tol);

    // A token no expert took gets exactly 0 (not the sentinel, not noise).
    std::vector<int> chosen(static_cast<std::size_t>(c.tokens), 0);
    for (std::int64_t s = 0; s < plan.slots(); ++s) {
      chosen[static_cast<std::size_t>(plan.token[s])] = 1;
    }
    for (std::int64_t t = 0; t < c.tokens; ++t) {
      if (chosen[static_cast<std::size_t>(t)] == 0) {
        for (std::int64_t j = 0; j < c.d; ++j) {
          REQUIRE(y(t, j) == T{0});
        }
      }
    }

    // (b) the dense-mask layer with the same weights
    mm::Tensor<T> y_dense(c.tokens, c.d);
    const auto dense_stats = dense.forward(b, x.view(), modality, y_dense.view());
    CHECK(mm::test::rel_error(y, y_dense) < tol);
    CHECK(dense_stats.tokens_per_expert == stats.tokens_per_expert);

    // The inference forward computes exactly what the training forward computed.
    mm::Tensor<T> y_inference(c.tokens, c.d);
    const auto inference_stats = layer.forward(b, x.view(), modality, y_inference.view());
    CHECK(mm::test::rel_error(y_inference, y) == 0.0);
    CHECK(inference_stats.tokens_per_expert == stats.tokens_per_expert);

    // Routing each sequence on its own (PAPERS.md §4.5): still the oracle of its plan.
    if (c.tokens >= 2 && c.tokens % 2 == 0) {
      typename L::Saved per_sequence;
      mm::Tensor<T> y_seq(c.tokens, c.d);
      (void)layer.forward(
          b, x.view(), modality, y_seq.view(), per_sequence, {.sequence_length = c.tokens / 2});
      const auto ref_seq = mm::oracle_sparse_ffn<T>(
          x.view(), mm::plan_assignments(per_sequence.plan), w.w1, w.w3, w.w2, layer.num_experts());
      CHECK(mm::test::rel_error(y_seq, ref_seq) < tol);
    }

    // Stats: the plan's counts and drops, the FLOPs of the rows that ran plus the router GEMM.
    CHECK(stats.tokens_per_expert == plan.tokens_per_expert());
    CHECK(stats.dropped == plan.dropped);
    CHECK(stats.aux.total() == plan.aux.total());
    const typename TestType::dispatch scheme{};
    const double rows = static_cast<double>(scheme.rows(plan));
    const double f = static_cast<double>(layer.config().hidden);
    const double want_flops = 6.0 * rows * c.d * f + 2.0 * c.tokens * c.d * layer.router_columns();
    CHECK(stats.flops == want_flops);
  }
}

TEST_CASE("SparseFfn counts FLOPs of what runs: padding and masked rows included",
          "[layers][cpu]") {
  const auto& c = cases::layer_cases()[1];  // 4t4i
  using V = cases::MomaExpertChoiceVariant;
  using Sorted = mm::SparseFfn<float, V::router, mm::SortedGather, mm::CpuBackend<float>>;
  using Padded = mm::SparseFfn<float, V::router, mm::PaddedCapacity, mm::CpuBackend<float>>;
  using Dense = mm::SparseFfn<float, V::router, mm::DenseMask, mm::CpuBackend<float>>;
  Sorted sorted(cases::layer_config<Sorted, V>(c));
  Padded padded(cases::layer_config<Padded, V>(c));
  Dense dense(cases::layer_config<Dense, V>(c));
  mm::CpuBackend<float> b;
  const auto x = mm::test::input_of<float>(c);
  const auto ids = cases::modalities_of(c);
  const mm::Span<const mm::ModalityId> modality(ids.data(), c.tokens);
  mm::Tensor<float> y(c.tokens, c.d);
  const auto s1 = sorted.forward(b, x.view(), modality, y.view());
  const auto s2 = padded.forward(b, x.view(), modality, y.view());
  const auto s3 = dense.forward(b, x.view(), modality, y.view());
  std::int64_t slots = 0;
  std::int64_t largest = 0;
  for (auto n : s1.tokens_per_expert) {
    slots += n;
    largest = std::max(largest, n);
  }
  const double per_row = 6.0 * c.d * c.hidden;
  const double router = 2.0 * c.tokens * c.d * 8;
  CHECK(s1.flops == per_row * slots + router);
  CHECK(s2.flops == per_row * 8 * largest + router);
  CHECK(s3.flops == per_row * 8 * c.tokens + router);
  // Expert choice with capacity factor 1: one slot per token on average (rounding up per group).
  CHECK(slots >= c.tokens);
  CHECK(mm::equal_flops_dense_hidden(c.hidden, slots, c.tokens) >= c.hidden);
}

TEST_CASE("SparseFfn with one hard-routed expert is the dense SwiGLU FFN", "[layers][cpu]") {
  using L = mm::SparseFfn<double, mm::ModalityHard, mm::SortedGather, mm::CpuBackend<double>>;
  L layer({.d = 24, .hidden = 40, .experts = {1}, .seed = 3});
  mm::SwiGluFfn<double, mm::CpuBackend<double>> ffn({.d = 24, .hidden = 40, .seed = 4});
  auto w = layer.weights();
  ffn.bind({w.w1, w.w3, w.w2});
  mm::CpuBackend<double> b;
  mm::Rng rng(5);
  auto x = rng.normal_tensor<double>(13, 24);
  std::vector<mm::ModalityId> ids(13, 0);
  mm::Tensor<double> y(13, 24), y_ffn(13, 24);
  (void)layer.forward(b, x.view(), mm::Span<const mm::ModalityId>(ids.data(), 13), y.view());
  ffn.forward(b, x.view(), y_ffn.view());
  CHECK(mm::test::rel_error(y, y_ffn) < 1e-14);
}

TEST_CASE("SparseFfn configuration, weights and bind", "[layers][cpu]") {
  using L = mm::SparseFfn<float,
                          mm::ModalityAware<mm::ExpertChoice>,
                          mm::SortedGather,
                          mm::CpuBackend<float>>;
  SECTION("defaults: hidden = swiglu_hidden(d), modalities = groups") {
    L layer({.d = 64, .experts = {2, 6}});
    CHECK(layer.config().hidden == mm::swiglu_hidden(64));
    CHECK(layer.config().hidden == 256);  // (2/3)·4·64 = 170.7, rounded up to 256
    CHECK(layer.config().modalities == 2);
    CHECK(layer.num_experts() == 8);
    CHECK(layer.router_columns() == 8);
    const auto shapes = L::parameter_shapes(layer.config());
    REQUIRE(shapes.size() == 4);
    CHECK(shapes[0] == std::pair<std::string, mm::Shape>{"router", {64, 8}});
    CHECK(shapes[1] == std::pair<std::string, mm::Shape>{"w1", {8 * 64, 256}});
    CHECK(shapes[2] == std::pair<std::string, mm::Shape>{"w3", {8 * 64, 256}});
    CHECK(shapes[3] == std::pair<std::string, mm::Shape>{"w2", {8 * 256, 64}});
    auto w = layer.weights();
    CHECK(w.router.shape() == shapes[0].second);
    CHECK(w.w1.shape() == shapes[1].second);
    CHECK(w.w2.shape() == shapes[3].second);
  }
  SECTION("initialisation is deterministic in the seed, with the documented scales") {
    L a({.d = 32, .hidden = 64, .experts = {4, 4}, .seed = 9});
    L same({.d = 32, .hidden = 64, .experts = {4, 4}, .seed = 9});
    L other({.d = 32, .hidden = 64, .experts = {4, 4}, .seed = 10});
    auto wa = a.weights();
    auto ws = same.weights();
    auto wo = other.weights();
    CHECK(std::equal(wa.w1.data, wa.w1.data + wa.w1.size(), ws.w1.data));
    CHECK(!std::equal(wa.w1.data, wa.w1.data + wa.w1.size(), wo.w1.data));
    auto stddev = [](auto v) {
      double s = 0;
      for (std::int64_t i = 0; i < v.size(); ++i) {
        s += static_cast<double>(v.data[i]) * static_cast<double>(v.data[i]);
      }
      return std::sqrt(s / static_cast<double>(v.size()));
    };
    CHECK(stddev(wa.router) == Approx(1 / std::sqrt(32.0)).epsilon(0.2));  // 256 draws
    CHECK(stddev(wa.w1) == Approx(1 / std::sqrt(32.0)).epsilon(0.05));
    CHECK(stddev(wa.w3) == Approx(1 / std::sqrt(32.0)).epsilon(0.05));
    CHECK(stddev(wa.w2) == Approx(1 / std::sqrt(64.0)).epsilon(0.05));
  }
  SECTION("bind uses the caller's memory") {
    L a({.d = 16, .hidden = 32, .experts = {2, 2}, .seed = 1});
    L b_layer({.d = 16, .hidden = 32, .experts = {2, 2}, .seed = 2});
    auto wb = b_layer.weights();
    a.bind(wb);
    CHECK(a.weights().w1.data == wb.w1.data);
    mm::CpuBackend<float> b;
    mm::Rng rng(3);
    auto x = rng.normal_tensor<float>(10, 16);
    std::vector<mm::ModalityId> ids{0, 1, 1, 0, 1, 0, 0, 1, 1, 1};
    const mm::Span<const mm::ModalityId> modality(ids.data(), 10);
    mm::Tensor<float> ya(10, 16), yb(10, 16);
    (void)a.forward(b, x.view(), modality, ya.view());
    (void)b_layer.forward(b, x.view(), modality, yb.view());
    CHECK(mm::test::rel_error(ya, yb) == 0.0);
    wb.w2.data[0] += 1.0f;  // the bound layer sees the caller's update
    b.weights_updated();    // (the backend contract for weights changed in place)
    (void)a.forward(b, x.view(), modality, ya.view());
    (void)b_layer.forward(b, x.view(), modality, yb.view());
    CHECK(mm::test::rel_error(ya, yb) == 0.0);
  }
  SECTION("bind checks shapes") {
    L a({.d = 16, .hidden = 32, .experts = {2, 2}});
    mm::Tensor<float> wrong(16 * 4, 31);
    auto w = a.weights();
    w.w1 = wrong.view();
    try {
      a.bind(w);
      FAIL("no exception");
    } catch (const mm::Error& e) {
      CHECK(mm::test::contains(e.what(), "[SparseFfn::bind] w1: expected [64, 32], got [64, 31]"));
    }
  }
  SECTION("invalid configurations") {
    auto message = [](auto make) -> std::string {
      try {
        make();
      } catch (const mm::Error& e) {
        return e.what();
      }
      return "no exception";
    };
    CHECK(mm::test::contains(message([] { L({.d = 0, .experts = {1, 1}}); }), "[SparseFfn] d"));
    CHECK(mm::test::contains(message([] {
                               L({.d = 8, .hidden = -1, .experts = {1, 1}});
                             }),
                             "[SparseFfn] hidden"));
    CHECK(mm::test::contains(message([] { L({.d = 8, .experts = {}}); }), "[SparseFfn] experts"));
    CHECK(mm::test::contains(message([] {
                               L({.d = 8, .experts = {2, 0}});
                             }),
                             "[SparseFfn] experts[1]"));
  }
}

namespace {

// Runs `call` on a fresh layer and input; requires mmsparse::Error mentioning `part`, and y
// left as it was.
template <class L>
void require_rejected(const std::string& part,
                      typename L::Config cfg,
                      std::int64_t tokens,
                      std::vector<mm::ModalityId> ids,
                      std::int64_t x_cols = -1,
                      mm::Shape y_shape = {-1, -1},
                      bool nan_in_x = false) {
  using T = typename L::backend_type::scalar;
  INFO("expecting an error naming " << part);
  mm::CpuBackend<T> b;
  mm::Rng rng(17);
  auto x = rng.normal_tensor<T>(tokens, x_cols >= 0 ? x_cols : cfg.d);
  if (nan_in_x) {
    x(tokens / 2, 1) = std::numeric_limits<T>::quiet_NaN();
  }
  const mm::Shape ys = y_shape.rows >= 0 ? y_shape : mm::Shape{tokens, cfg.d};
  mm::Tensor<T> y(ys.rows, ys.cols);
  y.fill(T{42});
  std::string what = "no exception";
  try {
    L layer(cfg);
    (void)layer.forward(
        b,
        x.view(),
        mm::Span<const mm::ModalityId>(ids.data(), static_cast<std::int64_t>(ids.size())),
        y.view());
  } catch (const mm::Error& e) {
    what = e.what();
  }
  CHECK(mm::test::contains(what, part));
  for (std::int64_t i = 0; i < y.size(); ++i) {
    REQUIRE(y.data()[i] == T{42});
  }
}

}  // namespace

TEST_CASE("SparseFfn rejects invalid inputs before writing y", "[layers][cpu]") {
  using Moma = mm::SparseFfn<float,
                             mm::ModalityAware<mm::ExpertChoice>,
                             mm::SortedGather,
                             mm::CpuBackend<float>>;
  using Hard = mm::SparseFfn<float, mm::ModalityHard, mm::PaddedCapacity, mm::CpuBackend<float>>;
  using Tc = mm::SparseFfn<float, mm::TokenChoice, mm::SortedGather, mm::CpuBackend<float>>;
  using Ec = mm::SparseFfn<double, mm::ExpertChoice, mm::DenseMask, mm::CpuBackend<double>>;
  using Mod = mm::SparseFfn<float, mm::MixtureOfDepths, mm::SortedGather, mm::CpuBackend<float>>;
  using MomaTc = mm::SparseFfn<float,
                               mm::ModalityAware<mm::TokenChoice>,
                               mm::PaddedCapacity,
                               mm::CpuBackend<float>>;
  const std::vector<mm::ModalityId> ids{0, 1, 1, 0, 1, 0, 1, 1};
  const Moma::Config moma{.d = 16, .hidden = 32, .experts = {2, 2}};

  SECTION("x with the wrong width") {
    require_rejected<Moma>(
        "[SparseFfn::forward] x: expected shape [N, 16], got [8, 15]", moma, 8, ids, 15);
  }
  SECTION("y with the wrong shape") {
    require_rejected<Moma>(
        "[SparseFfn::forward] y: expected [8, 16], got [7, 16]", moma, 8, ids, -1, {7, 16});
    require_rejected<Moma>(
        "[SparseFfn::forward] y: expected [8, 16], got [8, 17]", moma, 8, ids, -1, {8, 17});
  }
  SECTION("modality ids: size and range") {
    require_rejected<Moma>("[SparseFfn::forward] modality: expected size N = 8, got 7",
                           moma,
                           8,
                           {0, 1, 1, 0, 1, 0, 1});
    require_rejected<Moma>("[SparseFfn::forward] modality[3]: expected an id in [0, 2), got 2",
                           moma,
                           8,
                           {0, 1, 1, 2, 1, 0, 1, 1});
    require_rejected<Moma>(
        "modality[0]: expected an id in [0, 2), got -1", moma, 8, {-1, 1, 1, 0, 1, 0, 1, 1});
  }
  SECTION("expert groups must match the modalities of hierarchical routers") {
    Moma::Config three = moma;
    three.modalities = 3;
    require_rejected<Moma>(
        "experts_per_group: expected one group per modality (3), got 2", three, 8, ids);
    Hard::Config hard{.d = 16, .hidden = 32, .experts = {1, 1, 1}, .modalities = 2};
    require_rejected<Hard>(
        "experts_per_group: expected one group per modality (2), got 3", hard, 8, ids);
    Hard::Config hard_two{.d = 16, .hidden = 32, .experts = {2, 1}};
    require_rejected<Hard>("experts_per_group[0]", hard_two, 8, ids);
  }
  SECTION("k = 0 or k > E") {
    Tc::Config tc{.d = 16, .hidden = 32, .experts = {4}, .modalities = 2};
    tc.router.k = 0;
    require_rejected<Tc>("[token_choice::route] k: expected 1 <= k <= E = 4, got 0", tc, 8, ids);
    tc.router.k = 5;
    require_rejected<Tc>("[token_choice::route] k: expected 1 <= k <= E = 4, got 5", tc, 8, ids);
    MomaTc::Config mtc{.d = 16, .hidden = 32, .experts = {2, 4}};
    mtc.router.k = 3;  // too many for the text group
    require_rejected<MomaTc>("k: expected 1 <= k <= E = 2, got 3", mtc, 8, ids);
  }
  SECTION("capacity <= 0") {
    Tc::Config tc{.d = 16, .hidden = 32, .experts = {4}, .modalities = 2};
    tc.router.capacity_factor = 0.0;
    require_rejected<Tc>("capacity_factor", tc, 8, ids);
    Ec::Config ec{.d = 16, .hidden = 32, .experts = {4}, .modalities = 2};
    ec.router.capacity_factor = -1.0;
    require_rejected<Ec>("capacity_factor", ec, 8, ids);
    Mod::Config mod{.d = 16, .hidden = 32, .experts = {1}, .modalities = 2};
    mod.router.capacity = 0.0;
    require_rejected<Mod>("[mixture_of_depths::route] capacity", mod, 8, ids);
    Hard::Config padded{.d = 16, .hidden = 32, .experts = {1, 1}};
    padded.dispatch.capacity = -2;
    require_rejected<Hard>("[PaddedCapacity] capacity", padded, 8, ids);
    padded.dispatch.capacity = 3;  // 5 image tokens do not fit 3 rows
    require_rejected<Hard>(
        "[PaddedCapacity] capacity: expected >= the largest expert segment 5", padded, 8, ids);
  }
  SECTION("a flat router takes one group") {
    Tc::Config tc{.d = 16, .hidden = 32, .experts = {2, 2}};
    require_rejected<Tc>("experts_per_group: expected one group", tc, 8, ids);
  }
  SECTION("NaN in x reaching the router logits") {
    require_rejected<Moma>(
        "router logits: expected finite values", moma, 8, ids, -1, {-1, -1}, true);
    Ec::Config ec{.d = 16, .hidden = 32, .experts = {4}, .modalities = 2};
    require_rejected<Ec>("[expert_choice::route] router logits", ec, 8, ids, -1, {-1, -1}, true);
  }
  SECTION("negative sequence length") {
    Moma layer(moma);
    mm::CpuBackend<float> b;
    mm::Tensor<float> x(8, 16), y(8, 16);
    x.fill(0.5f);
    try {
      (void)layer.forward(b,
                          x.view(),
                          mm::Span<const mm::ModalityId>(ids.data(), 8),
                          y.view(),
                          {.sequence_length = -4});
      FAIL("no exception");
    } catch (const mm::Error& e) {
      CHECK(mm::test::contains(e.what(), "[SparseFfn::forward] sequence_length"));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("SparseFfn steady-state forwards take nothing new from the workspace",
                        "[layers][cpu]",
                        AllCombos) {
  using T = typename TestType::scalar;
  using V = typename TestType::variant;
  using L = typename TestType::layer;
  const auto& c = cases::layer_cases()[2];  // 2t6i
  L layer(cases::layer_config<L, V>(c));
  mm::CpuBackend<T> b;
  const auto x = mm::test::input_of<T>(c);
  const auto ids = cases::modalities_of(c);
  const mm::Span<const mm::ModalityId> modality(ids.data(), c.tokens);
  mm::Tensor<T> y(c.tokens, c.d);
  (void)layer.forward(b, x.view(), modality, y.view());
  (void)layer.forward(b, x.view(), modality, y.view());
  const auto allocations = b.workspace().allocations();
  for (int i = 0; i < 3; ++i) {
    (void)layer.forward(b, x.view(), modality, y.view());
  }
  CHECK(b.workspace().allocations() == allocations);
  // The stated bound holds, training forward and backward included.
  typename L::Saved saved;
  (void)layer.forward(b, x.view(), modality, y.view(), saved);
  auto grads = layer.weights();
  mm::Tensor<mm::router_t<T>> gr(grads.router.rows, grads.router.cols);
  mm::Tensor<T> g1(grads.w1.rows, grads.w1.cols), g3(grads.w3.rows, grads.w3.cols),
      g2(grads.w2.rows, grads.w2.cols), dx(c.tokens, c.d);
  layer.backward(b, saved, y.view(), dx.view(), {gr.view(), g1.view(), g3.view(), g2.view()});
  CHECK(b.workspace().high_water() <= layer.workspace_bytes(c.tokens));
  // A workspace reserved from workspace_bytes serves every call without growing.
  mm::CpuBackend<T> fresh;
  fresh.workspace().reserve(layer.workspace_bytes(c.tokens));
  const auto reserved = fresh.workspace().allocations();
  (void)layer.forward(fresh, x.view(), modality, y.view());
  (void)layer.forward(fresh, x.view(), modality, y.view(), saved);
  layer.backward(fresh, saved, y.view(), dx.view(), {gr.view(), g1.view(), g3.view(), g2.view()});
  CHECK(fresh.workspace().allocations() == reserved);
}

TEST_CASE("SparseFfn workspace_bytes is a tight bound for the library routers", "[layers][cpu]") {
  using V = cases::MomaExpertChoiceVariant;
  using L = mm::SparseFfn<float, V::router, mm::SortedGather, mm::CpuBackend<float>>;
  using Mod = mm::SparseFfn<float, mm::MixtureOfDepths, mm::SortedGather, mm::CpuBackend<float>>;
  for (const auto& c : cases::layer_cases()) {
    INFO("case " << c.name);
    const auto x = mm::test::input_of<float>(c);
    const auto ids = cases::modalities_of(c);
    const mm::Span<const mm::ModalityId> modality(ids.data(), c.tokens);
    mm::Tensor<float> y(c.tokens, c.d);
    L layer(cases::layer_config<L, V>(c));
    mm::CpuBackend<float> b;
    (void)layer.forward(b, x.view(), modality, y.view());
    const std::size_t used = b.workspace().high_water();
    CHECK(used <= layer.workspace_bytes(c.tokens));
    CHECK(layer.workspace_bytes(c.tokens) <= 3 * used);  // not every expert on every token
    // A router whose scratch outweighs the expert buffers (one block, a quarter of the tokens).
    auto cfg = cases::layer_config<Mod, cases::DepthVariant>(c);
    cfg.router.capacity = 0.25;
    cfg.hidden = 8;
    Mod mod(cfg);
    mm::CpuBackend<float> b2;
    (void)mod.forward(b2, x.view(), modality, y.view());
    CHECK(b2.workspace().high_water() <= mod.workspace_bytes(c.tokens));
  }
}

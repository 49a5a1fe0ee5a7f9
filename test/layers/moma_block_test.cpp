// MoMa block (layers/moma_block.hpp): forward against a naive oracle of Eq. 1 given the routing
// the block recorded (whose expert-choice selection is itself checked), in both gate placements
// and norm orders; gradients against central differences (plan identity asserted); the gate
// placement's effect on router gradients (PAPERS.md §4.3); aux routing; argument errors.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "layers/block_checks.hpp"
#include <mmsparse/autograd/blocks.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/padded_capacity.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/moma_block.hpp>
#include <mmsparse/routing/token_choice.hpp>
#include <mmsparse/testing/gradcheck.hpp>

namespace mm = mmsparse;
using namespace block_checks;  // NOLINT: the oracle of this test

namespace {

using Cpu = mm::CpuBackend<double>;
using Moma = mm::MomaBlock<double, mm::ExpertChoice, mm::SortedGather, Cpu>;
using MomaPadded = mm::MomaBlock<double, mm::ExpertChoice, mm::PaddedCapacity, Cpu>;
using Hard = mm::Moma1t1iBlock<double, mm::SortedGather, Cpu>;
using Top2 = mm::MoeBlock<double, mm::TokenChoice, mm::SortedGather, Cpu>;
constexpr std::int64_t d = 16, f = 12, n_seq = 2, len = 8, n = n_seq * len;

mm::BlockConfig block_config(mm::NormOrder order) {
  mm::BlockConfig bc;
  bc.d = d;
  bc.heads = 2;
  bc.hidden = f;
  bc.modalities = 2;
  bc.norm_order = order;
  bc.seed = 7;
  return bc;
}

template <class Layer>
typename Layer::Config moma_config(mm::NormOrder order,
                                   mm::GatePlacement gate,
                                   std::vector<std::int64_t> experts,
                                   double capacity) {
  typename Layer::Config c;
  c.block = block_config(order);
  c.ffn.experts = std::move(experts);
  c.ffn.router.capacity_factor = capacity;
  c.ffn.gate = gate;
  return c;
}

struct Batch {
  mm::Tensor<double> x;
  std::vector<std::int32_t> modality;
  Layout lay;
  mm::BlockInput<mm::host_space> input(bool trace = true) const {
    mm::BlockInput<mm::host_space> in;
    in.modality = {modality.data(), n};
    in.positions = {lay.positions.data(), n};
    in.sequences = lay.sequences;
    in.trace = trace;
    return in;
  }
};

Batch batch(std::uint64_t seed) {
  Batch b;
  mm::Rng rng(seed);
  b.x = rng.normal_tensor<double>(n, d);
  for (std::int64_t i = 0; i < n; ++i) {
    b.modality.push_back((i * 7 + 3) % 5 < 3 ? 0 : 1);  // 9 text, 7 image tokens
  }
  b.lay = layout(n_seq, len);
  return b;
}

// h = x + A(x): the shared-attention half of the block, by the oracle.
Mat attention_half(const Mat& x, const Named& w, const Batch& in, const mm::BlockConfig& bc) {
  ModalityWeights m;
  m.wq = at(w, "attn.wq");
  m.wk = at(w, "attn.wk");
  m.wv = at(w, "attn.wv");
  m.wo = at(w, "attn.wo");
  m.q_norm = at(w, "attn.q_norm");
  m.k_norm = at(w, "attn.k_norm");
  m.attn_norm = at(w, "attn.norm");
  const bool post = bc.norm_order == mm::NormOrder::post;
  Mat inp = x;
  if (!post) {
    for (auto& r : inp) {
      rms(r, m.attn_norm, bc.norm_eps);
    }
  }
  Mat a = attention(inp, {m, m}, in.modality, in.lay.positions, in.lay.sequences, bc);
  Mat h = x;
  for (std::size_t t = 0; t < x.size(); ++t) {
    if (post) {
      rms(a[t], m.attn_norm, bc.norm_eps);
    }
    for (std::size_t j = 0; j < h[t].size(); ++j) {
      h[t][j] += a[t][j];
    }
  }
  return h;
}

double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}

// MoMa Eq. 1 given the recorded plan: expert e of token t contributes g_e(t) FFN_e, gate =
// sigmoid(router input . W_r[:, e]); gate placement and norm order as configured.
Mat sparse_half(const Mat& h,
                const Named& w,
                const mm::RoutingTrace& plan,
                const mm::BlockConfig& bc,
                mm::GatePlacement gate,
                bool gate_sigmoid) {
  const bool post = bc.norm_order == mm::NormOrder::post;
  const auto norm = at(w, "ffn.norm");
  const auto router = at(w, "ffn.router");
  const auto w1 = at(w, "ffn.w1"), w3 = at(w, "ffn.w3"), w2 = at(w, "ffn.w2");
  Mat in = h;
  if (!post) {
    for (auto& r : in) {
      rms(r, norm, bc.norm_eps);
    }
  }
  Mat sum(h.size(), Row(static_cast<std::size_t>(bc.d), 0.0));
  const auto experts = static_cast<std::int64_t>(plan.offsets.size()) - 1;
  for (std::int64_t e = 0; e < experts; ++e) {
    for (auto s = plan.offsets[static_cast<std::size_t>(e)];
         s < plan.offsets[static_cast<std::size_t>(e + 1)];
         ++s) {
      const auto t = static_cast<std::size_t>(plan.tokens[static_cast<std::size_t>(s)]);
      const Row z = matvec(in[t], router);
      const double g = gate_sigmoid ? sigmoid(z[static_cast<std::size_t>(e)]) : 1.0;
      Row y = swiglu(in[t],
                     w1.row_block(e * bc.d, bc.d),
                     w3.row_block(e * bc.d, bc.d),
                     w2.row_block(e * bc.hidden, bc.hidden));
      if (post && gate == mm::GatePlacement::after_norm) {
        rms(y, norm, bc.norm_eps);
      }
      for (std::size_t j = 0; j < y.size(); ++j) {
        sum[t][j] += g * y[j];
      }
    }
  }
  Mat out = h;
  for (std::size_t t = 0; t < h.size(); ++t) {
    if (post && gate == mm::GatePlacement::before_norm) {
      rms(sum[t], norm, bc.norm_eps);
    }
    for (std::size_t j = 0; j < sum[t].size(); ++j) {
      out[t][j] += sum[t][j];
    }
  }
  return out;
}

// Checks that each expert of modality group m holds the top-C tokens of m by its router score.
void check_expert_choice(const Mat& in,
                         const Named& w,
                         const mm::RoutingTrace& plan,
                         const Batch& b,
                         const std::vector<std::int64_t>& experts,
                         double capacity) {
  const auto router = at(w, "ffn.router");
  std::int64_t e = 0;
  for (std::size_t m = 0; m < experts.size(); ++m) {
    std::vector<std::int32_t> group;
    for (std::int64_t t = 0; t < n; ++t) {
      if (b.modality[static_cast<std::size_t>(t)] == static_cast<std::int32_t>(m)) {
        group.push_back(static_cast<std::int32_t>(t));
      }
    }
    const auto c = static_cast<std::size_t>(
        std::ceil(capacity * static_cast<double>(group.size()) / static_cast<double>(experts[m])));
    for (std::int64_t x = 0; x < experts[m]; ++x, ++e) {
      auto ranked = group;
      std::stable_sort(ranked.begin(), ranked.end(), [&](std::int32_t a, std::int32_t c2) {
        return matvec(in[static_cast<std::size_t>(a)], router)[static_cast<std::size_t>(e)] >
               matvec(in[static_cast<std::size_t>(c2)], router)[static_cast<std::size_t>(e)];
      });
      ranked.resize(c);
      std::sort(ranked.begin(), ranked.end());
      const std::vector<std::int32_t> got(
          plan.tokens.begin() + plan.offsets[static_cast<std::size_t>(e)],
          plan.tokens.begin() + plan.offsets[static_cast<std::size_t>(e + 1)]);
      INFO("expert " << e);
      CHECK(got == ranked);
    }
  }
}

template <class Layer>
Mat oracle(const Layer& layer, const Batch& in, const mm::RoutingTrace& plan, bool gate_sigmoid) {
  const auto w = named(Layer::parameters(layer.config()), layer.weights());
  const auto& bc = layer.config().block;
  const Mat h = attention_half(to_mat(in.x.view()), w, in, bc);
  return sparse_half(h, w, plan, bc, layer.config().ffn.gate, gate_sigmoid);
}

// Analytic gradients through the tape and central differences with the plan held fixed.
template <class Layer>
mm::GradcheckReport gradients(const typename Layer::Config& cfg,
                              std::uint64_t seed,
                              std::int64_t max_elements,
                              const std::string& only = "") {
  Cpu b;
  Layer layer(cfg);
  mm::ParamArena<double, Cpu> arena;
  const auto grads = mm::bind_parameters(arena, b, layer);
  randomize(Layer::parameters(layer.config()), layer.weights(), seed);
  Batch in = batch(seed + 1);
  mm::Rng rng(seed + 2);
  const mm::Tensor<double> r = rng.normal_tensor<double>(n, d);
  mm::Tape tape;
  mm::Var<double, Cpu> x(b, in.x.view(), true);
  auto out = mm::block(tape, b, layer, std::span<const mm::View<double>>(grads), x, in.input());
  out.aux.grad()(0, 0) = 1.0;  // L = <y, r> + aux losses
  tape.backward(out.y, r.view());

  mm::Tensor<double> y(n, d);
  std::vector<mm::RoutingTrace> trace;
  auto loss = [&] {
    const auto st = layer.forward(b, in.x.view(), in.input(), y.view());
    trace = st.routing;
    return dot(y.view(), r.view()) + st.aux_loss;
  };
  auto plan = [&] { return signature(trace); };
  std::vector<mm::GradcheckInput> inputs;
  if (only.empty()) {
    inputs.push_back({"x", in.x.view(), x.grad()});
  }
  const auto params = Layer::parameters(layer.config());
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (only.empty() || params[i].name == only) {
      inputs.push_back({params[i].name, arena.value(static_cast<std::int64_t>(i)), grads[i]});
    }
  }
  mm::GradcheckOptions go;
  go.max_elements = max_elements;
  return mm::gradcheck(loss, inputs, go, plan);
}

double result_scale(const mm::GradcheckReport& r, const std::string& name) {
  for (const auto& res : r.results) {
    if (res.name == name) {
      return res.scale;
    }
  }
  FAIL("no result " << name);
  return 0.0;
}

}  // namespace

TEST_CASE("MoMa block forward is Eq. 1 over the expert-choice plan", "[layers][cpu]") {
  struct Case {
    mm::NormOrder order;
    mm::GatePlacement gate;
  };
  for (const auto c : {Case{mm::NormOrder::post, mm::GatePlacement::after_norm},
                       Case{mm::NormOrder::post, mm::GatePlacement::before_norm},
                       Case{mm::NormOrder::pre, mm::GatePlacement::after_norm}}) {
    INFO((c.order == mm::NormOrder::pre ? "pre" : "post")
         << "-norm, gate " << (c.gate == mm::GatePlacement::after_norm ? "after" : "before"));
    const std::vector<std::int64_t> experts = {2, 3};
    Moma layer(moma_config<Moma>(c.order, c.gate, experts, 1.0));
    randomize(Moma::parameters(layer.config()), layer.weights(), 19);
    Cpu b;
    const Batch in = batch(4);
    mm::Tensor<double> y(n, d);
    const auto st = layer.forward(b, in.x.view(), in.input(), y.view());
    REQUIRE(st.routing.size() == 1);
    const auto& plan = st.routing[0];
    CHECK(rel_error(to_mat(y.view()), oracle(layer, in, plan, true)) < 1e-12);

    // The plan is expert choice inside each modality group, on the FFN's input.
    const auto w = named(Moma::parameters(layer.config()), layer.weights());
    Mat router_in = attention_half(to_mat(in.x.view()), w, in, layer.config().block);
    if (c.order == mm::NormOrder::pre) {
      for (auto& r : router_in) {
        rms(r, at(w, "ffn.norm"), 1e-5);
      }
    }
    check_expert_choice(router_in, w, plan, in, experts, 1.0);
    // FLOPs: the slots that ran (9 text, 7 image tokens: ceil(9/2) * 2 + ceil(7/3) * 3 = 19,
    // capacities rounded up) and the router.
    mm::Tensor<double> yd(n, d);
    const auto dense = mm::DenseBlock<double, Cpu>({layer.config().block})
                           .forward(b, in.x.view(), in.input(), yd.view());
    CHECK(st.flops == Approx(dense.flops - 6.0 * n * d * f + 6.0 * 19 * d * f + 2.0 * n * d * 5));

    // Padded-capacity dispatch computes the same block.
    MomaPadded padded(moma_config<MomaPadded>(c.order, c.gate, experts, 1.0));
    const auto wp = padded.weights();
    const auto ws = layer.weights();
    for (std::size_t i = 0; i < ws.size(); ++i) {
      Cpu().copy(wp[i], mm::View<const double>(ws[i]));
    }
    mm::Tensor<double> yp(n, d);
    padded.forward(b, in.x.view(), in.input(), yp.view());
    CHECK(rel_error(to_mat(yp.view()), to_mat(y.view())) < 1e-13);
  }
}

TEST_CASE("MoMa 1t1i and token-choice blocks follow Eq. 1 over their plans", "[layers][cpu]") {
  Cpu b;
  const Batch in = batch(8);
  mm::Tensor<double> y(n, d);
  {
    Hard::Config c;
    c.block = block_config(mm::NormOrder::post);
    c.ffn.experts = {1, 1};
    Hard layer(c);
    randomize(Hard::parameters(layer.config()), layer.weights(), 3);
    const auto st = layer.forward(b, in.x.view(), in.input(), y.view());
    const auto& plan = st.routing.at(0);
    for (std::int64_t m = 0; m < 2; ++m) {  // expert m holds exactly the tokens of modality m
      for (auto s = plan.offsets[static_cast<std::size_t>(m)];
           s < plan.offsets[static_cast<std::size_t>(m + 1)];
           ++s) {
        CHECK(in.modality[static_cast<std::size_t>(plan.tokens[static_cast<std::size_t>(s)])] == m);
      }
    }
    CHECK(plan.offsets.back() == n);
    CHECK(rel_error(to_mat(y.view()), oracle(layer, in, plan, false)) < 1e-12);
  }
  {
    Top2::Config c;
    c.block = block_config(mm::NormOrder::post);
    c.ffn.experts = {4};
    c.ffn.router.k = 2;
    c.ffn.router.dropless = true;
    Top2 layer(c);
    randomize(Top2::parameters(layer.config()), layer.weights(), 5);
    const auto st = layer.forward(b, in.x.view(), in.input(), y.view());
    CHECK(st.routing.at(0).offsets.back() == 2 * n);  // dropless top-2: two slots per token
    CHECK(st.aux_loss > 0.0);                         // balance + z-loss
  }
}

TEST_CASE("MoMa block gradients match central differences (double)", "[layers][cpu][grad]") {
  SECTION("4t4i-style expert choice, gate after the post-norm") {
    const auto r = gradients<Moma>(
        moma_config<Moma>(mm::NormOrder::post, mm::GatePlacement::after_norm, {2, 2}, 1.0), 31, 16);
    INFO(r.str());
    CHECK(r.ok(1e-6));
    CHECK(result_scale(r, "ffn.router") > 1e-3);
  }
  SECTION("expert choice, gate before the post-norm") {
    const auto r = gradients<Moma>(
        moma_config<Moma>(mm::NormOrder::post, mm::GatePlacement::before_norm, {2, 2}, 1.0),
        33,
        16);
    INFO(r.str());
    CHECK(r.ok(1e-6));
  }
  SECTION("expert choice, pre-norm") {
    const auto r = gradients<Moma>(
        moma_config<Moma>(mm::NormOrder::pre, mm::GatePlacement::after_norm, {2, 2}, 1.0), 35, 16);
    INFO(r.str());
    CHECK(r.ok(1e-6));
  }
  SECTION("1t1i") {
    Hard::Config c;
    c.block = block_config(mm::NormOrder::post);
    c.ffn.experts = {1, 1};
    const auto r = gradients<Hard>(c, 37, 16);
    INFO(r.str());
    CHECK(r.ok(1e-6));
  }
  SECTION("token choice top-2 with capacity and aux losses") {
    Top2::Config c;
    c.block = block_config(mm::NormOrder::post);
    c.ffn.experts = {4};
    c.ffn.router.k = 2;
    c.ffn.router.capacity_factor = 1.0;
    c.ffn.router.balance_coef = 0.1;
    c.ffn.router.z_coef = 0.05;
    const auto r = gradients<Top2>(c, 39, 16);
    INFO(r.str());
    CHECK(r.ok(1e-6));
    CHECK(result_scale(r, "ffn.router") > 1e-3);
  }
}

// PAPERS.md §4.3: under post-norm, RMSNorm(g y) = RMSNorm(y) up to eps, so a token picked by one
// expert gives its gate no gradient when the gate sits before the norm.
TEST_CASE("Gate placement: before the post-norm a lone gate gets ~no router gradient",
          "[layers][cpu][grad]") {
  auto router = [](mm::GatePlacement gate, std::vector<std::int64_t> experts, double capacity) {
    const auto r =
        gradients<Moma>(moma_config<Moma>(mm::NormOrder::post, gate, std::move(experts), capacity),
                        51,
                        0,
                        "ffn.router");
    for (const auto& res : r.results) {
      if (res.name == "ffn.router") {
        return res;
      }
    }
    FAIL("no router result");
    return mm::GradcheckResult{};
  };
  // One expert per modality taking half its tokens: every routed token has exactly one expert.
  const auto before = router(mm::GatePlacement::before_norm, {1, 1}, 0.5);
  const auto after = router(mm::GatePlacement::after_norm, {1, 1}, 0.5);
  INFO("router gradient scale: before the norm " << before.scale << ", after " << after.scale);
  CHECK(after.scale > 1e-2);
  CHECK(before.scale < 1e-3 * after.scale);           // the norm cancels the gate (up to eps)
  CHECK(before.max_abs_error < 1e-2 * before.scale);  // the analytic gradient agrees: ~0 too
  CHECK(after.rel_error < 1e-6);
  // With two experts per token (relative weights), the router learns even before the norm.
  const auto shared = router(mm::GatePlacement::before_norm, {2, 2}, 2.0);
  CHECK(shared.scale > 1e-2 * after.scale);
  CHECK(shared.rel_error < 1e-6);
}

TEST_CASE("MoMa block at inference routes by its aux routers (MoMa §2.4)", "[layers][cpu]") {
  Moma layer(moma_config<Moma>(mm::NormOrder::post, mm::GatePlacement::after_norm, {2, 2}, 1.0));
  randomize(Moma::parameters(layer.config()), layer.weights(), 61);
  randomize(Moma::aux_parameters(layer.config()), layer.aux_weights(), 62, 1.0);
  Cpu b;
  const Batch in = batch(9);
  auto input = in.input();
  input.routing = mm::RoutingMode::aux;
  mm::Tensor<double> y(n, d);
  const auto st = layer.forward(b, in.x.view(), input, y.view());
  const auto& plan = st.routing.at(0);
  // Expected decisions: sigmoid(silu(h W1) W2) > 0.5 with the modality group's aux router.
  const auto w = named(Moma::parameters(layer.config()), layer.weights());
  const auto aw = named(Moma::aux_parameters(layer.config()), layer.aux_weights());
  const Mat h = attention_half(to_mat(in.x.view()), w, in, layer.config().block);
  std::int64_t e0 = 0;
  std::int64_t selected = 0;
  for (std::int64_t m = 0; m < 2; ++m) {
    const std::string p = "ffn.aux" + std::to_string(m) + ".";
    for (std::int64_t e = 0; e < 2; ++e) {
      std::vector<std::int32_t> expect;
      for (std::int64_t t = 0; t < n; ++t) {
        if (in.modality[static_cast<std::size_t>(t)] != m) {
          continue;
        }
        Row a = matvec(h[static_cast<std::size_t>(t)], at(aw, p + "w1"));
        for (auto& v : a) {
          v = v / (1.0 + std::exp(-v));
        }
        if (matvec(a, at(aw, p + "w2"))[static_cast<std::size_t>(e)] > 0.0) {
          expect.push_back(static_cast<std::int32_t>(t));
        }
      }
      const std::vector<std::int32_t> got(
          plan.tokens.begin() + plan.offsets[static_cast<std::size_t>(e0 + e)],
          plan.tokens.begin() + plan.offsets[static_cast<std::size_t>(e0 + e + 1)]);
      CHECK(got == expect);
      selected += static_cast<std::int64_t>(got.size());
    }
    e0 += 2;
  }
  CHECK(selected > 0);
  CHECK(selected < 2 * n);
  CHECK(rel_error(to_mat(y.view()), oracle(layer, in, plan, true)) < 1e-12);

  // A training forward must use batch routing.
  Moma::Saved saved;
  CHECK_THROWS_AS(layer.forward(b, in.x.view(), input, y.view(), &saved), mm::Error);
}

TEST_CASE("MoMa aux routers fit the decisions of a training forward", "[layers][cpu]") {
  Cpu b;
  Moma layer(moma_config<Moma>(mm::NormOrder::post, mm::GatePlacement::after_norm, {2, 2}, 1.0));
  mm::ParamArena<double, Cpu> aux_arena;
  const auto aux_grads = mm::bind_aux_parameters(aux_arena, b, layer);
  const Batch in = batch(10);
  mm::Tensor<double> y(n, d);
  Moma::Saved saved;
  layer.forward(b, in.x.view(), in.input(), y.view(), &saved);
  mm::AuxRouterFit fit;
  layer.aux_fit(b, saved, std::span<const mm::View<double>>(aux_grads), fit);
  CHECK(fit.pairs == 9 * 2 + 7 * 2);                     // each token, its group's experts
  CHECK(fit.true_pos + fit.false_neg == 5 * 2 + 4 * 2);  // the slots of the plan
  double g = 0.0;
  for (const auto& v : aux_grads) {
    g += dot(v, v);
  }
  CHECK(g > 0.0);
}

TEST_CASE("MoMa block rejects a group count that does not match the modalities", "[layers][cpu]") {
  auto c = moma_config<Moma>(mm::NormOrder::post, mm::GatePlacement::after_norm, {4, 4, 4}, 1.0);
  try {
    Moma layer(c);
    FAIL("no error");
  } catch (const mm::Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("experts"));
    CHECK_THAT(std::string(e.what()), Catch::Contains("one expert group per modality (2)"));
  }
}

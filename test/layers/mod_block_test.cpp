// Mixture-of-depths block (layers/mod_block.hpp): forward against an oracle that ranks the router
// scores itself and runs the naive block on the kept tokens only (their original positions),
// batch and per-sequence routing groups, capacities 0.25 and 0.125; gradients against central
// differences (plan identity asserted); aux routing and decoding (no K/V for skipped tokens).
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
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/kv_cache.hpp>
#include <mmsparse/layers/mod_block.hpp>
#include <mmsparse/testing/gradcheck.hpp>

namespace mm = mmsparse;
using namespace block_checks;  // NOLINT: the oracle of this test

namespace {

using Cpu = mm::CpuBackend<double>;
using Dense = mm::DenseBlock<double, Cpu>;
using ModDense = mm::ModBlock<Dense>;
using Moma = mm::MomaBlock<double, mm::ExpertChoice, mm::SortedGather, Cpu>;
using ModMoma = mm::ModBlock<Moma>;
constexpr std::int64_t d = 16;

mm::BlockConfig block_config() {
  mm::BlockConfig bc;
  bc.d = d;
  bc.heads = 2;
  bc.hidden = 12;
  bc.modalities = 2;
  bc.seed = 9;
  return bc;
}

ModDense::Config dense_config(double capacity) {
  ModDense::Config c;
  c.inner.block = block_config();
  c.router.capacity = capacity;
  return c;
}

struct Batch {
  mm::Tensor<double> x;
  std::vector<std::int32_t> modality;
  Layout lay;
  std::int64_t len = 0;
  mm::BlockInput<mm::host_space> input(bool per_sequence = false) const {
    mm::BlockInput<mm::host_space> in;
    in.modality = {modality.data(), x.rows()};
    in.positions = {lay.positions.data(), x.rows()};
    in.sequences = lay.sequences;
    in.routing_group = per_sequence ? len : 0;
    in.trace = true;
    return in;
  }
};

Batch batch(std::int64_t sequences, std::int64_t len, std::uint64_t seed) {
  Batch b;
  mm::Rng rng(seed);
  b.x = rng.normal_tensor<double>(sequences * len, d);
  for (std::int64_t i = 0; i < sequences * len; ++i) {
    b.modality.push_back((i % len) % 4 == 1 ? 1 : 0);
  }
  b.lay = layout(sequences, len);
  b.len = len;
  return b;
}

double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}

// out_t = x_t + r_t (block(x_kept)_t - x_t) for kept t (the naive block over the kept tokens
// alone, at their original positions), x_t otherwise; r_t = sigmoid(x_t w).
Mat mod_oracle(const ModDense& layer, const Batch& in, const std::vector<std::int32_t>& kept) {
  const auto w = named(ModDense::parameters(layer.config()), layer.weights());
  const auto mw = modality_weights(w, "inner.attn.", "inner.ffn.", true);
  const Mat x = to_mat(in.x.view());
  Mat xs;
  std::vector<std::int32_t> mod, pos;
  std::vector<std::int64_t> seqs = {0};
  for (std::size_t s = 0; s + 1 < in.lay.sequences.size(); ++s) {
    for (const auto t : kept) {
      if (t >= in.lay.sequences[s] && t < in.lay.sequences[s + 1]) {
        xs.push_back(x[static_cast<std::size_t>(t)]);
        mod.push_back(in.modality[static_cast<std::size_t>(t)]);
        pos.push_back(in.lay.positions[static_cast<std::size_t>(t)]);
      }
    }
    seqs.push_back(static_cast<std::int64_t>(xs.size()));
  }
  const Mat ys = block(xs, {mw, mw}, mod, pos, seqs, layer.config().inner.block);
  Mat out = x;
  for (std::size_t i = 0; i < kept.size(); ++i) {
    const auto t = static_cast<std::size_t>(kept[i]);
    const double r = sigmoid(matvec(x[t], at(w, "router"))[0]);
    for (std::size_t j = 0; j < out[t].size(); ++j) {
      out[t][j] += r * (ys[i][j] - x[t][j]);
    }
  }
  return out;
}

// The top ceil(c * |group|) tokens of each group by router score, ascending.
std::vector<std::int32_t> top_tokens(const ModDense& layer,
                                     const Batch& in,
                                     double capacity,
                                     bool per_sequence) {
  const auto w = named(ModDense::parameters(layer.config()), layer.weights());
  const Mat x = to_mat(in.x.view());
  const std::int64_t n = in.x.rows();
  const std::int64_t g = per_sequence ? in.len : n;
  std::vector<std::int32_t> kept;
  for (std::int64_t g0 = 0; g0 < n; g0 += g) {
    std::vector<std::int32_t> idx(static_cast<std::size_t>(g));
    std::iota(idx.begin(), idx.end(), static_cast<std::int32_t>(g0));
    std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t c) {
      return matvec(x[static_cast<std::size_t>(a)], at(w, "router"))[0] >
             matvec(x[static_cast<std::size_t>(c)], at(w, "router"))[0];
    });
    idx.resize(static_cast<std::size_t>(std::ceil(capacity * static_cast<double>(g) - 1e-9)));
    kept.insert(kept.end(), idx.begin(), idx.end());
  }
  std::sort(kept.begin(), kept.end());
  return kept;
}

}  // namespace

TEST_CASE("MoD block: the top-C tokens run the block alone, the rest skip", "[layers][cpu]") {
  struct Case {
    double capacity;
    bool per_sequence;
  };
  for (const auto c : {Case{0.25, false}, Case{0.125, true}, Case{0.5, true}}) {
    INFO("capacity " << c.capacity << (c.per_sequence ? ", per sequence" : ", per batch"));
    ModDense layer(dense_config(c.capacity));
    randomize(ModDense::parameters(layer.config()), layer.weights(), 13);
    Cpu b;
    const Batch in = batch(2, 16, 21);
    mm::Tensor<double> y(32, d);
    const auto st = layer.forward(b, in.x.view(), in.input(c.per_sequence), y.view());
    const auto kept = top_tokens(layer, in, c.capacity, c.per_sequence);
    REQUIRE(!st.routing.empty());
    CHECK(st.routing.back().tokens == kept);  // the MoD plan is recorded after the inner block's
    CHECK(static_cast<double>(kept.size()) == std::ceil(c.capacity * 32 - 1e-9));
    CHECK(rel_error(to_mat(y.view()), mod_oracle(layer, in, kept)) < 1e-12);
    // FLOPs: the router, and the block over the kept tokens only.
    Dense dense({block_config()});
    mm::Tensor<double> xs(static_cast<std::int64_t>(kept.size()), d), ys(xs.rows(), d);
    std::vector<std::int32_t> mod, pos;
    std::vector<std::int64_t> seqs = {0};
    for (std::size_t s = 0; s < 2; ++s) {
      for (std::size_t i = 0; i < kept.size(); ++i) {
        if (kept[i] / 16 == static_cast<std::int32_t>(s)) {
          for (std::int64_t j = 0; j < d; ++j) {
            xs(static_cast<std::int64_t>(pos.size()), j) = in.x(kept[i], j);
          }
          mod.push_back(in.modality[static_cast<std::size_t>(kept[i])]);
          pos.push_back(kept[i] % 16);
        }
      }
      seqs.push_back(static_cast<std::int64_t>(pos.size()));
    }
    mm::BlockInput<mm::host_space> kin;
    kin.modality = {mod.data(), xs.rows()};
    kin.positions = {pos.data(), xs.rows()};
    kin.sequences = seqs;
    const auto inner = dense.forward(b, xs.view(), kin, ys.view());
    CHECK(st.flops == Approx(inner.flops + 2.0 * 32 * d));
  }
}

TEST_CASE("MoD block gradients match central differences (double)", "[layers][cpu][grad]") {
  auto check = [](auto& layer, std::uint64_t seed, bool per_sequence) {
    using Layer = std::remove_reference_t<decltype(layer)>;
    Cpu b;
    mm::ParamArena<double, Cpu> arena;
    const auto grads = mm::bind_parameters(arena, b, layer);
    randomize(Layer::parameters(layer.config()), layer.weights(), seed);
    Batch in = batch(2, 8, seed + 1);
    mm::Rng rng(seed + 2);
    const mm::Tensor<double> r = rng.normal_tensor<double>(16, d);
    mm::Tape tape;
    mm::Var<double, Cpu> x(b, in.x.view(), true);
    auto out = mm::block(
        tape, b, layer, std::span<const mm::View<double>>(grads), x, in.input(per_sequence));
    tape.backward(out.y, r.view());
    mm::Tensor<double> y(16, d);
    std::vector<mm::RoutingTrace> trace;
    auto loss = [&] {
      const auto st = layer.forward(b, in.x.view(), in.input(per_sequence), y.view());
      trace = st.routing;
      return dot(y.view(), r.view());
    };
    auto plan = [&] { return signature(trace); };
    std::vector<mm::GradcheckInput> inputs = {{"x", in.x.view(), x.grad()}};
    const auto params = Layer::parameters(layer.config());
    for (std::size_t i = 0; i < params.size(); ++i) {
      inputs.push_back({params[i].name, arena.value(static_cast<std::int64_t>(i)), grads[i]});
    }
    mm::GradcheckOptions go;
    go.max_elements = 12;
    const auto report = mm::gradcheck(loss, inputs, go, plan);
    INFO(report.str());
    CHECK(report.ok(1e-6));
    CHECK(report.results.at(1).name == "router");
    CHECK(report.results.at(1).scale > 1e-3);  // r scales the delta: the router learns
  };
  SECTION("around a dense block, batch routing") {
    ModDense layer(dense_config(0.5));
    check(layer, 71, false);
  }
  SECTION("around a MoMa block (MoD before the modality split), per-sequence routing") {
    ModMoma::Config c;
    c.inner.block = block_config();
    c.inner.ffn.experts = {2, 2};
    c.router.capacity = 0.5;
    ModMoma layer(c);
    check(layer, 73, true);
  }
}

TEST_CASE(
    "MoD block at inference keeps what its aux router picks; decoding writes no K/V for "
    "skipped tokens",
    "[layers][cpu]") {
  ModDense layer(dense_config(0.25));
  randomize(ModDense::parameters(layer.config()), layer.weights(), 81);
  randomize(ModDense::aux_parameters(layer.config()), layer.aux_weights(), 82, 1.0);
  Cpu b;
  const Batch in = batch(1, 12, 83);
  auto input = in.input();
  input.routing = mm::RoutingMode::aux;
  mm::Tensor<double> y(12, d);
  const auto st = layer.forward(b, in.x.view(), input, y.view());
  // The aux router's own decisions: sigmoid(silu(x W1) W2) > 0.5.
  const auto aw = named(ModDense::aux_parameters(layer.config()), layer.aux_weights());
  const Mat x = to_mat(in.x.view());
  std::vector<std::int32_t> expect;
  for (std::int32_t t = 0; t < 12; ++t) {
    Row a = matvec(x[static_cast<std::size_t>(t)], at(aw, "aux.w1"));
    for (auto& v : a) {
      v = v / (1.0 + std::exp(-v));
    }
    if (matvec(a, at(aw, "aux.w2"))[0] > 0.0) {
      expect.push_back(t);
    }
  }
  CHECK(st.routing.back().tokens == expect);
  REQUIRE(!expect.empty());
  REQUIRE(expect.size() < 12);  // some tokens skip
  CHECK(rel_error(to_mat(y.view()), mod_oracle(layer, in, expect)) < 1e-12);

  // Token by token against a cache: same outputs, and only kept tokens leave K/V.
  mm::KvCache<double, Cpu> cache({"mod layer", 1, 12, d});
  mm::Tensor<double> yt(1, d);
  for (std::int64_t t = 0; t < 12; ++t) {
    mm::BlockInput<mm::host_space> one;
    const std::vector<std::int64_t> seqs = {0, 1};
    one.modality = {in.modality.data() + t, 1};
    one.positions = {in.lay.positions.data() + t, 1};
    one.sequences = seqs;
    layer.decode(b, in.x.view().row_block(t, 1), one, cache, 0, yt.view());
    for (std::int64_t j = 0; j < d; ++j) {
      CHECK(yt(0, j) == Approx(y(t, j)).margin(1e-12));
    }
    const auto kept_so_far =
        std::count_if(expect.begin(), expect.end(), [&](std::int32_t k) { return k <= t; });
    CHECK(cache.length(0) == kept_so_far);
  }
}

TEST_CASE("MoD aux router fits the kept set of a training forward", "[layers][cpu]") {
  Cpu b;
  ModDense layer(dense_config(0.25));
  mm::ParamArena<double, Cpu> arena;
  const auto aux_grads = mm::bind_aux_parameters(arena, b, layer);
  const Batch in = batch(2, 8, 91);
  mm::Tensor<double> y(16, d);
  ModDense::Saved saved;
  layer.forward(b, in.x.view(), in.input(), y.view(), &saved);
  mm::AuxRouterFit fit;
  layer.aux_fit(b, saved, std::span<const mm::View<double>>(aux_grads), fit);
  CHECK(fit.pairs == 16);
  CHECK(fit.true_pos + fit.false_neg == 4);  // ceil(0.25 * 16) kept
  CHECK(fit.loss() > 0.0);
}

TEST_CASE("MoD block rejects a capacity outside (0, 1]", "[layers][cpu]") {
  for (const double c : {0.0, 1.5}) {
    try {
      ModDense layer(dense_config(c));
      FAIL("no error");
    } catch (const mm::Error& e) {
      CHECK_THAT(std::string(e.what()), Catch::Contains("capacity"));
    }
  }
}

// Mixture-of-Transformers block (layers/mot_block.hpp): forward against a naive double oracle that
// picks every weight by the token's modality (2 and 3 modalities, interleaved, an empty group,
// both norm orders), untying checks, gradients against central differences, causality, errors.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "layers/block_checks.hpp"
#include <mmsparse/autograd/blocks.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/mot_block.hpp>
#include <mmsparse/testing/gradcheck.hpp>

namespace mm = mmsparse;
using namespace block_checks;  // NOLINT: the oracle of this test

namespace {

using Cpu = mm::CpuBackend<double>;
using Mot = mm::MotBlock<double, Cpu>;

mm::BlockConfig config(mm::NormOrder order, std::int64_t modalities) {
  mm::BlockConfig bc;
  bc.d = 16;
  bc.heads = 2;
  bc.hidden = 20;
  bc.modalities = modalities;
  bc.norm_order = order;
  bc.seed = 5;
  return bc;
}

struct Batch {
  mm::Tensor<double> x;
  std::vector<std::int32_t> modality;
  Layout lay;
  mm::BlockInput<mm::host_space> input() const {
    mm::BlockInput<mm::host_space> in;
    in.modality = {modality.data(), static_cast<std::int64_t>(modality.size())};
    in.positions = {lay.positions.data(), static_cast<std::int64_t>(lay.positions.size())};
    in.sequences = lay.sequences;
    return in;
  }
};

// Interleaved modalities: a text prefix, an image run, text, then (3 modalities) speech.
Batch batch(std::int64_t sequences,
            std::int64_t len,
            std::int64_t modalities,
            std::uint64_t seed,
            bool text_only = false) {
  Batch b;
  mm::Rng rng(seed);
  b.x = rng.normal_tensor<double>(sequences * len, 16);
  for (std::int64_t i = 0; i < sequences * len; ++i) {
    const std::int64_t t = i % len;
    std::int32_t m = t >= 2 && t < 5 ? 1 : 0;
    if (modalities == 3 && t >= len - 2) {
      m = 2;
    }
    b.modality.push_back(text_only ? 0 : m);
  }
  b.lay = layout(sequences, len);
  return b;
}

std::vector<ModalityWeights> mot_weights(const Mot& layer) {
  const auto w = named(Mot::parameters(layer.config()), layer.weights());
  std::vector<ModalityWeights> out;
  for (std::int64_t m = 0; m < layer.config().block.modalities; ++m) {
    const std::string p = "m" + std::to_string(m) + ".";
    out.push_back(modality_weights(w, "attn." + p, "ffn." + p, true));
  }
  return out;
}

}  // namespace

TEST_CASE("MoT block forward matches the per-modality oracle", "[layers][cpu]") {
  for (const std::int64_t modalities : {2, 3}) {
    for (const auto order : {mm::NormOrder::post, mm::NormOrder::pre}) {
      for (const bool text_only : {false, true}) {
        INFO(modalities << " modalities, " << (order == mm::NormOrder::pre ? "pre" : "post")
                        << "-norm" << (text_only ? ", text only (empty groups)" : ""));
        Mot layer({config(order, modalities)});
        randomize(Mot::parameters(layer.config()), layer.weights(), 41 + modalities);
        Cpu b;
        const Batch in = batch(2, 8, modalities, 9, text_only);
        mm::Tensor<double> y(16, 16);
        const auto st = layer.forward(b, in.x.view(), in.input(), y.view());
        const Mat expect = block(to_mat(in.x.view()),
                                 mot_weights(layer),
                                 in.modality,
                                 in.lay.positions,
                                 in.lay.sequences,
                                 layer.config().block);
        CHECK(rel_error(to_mat(y.view()), expect) < 1e-12);
        // MoT's FLOPs are the dense block's (MoT §1): each token runs one set of weights.
        mm::DenseBlock<double, Cpu> dense({config(order, modalities)});
        const auto sd = dense.forward(b, in.x.view(), in.input(), y.view());
        CHECK(st.flops == Approx(sd.flops));
      }
    }
  }
}

TEST_CASE("MoT unties every weight: one modality's FFN never touches another's tokens",
          "[layers][cpu]") {
  Mot layer({config(mm::NormOrder::post, 2)});
  randomize(Mot::parameters(layer.config()), layer.weights(), 3);
  Cpu b;
  const Batch in = batch(1, 8, 2, 4);
  mm::Tensor<double> y0(8, 16), y1(8, 16);
  layer.forward(b, in.x.view(), in.input(), y0.view());
  const auto params = Mot::parameters(layer.config());
  const auto w = layer.weights();
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (params[i].name.rfind("ffn.m1.", 0) == 0) {  // the image FFN and its norm
      for (std::int64_t r = 0; r < w[i].rows; ++r) {
        for (std::int64_t c = 0; c < w[i].cols; ++c) {
          w[i](r, c) *= 1.5;
        }
      }
    }
  }
  layer.forward(b, in.x.view(), in.input(), y1.view());
  for (std::int64_t t = 0; t < 8; ++t) {
    double diff = 0.0;
    for (std::int64_t j = 0; j < 16; ++j) {
      diff = std::max(diff, std::fabs(y0(t, j) - y1(t, j)));
    }
    INFO("token " << t << " modality " << in.modality[static_cast<std::size_t>(t)]);
    if (in.modality[static_cast<std::size_t>(t)] == 1) {
      CHECK(diff > 1e-3);
    } else {
      CHECK(diff == 0.0);
    }
  }
}

TEST_CASE("MoT block gradients match central differences (double)", "[layers][cpu][grad]") {
  for (const std::int64_t modalities : {2, 3}) {
    for (const auto order : {mm::NormOrder::post, mm::NormOrder::pre}) {
      INFO(modalities << " modalities, " << (order == mm::NormOrder::pre ? "pre" : "post"));
      Cpu b;
      Mot layer({config(order, modalities)});
      mm::ParamArena<double, Cpu> arena;
      const auto grads = mm::bind_parameters(arena, b, layer);
      randomize(Mot::parameters(layer.config()), layer.weights(), 61);
      Batch in = batch(2, 7, modalities, 8);
      mm::Rng rng(5);
      const mm::Tensor<double> r = rng.normal_tensor<double>(14, 16);

      mm::Tape tape;
      mm::Var<double, Cpu> x(b, in.x.view(), true);
      auto out = mm::block(tape, b, layer, std::span<const mm::View<double>>(grads), x, in.input());
      tape.backward(out.y, r.view());

      mm::Tensor<double> y(14, 16);
      auto loss = [&] {
        layer.forward(b, in.x.view(), in.input(), y.view());
        return dot(y.view(), r.view());
      };
      std::vector<mm::GradcheckInput> inputs = {{"x", in.x.view(), x.grad()}};
      const auto params = Mot::parameters(layer.config());
      for (std::size_t i = 0; i < params.size(); ++i) {
        inputs.push_back({params[i].name, arena.value(static_cast<std::int64_t>(i)), grads[i]});
      }
      mm::GradcheckOptions go;
      go.max_elements = 12;
      const auto report = mm::gradcheck(loss, inputs, go);
      INFO(report.str());
      CHECK(report.ok(1e-6));
      for (const auto& res : report.results) {
        CHECK(res.scale > 0.0);  // every modality has tokens: every weight gets a gradient
      }
    }
  }
}

TEST_CASE("MoT block is causal across modalities", "[layers][cpu]") {
  Cpu b;
  Mot layer({config(mm::NormOrder::post, 3)});
  Batch in = batch(1, 8, 3, 12);
  mm::Tensor<double> y0(8, 16), y1(8, 16);
  Mot::Saved saved;
  layer.forward(b, in.x.view(), in.input(), y0.view(), &saved);
  in.x(6, 0) += 2.0;   // a speech token
  in.modality[5] = 1;  // and a later modality switch
  layer.forward(b, in.x.view(), in.input(), y1.view(), &saved);
  // The earlier rows may move inside the grouped GEMMs (a new modality mix): equal to rounding.
  for (std::int64_t t = 0; t < 5; ++t) {
    for (std::int64_t j = 0; j < 16; ++j) {
      CHECK(y0(t, j) == Approx(y1(t, j)).margin(1e-13).epsilon(1e-13));
    }
  }
  for (std::int64_t j = 0; j < 16; ++j) {
    CHECK(std::fabs(y0(6, j) - y1(6, j)) + std::fabs(y0(5, j) - y1(5, j)) > 0.0);
  }
}

TEST_CASE("MoT block rejects a modality its configuration does not have", "[layers][cpu]") {
  Cpu b;
  Mot layer({config(mm::NormOrder::post, 2)});
  const Batch in = batch(1, 8, 3, 1);  // speech ids (2) for a 2-modality block
  mm::Tensor<double> y(8, 16);
  try {
    layer.forward(b, in.x.view(), in.input(), y.view());
    FAIL("no error");
  } catch (const mm::Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("modality[6]"));
    CHECK_THAT(std::string(e.what()), Catch::Contains("[0, 2)"));
  }
  CHECK(Mot::parameters(layer.config()).size() == 2 * (6 + 1 + 4));  // qkv+norms, wo, ffn+norm
}

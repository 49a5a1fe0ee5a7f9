// Dense transformer block (layers/block.hpp): forward against a naive double oracle in both norm
// orders, gradients against central differences through the tape adapter, causality, float vs
// double, and argument errors.
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
#include <mmsparse/layers/block.hpp>
#include <mmsparse/testing/gradcheck.hpp>

namespace mm = mmsparse;
using namespace block_checks;  // NOLINT: the oracle of this test

namespace {

using Cpu = mm::CpuBackend<double>;
using Dense = mm::DenseBlock<double, Cpu>;

mm::BlockConfig config(mm::NormOrder order) {
  mm::BlockConfig bc;
  bc.d = 16;
  bc.heads = 2;
  bc.hidden = 24;
  bc.modalities = 2;
  bc.norm_order = order;
  bc.seed = 3;
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

Batch batch(std::int64_t sequences, std::int64_t len, std::int64_t d, std::uint64_t seed) {
  Batch b;
  mm::Rng rng(seed);
  b.x = rng.normal_tensor<double>(sequences * len, d);
  for (std::int64_t i = 0; i < sequences * len; ++i) {
    b.modality.push_back(static_cast<std::int32_t>((i * 5 + 1) % 3 == 0 ? 1 : 0));
  }
  b.lay = layout(sequences, len);
  return b;
}

std::vector<ModalityWeights> dense_weights(const Dense& layer) {
  const auto w = named(Dense::parameters(layer.config()), layer.weights());
  const auto m = modality_weights(w, "attn.", "ffn.", true);
  return {m, m};
}

}  // namespace

TEST_CASE("Dense block forward matches the naive oracle, pre- and post-norm", "[layers][cpu]") {
  for (const auto order : {mm::NormOrder::pre, mm::NormOrder::post}) {
    INFO((order == mm::NormOrder::pre ? "pre-norm" : "post-norm"));
    Dense layer({config(order)});
    randomize(Dense::parameters(layer.config()), layer.weights(), 17);
    Cpu b;
    const Batch in = batch(2, 7, 16, 5);
    mm::Tensor<double> y(in.x.rows(), 16);
    const auto st = layer.forward(b, in.x.view(), in.input(), y.view());
    const Mat expect = block(to_mat(in.x.view()),
                             dense_weights(layer),
                             in.modality,
                             in.lay.positions,
                             in.lay.sequences,
                             layer.config().block);
    CHECK(rel_error(to_mat(y.view()), expect) < 1e-12);
    // FLOPs: 4 projections, causal attention over 2 * 28 pairs, the SwiGLU FFN.
    const double n = 14, d = 16, f = 24;
    CHECK(st.flops == Approx(2 * n * d * 4 * d + 4 * d * 2 * 28 + 6 * n * d * f));

    // y may alias x.
    mm::Tensor<double> x2 = in.x.clone();
    layer.forward(b, x2.view(), in.input(), x2.view());
    CHECK(rel_error(to_mat(x2.view()), expect) < 1e-12);
  }
}

TEST_CASE("Dense block gradients match central differences (double)", "[layers][cpu][grad]") {
  for (const auto order : {mm::NormOrder::pre, mm::NormOrder::post}) {
    INFO((order == mm::NormOrder::pre ? "pre-norm" : "post-norm"));
    Cpu b;
    Dense layer({config(order)});
    mm::ParamArena<double, Cpu> arena;
    const auto grads = mm::bind_parameters(arena, b, layer);
    randomize(Dense::parameters(layer.config()), layer.weights(), 23);
    Batch in = batch(2, 5, 16, 7);
    mm::Rng rng(99);
    const mm::Tensor<double> r = rng.normal_tensor<double>(in.x.rows(), 16);  // dL/dy

    mm::Tape tape;
    mm::Var<double, Cpu> x(b, in.x.view(), true);
    auto out = mm::block(tape, b, layer, std::span<const mm::View<double>>(grads), x, in.input());
    tape.backward(out.y, r.view());

    mm::Tensor<double> y(in.x.rows(), 16);
    auto loss = [&] {
      layer.forward(b, in.x.view(), in.input(), y.view());
      return dot(y.view(), r.view());
    };
    std::vector<mm::GradcheckInput> inputs = {{"x", in.x.view(), x.grad()}};
    const auto params = Dense::parameters(layer.config());
    for (std::size_t i = 0; i < params.size(); ++i) {
      inputs.push_back({params[i].name, arena.value(static_cast<std::int64_t>(i)), grads[i]});
    }
    mm::GradcheckOptions go;
    go.max_elements = 30;
    const auto report = mm::gradcheck(loss, inputs, go);
    INFO(report.str());
    CHECK(report.ok(1e-6));
    for (const auto& res : report.results) {
      CHECK(res.scale > 0.0);
    }
  }
}

TEST_CASE("Dense block is causal: a later token never changes an earlier output", "[layers][cpu]") {
  Cpu b;
  Dense layer({config(mm::NormOrder::post)});
  Batch in = batch(2, 6, 16, 11);
  mm::Tensor<double> y0(12, 16), y1(12, 16);
  Dense::Saved saved;
  layer.forward(b, in.x.view(), in.input(), y0.view(), &saved);  // training mode
  for (std::int64_t j = 0; j < 16; ++j) {
    in.x(4, j) += 1.0;  // position 4 of sequence 0
  }
  layer.forward(b, in.x.view(), in.input(), y1.view(), &saved);
  for (std::int64_t i = 0; i < 12; ++i) {
    const bool may_change = i == 4 || i == 5;
    double diff = 0.0;
    for (std::int64_t j = 0; j < 16; ++j) {
      diff = std::max(diff, std::fabs(y0(i, j) - y1(i, j)));
    }
    INFO("token " << i);
    if (may_change) {
      CHECK(diff > 1e-6);
    } else {
      CHECK(diff == 0.0);
    }
  }
}

TEST_CASE("Dense block in float agrees with double", "[layers][cpu]") {
  using CpuF = mm::CpuBackend<float>;
  mm::DenseBlock<float, CpuF> lf({config(mm::NormOrder::post)});
  Dense ld({config(mm::NormOrder::post)});
  randomize(Dense::parameters(ld.config()), ld.weights(), 31);
  const auto wd = ld.weights();
  const auto wf = lf.weights();
  for (std::size_t i = 0; i < wd.size(); ++i) {
    for (std::int64_t r = 0; r < wd[i].rows; ++r) {
      for (std::int64_t c = 0; c < wd[i].cols; ++c) {
        wf[i](r, c) = static_cast<float>(wd[i](r, c));
      }
    }
  }
  Cpu bd;
  CpuF bf;
  const Batch in = batch(1, 9, 16, 13);
  mm::Tensor<float> xf(9, 16);
  for (std::int64_t i = 0; i < 9; ++i) {
    for (std::int64_t j = 0; j < 16; ++j) {
      xf(i, j) = static_cast<float>(in.x(i, j));
    }
  }
  mm::Tensor<double> yd(9, 16);
  mm::Tensor<float> yf(9, 16);
  ld.forward(bd, in.x.view(), in.input(), yd.view());
  mm::BlockInput<mm::host_space> inf = in.input();
  lf.forward(bf, xf.view(), inf, yf.view());
  double err = 0.0;
  for (std::int64_t i = 0; i < 9; ++i) {
    for (std::int64_t j = 0; j < 16; ++j) {
      err = std::max(err, std::fabs(static_cast<double>(yf(i, j)) - yd(i, j)));
    }
  }
  CHECK(err < 1e-4);
}

TEST_CASE("Dense block rejects bad arguments and names them", "[layers][cpu]") {
  Cpu b;
  Dense layer({config(mm::NormOrder::pre)});
  Batch in = batch(1, 6, 16, 3);
  mm::Tensor<double> y(6, 16);
  auto message = [&](auto&& f) {
    try {
      f();
    } catch (const mm::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  mm::Tensor<double> narrow(6, 8);
  CHECK_THAT(message([&] { layer.forward(b, narrow.view(), in.input(), y.view()); }),
             Catch::Contains("[Block::forward] x"));
  auto bad = in.input();
  std::vector<std::int32_t> modality = in.modality;
  modality[2] = 2;  // only modalities 0 and 1 exist
  bad.modality = {modality.data(), 6};
  CHECK_THAT(message([&] { layer.forward(b, in.x.view(), bad, y.view()); }),
             Catch::Contains("modality[2]"));
  bad = in.input();
  const std::vector<std::int64_t> short_sequences = {0, 4};
  bad.sequences = short_sequences;
  CHECK_THAT(message([&] { layer.forward(b, in.x.view(), bad, y.view()); }),
             Catch::Contains("sequences"));
  bad = in.input();
  bad.positions = {in.lay.positions.data(), 5};
  CHECK_THAT(message([&] { layer.forward(b, in.x.view(), bad, y.view()); }),
             Catch::Contains("positions"));
  Dense::Saved never_filled;
  std::vector<mm::View<double>> grads;
  CHECK_THAT(message([&] { layer.backward(b, never_filled, y.view(), y.view(), grads); }),
             Catch::Contains("[Block::backward] saved"));
  // Binding checks every shape before binding anything.
  auto w = layer.weights();
  mm::Tensor<double> wrong(3, 3);
  w[1] = wrong.view();
  CHECK_THAT(message([&] { layer.bind(w); }), Catch::Contains("attn.wk"));
  CHECK(layer.weights()[1].data != wrong.data());
}

// Gradient checks of the tape adapters in autograd/ops.hpp: every op's analytic gradients (inputs
// and weights) against central differences in double, and float gradients against double ones.
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
#include <mmsparse/testing/gradcheck.hpp>

using namespace mmsparse;

namespace {

using B64 = CpuBackend<double>;
using V64 = Var<double, B64>;

double dot(View<const double> a, View<const double> c) {
  double s = 0.0;
  for (std::int64_t i = 0; i < a.rows; ++i) {
    for (std::int64_t j = 0; j < a.cols; ++j) {
      s += a(i, j) * c(i, j);
    }
  }
  return s;
}

// Leaves: host tensors with random values and Vars that borrow them (perturbing the tensor
// perturbs the Var). The op under test maps the leaves to one output Var; the loss is
// <output, R> for a fixed random R, so the seed gradient is R.
struct Leaves {
  B64 b;
  Tape tape;
  Rng rng{42};
  std::vector<std::string> names;
  std::vector<Tensor<double>> values;
  std::vector<V64> vars;

  V64 add(
      std::string name, std::int64_t rows, std::int64_t cols, double lo = -1.0, double hi = 1.0) {
    values.emplace_back(rows, cols);
    rng.fill_uniform(values.back().view(), lo, hi);
    names.push_back(std::move(name));
    vars.emplace_back(b, values.back().view(), true);
    return vars.back();
  }

  // `extra`: more tensors to check (e.g. arena slices the op's backward writes into).
  template <class Op>
  GradcheckReport check(Op&& op, std::vector<GradcheckInput> extra = {}) {
    V64 y = op();
    Tensor<double> r(y.shape());
    rng.fill_uniform(r.view(), -1.0, 1.0);
    tape.backward(y, View<const double>(r.view()));
    auto loss = [&] {
      NoGrad ng(tape);
      V64 out = op();
      return dot(out.value(), r.view());
    };
    std::vector<GradcheckInput> inputs;
    for (std::size_t i = 0; i < vars.size(); ++i) {
      inputs.push_back({names[i], values[i].view(), vars[i].grad()});
    }
    inputs.insert(inputs.end(), extra.begin(), extra.end());
    return gradcheck(loss, inputs);
  }
};

}  // namespace

TEST_CASE("ops: linear gradients match finite differences", "[autograd][cpu][grad]") {
  Leaves l;
  auto x = l.add("x", 7, 5);
  auto w = l.add("w", 5, 4);
  auto bias = l.add("bias", 1, 4);
  const auto report = l.check([&] { return linear(l.tape, l.b, x, w, bias); });
  INFO(report.str());
  REQUIRE(report.results.size() == 3);
  CHECK(report.ok(1e-6));
  CHECK(report.results[0].checked == 35);
}

TEST_CASE("ops: add and swiglu gradients match finite differences", "[autograd][cpu][grad]") {
  Leaves l;
  auto a = l.add("a", 6, 9, -3.0, 3.0);
  auto g = l.add("g", 6, 9);
  auto c = l.add("c", 6, 9);
  const auto report = l.check([&] { return add(l.tape, l.b, swiglu(l.tape, l.b, a, g), c); });
  INFO(report.str());
  CHECK(report.ok(1e-6));
}

TEST_CASE("ops: rms_norm and layer_norm gradients match finite differences",
          "[autograd][cpu][grad]") {
  SECTION("rms_norm") {
    Leaves l;
    auto x = l.add("x", 5, 8, -2.0, 2.0);
    auto w = l.add("w", 1, 8, 0.5, 1.5);
    const auto report = l.check([&] { return rms_norm(l.tape, l.b, x, w, 1e-5); });
    INFO(report.str());
    CHECK(report.ok(1e-6));
  }
  SECTION("layer_norm with bias") {
    Leaves l;
    auto x = l.add("x", 5, 8, -2.0, 2.0);
    auto w = l.add("w", 1, 8, 0.5, 1.5);
    auto bias = l.add("bias", 1, 8);
    const auto report = l.check([&] { return layer_norm(l.tape, l.b, x, w, bias, 1e-5); });
    INFO(report.str());
    CHECK(report.ok(1e-6));
  }
}

TEST_CASE("ops: embedding gradient adds repeated tokens", "[autograd][cpu][grad]") {
  Leaves l;
  auto table = l.add("table", 6, 4);
  const std::vector<std::int32_t> tokens = {3, 1, 3, 0, 5, 3};
  const Span<const std::int32_t> tok(tokens.data(), 6);
  const auto report = l.check([&] { return embedding(l.tape, l.b, tok, table); });
  INFO(report.str());
  CHECK(report.ok(1e-6));
  CHECK(l.vars[0].grad()(2, 0) == 0.0);  // token 2 never appears
}

TEST_CASE("ops: cross_entropy gradient and per-modality report", "[autograd][cpu][grad]") {
  Leaves l;
  auto h = l.add("h", 8, 6);
  auto w = l.add("w", 6, 11);
  const std::vector<std::int32_t> targets = {0, 10, 3, 3, 7, 1, 9, 2};
  const std::vector<ModalityId> modality = {0, 1, 1, 0, 0, 1, 0, 0};
  const Span<const std::int32_t> tg(targets.data(), 8);
  const Span<const ModalityId> md(modality.data(), 8);
  auto logits = linear(l.tape, l.b, h, w);
  auto ce = cross_entropy(l.tape, l.b, logits, tg, md, 2);
  l.tape.backward(ce.loss);

  // Oracle: per-token loss from a naive log-softmax.
  std::vector<double> per_token(8);
  double mean = 0.0;
  double text = 0.0;
  for (std::int64_t i = 0; i < 8; ++i) {
    double z = 0.0;
    for (std::int64_t j = 0; j < 11; ++j) {
      z += std::exp(logits.value()(i, j));
    }
    per_token[static_cast<std::size_t>(i)] = std::log(z) - logits.value()(i, targets[i]);
    mean += per_token[static_cast<std::size_t>(i)] / 8.0;
    if (modality[static_cast<std::size_t>(i)] == 0) {
      text += per_token[static_cast<std::size_t>(i)] / 5.0;
    }
  }
  CHECK(ce.report.mean == Approx(mean).epsilon(1e-12));
  CHECK(ce.loss.value()(0, 0) == Approx(mean).epsilon(1e-12));
  CHECK(ce.report.per_modality[0] == Approx(text).epsilon(1e-12));
  CHECK(ce.report.tokens_per_modality[1] == 3);

  auto loss = [&] {
    NoGrad ng(l.tape);
    return cross_entropy(l.tape, l.b, linear(l.tape, l.b, h, w), tg).report.mean;
  };
  std::vector<GradcheckInput> inputs = {{"h", l.values[0].view(), h.grad()},
                                        {"w", l.values[1].view(), w.grad()}};
  const auto report = gradcheck(loss, inputs);
  INFO(report.str());
  CHECK(report.ok(1e-6));
}

TEST_CASE("ops: float gradients agree with double gradients", "[autograd][cpu][grad]") {
  // A small network through every op, run in float and in double from the same values.
  const std::int64_t n = 12, d = 16, f = 24, v = 10;
  Rng rng(7);
  Tensor<double> x64 = rng.normal_tensor<double>(n, d);
  Tensor<double> w1 = rng.normal_tensor<double>(d, f, 0.3);
  Tensor<double> w3 = rng.normal_tensor<double>(d, f, 0.3);
  Tensor<double> w2 = rng.normal_tensor<double>(f, d, 0.3);
  Tensor<double> g1(1, d);
  Tensor<double> g2(1, d);
  rng.fill_uniform(g1.view(), 0.5, 1.5);
  rng.fill_uniform(g2.view(), 0.5, 1.5);
  Tensor<double> head = rng.normal_tensor<double>(d, v, 0.3);
  std::vector<std::int32_t> targets(static_cast<std::size_t>(n));
  for (auto& t : targets) {
    t = static_cast<std::int32_t>(rng.integer(0, v));
  }

  auto run = [&]<class T>(T) {
    CpuBackend<T> b;
    Tape tape;
    std::vector<Tensor<T>> store;
    auto leaf = [&](const Tensor<double>& src) {
      Tensor<T> t(src.shape());
      for (std::int64_t i = 0; i < src.size(); ++i) {
        t[i] = static_cast<T>(src[i]);
      }
      store.push_back(std::move(t));
      return Var<T, CpuBackend<T>>(b, store.back().view(), true);
    };
    store.reserve(8);
    auto x = leaf(x64), a1 = leaf(w1), a3 = leaf(w3), a2 = leaf(w2), n1 = leaf(g1), n2 = leaf(g2),
         hd = leaf(head);
    auto h = rms_norm(tape, b, x, n1);
    auto z = swiglu(tape, b, linear(tape, b, h, a1), linear(tape, b, h, a3));
    auto r = add(tape, b, x, linear(tape, b, z, a2));
    auto o = layer_norm(tape, b, r, n2);
    auto ce =
        cross_entropy(tape, b, linear(tape, b, o, hd), Span<const std::int32_t>(targets.data(), n));
    tape.backward(ce.loss);
    std::vector<std::vector<double>> grads;
    for (const auto& var : {x, a1, a3, a2, n1, n2, hd}) {
      auto g = var.grad();
      grads.emplace_back();
      for (std::int64_t i = 0; i < g.rows; ++i) {
        for (std::int64_t j = 0; j < g.cols; ++j) {
          grads.back().push_back(static_cast<double>(g(i, j)));
        }
      }
    }
    return grads;
  };
  const auto g64 = run(double{});
  const auto g32 = run(float{});
  for (std::size_t k = 0; k < g64.size(); ++k) {
    double err = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < g64[k].size(); ++i) {
      err = std::max(err, std::fabs(g64[k][i] - g32[k][i]));
      scale = std::max(scale, std::fabs(g64[k][i]));
    }
    INFO("tensor " << k << " err " << err << " scale " << scale);
    CHECK(scale > 0.0);
    CHECK(err <= 1e-4 * scale);
  }
}

TEST_CASE("ops: nothing is recorded under NoGrad or without gradient-requiring inputs",
          "[autograd][cpu]") {
  B64 b;
  Tape tape;
  Rng rng(3);
  Tensor<double> xv = rng.normal_tensor<double>(4, 3);
  Tensor<double> wv = rng.normal_tensor<double>(3, 2);
  V64 x(b, xv.view(), false);
  V64 w(b, wv.view(), true);
  {
    NoGrad ng(tape);
    auto y = linear(tape, b, x, w);
    CHECK_FALSE(y.requires_grad());
    CHECK(tape.size() == 0);
  }
  V64 w_const(b, wv.view(), false);
  auto y0 = linear(tape, b, x, w_const);
  CHECK_FALSE(y0.requires_grad());
  CHECK(tape.size() == 0);
  auto y1 = linear(tape, b, x, w);
  CHECK(y1.requires_grad());
  CHECK(tape.size() == 1);
}

TEST_CASE("ops: shape errors name the argument", "[autograd][cpu]") {
  B64 b;
  Tape tape;
  V64 a(b, Tensor<double>(2, 3), true);
  V64 c(b, Tensor<double>(3, 2), true);
  REQUIRE_THROWS_AS(add(tape, b, a, c), Error);
  REQUIRE_THROWS_WITH(add(tape, b, a, c), Catch::Contains("[add] c"));
  REQUIRE_THROWS_WITH(linear(tape, b, a, a), Catch::Contains("[linear_forward] w"));
  const std::vector<std::int32_t> bad = {0, 9, 1};
  REQUIRE_THROWS_WITH(cross_entropy(tape, b, c, Span<const std::int32_t>(bad.data(), 3)),
                      Catch::Contains("[cross_entropy_forward] targets[1]"));
}

TEST_CASE("ops: swiglu_ffn gradients (input and arena weights) match finite differences",
          "[autograd][cpu][grad]") {
  using Layer = SwiGluFfn<double, B64>;
  Leaves l;
  const Layer::Config cfg{.d = 6, .hidden = 10, .seed = 0};
  Layer layer(cfg);
  ParamArena<double, B64> arena;
  const auto ids = declare_layer<Layer>(arena, "ffn", cfg);
  arena.allocate(l.b);
  for (const auto id : ids) {
    l.rng.fill_normal(arena.value(id), 0.5);
  }
  layer.bind(layer_weights<Layer>(arena, ids, false));
  const auto grads = layer_weights<Layer>(arena, ids, true);
  auto x = l.add("x", 9, 6, -2.0, 2.0);
  // The weights' gradients must land in the arena's gradient slices.
  std::vector<GradcheckInput> weights;
  const char* names[] = {"w1", "w3", "w2"};
  for (std::size_t i = 0; i < ids.size(); ++i) {
    weights.push_back({names[i], arena.value(ids[i]), arena.grad(ids[i])});
  }
  const auto report = l.check([&] { return swiglu_ffn(l.tape, l.b, layer, grads, x); }, weights);
  INFO(report.str());
  REQUIRE(report.results.size() == 4);
  CHECK(report.ok(1e-6));
  for (const auto& r : report.results) {
    CHECK(r.scale > 0.0);
  }
}

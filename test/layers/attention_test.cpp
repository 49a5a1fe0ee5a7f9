#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "layers/attention_reference.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention.hpp>

namespace mm = mmsparse;
using namespace attention_reference;  // NOLINT: the oracle of this test

namespace {

using Cpu = mm::CpuBackend<double>;
using Attn = mm::Attention<double, Cpu>;

RefWeights ref_weights(const Attn::Weights& w) {
  return {w.wq, w.wk, w.wv, w.wo, w.q_norm, w.q_norm_bias, w.k_norm, w.k_norm_bias};
}

// The naive reference's output for one layer's weights, every token in tower 0.
mm::Tensor<double> one_tower_reference(const Attn& layer,
                                       const mm::Tensor<double>& x,
                                       const auto& positions,
                                       const auto& mask) {
  return reference(layer.config(),
                   x,
                   positions,
                   mask,
                   {ref_weights(layer.weights())},
                   std::vector<int>(static_cast<std::size_t>(x.rows()), 0));
}

// Random values in every weight (norm weights near 1), so no check passes by symmetry.
void randomize(const Attn::Weights& w, std::uint64_t seed) {
  mm::Rng rng(seed);
  for (auto v : {w.wq, w.wk, w.wv, w.wo}) {
    rng.fill_normal(v, 0.5);
  }
  for (auto v : {w.q_norm, w.k_norm}) {
    rng.fill_uniform(v, 0.5, 1.5);
  }
  for (auto v : {w.q_norm_bias, w.k_norm_bias}) {
    rng.fill_normal(v, 0.3);
  }
}

std::vector<std::pair<std::string, mm::View<double>>> named(const Attn::Weights& w) {
  std::vector<std::pair<std::string, mm::View<double>>> out = {
      {"wq", w.wq}, {"wk", w.wk}, {"wv", w.wv}, {"wo", w.wo}};
  for (auto [name, v] : {std::pair{"q_norm", w.q_norm},
                         std::pair{"q_norm_bias", w.q_norm_bias},
                         std::pair{"k_norm", w.k_norm},
                         std::pair{"k_norm_bias", w.k_norm_bias}}) {
    if (!v.empty()) {
      out.emplace_back(name, v);
    }
  }
  return out;
}

struct Case {
  const char* name;
  mm::AttentionConfig cfg;
  bool images;
};

std::vector<Case> cases() {
  using mm::QkNorm;
  return {
      {"MHA, no QK-norm, causal", {.d = 8, .heads = 2, .query_tile = 3, .seed = 1}, false},
      {"GQA, RMS QK-norm, image spans",
       {.d = 12,
        .heads = 4,
        .kv_heads = 2,
        .head_dim = 4,
        .qk_norm = QkNorm::rms_norm,
        .query_tile = 4,
        .seed = 2},
       true},
      {"MQA, LayerNorm QK-norm, theta 500, image spans",
       {.d = 8,
        .heads = 4,
        .kv_heads = 1,
        .head_dim = 4,
        .qk_norm = QkNorm::layer_norm,
        .rope_theta = 500.0,
        .query_tile = 2,
        .seed = 3},
       true},
      {"no RoPE, odd head_dim, one tile",
       {.d = 6,
        .heads = 2,
        .kv_heads = 1,
        .head_dim = 3,
        .rope_theta = 0.0,
        .query_tile = 64,
        .seed = 4},
       false},
  };
}

// Two sequences of 9 positions: text, an image run, text, an image run touching the end.
const std::vector<mm::ModalityId> kModality = {0,
                                               1,
                                               1,
                                               1,
                                               0,
                                               0,
                                               1,
                                               1,
                                               1,  //
                                               1,
                                               1,
                                               0,
                                               0,
                                               1,
                                               1,
                                               0,
                                               1,
                                               1};
constexpr std::int64_t kSeq = 9;

mm::AttentionMask mask_for(bool images) {
  return images ? mm::AttentionMask::image_bidirectional(kSeq, kModality)
                : mm::AttentionMask::causal(kSeq);
}

}  // namespace

TEST_CASE("Attention forward matches a naive double reference", "[layers][cpu]") {
  Cpu b;
  for (const auto& c : cases()) {
    SECTION(c.name) {
      Attn layer(c.cfg);
      randomize(layer.weights(), 100 + c.cfg.seed);
      const std::int64_t n = 2 * kSeq;
      mm::Rng rng(7);
      auto x = rng.normal_tensor<double>(n, c.cfg.d);
      // Large, shifted positions: the second sequence starts far from the first.
      auto pos = make_positions(n, kSeq, 3);
      for (std::int64_t i = kSeq; i < n; ++i) {
        pos[static_cast<std::size_t>(i)] += 40000;
      }
      const auto mask = mask_for(c.images);
      mm::Tensor<double> y(n, c.cfg.d);
      layer.forward(b, x.view(), span_of(pos), mask, y.view());
      const auto ref = one_tower_reference(layer, x, pos, mask);
      REQUIRE(rel_error<double>(y.view(), ref.view()) < 1e-12);

      // The training forward computes the same output.
      Attn::Saved saved;
      mm::Tensor<double> y2(n, c.cfg.d);
      layer.forward(b, x.view(), span_of(pos), mask, y2.view(), saved);
      REQUIRE(rel_error<double>(y2.view(), y.view()) == 0.0);
    }
  }
}

TEST_CASE("Attention with padded weight rows: the reference, and the contiguous layout's gradients",
          "[layers][cpu]") {
  // d = 128 doubles: 1 KB rows, which the layer's own weights pad (Tensor::weight).
  const mm::AttentionConfig cfg{
      .d = 128, .heads = 4, .qk_norm = mm::QkNorm::rms_norm, .query_tile = 8, .seed = 31};
  Attn layer(cfg);
  REQUIRE(layer.weights().wq.stride == mm::weight_row_stride<double>(128, 128));
  REQUIRE(layer.weights().wq.stride > 128);
  randomize(layer.weights(), 131);
  const std::int64_t n = 2 * kSeq;
  mm::Rng rng(32);
  auto x = rng.normal_tensor<double>(n, cfg.d);
  const auto pos = make_positions(n, kSeq, 5);
  const auto mask = mask_for(true);
  Cpu b;
  Attn::Saved saved;
  mm::Tensor<double> y(n, cfg.d);
  layer.forward(b, x.view(), span_of(pos), mask, y.view(), saved);
  const auto ref = one_tower_reference(layer, x, pos, mask);
  REQUIRE(rel_error<double>(y.view(), ref.view()) < 1e-12);

  // The same weights in contiguous memory (the layout the finite-difference tests check) give
  // the same output and the same gradients.
  const auto w = layer.weights();
  const mm::View<double> from[] = {
      w.wq, w.wk, w.wv, w.wo, w.q_norm, w.q_norm_bias, w.k_norm, w.k_norm_bias};
  std::vector<mm::Tensor<double>> store;
  for (const auto& v : from) {
    store.emplace_back(v.rows, v.cols);
    for (std::int64_t i = 0; i < v.rows; ++i) {
      for (std::int64_t j = 0; j < v.cols; ++j) {
        store.back()(i, j) = v(i, j);
      }
    }
  }
  auto views = [](std::vector<mm::Tensor<double>>& t) {
    return Attn::Weights{t[0].view(),
                         t[1].view(),
                         t[2].view(),
                         t[3].view(),
                         t[4].view(),
                         t[5].view(),
                         t[6].view(),
                         t[7].view()};
  };
  Attn contiguous(cfg);
  contiguous.bind(views(store));
  REQUIRE(contiguous.weights().wq.stride == 128);
  Attn::Saved saved_c;
  mm::Tensor<double> yc(n, cfg.d);
  contiguous.forward(b, x.view(), span_of(pos), mask, yc.view(), saved_c);
  REQUIRE(rel_error<double>(yc.view(), y.view()) < 1e-14);

  auto dy = rng.normal_tensor<double>(n, cfg.d);
  auto grads_of = [&](Attn& l, Attn::Saved& s, mm::Tensor<double>& dx) {
    std::vector<mm::Tensor<double>> g;
    for (const auto& v : from) {
      g.emplace_back(v.rows, v.cols);
      g.back().fill(0.0);
    }
    l.backward(b, s, dy.view(), dx.view(), views(g));
    return g;
  };
  mm::Tensor<double> dx(n, cfg.d);
  mm::Tensor<double> dx_c(n, cfg.d);
  dx.fill(0.0);
  dx_c.fill(0.0);
  const auto g = grads_of(layer, saved, dx);
  const auto g_c = grads_of(contiguous, saved_c, dx_c);
  CHECK(rel_error<double>(dx.view(), dx_c.view()) < 1e-13);
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (g[i].size() > 0) {
      INFO("weight " << i);
      CHECK(rel_error<double>(g[i].view(), g_c[i].view()) < 1e-13);
    }
  }
}

TEST_CASE("Attention in float agrees with double", "[layers][cpu]") {
  using CpuF = mm::CpuBackend<float>;
  mm::AttentionConfig cfg{.d = 32,
                          .heads = 4,
                          .kv_heads = 2,
                          .qk_norm = mm::QkNorm::rms_norm,
                          .query_tile = 16,
                          .seed = 5};
  Attn ld(cfg);
  mm::Attention<float, CpuF> lf(cfg);
  randomize(ld.weights(), 55);
  const auto wd = ld.weights();
  const auto wf = lf.weights();
  // Round the double weights to float, so both layers hold the same numbers.
  for (auto [dv, fv] : {std::pair{wd.wq, wf.wq},
                        std::pair{wd.wk, wf.wk},
                        std::pair{wd.wv, wf.wv},
                        std::pair{wd.wo, wf.wo},
                        std::pair{wd.q_norm, wf.q_norm},
                        std::pair{wd.k_norm, wf.k_norm}}) {
    for (std::int64_t i = 0; i < dv.rows; ++i) {
      for (std::int64_t j = 0; j < dv.cols; ++j) {
        fv(i, j) = static_cast<float>(dv(i, j));
        dv(i, j) = fv(i, j);
      }
    }
  }
  const std::int64_t seq = 40;
  const std::int64_t n = 2 * seq;
  mm::Rng rng(8);
  mm::Tensor<double> xd(n, cfg.d);
  mm::Tensor<float> xf(n, cfg.d);
  for (std::int64_t i = 0; i < xd.size(); ++i) {
    xf.data()[i] = static_cast<float>(rng.normal());
    xd.data()[i] = xf.data()[i];
  }
  const auto pos = make_positions(n, seq, 0);
  mm::Tensor<double> yd(n, cfg.d);
  mm::Tensor<float> yf(n, cfg.d);
  Cpu bd;
  CpuF bf;
  ld.forward(bd, xd.view(), span_of(pos), mm::AttentionMask::causal(seq), yd.view());
  lf.forward(bf, xf.view(), span_of(pos), mm::AttentionMask::causal(seq), yf.view());
  mm::Tensor<double> yfd(n, cfg.d);
  for (std::int64_t i = 0; i < yf.size(); ++i) {
    yfd.data()[i] = yf.data()[i];
  }
  const double err = rel_error<double>(yfd.view(), yd.view());
  INFO("float vs double relative error " << err);
  REQUIRE(err < 2e-6);
}

TEST_CASE("Attention gradients match central differences", "[layers][cpu][grad]") {
  Cpu b;
  for (const auto& c : cases()) {
    SECTION(c.name) {
      Attn layer(c.cfg);
      randomize(layer.weights(), 200 + c.cfg.seed);
      const std::int64_t n = 2 * kSeq;
      mm::Rng rng(9);
      auto x = rng.normal_tensor<double>(n, c.cfg.d);
      auto r = rng.normal_tensor<double>(n, c.cfg.d);  // L = sum(y * r), so dL/dy = r
      const auto pos = make_positions(n, kSeq, 11);
      const auto mask = mask_for(c.images);
      mm::Tensor<double> y(n, c.cfg.d);
      auto loss = [&] {
        layer.forward(b, x.view(), span_of(pos), mask, y.view());
        double s = 0;
        for (std::int64_t i = 0; i < y.size(); ++i) {
          s += y.data()[i] * r.data()[i];
        }
        return s;
      };

      // Analytic gradients, accumulated onto non-zero buffers: backward must add, not assign.
      Attn::Saved saved;
      layer.forward(b, x.view(), span_of(pos), mask, y.view(), saved);
      std::vector<mm::Tensor<double>> grad_store;
      const auto w = layer.weights();
      Attn::Weights grads{};
      mm::View<double>* slots[] = {&grads.wq,
                                   &grads.wk,
                                   &grads.wv,
                                   &grads.wo,
                                   &grads.q_norm,
                                   &grads.q_norm_bias,
                                   &grads.k_norm,
                                   &grads.k_norm_bias};
      const mm::View<double> params[] = {
          w.wq, w.wk, w.wv, w.wo, w.q_norm, w.q_norm_bias, w.k_norm, w.k_norm_bias};
      mm::Rng grng(10);
      std::vector<mm::Tensor<double>> initial;
      for (std::size_t i = 0; i < 8; ++i) {
        grad_store.emplace_back(params[i].rows, params[i].cols);
        grng.fill_normal(grad_store.back().view());
        initial.push_back(grad_store.back().clone());
        *slots[i] = grad_store.back().view();
      }
      auto dx = grng.normal_tensor<double>(n, c.cfg.d);
      const auto dx0 = dx.clone();
      layer.backward(b, saved, r.view(), dx.view(), grads);
      // Subtract the initial values back out.
      for (std::size_t i = 0; i < 8; ++i) {
        for (std::int64_t e = 0; e < grad_store[i].size(); ++e) {
          grad_store[i].data()[e] -= initial[i].data()[e];
        }
      }
      for (std::int64_t e = 0; e < dx.size(); ++e) {
        dx.data()[e] -= dx0.data()[e];
      }

      const double ex = grad_rel_error(x.view(), dx.view(), loss);
      INFO("x: " << ex);
      CHECK(ex < 1e-6);
      for (std::size_t i = 0; i < 8; ++i) {
        if (params[i].empty()) {
          continue;
        }
        const double e = grad_rel_error(params[i], grad_store[i].view(), loss);
        INFO("weight " << i << ": " << e);
        CHECK(e < 1e-6);
      }
    }
  }
}

TEST_CASE("Per-modality projections around one core attention (the MoT split)",
          "[layers][cpu][grad]") {
  // A MoT block in miniature: each modality has its own QkvProjection / OutProjection, applied
  // to that modality's tokens; the core attention runs once over the merged sequence.
  Cpu b;
  mm::AttentionConfig cfg{.d = 8,
                          .heads = 2,
                          .kv_heads = 1,
                          .qk_norm = mm::QkNorm::rms_norm,
                          .query_tile = 4,
                          .seed = 17};
  const std::int64_t n = 2 * kSeq;
  std::vector<Attn> towers;  // per modality: its own weights (projections only are used)
  towers.reserve(2);
  for (std::uint64_t m = 0; m < 2; ++m) {
    auto c = cfg;
    c.seed = 17 + m;
    towers.emplace_back(c);
    randomize(towers.back().weights(), 300 + m);
  }
  const mm::CoreAttention<double, Cpu> core(cfg);
  const auto mask = mm::AttentionMask::image_bidirectional(kSeq, kModality);
  const auto pos = make_positions(n, kSeq, 5);
  std::vector<std::vector<std::int64_t>> index(2);  // token ids per modality, ascending
  for (std::int64_t i = 0; i < n; ++i) {
    index[static_cast<std::size_t>(kModality[static_cast<std::size_t>(i)])].push_back(i);
  }
  auto gather = [](const mm::Tensor<double>& src, const std::vector<std::int64_t>& idx) {
    mm::Tensor<double> t(static_cast<std::int64_t>(idx.size()), src.cols());
    for (std::size_t r = 0; r < idx.size(); ++r) {
      for (std::int64_t j = 0; j < src.cols(); ++j) {
        t(static_cast<std::int64_t>(r), j) = src(idx[r], j);
      }
    }
    return t;
  };
  auto scatter_add = [](mm::Tensor<double>& dst,
                        const mm::Tensor<double>& src,
                        const std::vector<std::int64_t>& idx) {
    for (std::size_t r = 0; r < idx.size(); ++r) {
      for (std::int64_t j = 0; j < dst.cols(); ++j) {
        dst(idx[r], j) += src(static_cast<std::int64_t>(r), j);
      }
    }
  };
  const std::int64_t qw = cfg.heads * 4;
  const std::int64_t kw = 4;
  mm::Rng rng(18);
  auto x = rng.normal_tensor<double>(n, cfg.d);
  auto r = rng.normal_tensor<double>(n, cfg.d);

  struct Ctx {
    std::vector<mm::QkvProjection<double, Cpu>::Saved> qkv =
        std::vector<mm::QkvProjection<double, Cpu>::Saved>(2);
    mm::CoreAttention<double, Cpu>::Saved core;
    std::vector<mm::OutProjection<double, Cpu>::Saved> out =
        std::vector<mm::OutProjection<double, Cpu>::Saved>(2);
  };
  auto forward = [&](Ctx* ctx) {
    mm::Tensor<double> q(n, qw), k(n, kw), v(n, kw), a(n, qw), y(n, cfg.d);
    q.fill(0);
    k.fill(0);
    v.fill(0);
    y.fill(0);
    for (std::size_t m = 0; m < 2; ++m) {
      const auto xm = gather(x, index[m]);
      const std::int64_t nm = xm.rows();
      mm::Tensor<double> qm(nm, qw), km(nm, kw), vm(nm, kw);
      if (ctx) {
        towers[m].qkv().forward(b, xm.view(), qm.view(), km.view(), vm.view(), ctx->qkv[m]);
      } else {
        towers[m].qkv().forward(b, xm.view(), qm.view(), km.view(), vm.view());
      }
      scatter_add(q, qm, index[m]);  // restore the sequence order (MoT Alg. 1)
      scatter_add(k, km, index[m]);
      scatter_add(v, vm, index[m]);
    }
    if (ctx) {
      core.forward(b, q.view(), k.view(), v.view(), span_of(pos), mask, a.view(), ctx->core);
    } else {
      core.forward(b, q.view(), k.view(), v.view(), span_of(pos), mask, a.view());
    }
    for (std::size_t m = 0; m < 2; ++m) {
      const auto am = gather(a, index[m]);
      mm::Tensor<double> ym(am.rows(), cfg.d);
      if (ctx) {
        towers[m].out().forward(b, am.view(), ym.view(), ctx->out[m]);
      } else {
        towers[m].out().forward(b, am.view(), ym.view());
      }
      scatter_add(y, ym, index[m]);
    }
    return y;
  };

  // Forward against the reference with per-token weights.
  std::vector<int> set(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    set[static_cast<std::size_t>(i)] = kModality[static_cast<std::size_t>(i)];
  }
  const auto y = forward(nullptr);
  const auto ref = reference(towers[0].config(),
                             x,
                             pos,
                             mask,
                             {ref_weights(towers[0].weights()), ref_weights(towers[1].weights())},
                             set);
  REQUIRE(rel_error<double>(y.view(), ref.view()) < 1e-12);

  // Backward through the split, against central differences.
  Ctx ctx;
  (void)forward(&ctx);
  std::vector<std::vector<mm::Tensor<double>>> g(2);
  std::vector<Attn::Weights> grads(2);
  for (std::size_t m = 0; m < 2; ++m) {
    const auto w = towers[m].weights();
    for (auto v : {w.wq, w.wk, w.wv, w.wo, w.q_norm, w.k_norm}) {
      g[m].emplace_back(v.rows, v.cols);
      g[m].back().fill(0);
    }
    grads[m] = {g[m][0].view(),
                g[m][1].view(),
                g[m][2].view(),
                g[m][3].view(),
                g[m][4].view(),
                {},
                g[m][5].view(),
                {}};
  }
  mm::Tensor<double> da(n, qw), dq(n, qw), dk(n, kw), dv(n, kw), dx(n, cfg.d);
  for (auto* t : {&da, &dq, &dk, &dv, &dx}) {
    t->fill(0);
  }
  for (std::size_t m = 0; m < 2; ++m) {
    const auto rm = gather(r, index[m]);
    mm::Tensor<double> dam(rm.rows(), qw);
    dam.fill(0);
    towers[m].out().backward(b, ctx.out[m], rm.view(), dam.view(), {grads[m].wo});
    scatter_add(da, dam, index[m]);
  }
  core.backward(b, ctx.core, da.view(), dq.view(), dk.view(), dv.view());
  for (std::size_t m = 0; m < 2; ++m) {
    const auto dqm = gather(dq, index[m]);
    const auto dkm = gather(dk, index[m]);
    const auto dvm = gather(dv, index[m]);
    mm::Tensor<double> dxm(dqm.rows(), cfg.d);
    dxm.fill(0);
    towers[m].qkv().backward(
        b,
        ctx.qkv[m],
        dqm.view(),
        dkm.view(),
        dvm.view(),
        dxm.view(),
        {grads[m].wq, grads[m].wk, grads[m].wv, grads[m].q_norm, {}, grads[m].k_norm, {}});
    scatter_add(dx, dxm, index[m]);
  }
  auto loss = [&] {
    const auto yy = forward(nullptr);
    double s = 0;
    for (std::int64_t i = 0; i < yy.size(); ++i) {
      s += yy.data()[i] * r.data()[i];
    }
    return s;
  };
  CHECK(grad_rel_error(x.view(), dx.view(), loss) < 1e-6);
  for (std::size_t m = 0; m < 2; ++m) {
    const auto w = towers[m].weights();
    const mm::View<double> params[] = {w.wq, w.wk, w.wv, w.wo, w.q_norm, w.k_norm};
    for (std::size_t i = 0; i < 6; ++i) {
      const double e = grad_rel_error(params[i], g[m][i].view(), loss);
      INFO("modality " << m << " weight " << i << ": " << e);
      CHECK(e < 1e-6);
    }
  }
}

TEST_CASE("Attention parameter shapes, binding and initialisation", "[layers][cpu]") {
  mm::AttentionConfig cfg{.d = 12,
                          .heads = 4,
                          .kv_heads = 2,
                          .head_dim = 4,
                          .qk_norm = mm::QkNorm::layer_norm,
                          .seed = 21};
  Attn a(cfg);
  const auto shapes = Attn::parameter_shapes(cfg);
  const auto w = named(a.weights());
  REQUIRE(shapes.size() == w.size());
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    REQUIRE(shapes[i].first == w[i].first);
    REQUIRE(shapes[i].second == w[i].second.shape());
  }
  REQUIRE(shapes[0].second == (mm::Shape{12, 16}));
  REQUIRE(shapes[1].second == (mm::Shape{12, 8}));
  REQUIRE(shapes[3].second == (mm::Shape{16, 12}));
  // Deterministic: the same seed gives the same weights, another seed others.
  Attn same(cfg);
  auto other_cfg = cfg;
  other_cfg.seed = 22;
  Attn other(other_cfg);
  REQUIRE(rel_error<double>(same.weights().wq, a.weights().wq) == 0.0);
  REQUIRE(rel_error<double>(other.weights().wq, a.weights().wq) > 0.1);
  REQUIRE(a.weights().q_norm(0, 1) == 1.0);
  REQUIRE(a.weights().k_norm_bias(0, 2) == 0.0);

  // bind: the layer computes with the caller's memory.
  std::vector<mm::Tensor<double>> store;
  Attn::Weights ext{};
  mm::View<double>* slots[] = {&ext.wq,
                               &ext.wk,
                               &ext.wv,
                               &ext.wo,
                               &ext.q_norm,
                               &ext.q_norm_bias,
                               &ext.k_norm,
                               &ext.k_norm_bias};
  const auto src = a.weights();
  const mm::View<double> from[] = {
      src.wq, src.wk, src.wv, src.wo, src.q_norm, src.q_norm_bias, src.k_norm, src.k_norm_bias};
  for (std::size_t i = 0; i < 8; ++i) {
    store.emplace_back(from[i].rows, from[i].cols);
    for (std::int64_t e = 0; e < store.back().size(); ++e) {
      store.back().data()[e] = from[i].data[e];
    }
    *slots[i] = store.back().view();
  }
  Attn bound(other_cfg);
  bound.bind(ext);
  REQUIRE(bound.weights().wq.data == store[0].data());
  Cpu b;
  mm::Rng rng(23);
  auto x = rng.normal_tensor<double>(6, 12);
  const auto pos = make_positions(6, 6, 0);
  mm::Tensor<double> y1(6, 12), y2(6, 12);
  a.forward(b, x.view(), span_of(pos), mm::AttentionMask::causal(6), y1.view());
  bound.forward(b, x.view(), span_of(pos), mm::AttentionMask::causal(6), y2.view());
  REQUIRE(rel_error<double>(y2.view(), y1.view()) == 0.0);

  // A steady-state forward and backward take nothing new from the allocator.
  Attn::Saved saved;
  a.forward(b, x.view(), span_of(pos), mm::AttentionMask::causal(6), y1.view(), saved);
  mm::Tensor<double> dx(6, 12);
  dx.fill(0);
  a.backward(b, saved, y1.view(), dx.view(), ext);
  const auto allocations = b.workspace().allocations();
  a.forward(b, x.view(), span_of(pos), mm::AttentionMask::causal(6), y1.view(), saved);
  a.backward(b, saved, y1.view(), dx.view(), ext);
  REQUIRE(b.workspace().allocations() == allocations);
  REQUIRE(b.workspace().high_water() <= a.workspace_bytes(6, 6));
}

TEST_CASE("Attention rejects bad arguments and names them", "[layers][cpu]") {
  using Catch::Matchers::Contains;
  Cpu b;
  mm::AttentionConfig cfg{.d = 8, .heads = 2, .qk_norm = mm::QkNorm::rms_norm, .seed = 24};

  REQUIRE_THROWS_WITH(Attn({.d = 8, .heads = 3}),
                      Contains("[Attention] d") && Contains("multiple of heads"));
  REQUIRE_THROWS_WITH(Attn({.d = 8, .heads = 4, .kv_heads = 3}), Contains("kv_heads"));
  REQUIRE_THROWS_WITH(Attn({.d = 6, .heads = 2}), Contains("head_dim") && Contains("even"));
  REQUIRE_THROWS_AS(Attn({.d = 0, .heads = 2}), mm::Error);
  REQUIRE_NOTHROW(Attn({.d = 6, .heads = 2, .rope_theta = 0.0}));

  Attn layer(cfg);
  mm::Rng rng(25);
  auto x = rng.normal_tensor<double>(8, 8);
  const auto pos = make_positions(8, 4, 0);
  mm::Tensor<double> y(8, 8);
  y.fill(7.0);
  const auto causal = mm::AttentionMask::causal(4);
  mm::Tensor<double> bad(8, 6);
  REQUIRE_THROWS_WITH(layer.forward(b, bad.view(), span_of(pos), causal, y.view()),
                      Contains("[Attention::forward] x"));
  REQUIRE_THROWS_WITH(layer.forward(b, x.view(), span_of(pos), causal, bad.view()),
                      Contains("[Attention::forward] y"));
  REQUIRE_THROWS_WITH(layer.forward(b, x.view(), span_of(pos).subspan(0, 7), causal, y.view()),
                      Contains("positions"));
  REQUIRE_THROWS_WITH(
      layer.forward(b, x.view(), span_of(pos), mm::AttentionMask::causal(3), y.view()),
      Contains("tokens") && Contains("multiple of mask.seq_len = 3"));
  REQUIRE_THROWS_WITH(
      layer.forward(b, x.view(), span_of(pos), mm::AttentionMask::causal(0), y.view()),
      Contains("mask.seq_len"));
  const std::vector<mm::ModalityId> short_modality(5, 1);
  REQUIRE_THROWS_WITH(layer.forward(b,
                                    x.view(),
                                    span_of(pos),
                                    mm::AttentionMask::image_bidirectional(4, short_modality),
                                    y.view()),
                      Contains("mask.modality"));
  for (std::int64_t i = 0; i < y.size(); ++i) {
    REQUIRE(y.data()[i] == 7.0);  // nothing written on error
  }

  Attn::Saved saved;
  mm::Tensor<double> dx(8, 8);
  REQUIRE_THROWS_WITH(layer.backward(b, saved, y.view(), dx.view(), layer.weights()),
                      Contains("[Attention::backward] saved"));
  layer.forward(b, x.view(), span_of(pos), causal, y.view(), saved);
  REQUIRE_THROWS_WITH(layer.backward(b, saved, bad.view(), dx.view(), layer.weights()),
                      Contains("dy"));
  // A bad gradient view is found before anything is accumulated.
  std::vector<mm::Tensor<double>> gstore;
  Attn::Weights wrong{};
  for (auto [slot, v] : {std::pair{&wrong.wq, layer.weights().wq},
                         std::pair{&wrong.wk, layer.weights().wk},
                         std::pair{&wrong.wo, layer.weights().wo},
                         std::pair{&wrong.q_norm, layer.weights().q_norm},
                         std::pair{&wrong.k_norm, layer.weights().k_norm}}) {
    gstore.emplace_back(v.rows, v.cols);
    gstore.back().fill(0.5);
    *slot = gstore.back().view();
  }
  wrong.wv = bad.view();
  dx.fill(0.25);
  REQUIRE_THROWS_WITH(layer.backward(b, saved, y.view(), dx.view(), wrong),
                      Contains("[Attention::backward] grads.wv"));
  for (const auto& t : gstore) {
    for (std::int64_t i = 0; i < t.size(); ++i) {
      REQUIRE(t.data()[i] == 0.5);
    }
  }
  for (std::int64_t i = 0; i < dx.size(); ++i) {
    REQUIRE(dx.data()[i] == 0.25);
  }
  auto no_norm = layer.weights();
  no_norm.q_norm = {};
  REQUIRE_THROWS_WITH(layer.bind(no_norm), Contains("q_norm"));
  auto extra = layer.weights();
  extra.q_norm_bias = extra.q_norm;  // RMS QK-norm has no bias
  REQUIRE_THROWS_WITH(layer.bind(extra), Contains("q_norm_bias"));
  auto bad_wo = layer.weights();
  bad_wo.wo = bad.view();
  const auto before = layer.weights().wq.data;
  REQUIRE_THROWS_WITH(layer.bind(bad_wo), Contains("[Attention::bind] wo"));
  REQUIRE(layer.weights().wq.data == before);  // nothing bound
}

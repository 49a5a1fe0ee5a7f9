// AdamW against a scalar transcription of PyTorch's torch.optim.AdamW update, decay flags per
// slice, and the weights_updated() hook of backends that pre-pack weights.
#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/train/adamw.hpp>

using namespace mmsparse;

namespace {
// A CPU backend that counts weights_updated() calls (as a pre-packing GEMM backend would).
struct PackingBackend : CpuBackend<double> {
  int updates = 0;
  void weights_updated() {
    ++updates;
  }
};
}  // namespace

TEST_CASE("adamw: matches the PyTorch formula step by step", "[train][cpu]") {
  using B = PackingBackend;
  B b;
  ParamArena<double, B> arena;
  const auto w = arena.add("w", {3, 4});
  const auto nrm = arena.add("norm", {1, 4}, /*decay=*/false);
  arena.allocate(b);
  Rng rng(2);
  rng.fill_normal(arena.value(w));
  rng.fill_normal(arena.value(nrm));
  const AdamWConfig cfg{.beta1 = 0.8, .beta2 = 0.9, .eps = 1e-6, .weight_decay = 0.3};
  AdamW<double, B> opt(arena, cfg);

  // Reference: independent scalar loop per parameter.
  std::vector<double> p, m, v;
  std::vector<bool> decay;
  for (const auto id : {w, nrm}) {
    auto val = arena.value(id);
    for (std::int64_t i = 0; i < val.size(); ++i) {
      p.push_back(val.data[i]);
      decay.push_back(id == w);
    }
  }
  m.assign(p.size(), 0.0);
  v.assign(p.size(), 0.0);
  for (int t = 1; t <= 5; ++t) {
    const double lr = 0.01 * t;
    std::vector<double> g;
    for (const auto id : {w, nrm}) {
      rng.fill_normal(arena.grad(id));
      auto gr = arena.grad(id);
      g.insert(g.end(), gr.data, gr.data + gr.size());
    }
    opt.step(b, lr);
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (decay[i]) {
        p[i] -= lr * cfg.weight_decay * p[i];
      }
      m[i] = cfg.beta1 * m[i] + (1 - cfg.beta1) * g[i];
      v[i] = cfg.beta2 * v[i] + (1 - cfg.beta2) * g[i] * g[i];
      const double mh = m[i] / (1 - std::pow(cfg.beta1, t));
      const double vh = v[i] / (1 - std::pow(cfg.beta2, t));
      p[i] -= lr * mh / (std::sqrt(vh) + cfg.eps);
    }
    std::size_t k = 0;
    for (const auto id : {w, nrm}) {
      auto val = arena.value(id);
      for (std::int64_t i = 0; i < val.size(); ++i, ++k) {
        CHECK(val.data[i] == Approx(p[k]).epsilon(1e-13));
      }
    }
  }
  CHECK(opt.steps() == 5);
  CHECK(b.updates == 5);  // the backend heard of every update
}

TEST_CASE("adamw: bf16 parameters keep fp32 master weights", "[train][cpu]") {
  using B = CpuBackend<bf16>;
  B b;
  ParamArena<bf16, B> arena;
  const auto w = arena.add("w", {1, 8});
  arena.allocate(b);
  for (std::int64_t i = 0; i < 8; ++i) {
    arena.value(w)(0, i) = bf16(1.0f);
  }
  AdamW<bf16, B> opt(arena, {.weight_decay = 0.0});
  STATIC_REQUIRE(AdamW<bf16, B>::has_master);
  // Each step moves the master weight by ~lr = 1e-4, far below bf16's resolution at 1.0
  // (2^-7): without a master copy the parameter would never move.
  for (int t = 0; t < 200; ++t) {
    for (std::int64_t i = 0; i < 8; ++i) {
      arena.grad(w)(0, i) = bf16(1.0f);
    }
    opt.step(b, 1e-4);
  }
  const float moved = static_cast<float>(arena.value(w)(0, 0));
  CHECK(moved < 1.0f);
  CHECK(moved == Approx(1.0f - 200 * 1e-4f).margin(4e-3f));
}

TEST_CASE("adamw: needs an allocated arena and valid betas", "[train][cpu]") {
  using B = CpuBackend<float>;
  B b;
  ParamArena<float, B> arena;
  arena.add("w", {2, 2});
  REQUIRE_THROWS_WITH((AdamW<float, B>(arena)), Catch::Contains("[AdamW] params"));
  arena.allocate(b);
  REQUIRE_THROWS_WITH((AdamW<float, B>(arena, {.beta1 = 1.0})), Catch::Contains("beta1"));
}

TEST_CASE("adamw: padded weight rows update like contiguous ones; the padding stays zero",
          "[train][cpu]") {
  // [3, 128] doubles: 1 KB rows, which the arena pads (weight_row_stride); [3, 5] is not padded.
  using B = CpuBackend<double>;
  B b;
  ParamArena<double, B> padded;
  const auto pw = padded.add("w", {3, 128});
  const auto pn = padded.add("n", {3, 5});
  padded.allocate(b);
  REQUIRE(padded.value(pw).stride == 136);
  REQUIRE(padded.grad(pw).stride == 136);
  REQUIRE(padded.slices()[0].extent() == 3 * 136);
  REQUIRE(padded.slices()[1].offset == 3 * 136);
  REQUIRE(padded.value(pn).stride == 5);
  Rng rng(9);
  rng.fill_normal(padded.value(pw));
  rng.fill_normal(padded.value(pn));
  const AdamWConfig cfg{.beta1 = 0.7, .beta2 = 0.95, .eps = 1e-7, .weight_decay = 0.2};
  AdamW<double, B> opt(padded, cfg);
  // Reference over the elements, by (row, column).
  std::vector<double> p, m, v;
  auto each = [&](auto&& f) {
    std::size_t k = 0;
    for (const auto id : {pw, pn}) {
      auto val = padded.value(id);
      auto gr = padded.grad(id);
      for (std::int64_t i = 0; i < val.rows; ++i) {
        for (std::int64_t j = 0; j < val.cols; ++j, ++k) {
          f(k, val(i, j), gr(i, j));
        }
      }
    }
  };
  each([&](std::size_t, double& x, double&) { p.push_back(x); });
  m.assign(p.size(), 0.0);
  v.assign(p.size(), 0.0);
  for (int t = 1; t <= 4; ++t) {
    const double lr = 0.02 * t;
    rng.fill_normal(padded.grad(pw));
    rng.fill_normal(padded.grad(pn));
    opt.step(b, lr);
    each([&](std::size_t k, double& x, double& g) {
      p[k] -= lr * cfg.weight_decay * p[k];
      m[k] = cfg.beta1 * m[k] + (1 - cfg.beta1) * g;
      v[k] = cfg.beta2 * v[k] + (1 - cfg.beta2) * g * g;
      const double mh = m[k] / (1 - std::pow(cfg.beta1, t));
      const double vh = v[k] / (1 - std::pow(cfg.beta2, t));
      p[k] -= lr * mh / (std::sqrt(vh) + cfg.eps);
      CHECK(x == Approx(p[k]).epsilon(1e-13));
    });
  }
  const double* base = padded.values().data;
  for (std::int64_t i = 0; i < 3; ++i) {
    for (std::int64_t j = 128; j < 136; ++j) {
      REQUIRE(base[i * 136 + j] == 0.0);
    }
  }
}

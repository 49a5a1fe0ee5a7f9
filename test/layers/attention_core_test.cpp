#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "layers/attention_reference.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention_core.hpp>

namespace mm = mmsparse;
using namespace attention_reference;  // NOLINT: the oracle of this test

namespace {

using Cpu = mm::CpuBackend<double>;
using Core = mm::CoreAttention<double, Cpu>;

// The CPU backend with its heads in order: the generic path of detail::for_each_head, each head's
// products over every thread.
template <class T>
struct InOrderCpu : mm::CpuBackend<T> {
  template <class U, class F>
  void for_each_head(std::int64_t, std::int64_t, F&&) = delete;
};

// The CPU backend, counting the heads it runs side by side (on the one-thread kernels).
struct CountingCpu : mm::CpuBackend<float> {
  std::int64_t side_by_side = 0;
  template <class U, class F>
  void for_each_head(std::int64_t count, std::int64_t scratch, F&& body) {
    std::atomic<std::int64_t> n{0};
    mm::CpuBackend<float>::for_each_head<U>(count, scratch, [&](std::int64_t i, auto& ops, U* s) {
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(ops)>, mm::cpu::OneThreadOps>) {
        ++n;
      }
      body(i, ops, s);
    });
    side_by_side += n;
  }
};

struct Case {
  const char* name;
  mm::AttentionConfig cfg;
  bool images;
};

std::vector<Case> cases() {
  return {
      {"MHA, causal, tiles of 3", {.d = 8, .heads = 2, .query_tile = 3}, false},
      {"GQA, image spans, tiles of 4",
       {.d = 12, .heads = 4, .kv_heads = 2, .head_dim = 4, .query_tile = 4},
       true},
      {"MQA, theta 500, image spans, tiles of 1",
       {.d = 8, .heads = 4, .kv_heads = 1, .head_dim = 4, .rope_theta = 500.0, .query_tile = 1},
       true},
      {"no RoPE, odd head_dim, one tile",
       {.d = 6, .heads = 2, .kv_heads = 1, .head_dim = 3, .rope_theta = 0.0, .query_tile = 64},
       false},
  };
}

// Two sequences of 9 positions: text, an image run, text, an image run touching the end; the
// second sequence starts inside an image run (runs stop at sequence boundaries).
const std::vector<mm::ModalityId> kModality = {
    0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1};
constexpr std::int64_t kSeq = 9;

mm::AttentionMask mask_for(bool images) {
  return images ? mm::AttentionMask::image_bidirectional(kSeq, kModality)
                : mm::AttentionMask::causal(kSeq);
}

struct Qkv {
  mm::Tensor<double> q, k, v;
};

// t with every element converted to U.
template <class U, class T>
mm::Tensor<U> converted(const mm::Tensor<T>& t) {
  mm::Tensor<U> out(t.rows(), t.cols());
  for (std::int64_t i = 0; i < t.rows(); ++i) {
    for (std::int64_t j = 0; j < t.cols(); ++j) {
      out(i, j) = static_cast<U>(t(i, j));
    }
  }
  return out;
}

template <class C>
Qkv random_qkv(const C& core, std::int64_t n, std::uint64_t seed) {
  mm::Rng rng(seed);
  const auto& c = core.config();
  return {rng.normal_tensor<double>(n, c.q_width()),
          rng.normal_tensor<double>(n, c.kv_width()),
          rng.normal_tensor<double>(n, c.kv_width())};
}

}  // namespace

TEST_CASE("CoreAttention matches a naive reference (RoPE, masks, GQA)", "[layers][cpu]") {
  Cpu b;
  for (const auto& c : cases()) {
    SECTION(c.name) {
      const Core core(c.cfg);
      const std::int64_t n = 2 * kSeq;
      auto in = random_qkv(core, n, 1);
      auto pos = make_positions(n, kSeq, 3);
      for (std::int64_t i = kSeq; i < n; ++i) {
        pos[static_cast<std::size_t>(i)] += 70000;  // far positions: RoPE in double
      }
      const auto mask = mask_for(c.images);
      mm::Tensor<double> out(n, core.config().q_width());
      core.forward(b, in.q.view(), in.k.view(), in.v.view(), span_of(pos), mask, out.view());
      const auto ref = reference_core(core.config(), in.q.clone(), in.k.clone(), in.v, pos, mask);
      REQUIRE(rel_error<double>(out.view(), ref.view()) < 1e-12);

      Core::Saved saved;
      mm::Tensor<double> out2(n, core.config().q_width());
      core.forward(
          b, in.q.view(), in.k.view(), in.v.view(), span_of(pos), mask, out2.view(), saved);
      REQUIRE(rel_error<double>(out2.view(), out.view()) == 0.0);
    }
  }
}

TEMPLATE_TEST_CASE("CoreAttention gradients match central differences",
                   "[layers][cpu][grad]",
                   Cpu,
                   InOrderCpu<double>) {
  TestType b;
  for (const auto& c : cases()) {
    SECTION(c.name) {
      const mm::CoreAttention<double, TestType> core(c.cfg);
      const auto& cfg = core.config();
      const std::int64_t n = 2 * kSeq;
      auto in = random_qkv(core, n, 2);
      mm::Rng rng(3);
      auto r = rng.normal_tensor<double>(n, cfg.q_width());  // L = sum(out * r)
      const auto pos = make_positions(n, kSeq, 11);
      const auto mask = mask_for(c.images);
      mm::Tensor<double> out(n, cfg.q_width());
      auto loss = [&] {
        core.forward(b, in.q.view(), in.k.view(), in.v.view(), span_of(pos), mask, out.view());
        double s = 0;
        for (std::int64_t i = 0; i < out.size(); ++i) {
          s += out.data()[i] * r.data()[i];
        }
        return s;
      };
      typename mm::CoreAttention<double, TestType>::Saved saved;
      core.forward(b, in.q.view(), in.k.view(), in.v.view(), span_of(pos), mask, out.view(), saved);
      // Backward adds onto what the buffers hold.
      auto dq = rng.normal_tensor<double>(n, cfg.q_width());
      auto dk = rng.normal_tensor<double>(n, cfg.kv_width());
      auto dv = rng.normal_tensor<double>(n, cfg.kv_width());
      const auto dq0 = dq.clone();
      const auto dk0 = dk.clone();
      const auto dv0 = dv.clone();
      core.backward(b, saved, r.view(), dq.view(), dk.view(), dv.view());
      for (auto [g, g0] : {std::pair{&dq, &dq0}, std::pair{&dk, &dk0}, std::pair{&dv, &dv0}}) {
        for (std::int64_t i = 0; i < g->size(); ++i) {
          g->data()[i] -= g0->data()[i];
        }
      }
      const double eq = grad_rel_error(in.q.view(), dq.view(), loss);
      const double ek = grad_rel_error(in.k.view(), dk.view(), loss);
      const double ev = grad_rel_error(in.v.view(), dv.view(), loss);
      INFO("q " << eq << ", k " << ek << ", v " << ev);
      CHECK(eq < 1e-6);
      CHECK(ek < 1e-6);
      CHECK(ev < 1e-6);
    }
  }
}

TEST_CASE("CoreAttention at a block's shape: heads side by side agree with heads in order",
          "[layers][cpu]") {
  // f32, d = 512, 8 heads of 64 (and GQA with 4 kv heads), two sequences of 96 tokens with image
  // spans, tiles of 64 rows: the per-head products run on one thread each (where there are
  // threads to share them out), against the in-order path and the double reference.
  for (const std::int64_t kv_heads : {8, 4}) {
    const mm::AttentionConfig cfg{.d = 512, .heads = 8, .kv_heads = kv_heads, .query_tile = 64};
    const mm::CoreAttention<float, CountingCpu> side(cfg);
    const mm::CoreAttention<float, InOrderCpu<float>> in_order(cfg);
    const std::int64_t seq = 96;
    const std::int64_t n = 2 * seq;
    std::vector<mm::ModalityId> modality(static_cast<std::size_t>(n), 0);
    for (std::int64_t i = 0; i < n; ++i) {
      modality[static_cast<std::size_t>(i)] = (i % seq) >= 20 && (i % seq) < 70 ? 1 : 0;
    }
    const auto mask = mm::AttentionMask::image_bidirectional(seq, modality);
    const auto pos = make_positions(n, seq, 5);
    mm::Rng rng(21);
    const auto& rc = side.config();
    auto q = rng.normal_tensor<double>(n, rc.q_width());
    auto k = rng.normal_tensor<double>(n, rc.kv_width());
    auto v = rng.normal_tensor<double>(n, rc.kv_width());
    auto dout = rng.normal_tensor<double>(n, rc.q_width());
    const auto qf = converted<float>(q);
    const auto kf = converted<float>(k);
    const auto vf = converted<float>(v);
    const auto doutf = converted<float>(dout);
    const auto ref = reference_core(rc, q.clone(), k.clone(), v, pos, mask);

    struct Result {
      mm::Tensor<float> out, dq, dk, dv;
    };
    auto run = [&](auto& b, const auto& core) {
      Result r{mm::Tensor<float>(n, rc.q_width()),
               mm::Tensor<float>(n, rc.q_width()),
               mm::Tensor<float>(n, rc.kv_width()),
               mm::Tensor<float>(n, rc.kv_width())};
      for (auto* t : {&r.dq, &r.dk, &r.dv}) {
        t->fill(0.0f);
      }
      typename std::remove_cvref_t<decltype(core)>::Saved saved;
      core.forward(b, qf.view(), kf.view(), vf.view(), span_of(pos), mask, r.out.view(), saved);
      core.backward(b, saved, doutf.view(), r.dq.view(), r.dk.view(), r.dv.view());
      return r;
    };
    CountingCpu bs;
    InOrderCpu<float> bo;
    const Result a = run(bs, side);
    const Result o = run(bo, in_order);
    INFO("kv_heads " << kv_heads);
    if (bs.threads() > 1) {
      REQUIRE(bs.side_by_side > 0);
    }
    CHECK(rel_error<double>(converted<double>(a.out).view(), ref.view()) < 1e-5);
    CHECK(rel_error<double>(converted<double>(o.out).view(), ref.view()) < 1e-5);
    CHECK(rel_error<float>(a.out.view(), o.out.view()) < 1e-5);
    CHECK(rel_error<float>(a.dq.view(), o.dq.view()) < 1e-5);
    CHECK(rel_error<float>(a.dk.view(), o.dk.view()) < 1e-5);
    CHECK(rel_error<float>(a.dv.view(), o.dv.view()) < 1e-5);
  }
}

TEST_CASE("Core attention is causal: a later token never changes an earlier output",
          "[layers][cpu]") {
  using CpuF = mm::CpuBackend<float>;
  CpuF b;
  const mm::CoreAttention<float, CpuF> core({.d = 16, .heads = 4, .kv_heads = 2, .query_tile = 5});
  const std::int64_t seq = 16;
  const std::int64_t n = 3 * seq;
  mm::Rng rng(4);
  auto q = rng.normal_tensor<float>(n, 16);
  auto k = rng.normal_tensor<float>(n, 8);
  auto v = rng.normal_tensor<float>(n, 8);
  const auto pos = make_positions(n, seq, 0);
  const auto mask = mm::AttentionMask::causal(seq);
  mm::Tensor<float> y0(n, 16);
  core.forward(b, q.view(), k.view(), v.view(), span_of(pos), mask, y0.view());
  for (const std::int64_t t : {0, 7, 15}) {
    const std::int64_t i_t = seq + t;  // token t of the middle sequence
    auto k1 = k.clone();
    auto v1 = v.clone();
    for (std::int64_t j = 0; j < 8; ++j) {
      k1(i_t, j) += 2.0f;
      v1(i_t, j) -= 3.0f;
    }
    mm::Tensor<float> y1(n, 16);
    core.forward(b, q.view(), k1.view(), v1.view(), span_of(pos), mask, y1.view());
    for (std::int64_t i = 0; i < n; ++i) {
      bool same = true;
      for (std::int64_t j = 0; j < 16; ++j) {
        same = same && y1(i, j) == y0(i, j);
      }
      const bool affected = i >= i_t && i < 2 * seq;
      INFO("perturbed token " << i_t << ", output " << i);
      REQUIRE(same == !affected);  // exactly equal: masked keys weigh exactly 0
    }
  }
}

TEST_CASE("Image spans attend both ways inside the span, causally outside", "[layers][cpu]") {
  Cpu b;
  const Core core({.d = 8, .heads = 2, .query_tile = 3});
  // One sequence: text 0-1, image span A 2-4, text 5, image span B 6-8, text 9.
  const std::vector<mm::ModalityId> modality = {0, 0, 1, 1, 1, 0, 1, 1, 1, 0};
  const std::int64_t n = 10;
  const auto mask = mm::AttentionMask::image_bidirectional(n, modality);
  auto in = random_qkv(core, n, 5);
  const auto pos = make_positions(n, n, 0);
  mm::Tensor<double> y0(n, 8);
  core.forward(b, in.q.view(), in.k.view(), in.v.view(), span_of(pos), mask, y0.view());
  auto span_id = [](std::int64_t t) { return t >= 2 && t <= 4 ? 0 : (t >= 6 && t <= 8 ? 1 : -1); };
  for (std::int64_t t = 0; t < n; ++t) {
    auto k1 = in.k.clone();
    auto v1 = in.v.clone();
    for (std::int64_t j = 0; j < 8; ++j) {
      k1(t, j) -= 1.5;
      v1(t, j) += 2.0;
    }
    mm::Tensor<double> y1(n, 8);
    core.forward(b, in.q.view(), k1.view(), v1.view(), span_of(pos), mask, y1.view());
    for (std::int64_t i = 0; i < n; ++i) {
      double diff = 0;
      for (std::int64_t j = 0; j < 8; ++j) {
        diff = std::max(diff, std::fabs(y1(i, j) - y0(i, j)));
      }
      // i sees t: t <= i, or t later in i's own image span.
      const bool sees = t <= i || (span_id(i) >= 0 && span_id(i) == span_id(t));
      INFO("perturbed token " << t << ", output " << i << ", max change " << diff);
      if (sees) {
        REQUIRE(diff > 1e-8);
      } else {
        REQUIRE(diff == 0.0);
      }
    }
  }
}

TEST_CASE("attention_key_limits: a key prefix per query", "[layers][cpu]") {
  using V = std::vector<std::int32_t>;
  const std::vector<mm::ModalityId> m = {0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1};
  REQUIRE(mm::attention_key_limits(mm::AttentionMask::causal(3), 6, "t") == V{1, 2, 3, 1, 2, 3});
  // Runs stop at sequence boundaries: [0 1 1] [1 1 0] [1 1 1] [1 1 1].
  REQUIRE(mm::attention_key_limits(mm::AttentionMask::image_bidirectional(3, m), 12, "t") ==
          V{1, 3, 3, 2, 2, 3, 3, 3, 3, 3, 3, 3});
  // Another id can be the bidirectional one.
  REQUIRE(mm::attention_key_limits(mm::AttentionMask::image_bidirectional(6, m, 0), 12, "t") ==
          V{1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6});
  REQUIRE(mm::attention_key_limits(mm::AttentionMask::causal(4), 0, "t").empty());
}

TEST_CASE("CoreAttention rejects bad arguments and names them", "[layers][cpu]") {
  using Catch::Matchers::Contains;
  Cpu b;
  const Core core({.d = 8, .heads = 2, .kv_heads = 1});
  auto in = random_qkv(core, 6, 6);
  const auto pos = make_positions(6, 3, 0);
  const auto causal = mm::AttentionMask::causal(3);
  mm::Tensor<double> out(6, 8);
  out.fill(4.0);
  mm::Tensor<double> wide(6, 8);
  REQUIRE_THROWS_WITH(
      core.forward(b, in.q.view(), wide.view(), in.v.view(), span_of(pos), causal, out.view()),
      Contains("[CoreAttention::forward] k") && Contains("[6, 4]"));
  REQUIRE_THROWS_WITH(core.forward(b,
                                   in.q.view(),
                                   in.k.view(),
                                   in.v.view(),
                                   span_of(pos),
                                   causal,
                                   out.view().row_block(0, 5)),
                      Contains("[CoreAttention::forward] out"));
  REQUIRE_THROWS_WITH(
      core.forward(
          b, in.q.view(), in.k.view(), in.v.view(), span_of(pos).subspan(1, 5), causal, out.view()),
      Contains("positions"));
  REQUIRE_THROWS_WITH(core.forward(b,
                                   in.q.view(),
                                   in.k.view(),
                                   in.v.view(),
                                   span_of(pos),
                                   mm::AttentionMask::causal(4),
                                   out.view()),
                      Contains("multiple of mask.seq_len = 4"));
  for (std::int64_t i = 0; i < out.size(); ++i) {
    REQUIRE(out.data()[i] == 4.0);
  }
  Core::Saved saved;
  mm::Tensor<double> dq(6, 8), dk(6, 4), dv(6, 4);
  REQUIRE_THROWS_WITH(core.backward(b, saved, out.view(), dq.view(), dk.view(), dv.view()),
                      Contains("[CoreAttention::backward] saved"));
  core.forward(b, in.q.view(), in.k.view(), in.v.view(), span_of(pos), causal, out.view(), saved);
  REQUIRE_THROWS_WITH(core.backward(b, saved, out.view(), dq.view(), dq.view(), dv.view()),
                      Contains("[CoreAttention::backward] dk"));
  REQUIRE_THROWS_WITH(Core({.d = 8, .heads = 2, .query_tile = 0}), Contains("query_tile"));
  REQUIRE_THROWS_WITH(Core({.d = 8, .heads = 2, .rope_theta = -1.0}), Contains("rope_theta"));
  // The workspace estimate covers what a forward and backward take.
  Cpu fresh;
  const Core big({.d = 32, .heads = 4, .kv_heads = 2, .query_tile = 16});
  auto x = random_qkv(big, 80, 7);
  const auto p = make_positions(80, 40, 0);
  Core::Saved s2;
  mm::Tensor<double> o(80, 32), gq(80, 32), gk(80, 16), gv(80, 16);
  big.forward(fresh,
              x.q.view(),
              x.k.view(),
              x.v.view(),
              span_of(p),
              mm::AttentionMask::causal(40),
              o.view(),
              s2);
  big.backward(fresh, s2, o.view(), gq.view(), gk.view(), gv.view());
  REQUIRE(fresh.workspace().high_water() <= big.workspace_bytes(80, 40));
}

// mmsparse/routing/aux_router.hpp
//
// Auxiliary router for causal inference (MoMa §2.4 Eq. 3-4, Raposo et al. §3.5): a small MLP
// p = sigmoid(silu(x W1) W2), W1 [d, d/2], W2 [d/2, E] (E = 1 for MoD), that predicts from a
// token's own state whether the non-causal top-C router would select it. Trained with per-expert
// binary cross-entropy on the real decisions (PAPERS.md §4.13); at inference p > 0.5 selects.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mmsparse {

// Confusion counts and mean binary cross-entropy of one fit step (or an evaluation).
struct AuxRouterFit {
  double loss_sum = 0.0;  // sum over (token, expert) pairs of the BCE
  std::int64_t pairs = 0;
  std::int64_t true_pos = 0, false_pos = 0, false_neg = 0, true_neg = 0;

  [[nodiscard]] double loss() const {
    return pairs > 0 ? loss_sum / static_cast<double>(pairs) : 0.0;
  }
  [[nodiscard]] double precision() const {
    const auto p = true_pos + false_pos;
    return p > 0 ? static_cast<double>(true_pos) / static_cast<double>(p) : 1.0;
  }
  [[nodiscard]] double recall() const {
    const auto p = true_pos + false_neg;
    return p > 0 ? static_cast<double>(true_pos) / static_cast<double>(p) : 1.0;
  }
  [[nodiscard]] double accuracy() const {
    return pairs > 0 ? static_cast<double>(true_pos + true_neg) / static_cast<double>(pairs) : 1.0;
  }
  AuxRouterFit& operator+=(const AuxRouterFit& o) {
    loss_sum += o.loss_sum;
    pairs += o.pairs;
    true_pos += o.true_pos;
    false_pos += o.false_pos;
    false_neg += o.false_neg;
    true_neg += o.true_neg;
    return *this;
  }
};

template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class AuxRouter {
 public:
  using W = router_t<T>;
  using S = typename B::space;
  static constexpr double threshold = 0.5;  // MoMa §2.4: selected when the score exceeds 0.5

  struct Config {
    std::int64_t d = 0;
    std::int64_t experts = 1;  // E: one output per expert of the group (1 for MoD)
    std::int64_t hidden = 0;   // 0: d / 2 (at least 1)
    std::uint64_t seed = 0;
  };
  struct Weights {
    View<W, S> w1;  // [d, h]
    View<W, S> w2;  // [h, E]
  };

  explicit AuxRouter(Config cfg) : cfg_(resolve(cfg)) {
    w1_ = Tensor<W, S>::weight(cfg_.d, cfg_.hidden);
    w2_ = Tensor<W, S>::weight(cfg_.hidden, cfg_.experts);
    static_assert(std::is_same_v<S, host_space>,
                  "AuxRouter initialises its weights on the host; bind() device weights instead");
    Rng rng(cfg_.seed ^ 0x5851f42d4c957f2dull);
    rng.fill_normal(w1_.view(), 1.0 / std::sqrt(static_cast<double>(cfg_.d)));
    rng.fill_normal(w2_.view(), 1.0 / std::sqrt(static_cast<double>(cfg_.hidden)));
    weights_ = {w1_.view(), w2_.view()};
  }

  [[nodiscard]] const Config& config() const {
    return cfg_;
  }
  [[nodiscard]] Weights weights() const {
    return weights_;
  }
  [[nodiscard]] static std::vector<std::pair<std::string, Shape>> parameter_shapes(Config cfg) {
    cfg = resolve(cfg);
    return {{"w1", {cfg.d, cfg.hidden}}, {"w2", {cfg.hidden, cfg.experts}}};
  }
  // Uses the caller's memory from now on (shapes checked); the router's own storage is released.
  void bind(Weights w) {
    check_weights("AuxRouter::bind", w, "");
    weights_ = w;
    w1_ = {};
    w2_ = {};
  }

  // p [n, E] = sigmoid(silu(x W1) W2) for x [n, d].
  void forward(B& b, View<const T, S> x, View<W, S> p) const {
    constexpr const char* op = "AuxRouter::forward";
    check_x(op, x);
    MMSPARSE_CHECK(p.shape() == (Shape{x.rows, cfg_.experts}),
                   op,
                   "p",
                   (Shape{x.rows, cfg_.experts}),
                   p.shape());
    auto frame = b.workspace().frame();
    Buffers buf = take(b, x.rows);
    run(b, x, buf);
    b.sigmoid(p, cv(buf.z));
  }

  // Host decisions of a forward: selected[r * E + e] = p(r, e) > 0.5.
  [[nodiscard]] std::vector<std::int32_t> decide(B& b, View<const T, S> x) const {
    auto frame = b.workspace().frame();
    auto p = b.workspace().template take<W>(x.rows, cfg_.experts);  // [n, E]
    forward(b, x, p);
    std::vector<W> host(static_cast<std::size_t>(p.size()));
    b.copy_to_host(std::span<W>(host), Span<const W, S>(p.data, p.size()));
    std::vector<std::int32_t> out(host.size());
    for (std::size_t i = 0; i < host.size(); ++i) {
      out[i] = static_cast<double>(host[i]) > threshold ? 1 : 0;
    }
    return out;
  }

  // One step of the binary cross-entropy loss L = scale * mean_{r, e} BCE(p(r, e), target(r, e))
  // against host targets [n * E] (1: the top-C router selected token r for expert e). Adds dL/dW
  // into `grads` and, when dx has rows, dL/dx into dx; an empty dx stops the gradient into the
  // model (the joint-training recipe of MoD §3.5). Returns the unscaled loss and the confusion
  // counts of the 0.5 threshold.
  AuxRouterFit fit(B& b,
                   View<const T, S> x,
                   std::span<const std::int32_t> target,
                   Weights grads,
                   View<T, S> dx = {},
                   double scale = 1.0) const {
    constexpr const char* op = "AuxRouter::fit";
    check_x(op, x);
    const std::int64_t n = x.rows;
    const std::int64_t e = cfg_.experts;
    const std::int64_t pairs = n * e;
    MMSPARSE_CHECK(static_cast<std::int64_t>(target.size()) == pairs,
                   op,
                   "target",
                   "n * E = " + std::to_string(pairs) + " entries",
                   target.size());
    check_weights(op, grads, "grads.");
    MMSPARSE_CHECK(dx.rows == 0 || dx.shape() == x.shape(), op, "dx", x.shape(), dx.shape());
    std::vector<std::int32_t> cls(static_cast<std::size_t>(pairs));  // class 0: selected
    for (std::size_t i = 0; i < cls.size(); ++i) {
      MMSPARSE_CHECK(target[i] == 0 || target[i] == 1,
                     op,
                     "target[" + std::to_string(i) + "]",
                     "0 or 1",
                     target[i]);
      cls[i] = 1 - target[i];
    }
    AuxRouterFit fit;
    fit.pairs = pairs;
    if (n == 0) {
      return fit;
    }
    auto frame = b.workspace().frame();
    Buffers buf = take(b, n);
    run(b, x, buf);
    // BCE as a 2-class softmax cross-entropy over [z, 0]: softmax gives [sigmoid(z), 1 -
    // sigmoid(z)].
    auto logits2 = b.workspace().template take<W>(pairs, 2);  // [n E, 2]
    auto dlogits2 = b.workspace().template take<W>(pairs, 2);
    auto loss = b.workspace().template take_span<W>(pairs);
    auto lse = b.workspace().template take_span<W>(pairs);
    auto cls_d = b.workspace().template take_span<std::int32_t>(pairs);
    b.fill(logits2, W{});
    b.fill(dlogits2, W{});
    b.copy(logits2.col_block(0, 1), View<const W, S>(buf.z.data, pairs, 1));
    b.copy_from_host(cls_d, std::span<const std::int32_t>(cls));
    b.cross_entropy(loss, lse, cv(logits2), Span<const std::int32_t, S>(cls_d));
    b.cross_entropy_backward(dlogits2,
                             cv(logits2),
                             Span<const W, S>(lse),
                             Span<const std::int32_t, S>(cls_d),
                             scale / static_cast<double>(pairs));
    // Report: loss and confusion counts on the host.
    std::vector<W> host_loss(static_cast<std::size_t>(pairs));
    std::vector<W> host_z(static_cast<std::size_t>(pairs));
    b.copy_to_host(std::span<W>(host_loss), Span<const W, S>(loss));
    b.copy_to_host(std::span<W>(host_z), Span<const W, S>(buf.z.data, pairs));
    for (std::size_t i = 0; i < host_loss.size(); ++i) {
      fit.loss_sum += static_cast<double>(host_loss[i]);
      const bool predicted = static_cast<double>(host_z[i]) > 0.0;  // sigmoid(z) > 0.5
      const bool actual = target[i] == 1;
      fit.true_pos += predicted && actual;
      fit.false_pos += predicted && !actual;
      fit.false_neg += !predicted && actual;
      fit.true_neg += !predicted && !actual;
    }
    // dz [n, E] = column 0 of dlogits2; then back through W2, silu and W1.
    auto dz = b.workspace().template take<W>(n, e);
    auto ds = b.workspace().template take<W>(n, cfg_.hidden);
    auto da = b.workspace().template take<W>(n, cfg_.hidden);
    auto dummy = b.workspace().template take<W>(n, cfg_.hidden);
    b.copy(View<W, S>(dz.data, pairs, 1), View<const W, S>(dlogits2.data, pairs, 1, 2));
    b.gemm(grads.w2, cv(buf.s), Trans::yes, cv(dz), Trans::no, 1.0, 1.0);
    b.gemm(ds, cv(dz), Trans::no, cv(weights_.w2), Trans::yes, 1.0, 0.0);
    b.swiglu_backward(da, dummy, cv(ds), cv(buf.a), cv(buf.ones));
    b.gemm(grads.w1, cv(buf.x), Trans::yes, cv(da), Trans::no, 1.0, 1.0);
    if (dx.rows > 0) {
      if constexpr (std::is_same_v<T, W>) {
        b.gemm(dx, cv(da), Trans::no, cv(weights_.w1), Trans::yes, 1.0, 1.0);
      } else {
        auto dxw = b.workspace().template take<W>(n, cfg_.d);
        b.copy(dxw, View<const T, S>(dx));
        b.gemm(dxw, cv(da), Trans::no, cv(weights_.w1), Trans::yes, 1.0, 1.0);
        b.copy(dx, cv(dxw));
      }
    }
    return fit;
  }

  // FLOPs of a forward over n tokens.
  [[nodiscard]] double flops(std::int64_t n) const {
    return 2.0 * static_cast<double>(n) * static_cast<double>(cfg_.hidden) *
           static_cast<double>(cfg_.d + cfg_.experts);
  }

 private:
  struct Buffers {
    View<W, S> x;     // [n, d] x in router precision
    View<W, S> a;     // [n, h] x W1
    View<W, S> ones;  // [n, h]
    View<W, S> s;     // [n, h] silu(a)
    View<W, S> z;     // [n, E] s W2
  };

  static Config resolve(Config cfg) {
    constexpr const char* op = "AuxRouter";
    MMSPARSE_CHECK(cfg.d > 0, op, "d", "> 0", cfg.d);
    MMSPARSE_CHECK(cfg.experts > 0, op, "experts", "> 0", cfg.experts);
    MMSPARSE_CHECK(cfg.hidden >= 0, op, "hidden", ">= 0 (0: d / 2)", cfg.hidden);
    if (cfg.hidden == 0) {
      cfg.hidden = cfg.d / 2 > 0 ? cfg.d / 2 : 1;
    }
    return cfg;
  }
  template <class U>
  static View<const U, S> cv(View<U, S> v) {
    return v;
  }
  void check_x(const char* op, View<const T, S> x) const {
    MMSPARSE_CHECK(
        x.cols == cfg_.d, op, "x", "shape [n, " + std::to_string(cfg_.d) + "]", x.shape());
  }
  void check_weights(const char* op, const Weights& w, const std::string& prefix) const {
    MMSPARSE_CHECK(w.w1.shape() == (Shape{cfg_.d, cfg_.hidden}),
                   op,
                   prefix + "w1",
                   (Shape{cfg_.d, cfg_.hidden}),
                   w.w1.shape());
    MMSPARSE_CHECK(w.w2.shape() == (Shape{cfg_.hidden, cfg_.experts}),
                   op,
                   prefix + "w2",
                   (Shape{cfg_.hidden, cfg_.experts}),
                   w.w2.shape());
  }
  Buffers take(B& b, std::int64_t n) const {
    Buffers buf;
    auto& ws = b.workspace();
    buf.x = ws.template take<W>(n, cfg_.d);
    buf.a = ws.template take<W>(n, cfg_.hidden);
    buf.ones = ws.template take<W>(n, cfg_.hidden);
    buf.s = ws.template take<W>(n, cfg_.hidden);
    buf.z = ws.template take<W>(n, cfg_.experts);
    return buf;
  }
  // z = silu(x W1) W2 (silu through swiglu with a gate of ones).
  void run(B& b, View<const T, S> x, const Buffers& buf) const {
    if (x.rows == 0) {
      return;
    }
    b.copy(buf.x, x);
    b.gemm(buf.a, cv(buf.x), Trans::no, cv(weights_.w1), Trans::no, 1.0, 0.0);
    b.fill(buf.ones, W{1});
    b.swiglu(buf.s, cv(buf.a), cv(buf.ones));
    b.gemm(buf.z, cv(buf.s), Trans::no, cv(weights_.w2), Trans::no, 1.0, 0.0);
  }

  Config cfg_;
  Tensor<W, S> w1_, w2_;  // own storage (empty after bind)
  Weights weights_;
};

}  // namespace mmsparse

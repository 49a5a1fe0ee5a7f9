// mmsparse/layers/attention.hpp
//
// Causal multi-head self-attention, global over the mixed-modality sequence (MoT §2.2 Eq. 3), with
// GQA, Chameleon's QK-norm (per head over dh, before RoPE: PAPERS.md §1.9, §3) and RoPE. Split for
// Mixture-of-Transformers: QkvProjection and OutProjection (untied per modality by a MoT block)
// around one CoreAttention (layers/attention_core.hpp); `Attention` composes them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention_core.hpp>
#include <mmsparse/layers/linear.hpp>
#include <mmsparse/layers/norm.hpp>

namespace mmsparse {

namespace detail {

// The same contiguous buffer as one row per head: [rows, heads * dh] -> [rows * heads, dh].
template <class T, class S>
View<T, S> per_head(View<T, S> v, std::int64_t dh) {
  MMSPARSE_ASSERT(v.contiguous() || v.rows == 0);
  return View<T, S>(v.data, v.rows * (v.cols / dh), dh);
}

}  // namespace detail

// ---- projections --------------------------------------------------------------

// q = QKNorm_q(x Wq), k = QKNorm_k(x Wk), v = x Wv for any set of tokens x [n, d]: a MoT block
// runs one per modality on that modality's tokens (PAPERS.md §1.6, §3). QK-norm normalises each
// head's dh values (a [1, dh] weight shared by the heads), before RoPE (MoT code).
template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class QkvProjection {
 public:
  using S = typename B::space;
  using A = accum_t<T>;

  struct Weights {
    View<T, S> wq;           // [d, H·dh]
    View<T, S> wk;           // [d, Hkv·dh]
    View<T, S> wv;           // [d, Hkv·dh]
    View<T, S> q_norm;       // [1, dh]  (empty without QK-norm)
    View<T, S> q_norm_bias;  // [1, dh]  (layer_norm only)
    View<T, S> k_norm;       // [1, dh]
    View<T, S> k_norm_bias;  // [1, dh]
  };
  // The input of one QK-norm and its per-(token, head) statistics.
  struct NormSaved {
    Tensor<T, S> raw;   // [n, heads·dh] x W, before the norm
    Tensor<A, S> mean;  // [n·heads, 1] (layer_norm only)
    Tensor<A, S> rstd;  // [n·heads, 1]
  };
  struct Saved {
    Tensor<T, S> x;  // [n, d]
    NormSaved q;     // empty without QK-norm
    NormSaved k;
    bool valid = false;
  };

  explicit QkvProjection(AttentionConfig cfg)
      : cfg_(resolve_attention_config(cfg, "QkvProjection")) {
    static_assert(std::is_same_v<S, host_space>,
                  "layers initialise their own weights on the host; bind() device weights");
    const std::int64_t d = cfg_.d;
    const std::int64_t dh = cfg_.head_dim;
    const std::int64_t norm = cfg_.qk_norm != QkNorm::none ? 1 : 0;  // rows of the norm weights
    const std::int64_t bias = cfg_.qk_norm == QkNorm::layer_norm ? 1 : 0;
    Rng rng(cfg_.seed);
    const double stddev = 1.0 / std::sqrt(static_cast<double>(d));
    for (auto [t, rows, cols, init] : {std::tuple{&wq_, d, cfg_.q_width(), -1.0},
                                       std::tuple{&wk_, d, cfg_.kv_width(), -1.0},
                                       std::tuple{&wv_, d, cfg_.kv_width(), -1.0},
                                       std::tuple{&q_norm_, norm, dh, 1.0},
                                       std::tuple{&q_norm_bias_, bias, dh, 0.0},
                                       std::tuple{&k_norm_, norm, dh, 1.0},
                                       std::tuple{&k_norm_bias_, bias, dh, 0.0}}) {
      *t = Tensor<T, S>::weight(rows, cols);  // weights ~ N(0, 1/d); norm weights 1, biases 0
      for (std::int64_t i = 0; i < rows; ++i) {
        for (std::int64_t j = 0; j < cols; ++j) {
          (*t)(i, j) = scalar_cast<T>(init < 0 ? stddev * rng.normal() : init);
        }
      }
    }
    weights_ = {wq_.view(),
                wk_.view(),
                wv_.view(),
                q_norm_.view(),
                q_norm_bias_.view(),
                k_norm_.view(),
                k_norm_bias_.view()};
  }

  [[nodiscard]] const AttentionConfig& config() const {
    return cfg_;
  }
  [[nodiscard]] Weights weights() const {
    return weights_;
  }

  // Names and shapes of the parameters, in Weights order (norm entries only when used).
  [[nodiscard]] static std::vector<std::pair<std::string, Shape>> parameter_shapes(
      AttentionConfig cfg) {
    cfg = resolve_attention_config(cfg, "QkvProjection::parameter_shapes");
    std::vector<std::pair<std::string, Shape>> shapes = {{"wq", {cfg.d, cfg.q_width()}},
                                                         {"wk", {cfg.d, cfg.kv_width()}},
                                                         {"wv", {cfg.d, cfg.kv_width()}}};
    const bool bias = cfg.qk_norm == QkNorm::layer_norm;
    for (const char* which : {"q_norm", "k_norm"}) {
      if (cfg.qk_norm != QkNorm::none) {
        shapes.push_back({which, {1, cfg.head_dim}});
      }
      if (bias) {
        shapes.push_back({std::string(which) + "_bias", {1, cfg.head_dim}});
      }
    }
    return shapes;
  }

  // Uses the caller's memory from now on (shapes checked); the layer's own storage is released.
  void bind(Weights w) {
    check_weights("QkvProjection::bind", w, "");
    weights_ = w;
    for (auto* t : {&wq_, &wk_, &wv_, &q_norm_, &k_norm_, &q_norm_bias_, &k_norm_bias_}) {
      *t = {};
    }
  }

  // q [n, H·dh], k, v [n, Hkv·dh] from x [n, d]; inference: nothing is kept.
  void forward(B& b, View<const T, S> x, View<T, S> q, View<T, S> k, View<T, S> v) const {
    check_io("QkvProjection::forward", x, q, k, v);
    if (cfg_.qk_norm == QkNorm::none) {
      project(b, x, q, k, v);
      return;
    }
    const std::int64_t n = x.rows;
    auto& ws = b.workspace();
    auto frame = ws.frame();
    auto q_raw = ws.template take<T>(n, cfg_.q_width());   // [n, H·dh]
    auto k_raw = ws.template take<T>(n, cfg_.kv_width());  // [n, Hkv·dh]
    auto mean = ws.template take_span<A>(n * cfg_.heads);  // reused by q and k
    auto rstd = ws.template take_span<A>(n * cfg_.heads);
    project(b, x, q_raw, k_raw, v);
    normalize(b, q, q_raw, mean, rstd, true);
    normalize(
        b, k, k_raw, mean.subspan(0, n * cfg_.kv_heads), rstd.subspan(0, n * cfg_.kv_heads), false);
  }

  // Training forward: as forward, and keeps what backward needs in `saved`.
  void forward(
      B& b, View<const T, S> x, View<T, S> q, View<T, S> k, View<T, S> v, Saved& saved) const {
    check_io("QkvProjection::forward", x, q, k, v);
    const std::int64_t n = x.rows;
    saved.valid = false;
    reshape(saved.x, n, cfg_.d);
    b.copy(saved.x.view(), x);
    const View<const T, S> xs = std::as_const(saved.x).view();
    if (cfg_.qk_norm == QkNorm::none) {
      project(b, xs, q, k, v);
      saved.valid = true;
      return;
    }
    for (auto [ns, heads] : {std::pair{&saved.q, cfg_.heads}, std::pair{&saved.k, cfg_.kv_heads}}) {
      reshape(ns->raw, n, heads * cfg_.head_dim);
      reshape(ns->mean, n * heads, 1);
      reshape(ns->rstd, n * heads, 1);
    }
    project(b, xs, saved.q.raw.view(), saved.k.raw.view(), v);
    normalize(b, q, saved.q.raw.view(), saved.q.mean.span(), saved.q.rstd.span(), true);
    normalize(b, k, saved.k.raw.view(), saved.k.mean.span(), saved.k.rstd.span(), false);
    saved.valid = true;
  }

  // dx [n, d] += dL/dx and grads += dL/dW, given dq, dk, dv. A gradient view with 0 rows is
  // skipped (a frozen weight, or an input that needs no gradient).
  void backward(B& b,
                const Saved& saved,
                View<const T, S> dq,
                View<const T, S> dk,
                View<const T, S> dv,
                View<T, S> dx,
                Weights grads) const {
    constexpr const char* op = "QkvProjection::backward";
    MMSPARSE_CHECK(saved.valid, op, "saved", "the context of a training forward", "none");
    const std::int64_t n = saved.x.rows();
    check_shape(op, "dq", dq.shape(), {n, cfg_.q_width()});
    check_shape(op, "dk", dk.shape(), {n, cfg_.kv_width()});
    check_shape(op, "dv", dv.shape(), {n, cfg_.kv_width()});
    MMSPARSE_CHECK(
        dx.rows == 0 || dx.shape() == (Shape{n, cfg_.d}), op, "dx", (Shape{n, cfg_.d}), dx.shape());
    check_weights(op, grads, "grads.");
    const View<const T, S> x = saved.x.view();
    const View<T, S> none;
    auto frame = b.workspace().frame();
    View<const T, S> dq_raw = dq;  // dL/d(x Wq): through the QK-norm when there is one
    View<const T, S> dk_raw = dk;
    if (cfg_.qk_norm != QkNorm::none) {
      auto tq = b.workspace().template take<T>(n, cfg_.q_width());   // [n, H·dh]
      auto tk = b.workspace().template take<T>(n, cfg_.kv_width());  // [n, Hkv·dh]
      normalize_backward(b, tq, grads, dq, saved.q, true);
      normalize_backward(b, tk, grads, dk, saved.k, false);
      dq_raw = tq;
      dk_raw = tk;
    }
    linear_backward(b, dx, grads.wq, none, dq_raw, x, cview(weights_.wq));
    linear_backward(b, dx, grads.wk, none, dk_raw, x, cview(weights_.wk));
    linear_backward(b, dx, grads.wv, none, dv, x, cview(weights_.wv));
  }

  // Throws unless `grads` fits backward (each view the weight's shape, or 0 rows: skipped).
  void check_gradients(const char* op, const Weights& grads) const {
    check_weights(op, grads, "grads.");
  }

  // FLOPs of the three projections over `tokens` tokens.
  [[nodiscard]] double flops(std::int64_t tokens) const {
    return 2.0 * static_cast<double>(tokens * cfg_.d * (cfg_.q_width() + 2 * cfg_.kv_width()));
  }

 private:
  static View<const T, S> cview(View<T, S> v) {
    return v;
  }
  static void check_shape(const char* op, const std::string& arg, Shape got, Shape expected) {
    MMSPARSE_CHECK(got == expected, op, arg, expected, got);
  }
  template <class U>
  static void reshape(Tensor<U, S>& t, std::int64_t rows, std::int64_t cols) {
    if (t.rows() != rows || t.cols() != cols) {
      t = Tensor<U, S>(rows, cols);
    }
  }

  // Weights (bind) must all have their shapes; gradients may also be 0-row views (skipped).
  void check_weights(const char* op, const Weights& w, const std::string& prefix) const {
    const bool grads = !prefix.empty();
    const bool norm = cfg_.qk_norm != QkNorm::none;
    const bool bias = cfg_.qk_norm == QkNorm::layer_norm;
    const Shape row{1, cfg_.head_dim};
    for (auto [v, name, used, expected] :
         {std::tuple{w.wq, "wq", true, Shape{cfg_.d, cfg_.q_width()}},
          std::tuple{w.wk, "wk", true, Shape{cfg_.d, cfg_.kv_width()}},
          std::tuple{w.wv, "wv", true, Shape{cfg_.d, cfg_.kv_width()}},
          std::tuple{w.q_norm, "q_norm", norm, row},
          std::tuple{w.k_norm, "k_norm", norm, row},
          std::tuple{w.q_norm_bias, "q_norm_bias", bias, row},
          std::tuple{w.k_norm_bias, "k_norm_bias", bias, row}}) {
      if (used) {
        MMSPARSE_CHECK(v.shape() == expected || (grads && v.rows == 0),
                       op,
                       prefix + name,
                       expected,
                       v.shape());
      } else {
        MMSPARSE_CHECK(
            v.empty(), op, prefix + name, "an empty view (not used by this qk_norm)", v.shape());
      }
    }
  }
  void check_io(
      const char* op, View<const T, S> x, View<T, S> q, View<T, S> k, View<T, S> v) const {
    MMSPARSE_CHECK(
        x.cols == cfg_.d, op, "x", "shape [n, " + std::to_string(cfg_.d) + "]", x.shape());
    check_shape(op, "q", q.shape(), {x.rows, cfg_.q_width()});
    check_shape(op, "k", k.shape(), {x.rows, cfg_.kv_width()});
    check_shape(op, "v", v.shape(), {x.rows, cfg_.kv_width()});
  }

  void project(B& b, View<const T, S> x, View<T, S> q, View<T, S> k, View<T, S> v) const {
    linear_forward(b, q, x, cview(weights_.wq));
    linear_forward(b, k, x, cview(weights_.wk));
    linear_forward(b, v, x, cview(weights_.wv));
  }

  // y [n, heads·dh] = the q (or k) norm of each head of raw (contiguous); a strided y goes
  // through the workspace.
  void normalize(
      B& b, View<T, S> y, View<T, S> raw, Span<A, S> mean, Span<A, S> rstd, bool is_q) const {
    const std::int64_t dh = cfg_.head_dim;
    const auto w = cview(is_q ? weights_.q_norm : weights_.k_norm);
    auto frame = b.workspace().frame();
    const View<T, S> dst = y.contiguous() ? y : b.workspace().template take<T>(y.rows, y.cols);
    const auto x_h = detail::per_head(cview(raw), dh);
    if (cfg_.qk_norm == QkNorm::rms_norm) {
      rms_norm_forward(b, detail::per_head(dst, dh), rstd, x_h, w, cfg_.norm_eps);
    } else {
      const auto bias = cview(is_q ? weights_.q_norm_bias : weights_.k_norm_bias);
      layer_norm_forward(b, detail::per_head(dst, dh), mean, rstd, x_h, w, bias, cfg_.norm_eps);
    }
    if (dst.data != y.data) {
      b.copy(y, cview(dst));
    }
  }
  // draw [n, heads·dh] = dL/d(raw) (overwritten); the norm's weight gradients += theirs.
  void normalize_backward(B& b,
                          View<T, S> draw,
                          const Weights& grads,
                          View<const T, S> dy,
                          const NormSaved& ns,
                          bool is_q) const {
    const std::int64_t dh = cfg_.head_dim;
    auto& ws = b.workspace();
    auto frame = ws.frame();
    View<const T, S> dy_c = dy;
    if (!dy.contiguous()) {
      auto tmp = ws.template take<T>(dy.rows, dy.cols);
      b.copy(tmp, dy);
      dy_c = tmp;
    }
    // A frozen norm weight (a 0-row gradient) still needs somewhere to accumulate.
    View<T, S> dw = is_q ? grads.q_norm : grads.k_norm;
    View<T, S> db = is_q ? grads.q_norm_bias : grads.k_norm_bias;
    for (auto* g : {&dw, &db}) {
      if (g->rows == 0) {
        *g = ws.template take<T>(1, dh);
        b.fill(*g, T{});
      }
    }
    b.fill(draw, T{});
    const auto w = cview(is_q ? weights_.q_norm : weights_.k_norm);
    const auto dy_h = detail::per_head(dy_c, dh);
    const auto x_h = detail::per_head(ns.raw.view(), dh);
    const auto dx_h = detail::per_head(draw, dh);
    if (cfg_.qk_norm == QkNorm::rms_norm) {
      rms_norm_backward(b, dx_h, dw, dy_h, x_h, w, ns.rstd.span());
    } else {
      layer_norm_backward(b, dx_h, dw, db, dy_h, x_h, w, ns.mean.span(), ns.rstd.span());
    }
  }

  AttentionConfig cfg_;
  Tensor<T, S> wq_, wk_, wv_, q_norm_, q_norm_bias_, k_norm_, k_norm_bias_;  // own storage
  Weights weights_;
};

// y [n, d] = a [n, H·dh] Wo: the output projection, per modality in a MoT block.
template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class OutProjection {
 public:
  using S = typename B::space;

  struct Weights {
    View<T, S> wo;  // [H·dh, d]
  };
  struct Saved {
    Tensor<T, S> a;  // [n, H·dh]
    bool valid = false;
  };

  explicit OutProjection(AttentionConfig cfg)
      : cfg_(resolve_attention_config(cfg, "OutProjection")) {
    wo_ = Tensor<T, S>::weight(cfg_.q_width(), cfg_.d);
    static_assert(std::is_same_v<S, host_space>,
                  "layers initialise their own weights on the host; bind() device weights");
    Rng rng(cfg_.seed ^ 0x9e3779b97f4a7c15ull);  // a stream apart from QkvProjection's
    const double stddev = 1.0 / std::sqrt(static_cast<double>(cfg_.q_width()));
    for (std::int64_t i = 0; i < wo_.rows(); ++i) {
      for (std::int64_t j = 0; j < wo_.cols(); ++j) {
        wo_(i, j) = scalar_cast<T>(stddev * rng.normal());
      }
    }
    weights_ = {wo_.view()};
  }

  [[nodiscard]] const AttentionConfig& config() const {
    return cfg_;
  }
  [[nodiscard]] Weights weights() const {
    return weights_;
  }
  [[nodiscard]] static std::vector<std::pair<std::string, Shape>> parameter_shapes(
      AttentionConfig cfg) {
    cfg = resolve_attention_config(cfg, "OutProjection::parameter_shapes");
    return {{"wo", {cfg.q_width(), cfg.d}}};
  }
  void bind(Weights w) {
    check_wo("OutProjection::bind", "wo", w.wo);
    weights_ = w;
    wo_ = {};
  }

  void forward(B& b, View<const T, S> a, View<T, S> y) const {
    check_io("OutProjection::forward", a, y);
    linear_forward(b, y, a, View<const T, S>(weights_.wo));
  }
  void forward(B& b, View<const T, S> a, View<T, S> y, Saved& saved) const {
    check_io("OutProjection::forward", a, y);
    saved.valid = false;
    if (saved.a.rows() != a.rows || saved.a.cols() != a.cols) {
      saved.a = Tensor<T, S>(a.rows, a.cols);
    }
    b.copy(saved.a.view(), a);
    linear_forward(b, y, std::as_const(saved.a).view(), View<const T, S>(weights_.wo));
    saved.valid = true;
  }
  // da [n, H·dh] += dy Woᵀ, grads.wo += aᵀ dy (0-row views are skipped).
  void backward(B& b, const Saved& saved, View<const T, S> dy, View<T, S> da, Weights grads) const {
    constexpr const char* op = "OutProjection::backward";
    MMSPARSE_CHECK(saved.valid, op, "saved", "the context of a training forward", "none");
    const std::int64_t n = saved.a.rows();
    MMSPARSE_CHECK(dy.shape() == (Shape{n, cfg_.d}), op, "dy", (Shape{n, cfg_.d}), dy.shape());
    MMSPARSE_CHECK(
        da.rows == 0 || da.shape() == saved.a.shape(), op, "da", saved.a.shape(), da.shape());
    MMSPARSE_CHECK(grads.wo.rows == 0 || grads.wo.shape() == weights_.wo.shape(),
                   op,
                   "grads.wo",
                   weights_.wo.shape(),
                   grads.wo.shape());
    linear_backward(
        b, da, grads.wo, View<T, S>{}, dy, saved.a.view(), View<const T, S>(weights_.wo));
  }
  [[nodiscard]] double flops(std::int64_t tokens) const {
    return 2.0 * static_cast<double>(tokens * cfg_.q_width() * cfg_.d);
  }

 private:
  void check_wo(const char* op, const char* arg, View<T, S> wo) const {
    MMSPARSE_CHECK(wo.shape() == (Shape{cfg_.q_width(), cfg_.d}),
                   op,
                   arg,
                   (Shape{cfg_.q_width(), cfg_.d}),
                   wo.shape());
  }
  void check_io(const char* op, View<const T, S> a, View<T, S> y) const {
    MMSPARSE_CHECK(a.cols == cfg_.q_width(),
                   op,
                   "a",
                   "shape [n, " + std::to_string(cfg_.q_width()) + "]",
                   a.shape());
    MMSPARSE_CHECK(
        y.shape() == (Shape{a.rows, cfg_.d}), op, "y", (Shape{a.rows, cfg_.d}), y.shape());
  }

  AttentionConfig cfg_;
  Tensor<T, S> wo_;
  Weights weights_;
};

// ---- the plain layer ------------------------------------------------------------

// y [N, d] = OutProjection(CoreAttention(QkvProjection(x))), one set of weights for all tokens.
template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class Attention {
 public:
  using S = typename B::space;
  using Qkv = QkvProjection<T, B>;
  using Core = CoreAttention<T, B>;
  using Out = OutProjection<T, B>;

  struct Weights {
    View<T, S> wq;           // [d, H·dh]
    View<T, S> wk;           // [d, Hkv·dh]
    View<T, S> wv;           // [d, Hkv·dh]
    View<T, S> wo;           // [H·dh, d]
    View<T, S> q_norm;       // [1, dh]  (empty without QK-norm)
    View<T, S> q_norm_bias;  // [1, dh]  (layer_norm only)
    View<T, S> k_norm;       // [1, dh]
    View<T, S> k_norm_bias;  // [1, dh]
  };
  struct Saved {
    typename Qkv::Saved qkv;
    typename Core::Saved core;
    typename Out::Saved out;
  };

  explicit Attention(AttentionConfig cfg)
      : cfg_(resolve_attention_config(cfg, "Attention")), qkv_(cfg_), core_(cfg_), out_(cfg_) {}

  [[nodiscard]] const AttentionConfig& config() const {
    return cfg_;
  }
  [[nodiscard]] const Qkv& qkv() const {
    return qkv_;
  }
  [[nodiscard]] const Core& core() const {
    return core_;
  }
  [[nodiscard]] const Out& out() const {
    return out_;
  }
  [[nodiscard]] Weights weights() const {
    const auto a = qkv_.weights();
    return {a.wq, a.wk, a.wv, out_.weights().wo, a.q_norm, a.q_norm_bias, a.k_norm, a.k_norm_bias};
  }
  [[nodiscard]] static std::vector<std::pair<std::string, Shape>> parameter_shapes(
      AttentionConfig cfg) {
    auto shapes = Qkv::parameter_shapes(cfg);
    const auto wo = Out::parameter_shapes(cfg);
    shapes.insert(shapes.begin() + 3, wo.begin(), wo.end());  // Weights order
    return shapes;
  }
  void bind(Weights w) {
    MMSPARSE_CHECK(w.wo.shape() == (Shape{cfg_.q_width(), cfg_.d}),
                   "Attention::bind",
                   "wo",
                   (Shape{cfg_.q_width(), cfg_.d}),
                   w.wo.shape());  // before anything is bound
    const typename Qkv::Weights a{
        w.wq, w.wk, w.wv, w.q_norm, w.q_norm_bias, w.k_norm, w.k_norm_bias};
    qkv_.bind(a);
    out_.bind({w.wo});
  }

  // y [N, d] = attention(x [N, d]) at positions [N] under `mask`; inference. y may be x.
  void forward(B& b,
               View<const T, S> x,
               Span<const std::int32_t, S> positions,
               const AttentionMask& mask,
               View<T, S> y) const {
    const std::int64_t n = x.rows;
    check_io("Attention::forward", x, positions, mask, y);
    auto frame = b.workspace().frame();
    auto q = b.workspace().template take<T>(n, cfg_.q_width());   // [N, H·dh]
    auto k = b.workspace().template take<T>(n, cfg_.kv_width());  // [N, Hkv·dh]
    auto v = b.workspace().template take<T>(n, cfg_.kv_width());  // [N, Hkv·dh]
    auto a = b.workspace().template take<T>(n, cfg_.q_width());   // [N, H·dh]
    qkv_.forward(b, x, q, k, v);
    core_.forward(b, cv(q), cv(k), cv(v), positions, mask, a);
    out_.forward(b, cv(a), y);
  }
  // Training forward: as forward, and keeps what backward needs in `saved`.
  void forward(B& b,
               View<const T, S> x,
               Span<const std::int32_t, S> positions,
               const AttentionMask& mask,
               View<T, S> y,
               Saved& saved) const {
    const std::int64_t n = x.rows;
    check_io("Attention::forward", x, positions, mask, y);
    auto frame = b.workspace().frame();
    auto q = b.workspace().template take<T>(n, cfg_.q_width());
    auto k = b.workspace().template take<T>(n, cfg_.kv_width());
    auto v = b.workspace().template take<T>(n, cfg_.kv_width());
    auto a = b.workspace().template take<T>(n, cfg_.q_width());
    qkv_.forward(b, x, q, k, v, saved.qkv);
    core_.forward(b, cv(q), cv(k), cv(v), positions, mask, a, saved.core);
    out_.forward(b, cv(a), y, saved.out);
  }
  // dx [N, d] += dL/dx and grads += dL/dW, given dy = dL/dy [N, d].
  void backward(B& b, const Saved& saved, View<const T, S> dy, View<T, S> dx, Weights grads) const {
    constexpr const char* op = "Attention::backward";
    MMSPARSE_CHECK(saved.out.valid && saved.core.valid && saved.qkv.valid,
                   op,
                   "saved",
                   "the context of a training forward",
                   "none");
    const std::int64_t n = saved.out.a.rows();
    MMSPARSE_CHECK(dy.shape() == (Shape{n, cfg_.d}), op, "dy", (Shape{n, cfg_.d}), dy.shape());
    MMSPARSE_CHECK(
        dx.rows == 0 || dx.shape() == (Shape{n, cfg_.d}), op, "dx", (Shape{n, cfg_.d}), dx.shape());
    MMSPARSE_CHECK(grads.wo.rows == 0 || grads.wo.shape() == (Shape{cfg_.q_width(), cfg_.d}),
                   op,
                   "grads.wo",
                   (Shape{cfg_.q_width(), cfg_.d}),
                   grads.wo.shape());
    const typename Qkv::Weights qkv_grads{grads.wq,
                                          grads.wk,
                                          grads.wv,
                                          grads.q_norm,
                                          grads.q_norm_bias,
                                          grads.k_norm,
                                          grads.k_norm_bias};
    qkv_.check_gradients(op, qkv_grads);  // all checks before the first write
    auto frame = b.workspace().frame();
    auto da = b.workspace().template take<T>(n, cfg_.q_width());   // [N, H·dh]
    auto dq = b.workspace().template take<T>(n, cfg_.q_width());   // [N, H·dh]
    auto dk = b.workspace().template take<T>(n, cfg_.kv_width());  // [N, Hkv·dh]
    auto dv = b.workspace().template take<T>(n, cfg_.kv_width());  // [N, Hkv·dh]
    b.fill(da, T{});
    b.fill(dq, T{});
    b.fill(dk, T{});
    b.fill(dv, T{});
    out_.backward(b, saved.out, dy, da, {grads.wo});
    core_.backward(b, saved.core, cv(da), dq, dk, dv);
    qkv_.backward(b, saved.qkv, cv(dq), cv(dk), cv(dv), dx, qkv_grads);
  }

  // FLOPs of a forward: the four projections and the attention over the visible pairs.
  [[nodiscard]] double flops(const AttentionMask& mask, std::int64_t tokens) const {
    return qkv_.flops(tokens) + core_.flops(mask, tokens) + out_.flops(tokens);
  }
  // Workspace bytes a forward or backward over `tokens` tokens in sequences of seq_len takes.
  [[nodiscard]] std::size_t workspace_bytes(std::int64_t tokens, std::int64_t seq_len) const {
    using W = Workspace<S>;
    const std::size_t q = W::template bytes_for<T>(tokens * cfg_.q_width());
    const std::size_t kv = W::template bytes_for<T>(tokens * cfg_.kv_width());
    const std::size_t qkv = q + kv + 2 * W::template bytes_for<accum_t<T>>(tokens * cfg_.heads) +
                            2 * W::template bytes_for<T>(cfg_.head_dim);  // QK-norm scratch
    return 2 * q + 2 * kv + std::max(qkv, core_.workspace_bytes(tokens, seq_len));
  }

 private:
  static View<const T, S> cv(View<T, S> v) {
    return v;
  }
  void check_io(const char* op,
                View<const T, S> x,
                Span<const std::int32_t, S> positions,
                const AttentionMask& mask,
                View<T, S> y) const {
    MMSPARSE_CHECK(
        x.cols == cfg_.d, op, "x", "shape [N, " + std::to_string(cfg_.d) + "]", x.shape());
    MMSPARSE_CHECK(y.shape() == x.shape(), op, "y", x.shape(), y.shape());
    MMSPARSE_CHECK(positions.size == x.rows,
                   op,
                   "positions",
                   "one position per token (" + std::to_string(x.rows) + ")",
                   positions.size);
    (void)attention_key_limits(mask, x.rows, op);  // validates the mask before any work
  }

  AttentionConfig cfg_;
  Qkv qkv_;
  Core core_;
  Out out_;
};

}  // namespace mmsparse

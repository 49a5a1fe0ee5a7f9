// mmsparse/layers/block.hpp
//
// A transformer block built from two sublayer parts, h = x + A(x), out = h + F(h), with RMSNorm in
// either order: pre-norm (A(x) = attn(norm(x))) or Chameleon/Swin post-norm (A(x) = norm(attn(x)),
// Cham §2.3, MoT Eq. 2). Each part owns its norm, so MoT can untie it per modality. Here: the
// block, the shared-attention part and the dense SwiGLU part (DenseBlock); forward and backward.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention.hpp>
#include <mmsparse/layers/block_types.hpp>
#include <mmsparse/layers/kv_cache.hpp>
#include <mmsparse/layers/norm.hpp>
#include <mmsparse/layers/swiglu_ffn.hpp>

namespace mmsparse {

// ---- the shared attention part ---------------------------------------------------------

// A(x) = attn(norm(x)) (pre) or norm(attn(x)) (post); one set of weights for every modality
// (dense, MoMa: "shared self-attention", MoMa §2.2).
template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class SharedAttention {
 public:
  using S = typename B::space;
  using Qkv = QkvProjection<T, B>;
  using Core = CoreAttention<T, B>;
  using Out = OutProjection<T, B>;
  struct Config {};
  struct Saved {
    detail::NormSaved<T, B> norm;
    typename Qkv::Saved qkv;
    detail::SequenceAttentionSaved<T, B> core;
    typename Out::Saved out;
  };

  SharedAttention(const BlockConfig& bc, const Config& /*cfg*/)
      : bc_(bc), qkv_(bc.attention(1)), core_(qkv_.config()), out_(bc.attention(2)) {
    norm_ = Tensor<T, S>(1, bc_.d);
    norm_.fill(T{1});
    norm_w_ = norm_.view();
  }

  [[nodiscard]] const AttentionConfig& attention_config() const {
    return qkv_.config();
  }
  [[nodiscard]] static std::vector<ParamInfo> parameters(const BlockConfig& bc, const Config&) {
    auto p = detail::prefixed("", Qkv::parameter_shapes(bc.attention()));
    detail::append(p, detail::prefixed("", Out::parameter_shapes(bc.attention())));
    p.push_back({"norm", {1, bc.d}, false});
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> weights() const {
    auto v = detail::qkv_views<Qkv, View<T, S>>(qkv_.weights(), bc_.qk_norm);
    v.push_back(out_.weights().wo);
    v.push_back(norm_w_);
    return v;
  }
  void bind(std::span<const View<T, S>> w) {
    detail::check_bound("SharedAttention::bind", parameters(bc_, {}), w);
    const std::size_t nq = w.size() - 2;
    qkv_.bind(detail::qkv_weights<Qkv>(w.subspan(0, nq), bc_.qk_norm));
    out_.bind({w[nq]});
    norm_w_ = w[nq + 1];
    norm_ = {};
  }

  // delta [N, d] = A(x [N, d]).
  BlockStats forward(
      B& b, View<const T, S> x, const BlockInput<S>& in, View<T, S> delta, Saved* saved) const {
    return run(b, x, in, delta, saved, nullptr, 0);
  }
  // The n new tokens x of sequence `seq` against (and into) its cache.
  void decode(B& b,
              View<const T, S> x,
              const BlockInput<S>& in,
              KvCache<T, B>& cache,
              std::int64_t seq,
              View<T, S> delta) const {
    (void)run(b, x, in, delta, nullptr, &cache, seq);
  }

  // dx += dL/dx and grads += dL/dW given ddelta = dL/d(delta).
  void backward(B& b,
                const Saved& saved,
                View<const T, S> ddelta,
                View<T, S> dx,
                std::span<const View<T, S>> grads) const {
    const auto& a = qkv_.config();
    const std::int64_t n = ddelta.rows;
    const std::size_t nq = grads.size() - 2;
    const auto qkv_grads = detail::qkv_weights<Qkv>(grads.subspan(0, nq), bc_.qk_norm);
    const View<T, S> dnorm = grads[nq + 1];
    auto frame = b.workspace().frame();
    auto da = b.workspace().template take<T>(n, a.q_width());   // [N, H·dh]
    auto dq = b.workspace().template take<T>(n, a.q_width());   // [N, H·dh]
    auto dk = b.workspace().template take<T>(n, a.kv_width());  // [N, Hkv·dh]
    auto dv = b.workspace().template take<T>(n, a.kv_width());  // [N, Hkv·dh]
    auto dxn = b.workspace().template take<T>(n, bc_.d);        // [N, d]
    for (auto v : {da, dq, dk, dv, dxn}) {
      b.fill(v, T{});
    }
    View<const T, S> dout = ddelta;
    if (bc_.norm_order == NormOrder::post) {  // delta = norm(o): do first
      detail::saved_rms_backward(b, dxn, dnorm, ddelta, detail::cv(norm_w_), saved.norm);
      dout = dxn;
    }
    out_.backward(b, saved.out, dout, da, {grads[nq]});
    detail::sequence_attention_backward(b, core_, saved.core, detail::cv(da), dq, dk, dv);
    if (bc_.norm_order == NormOrder::post) {
      qkv_.backward(b, saved.qkv, detail::cv(dq), detail::cv(dk), detail::cv(dv), dx, qkv_grads);
    } else {
      b.fill(dxn, T{});
      qkv_.backward(b, saved.qkv, detail::cv(dq), detail::cv(dk), detail::cv(dv), dxn, qkv_grads);
      detail::saved_rms_backward(b, dx, dnorm, detail::cv(dxn), detail::cv(norm_w_), saved.norm);
    }
  }

  [[nodiscard]] static std::vector<ParamInfo> aux_parameters(const BlockConfig&, const Config&) {
    return {};
  }
  [[nodiscard]] std::vector<View<T, S>> aux_weights() const {
    return {};
  }
  void bind_aux(std::span<const View<T, S>> w) {
    detail::check_bound("SharedAttention::bind_aux", {}, w);
  }

 private:
  BlockStats run(B& b,
                 View<const T, S> x,
                 const BlockInput<S>& in,
                 View<T, S> delta,
                 Saved* saved,
                 KvCache<T, B>* cache,
                 std::int64_t seq) const {
    const auto& a = qkv_.config();
    const std::int64_t n = x.rows;
    const bool post = bc_.norm_order == NormOrder::post;
    auto frame = b.workspace().frame();
    auto q = b.workspace().template take<T>(n, a.q_width());    // [N, H·dh]
    auto k = b.workspace().template take<T>(n, a.kv_width());   // [N, Hkv·dh]
    auto v = b.workspace().template take<T>(n, a.kv_width());   // [N, Hkv·dh]
    auto att = b.workspace().template take<T>(n, a.q_width());  // [N, H·dh]
    auto tmp = b.workspace().template take<T>(n, bc_.d);        // [N, d] norm(x) or o
    auto* norm_saved = saved != nullptr ? &saved->norm : nullptr;
    View<const T, S> xin = x;
    if (!post) {
      detail::saved_rms_forward(b, tmp, x, detail::cv(norm_w_), bc_.norm_eps, norm_saved);
      xin = tmp;
    }
    if (saved != nullptr) {
      qkv_.forward(b, xin, q, k, v, saved->qkv);
    } else {
      qkv_.forward(b, xin, q, k, v);
    }
    if (cache != nullptr) {
      core_attention_decode(
          b, core_, *cache, seq, detail::cv(q), detail::cv(k), detail::cv(v), in.positions, att);
    } else {
      detail::sequence_attention_forward(b,
                                         core_,
                                         detail::cv(q),
                                         detail::cv(k),
                                         detail::cv(v),
                                         in.positions,
                                         in.sequences,
                                         att,
                                         saved != nullptr ? &saved->core : nullptr);
    }
    View<T, S> o = post ? tmp : delta;
    if (saved != nullptr) {
      out_.forward(b, detail::cv(att), o, saved->out);
    } else {
      out_.forward(b, detail::cv(att), o);
    }
    if (post) {
      detail::saved_rms_forward(
          b, delta, detail::cv(o), detail::cv(norm_w_), bc_.norm_eps, norm_saved);
    }
    BlockStats st;
    st.flops = qkv_.flops(n) + out_.flops(n);
    if (cache == nullptr) {
      st.flops += detail::sequence_attention_flops(a, in.sequences);
    }
    return st;
  }

  BlockConfig bc_;
  Qkv qkv_;
  Core core_;
  Out out_;
  Tensor<T, S> norm_;  // [1, d] own storage (empty after bind)
  View<T, S> norm_w_;
};

// ---- the dense FFN part ----------------------------------------------------------------

// F(h) = ffn(norm(h)) (pre) or norm(ffn(h)) (post), one SwiGLU FFN for every token.
template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class DenseFfn {
 public:
  using S = typename B::space;
  using Ffn = SwiGluFfn<T, B>;
  struct Config {};
  struct Saved {
    detail::NormSaved<T, B> norm;
    typename Ffn::Saved ffn;
  };

  DenseFfn(const BlockConfig& bc, const Config& /*cfg*/)
      : bc_(bc),
        ffn_(typename Ffn::Config{bc.d, bc.ffn_hidden(), bc.seed * 1000003ull + 3}),
        ffn_w_(ffn_.weights()) {
    norm_ = Tensor<T, S>(1, bc_.d);
    norm_.fill(T{1});
    norm_w_ = norm_.view();
  }

  [[nodiscard]] static std::vector<ParamInfo> parameters(const BlockConfig& bc, const Config&) {
    auto p = detail::prefixed("", Ffn::parameter_shapes({bc.d, bc.ffn_hidden(), 0}));
    p.push_back({"norm", {1, bc.d}, false});
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> weights() const {
    return {ffn_w_.w1, ffn_w_.w3, ffn_w_.w2, norm_w_};
  }
  void bind(std::span<const View<T, S>> w) {
    detail::check_bound("DenseFfn::bind", parameters(bc_, {}), w);
    ffn_w_ = {w[0], w[1], w[2]};
    ffn_.bind(ffn_w_);
    norm_w_ = w[3];
    norm_ = {};
  }

  BlockStats forward(
      B& b, View<const T, S> x, const BlockInput<S>& /*in*/, View<T, S> delta, Saved* saved) const {
    const std::int64_t n = x.rows;
    auto frame = b.workspace().frame();
    auto tmp = b.workspace().template take<T>(n, bc_.d);  // [N, d] norm(x) or ffn(x)
    auto* norm_saved = saved != nullptr ? &saved->norm : nullptr;
    const bool post = bc_.norm_order == NormOrder::post;
    View<const T, S> xin = x;
    if (!post) {
      detail::saved_rms_forward(b, tmp, x, detail::cv(norm_w_), bc_.norm_eps, norm_saved);
      xin = tmp;
    }
    View<T, S> f = post ? tmp : delta;
    if (saved != nullptr) {
      ffn_.forward(b, xin, f, saved->ffn);
    } else {
      ffn_.forward(b, xin, f);
    }
    if (post) {
      detail::saved_rms_forward(
          b, delta, detail::cv(f), detail::cv(norm_w_), bc_.norm_eps, norm_saved);
    }
    BlockStats st;
    st.flops = ffn_.flops(n);
    return st;
  }

  void backward(B& b,
                const Saved& saved,
                View<const T, S> ddelta,
                View<T, S> dx,
                std::span<const View<T, S>> grads,
                double /*aux_scale*/ = 1.0) const {
    const std::int64_t n = ddelta.rows;
    const typename Ffn::Weights g{grads[0], grads[1], grads[2]};
    auto frame = b.workspace().frame();
    auto tmp = b.workspace().template take<T>(n, bc_.d);  // [N, d]
    b.fill(tmp, T{});
    if (bc_.norm_order == NormOrder::post) {
      detail::saved_rms_backward(b, tmp, grads[3], ddelta, detail::cv(norm_w_), saved.norm);
      ffn_.backward(b, saved.ffn, detail::cv(tmp), dx, g);
    } else {
      ffn_.backward(b, saved.ffn, ddelta, tmp, g);
      detail::saved_rms_backward(b, dx, grads[3], detail::cv(tmp), detail::cv(norm_w_), saved.norm);
    }
  }

  [[nodiscard]] static std::vector<ParamInfo> aux_parameters(const BlockConfig&, const Config&) {
    return {};
  }
  [[nodiscard]] std::vector<View<T, S>> aux_weights() const {
    return {};
  }
  void bind_aux(std::span<const View<T, S>> w) {
    detail::check_bound("DenseFfn::bind_aux", {}, w);
  }

 private:
  BlockConfig bc_;
  Ffn ffn_;
  typename Ffn::Weights ffn_w_;  // the FFN's current weights
  Tensor<T, S> norm_;            // [1, d] own storage (empty after bind)
  View<T, S> norm_w_;
};

// ---- the block -------------------------------------------------------------------------

// out = h + F(h), h = x + A(x). A: SharedAttention or UntiedAttention (mot_block.hpp); F: DenseFfn,
// UntiedFfn or SparseFfnPart (moma_block.hpp). Parameters: "attn.*" then "ffn.*".
template <class T, class A, class F, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class Block {
 public:
  using S = typename B::space;
  using scalar = T;
  using backend_type = B;
  using attention_type = A;
  using ffn_type = F;

  struct Config {
    BlockConfig block;
    typename A::Config attn{};
    typename F::Config ffn{};
  };
  struct Saved {
    typename A::Saved attn;
    typename F::Saved ffn;
    std::int64_t tokens = 0;
    bool valid = false;
  };

  explicit Block(Config cfg)
      : cfg_(checked(std::move(cfg))), attn_(cfg_.block, cfg_.attn), ffn_(cfg_.block, cfg_.ffn) {}

  [[nodiscard]] const Config& config() const {
    return cfg_;
  }
  [[nodiscard]] static const BlockConfig& block_config(const Config& cfg) {
    return cfg.block;
  }
  [[nodiscard]] const A& attention() const {
    return attn_;
  }
  [[nodiscard]] const F& ffn() const {
    return ffn_;
  }
  [[nodiscard]] const AttentionConfig& attention_config() const {
    return attn_.attention_config();
  }

  [[nodiscard]] static std::vector<ParamInfo> parameters(const Config& cfg) {
    auto p = A::parameters(cfg.block, cfg.attn);
    for (auto& i : p) {
      i.name = "attn." + i.name;
    }
    for (auto i : F::parameters(cfg.block, cfg.ffn)) {
      i.name = "ffn." + i.name;
      p.push_back(std::move(i));
    }
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> weights() const {
    auto w = attn_.weights();
    for (const auto& v : ffn_.weights()) {
      w.push_back(v);
    }
    return w;
  }
  void bind(std::span<const View<T, S>> w) {
    detail::check_bound("Block::bind", parameters(cfg_), w);
    const std::size_t na = A::parameters(cfg_.block, cfg_.attn).size();
    attn_.bind(w.subspan(0, na));
    ffn_.bind(w.subspan(na));
  }
  // The auxiliary routers (expert choice), trained apart from the block (MoMa §2.4).
  [[nodiscard]] static std::vector<ParamInfo> aux_parameters(const Config& cfg) {
    auto p = F::aux_parameters(cfg.block, cfg.ffn);
    for (auto& i : p) {
      i.name = "ffn." + i.name;
    }
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> aux_weights() const {
    return ffn_.aux_weights();
  }
  void bind_aux(std::span<const View<T, S>> w) {
    ffn_.bind_aux(w);
  }

  // y [N, d] = block(x [N, d]); with `saved`, keeps what backward needs. y may be x.
  BlockStats forward(B& b,
                     View<const T, S> x,
                     const BlockInput<S>& in,
                     View<T, S> y,
                     Saved* saved = nullptr) const {
    constexpr const char* op = "Block::forward";
    const std::int64_t n = x.rows;
    const std::int64_t d = cfg_.block.d;
    MMSPARSE_CHECK(x.cols == d, op, "x", "shape [N, " + std::to_string(d) + "]", x.shape());
    MMSPARSE_CHECK(y.shape() == x.shape(), op, "y", x.shape(), y.shape());
    detail::check_block_input(op, in, n, cfg_.block.modalities);
    MMSPARSE_CHECK(saved == nullptr || in.routing == RoutingMode::batch,
                   op,
                   "routing",
                   "batch routing for a training forward (aux routing is for inference)",
                   "aux");
    if (saved != nullptr) {
      saved->valid = false;
    }
    auto frame = b.workspace().frame();
    auto delta = b.workspace().template take<T>(n, d);  // [N, d]
    auto h = b.workspace().template take<T>(n, d);      // [N, d]
    BlockStats st = attn_.forward(b, x, in, delta, saved != nullptr ? &saved->attn : nullptr);
    b.copy(h, x);
    b.axpy(h, detail::cv(delta), 1.0);
    st += ffn_.forward(b, detail::cv(h), in, delta, saved != nullptr ? &saved->ffn : nullptr);
    b.copy(y, detail::cv(h));
    b.axpy(y, detail::cv(delta), 1.0);
    if (saved != nullptr) {
      saved->tokens = n;
      saved->valid = true;
    }
    return st;
  }

  // The n new tokens x [n, d] of sequence `seq` (positions, modality in `in`) through the block,
  // their K/V appended to `cache`; routers decide per token (aux routing).
  BlockStats decode(B& b,
                    View<const T, S> x,
                    const BlockInput<S>& in,
                    KvCache<T, B>& cache,
                    std::int64_t seq,
                    View<T, S> y) const {
    constexpr const char* op = "Block::decode";
    const std::int64_t n = x.rows;
    const std::int64_t d = cfg_.block.d;
    MMSPARSE_CHECK(x.cols == d, op, "x", "shape [n, " + std::to_string(d) + "]", x.shape());
    MMSPARSE_CHECK(y.shape() == x.shape(), op, "y", x.shape(), y.shape());
    detail::check_block_input(op, in, n, cfg_.block.modalities);
    cache.check_room(op, seq, n);
    auto frame = b.workspace().frame();
    auto delta = b.workspace().template take<T>(n, d);  // [n, d]
    auto h = b.workspace().template take<T>(n, d);      // [n, d]
    attn_.decode(b, x, in, cache, seq, delta);
    b.copy(h, x);
    b.axpy(h, detail::cv(delta), 1.0);
    BlockInput<S> fin = in;
    fin.routing = RoutingMode::aux;
    fin.routing_group = 0;
    BlockStats st = ffn_.forward(b, detail::cv(h), fin, delta, nullptr);
    b.copy(y, detail::cv(h));
    b.axpy(y, detail::cv(delta), 1.0);
    return st;
  }

  // dx [N, d] += dL/dx and grads += dL/dW (parameters() order) given dy = dL/dy; aux_scale =
  // dL/d(aux losses) (1 when they are part of the loss).
  void backward(B& b,
                const Saved& saved,
                View<const T, S> dy,
                View<T, S> dx,
                std::span<const View<T, S>> grads,
                double aux_scale = 1.0) const {
    constexpr const char* op = "Block::backward";
    MMSPARSE_CHECK(saved.valid, op, "saved", "the context of a training forward", "none");
    const Shape shape{saved.tokens, cfg_.block.d};
    MMSPARSE_CHECK(dy.shape() == shape, op, "dy", shape, dy.shape());
    MMSPARSE_CHECK(dx.shape() == shape, op, "dx", shape, dx.shape());
    detail::check_bound(op, parameters(cfg_), grads);
    const std::size_t na = A::parameters(cfg_.block, cfg_.attn).size();
    auto frame = b.workspace().frame();
    auto dh = b.workspace().template take<T>(shape.rows, shape.cols);  // [N, d]
    b.copy(dh, dy);
    ffn_.backward(b, saved.ffn, dy, dh, grads.subspan(na), aux_scale);
    b.axpy(dx, detail::cv(dh), 1.0);
    attn_.backward(b, saved.attn, detail::cv(dh), dx, grads.subspan(0, na));
  }

  // Fits the aux routers to the decisions of a training forward (stop-gradient: only aux grads).
  template <class Fit>
  void aux_fit(B& b, const Saved& saved, std::span<const View<T, S>> aux_grads, Fit& fit) const {
    if constexpr (requires { ffn_.aux_fit(b, saved.ffn, aux_grads, fit); }) {
      ffn_.aux_fit(b, saved.ffn, aux_grads, fit);
    }
  }

 private:
  static Config checked(Config cfg) {
    constexpr const char* op = "Block";
    MMSPARSE_CHECK(cfg.block.d > 0, op, "d", "> 0", cfg.block.d);
    MMSPARSE_CHECK(cfg.block.modalities >= 1, op, "modalities", ">= 1", cfg.block.modalities);
    MMSPARSE_CHECK(cfg.block.norm_eps > 0.0, op, "norm_eps", "> 0", cfg.block.norm_eps);
    return cfg;
  }

  Config cfg_;
  A attn_;
  F ffn_;
};

// The dense transformer block: shared attention + one SwiGLU FFN (the FLOPs baseline).
template <class T, class B>
using DenseBlock = Block<T, SharedAttention<T, B>, DenseFfn<T, B>, B>;

}  // namespace mmsparse

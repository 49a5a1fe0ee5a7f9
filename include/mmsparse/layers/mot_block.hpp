// mmsparse/layers/mot_block.hpp
//
// Mixture-of-Transformers block (MoT §2.2 Eq. 2-3, Alg. 1): Q, K, V, O projections, QK-norms, the
// FFN and both block norms untied per modality (2: text, image; 3: + speech); ONE global causal
// attention over the whole sequence, tokens restored to their original order before it. Tokens
// are grouped by modality (a stable bucket sort), each group runs its own weights, and the
// results go back to their rows (PAPERS.md §4.8-4.10: groups partition the tokens, may be empty).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention.hpp>
#include <mmsparse/layers/block.hpp>
#include <mmsparse/layers/kv_cache.hpp>
#include <mmsparse/layers/swiglu_ffn.hpp>

namespace mmsparse {

namespace detail {

// Tokens grouped by modality: order [N] (ascending inside each group), its inverse, and the
// group offsets [M + 1] on the host.
template <class B>
struct ModalityOrder {
  Tensor<std::int32_t, typename B::space> order;    // [N, 1] grouped row -> token
  Tensor<std::int32_t, typename B::space> inverse;  // [N, 1] token -> grouped row
  std::vector<std::int64_t> offsets;                // [M + 1]

  void compute(B& b, Span<const ModalityId, typename B::space> modality, std::int64_t m) {
    using S = typename B::space;
    const std::int64_t n = modality.size;
    reshape_storage(order, n, 1);
    reshape_storage(inverse, n, 1);
    b.bucket_sort(order.span(), offsets, modality, m);
    auto frame = b.workspace().frame();
    auto iota = b.workspace().template take_span<std::int32_t>(n);
    if (n > 0) {
      b.iota_mod(iota, n);
    }
    b.scatter_values(inverse.span(),
                     Span<const std::int32_t, S>(iota),
                     Span<const std::int32_t, S>(order.span()));
  }
  [[nodiscard]] std::int64_t begin(std::size_t m) const {
    return offsets[m];
  }
  [[nodiscard]] std::int64_t count(std::size_t m) const {
    return offsets[m + 1] - offsets[m];
  }
  [[nodiscard]] Span<const std::int32_t, typename B::space> grouped() const {
    return order.span();
  }
  [[nodiscard]] Span<const std::int32_t, typename B::space> restored() const {
    return inverse.span();
  }
};

// One [1, d] norm weight of ones per modality, and views of them.
template <class T, class S>
std::vector<Tensor<T, S>> unit_norms(const BlockConfig& bc) {
  std::vector<Tensor<T, S>> out;
  for (std::int64_t m = 0; m < bc.modalities; ++m) {
    out.emplace_back(1, bc.d);
    out.back().fill(T{1});
  }
  return out;
}
template <class T, class S>
std::vector<View<T, S>> views_of(std::vector<Tensor<T, S>>& tensors) {
  std::vector<View<T, S>> out;
  for (auto& t : tensors) {
    out.push_back(t.view());
  }
  return out;
}

// dst = src rows gathered by `index` (grouped <-> original order).
template <class B, class U>
void permute_rows(B& b,
                  View<U, typename B::space> dst,
                  View<const U, typename B::space> src,
                  Span<const std::int32_t, typename B::space> index) {
  b.gather_rows(dst, src, index);
}

}  // namespace detail

// ---- untied attention -------------------------------------------------------------------

// A(x) per modality m: pre-norm attn_m(norm_m(x)) or post-norm norm_m(attn_m(x)), where attn_m
// uses modality m's Q, K, V, O (and QK-norm) but attends over every token of the sequence.
// Parameters: "m<m>.wq", ".wk", ".wv", [".q_norm", ".k_norm"], ".wo", ".norm" for each m.
template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class UntiedAttention {
 public:
  using S = typename B::space;
  using Qkv = QkvProjection<T, B>;
  using Core = CoreAttention<T, B>;
  using Out = OutProjection<T, B>;
  struct Config {};
  struct Saved {
    detail::ModalityOrder<B> groups;
    std::vector<detail::NormSaved<T, B>> norm;  // per modality
    std::vector<typename Qkv::Saved> qkv;
    std::vector<typename Out::Saved> out;
    detail::SequenceAttentionSaved<T, B> core;
  };

  UntiedAttention(const BlockConfig& bc, const Config& /*cfg*/)
      : bc_(bc),
        core_(bc.attention()),
        qkv_(per_modality<Qkv>(bc, 1)),
        out_(per_modality<Out>(bc, 2)),
        norm_(detail::unit_norms<T, S>(bc)),
        norm_w_(detail::views_of(norm_)) {}

  [[nodiscard]] const AttentionConfig& attention_config() const {
    return core_.config();
  }
  [[nodiscard]] static std::vector<ParamInfo> parameters(const BlockConfig& bc, const Config&) {
    std::vector<ParamInfo> p;
    for (std::int64_t m = 0; m < bc.modalities; ++m) {
      const std::string prefix = "m" + std::to_string(m) + ".";
      detail::append(p, detail::prefixed(prefix, Qkv::parameter_shapes(bc.attention())));
      detail::append(p, detail::prefixed(prefix, Out::parameter_shapes(bc.attention())));
      p.push_back({prefix + "norm", {1, bc.d}, false});
    }
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> weights() const {
    std::vector<View<T, S>> v;
    for (std::size_t m = 0; m < qkv_.size(); ++m) {
      for (const auto& w : detail::qkv_views<Qkv, View<T, S>>(qkv_[m].weights(), bc_.qk_norm)) {
        v.push_back(w);
      }
      v.push_back(out_[m].weights().wo);
      v.push_back(norm_w_[m]);
    }
    return v;
  }
  void bind(std::span<const View<T, S>> w) {
    detail::check_bound("UntiedAttention::bind", parameters(bc_, {}), w);
    const std::size_t per = w.size() / qkv_.size();
    for (std::size_t m = 0; m < qkv_.size(); ++m) {
      const auto wm = w.subspan(m * per, per);
      qkv_[m].bind(detail::qkv_weights<Qkv>(wm.subspan(0, per - 2), bc_.qk_norm));
      out_[m].bind({wm[per - 2]});
      norm_w_[m] = wm[per - 1];
    }
    norm_.clear();
  }
  [[nodiscard]] static std::vector<ParamInfo> aux_parameters(const BlockConfig&, const Config&) {
    return {};
  }
  [[nodiscard]] std::vector<View<T, S>> aux_weights() const {
    return {};
  }
  void bind_aux(std::span<const View<T, S>> w) {
    detail::check_bound("UntiedAttention::bind_aux", {}, w);
  }

  BlockStats forward(
      B& b, View<const T, S> x, const BlockInput<S>& in, View<T, S> delta, Saved* saved) const {
    return run(b, x, in, delta, saved, nullptr, 0);
  }
  void decode(B& b,
              View<const T, S> x,
              const BlockInput<S>& in,
              KvCache<T, B>& cache,
              std::int64_t seq,
              View<T, S> delta) const {
    (void)run(b, x, in, delta, nullptr, &cache, seq);
  }

  void backward(B& b,
                const Saved& saved,
                View<const T, S> ddelta,
                View<T, S> dx,
                std::span<const View<T, S>> grads) const {
    const auto& a = core_.config();
    const std::int64_t n = ddelta.rows;
    const std::int64_t d = bc_.d;
    const bool post = bc_.norm_order == NormOrder::post;
    const auto& gr = saved.groups;
    const std::size_t per = grads.size() / qkv_.size();
    auto frame = b.workspace().frame();
    auto ddg = b.workspace().template take<T>(n, d);            // [N, d] grouped dL/d(delta)
    auto tmp = b.workspace().template take<T>(n, d);            // [N, d]
    auto dag = b.workspace().template take<T>(n, a.q_width());  // [N, H·dh] grouped
    auto da = b.workspace().template take<T>(n, a.q_width());   // [N, H·dh] original order
    auto dq = b.workspace().template take<T>(n, a.q_width());
    auto dk = b.workspace().template take<T>(n, a.kv_width());
    auto dv = b.workspace().template take<T>(n, a.kv_width());
    auto dqg = b.workspace().template take<T>(n, a.q_width());
    auto dkg = b.workspace().template take<T>(n, a.kv_width());
    auto dvg = b.workspace().template take<T>(n, a.kv_width());
    auto dxg = b.workspace().template take<T>(n, d);  // [N, d] grouped dL/dx
    for (auto v : {tmp, dag, dq, dk, dv, dxg}) {
      b.fill(v, T{});
    }
    detail::permute_rows(b, ddg, ddelta, gr.grouped());
    for (std::size_t m = 0; m < qkv_.size(); ++m) {
      const std::int64_t r0 = gr.begin(m);
      const std::int64_t nm = gr.count(m);
      if (nm == 0) {
        continue;
      }
      const auto gm = grads.subspan(m * per, per);
      View<const T, S> dout = ddg.row_block(r0, nm);
      if (post) {
        detail::saved_rms_backward(
            b, tmp.row_block(r0, nm), gm[per - 1], dout, detail::cv(norm_w_[m]), saved.norm[m]);
        dout = tmp.row_block(r0, nm);
      }
      out_[m].backward(b, saved.out[m], dout, dag.row_block(r0, nm), {gm[per - 2]});
    }
    detail::permute_rows(b, da, detail::cv(dag), gr.restored());
    detail::sequence_attention_backward(b, core_, saved.core, detail::cv(da), dq, dk, dv);
    detail::permute_rows(b, dqg, detail::cv(dq), gr.grouped());
    detail::permute_rows(b, dkg, detail::cv(dk), gr.grouped());
    detail::permute_rows(b, dvg, detail::cv(dv), gr.grouped());
    if (!post) {
      b.fill(tmp, T{});
    }
    for (std::size_t m = 0; m < qkv_.size(); ++m) {
      const std::int64_t r0 = gr.begin(m);
      const std::int64_t nm = gr.count(m);
      if (nm == 0) {
        continue;
      }
      const auto gm = grads.subspan(m * per, per);
      auto dst = post ? dxg.row_block(r0, nm) : tmp.row_block(r0, nm);
      qkv_[m].backward(b,
                       saved.qkv[m],
                       detail::cv(dqg.row_block(r0, nm)),
                       detail::cv(dkg.row_block(r0, nm)),
                       detail::cv(dvg.row_block(r0, nm)),
                       dst,
                       detail::qkv_weights<Qkv>(gm.subspan(0, per - 2), bc_.qk_norm));
      if (!post) {
        detail::saved_rms_backward(b,
                                   dxg.row_block(r0, nm),
                                   gm[per - 1],
                                   detail::cv(dst),
                                   detail::cv(norm_w_[m]),
                                   saved.norm[m]);
      }
    }
    b.scatter_add_rows(dx, detail::cv(dxg), gr.grouped(), Span<const router_t<T>, S>{});
  }

 private:
  template <class L>
  static std::vector<L> per_modality(const BlockConfig& bc, std::uint64_t salt) {
    std::vector<L> out;
    out.reserve(static_cast<std::size_t>(bc.modalities));
    for (std::int64_t m = 0; m < bc.modalities; ++m) {
      out.emplace_back(bc.attention(100 + 10 * static_cast<std::uint64_t>(m) + salt));
    }
    return out;
  }

  BlockStats run(B& b,
                 View<const T, S> x,
                 const BlockInput<S>& in,
                 View<T, S> delta,
                 Saved* saved,
                 KvCache<T, B>* cache,
                 std::int64_t seq) const {
    const auto& a = core_.config();
    const std::int64_t n = x.rows;
    const std::int64_t d = bc_.d;
    const bool post = bc_.norm_order == NormOrder::post;
    detail::ModalityOrder<B> local;
    detail::ModalityOrder<B>& gr = saved != nullptr ? saved->groups : local;
    gr.compute(b, in.modality, bc_.modalities);
    if (saved != nullptr) {
      saved->norm.resize(qkv_.size());
      saved->qkv.resize(qkv_.size());
      saved->out.resize(qkv_.size());
    }
    auto frame = b.workspace().frame();
    auto xg = b.workspace().template take<T>(n, d);             // [N, d] grouped
    auto tmp = b.workspace().template take<T>(n, d);            // [N, d] grouped norm(x) or o
    auto qg = b.workspace().template take<T>(n, a.q_width());   // [N, H·dh] grouped
    auto kg = b.workspace().template take<T>(n, a.kv_width());  // [N, Hkv·dh] grouped
    auto vg = b.workspace().template take<T>(n, a.kv_width());
    auto q = b.workspace().template take<T>(n, a.q_width());  // original order
    auto k = b.workspace().template take<T>(n, a.kv_width());
    auto v = b.workspace().template take<T>(n, a.kv_width());
    auto att = b.workspace().template take<T>(n, a.q_width());  // [N, H·dh] original order
    auto ag = b.workspace().template take<T>(n, a.q_width());   // [N, H·dh] grouped
    auto dg = b.workspace().template take<T>(n, d);             // [N, d] grouped delta
    detail::permute_rows(b, xg, x, gr.grouped());
    for (std::size_t m = 0; m < qkv_.size(); ++m) {
      const std::int64_t r0 = gr.begin(m);
      const std::int64_t nm = gr.count(m);
      if (nm == 0) {
        continue;
      }
      View<const T, S> xm = xg.row_block(r0, nm);
      if (!post) {
        detail::saved_rms_forward(b,
                                  tmp.row_block(r0, nm),
                                  xm,
                                  detail::cv(norm_w_[m]),
                                  bc_.norm_eps,
                                  saved != nullptr ? &saved->norm[m] : nullptr);
        xm = tmp.row_block(r0, nm);
      }
      if (saved != nullptr) {
        qkv_[m].forward(
            b, xm, qg.row_block(r0, nm), kg.row_block(r0, nm), vg.row_block(r0, nm), saved->qkv[m]);
      } else {
        qkv_[m].forward(b, xm, qg.row_block(r0, nm), kg.row_block(r0, nm), vg.row_block(r0, nm));
      }
    }
    // Restore the original order: one global attention over the whole sequence (MoT Alg. 1).
    detail::permute_rows(b, q, detail::cv(qg), gr.restored());
    detail::permute_rows(b, k, detail::cv(kg), gr.restored());
    detail::permute_rows(b, v, detail::cv(vg), gr.restored());
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
    detail::permute_rows(b, ag, detail::cv(att), gr.grouped());
    for (std::size_t m = 0; m < qkv_.size(); ++m) {
      const std::int64_t r0 = gr.begin(m);
      const std::int64_t nm = gr.count(m);
      if (nm == 0) {
        continue;
      }
      auto o = post ? tmp.row_block(r0, nm) : dg.row_block(r0, nm);
      if (saved != nullptr) {
        out_[m].forward(b, detail::cv(ag.row_block(r0, nm)), o, saved->out[m]);
      } else {
        out_[m].forward(b, detail::cv(ag.row_block(r0, nm)), o);
      }
      if (post) {
        detail::saved_rms_forward(b,
                                  dg.row_block(r0, nm),
                                  detail::cv(o),
                                  detail::cv(norm_w_[m]),
                                  bc_.norm_eps,
                                  saved != nullptr ? &saved->norm[m] : nullptr);
      }
    }
    detail::permute_rows(b, delta, detail::cv(dg), gr.restored());
    BlockStats st;
    st.flops = qkv_[0].flops(n) + out_[0].flops(n);  // every token runs one modality's weights
    if (cache == nullptr) {
      st.flops += detail::sequence_attention_flops(a, in.sequences);
    }
    return st;
  }

  BlockConfig bc_;
  Core core_;
  std::vector<Qkv> qkv_;            // per modality
  std::vector<Out> out_;            // per modality
  std::vector<Tensor<T, S>> norm_;  // per modality [1, d] own storage (empty after bind)
  std::vector<View<T, S>> norm_w_;
};

// ---- untied FFN -------------------------------------------------------------------------

// F(h) per modality m: pre-norm ffn_m(norm_m(h)) or post-norm norm_m(ffn_m(h)) (MoT's
// ModalityUntiedFeedForward). Parameters: "m<m>.w1", ".w3", ".w2", ".norm" for each m.
template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class UntiedFfn {
 public:
  using S = typename B::space;
  using Ffn = SwiGluFfn<T, B>;
  struct Config {};
  struct Saved {
    detail::ModalityOrder<B> groups;
    std::vector<detail::NormSaved<T, B>> norm;
    std::vector<typename Ffn::Saved> ffn;
  };

  UntiedFfn(const BlockConfig& bc, const Config& /*cfg*/)
      : bc_(bc),
        ffn_(make_ffns(bc)),
        ffn_w_(weights_of(ffn_)),
        norm_(detail::unit_norms<T, S>(bc)),
        norm_w_(detail::views_of(norm_)) {}

  [[nodiscard]] static std::vector<ParamInfo> parameters(const BlockConfig& bc, const Config&) {
    std::vector<ParamInfo> p;
    for (std::int64_t m = 0; m < bc.modalities; ++m) {
      const std::string prefix = "m" + std::to_string(m) + ".";
      detail::append(p,
                     detail::prefixed(prefix, Ffn::parameter_shapes({bc.d, bc.ffn_hidden(), 0})));
      p.push_back({prefix + "norm", {1, bc.d}, false});
    }
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> weights() const {
    std::vector<View<T, S>> v;
    for (std::size_t m = 0; m < ffn_.size(); ++m) {
      v.insert(v.end(), {ffn_w_[m].w1, ffn_w_[m].w3, ffn_w_[m].w2, norm_w_[m]});
    }
    return v;
  }
  void bind(std::span<const View<T, S>> w) {
    detail::check_bound("UntiedFfn::bind", parameters(bc_, {}), w);
    for (std::size_t m = 0; m < ffn_.size(); ++m) {
      ffn_w_[m] = {w[4 * m], w[4 * m + 1], w[4 * m + 2]};
      ffn_[m].bind(ffn_w_[m]);
      norm_w_[m] = w[4 * m + 3];
    }
    norm_.clear();
  }
  [[nodiscard]] static std::vector<ParamInfo> aux_parameters(const BlockConfig&, const Config&) {
    return {};
  }
  [[nodiscard]] std::vector<View<T, S>> aux_weights() const {
    return {};
  }
  void bind_aux(std::span<const View<T, S>> w) {
    detail::check_bound("UntiedFfn::bind_aux", {}, w);
  }

  BlockStats forward(
      B& b, View<const T, S> x, const BlockInput<S>& in, View<T, S> delta, Saved* saved) const {
    const std::int64_t n = x.rows;
    const std::int64_t d = bc_.d;
    const bool post = bc_.norm_order == NormOrder::post;
    detail::ModalityOrder<B> local;
    detail::ModalityOrder<B>& gr = saved != nullptr ? saved->groups : local;
    gr.compute(b, in.modality, bc_.modalities);
    if (saved != nullptr) {
      saved->norm.resize(ffn_.size());
      saved->ffn.resize(ffn_.size());
    }
    auto frame = b.workspace().frame();
    auto xg = b.workspace().template take<T>(n, d);   // [N, d] grouped
    auto tmp = b.workspace().template take<T>(n, d);  // [N, d] grouped norm(x) or ffn(x)
    auto dg = b.workspace().template take<T>(n, d);   // [N, d] grouped delta
    detail::permute_rows(b, xg, x, gr.grouped());
    for (std::size_t m = 0; m < ffn_.size(); ++m) {
      const std::int64_t r0 = gr.begin(m);
      const std::int64_t nm = gr.count(m);
      if (nm == 0) {
        continue;
      }
      auto* ns = saved != nullptr ? &saved->norm[m] : nullptr;
      View<const T, S> xm = xg.row_block(r0, nm);
      if (!post) {
        detail::saved_rms_forward(
            b, tmp.row_block(r0, nm), xm, detail::cv(norm_w_[m]), bc_.norm_eps, ns);
        xm = tmp.row_block(r0, nm);
      }
      auto f = post ? tmp.row_block(r0, nm) : dg.row_block(r0, nm);
      if (saved != nullptr) {
        ffn_[m].forward(b, xm, f, saved->ffn[m]);
      } else {
        ffn_[m].forward(b, xm, f);
      }
      if (post) {
        detail::saved_rms_forward(
            b, dg.row_block(r0, nm), detail::cv(f), detail::cv(norm_w_[m]), bc_.norm_eps, ns);
      }
    }
    detail::permute_rows(b, delta, detail::cv(dg), gr.restored());
    BlockStats st;
    st.flops = ffn_[0].flops(n);
    return st;
  }

  void backward(B& b,
                const Saved& saved,
                View<const T, S> ddelta,
                View<T, S> dx,
                std::span<const View<T, S>> grads,
                double /*aux_scale*/ = 1.0) const {
    const std::int64_t n = ddelta.rows;
    const std::int64_t d = bc_.d;
    const bool post = bc_.norm_order == NormOrder::post;
    const auto& gr = saved.groups;
    auto frame = b.workspace().frame();
    auto ddg = b.workspace().template take<T>(n, d);  // [N, d] grouped
    auto tmp = b.workspace().template take<T>(n, d);  // [N, d]
    auto dxg = b.workspace().template take<T>(n, d);  // [N, d] grouped dL/dx
    b.fill(tmp, T{});
    b.fill(dxg, T{});
    detail::permute_rows(b, ddg, ddelta, gr.grouped());
    for (std::size_t m = 0; m < ffn_.size(); ++m) {
      const std::int64_t r0 = gr.begin(m);
      const std::int64_t nm = gr.count(m);
      if (nm == 0) {
        continue;
      }
      const typename Ffn::Weights g{grads[4 * m], grads[4 * m + 1], grads[4 * m + 2]};
      const View<T, S> dnorm = grads[4 * m + 3];
      auto t = tmp.row_block(r0, nm);
      if (post) {
        detail::saved_rms_backward(
            b, t, dnorm, detail::cv(ddg.row_block(r0, nm)), detail::cv(norm_w_[m]), saved.norm[m]);
        ffn_[m].backward(b, saved.ffn[m], detail::cv(t), dxg.row_block(r0, nm), g);
      } else {
        ffn_[m].backward(b, saved.ffn[m], detail::cv(ddg.row_block(r0, nm)), t, g);
        detail::saved_rms_backward(
            b, dxg.row_block(r0, nm), dnorm, detail::cv(t), detail::cv(norm_w_[m]), saved.norm[m]);
      }
    }
    b.scatter_add_rows(dx, detail::cv(dxg), gr.grouped(), Span<const router_t<T>, S>{});
  }

 private:
  static std::vector<Ffn> make_ffns(const BlockConfig& bc) {
    std::vector<Ffn> out;
    out.reserve(static_cast<std::size_t>(bc.modalities));
    for (std::int64_t m = 0; m < bc.modalities; ++m) {
      out.emplace_back(typename Ffn::Config{
          bc.d, bc.ffn_hidden(), bc.seed * 1000003ull + 200 + static_cast<std::uint64_t>(m)});
    }
    return out;
  }
  static std::vector<typename Ffn::Weights> weights_of(std::vector<Ffn>& ffns) {
    std::vector<typename Ffn::Weights> out;
    for (auto& f : ffns) {
      out.push_back(f.weights());
    }
    return out;
  }

  BlockConfig bc_;
  std::vector<Ffn> ffn_;  // per modality
  std::vector<typename Ffn::Weights> ffn_w_;
  std::vector<Tensor<T, S>> norm_;  // per modality [1, d] own storage (empty after bind)
  std::vector<View<T, S>> norm_w_;
};

// The MoT block: every non-embedding parameter untied per modality, global attention.
template <class T, class B>
using MotBlock = Block<T, UntiedAttention<T, B>, UntiedFfn<T, B>, B>;

}  // namespace mmsparse

// mmsparse/layers/block_types.hpp
//
// The vocabulary shared by the transformer blocks (block.hpp, mot_block.hpp, moma_block.hpp,
// mod_block.hpp): norm order, gate placement, routing mode, BlockConfig, BlockInput, BlockStats,
// ParamInfo, and the helpers their parts share (saved RMSNorm, causal attention per sequence).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention.hpp>
#include <mmsparse/layers/experts.hpp>
#include <mmsparse/layers/norm.hpp>
#include <mmsparse/routing/concepts.hpp>

namespace mmsparse {

enum class NormOrder {
  pre,   // h = x + attn(norm(x)),  out = h + ffn(norm(h))        (LLaMA)
  post,  // h = x + norm(attn(x)),  out = h + norm(ffn(h))        (Chameleon/Swin, MoMa, MoT)
};

// Where a sparse FFN's gates sit relative to its post-norm (docs/design.md "Blocks").
enum class GatePlacement {
  before_norm,  // norm(sum_e g_e FFN_e(h)): MoMa §2.2 as written; RMSNorm cancels a lone gate
  after_norm,   // sum_e g_e norm(FFN_e(h)): the gate survives the norm (the library default)
};

// How routers that look at the whole routing group decide (expert choice, MoD).
enum class RoutingMode {
  batch,  // top-C over the routing group (training; not causal, PAPERS.md §4.1)
  aux,    // each token alone: aux router > 0.5, gate from the main router (MoMa §2.4; causal)
};

// The numbers every part of a block shares.
struct BlockConfig {
  std::int64_t d = 0;
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;    // 0: heads
  std::int64_t hidden = 0;      // SwiGLU width; 0: swiglu_hidden(d)
  std::int64_t modalities = 2;  // modality ids are in [0, modalities)
  QkNorm qk_norm = QkNorm::rms_norm;
  NormOrder norm_order = NormOrder::post;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::uint64_t seed = 0;

  [[nodiscard]] AttentionConfig attention(std::uint64_t salt = 0) const {
    AttentionConfig a;
    a.d = d;
    a.heads = heads;
    a.kv_heads = kv_heads;
    a.qk_norm = qk_norm;
    a.norm_eps = norm_eps;
    a.rope_theta = rope_theta;
    a.seed = seed * 1000003ull + salt;
    return a;
  }
  [[nodiscard]] std::int64_t ffn_hidden() const {
    return hidden > 0 ? hidden : swiglu_hidden(d);
  }
};

// What a block knows of its N tokens besides their states.
template <class S>
struct BlockInput {
  Span<const ModalityId, S> modality;       // [N]
  Span<const std::int32_t, S> positions;    // [N] original positions (RoPE; survive MoD routing)
  std::span<const std::int64_t> sequences;  // [B + 1] host: rows of each sequence, positions rising
  RoutingMode routing = RoutingMode::batch;
  std::int64_t routing_group = 0;  // tokens per routing group (0: the whole batch)
  bool training = false;           // router noise on
  std::uint64_t seed = 0;
  bool trace = false;  // record every routing decision in the stats (tests, gradcheck)
};

// One router's decisions, on the host.
struct RoutingTrace {
  std::string name;
  std::vector<std::int64_t> offsets;  // [E + 1]
  std::vector<std::int32_t> tokens;   // [slots] token of each slot (block rows)

  // The decisions of `plan`, made by the router called `router`.
  template <backend B>
  static RoutingTrace of(B& b, std::string_view router, const plan_t<B>& plan) {
    RoutingTrace t;
    t.name = std::string(router);
    t.offsets = plan.offsets;
    t.tokens.resize(static_cast<std::size_t>(plan.slots()));
    b.copy_to_host(std::span<std::int32_t>(t.tokens), plan.tokens());
    return t;
  }
};

struct BlockStats {
  double flops = 0.0;     // matrix-product FLOPs of what ran (capacity rounding included)
  double aux_loss = 0.0;  // router aux losses (token choice), already weighted
  std::vector<RoutingTrace> routing;
  BlockStats& operator+=(BlockStats o) {
    flops += o.flops;
    aux_loss += o.aux_loss;
    for (auto& r : o.routing) {
      routing.push_back(std::move(r));
    }
    return *this;
  }
};

// A parameter of a block: name, shape, and whether AdamW decays it.
struct ParamInfo {
  std::string name;
  Shape shape;
  bool decay = true;
};

namespace detail {

template <class U, class S>
View<const U, S> cv(View<U, S> v) {
  return v;
}

// Checks a BlockInput against N tokens and M modalities; errors name `op`.
template <class S>
void check_block_input(const char* op,
                       const BlockInput<S>& in,
                       std::int64_t n,
                       std::int64_t modalities) {
  MMSPARSE_CHECK(in.modality.size == n, op, "modality", "one id per token", in.modality.size);
  MMSPARSE_CHECK(in.positions.size == n, op, "positions", "one per token", in.positions.size);
  MMSPARSE_CHECK(in.sequences.size() >= 2 && in.sequences.front() == 0 && in.sequences.back() == n,
                 op,
                 "sequences",
                 "row offsets from 0 to N = " + std::to_string(n),
                 in.sequences.empty() ? -1 : in.sequences.back());
  for (std::size_t s = 1; s < in.sequences.size(); ++s) {
    MMSPARSE_CHECK(in.sequences[s] >= in.sequences[s - 1],
                   op,
                   "sequences",
                   "non-decreasing offsets",
                   in.sequences[s]);
  }
  MMSPARSE_CHECK(in.routing_group >= 0 && (in.routing_group == 0 || n % in.routing_group == 0),
                 op,
                 "routing_group",
                 "0 or a divisor of N = " + std::to_string(n),
                 in.routing_group);
  if constexpr (std::is_same_v<S, host_space>) {
    check_modality_ids(op, in.modality, modalities);
  }
}

// Declares a sublayer's parameters under `prefix` and checks bound views against them.
inline std::vector<ParamInfo> prefixed(const std::string& prefix,
                                       const std::vector<std::pair<std::string, Shape>>& shapes,
                                       bool decay = true) {
  std::vector<ParamInfo> out;
  for (const auto& [name, shape] : shapes) {
    out.push_back({prefix + name, shape, decay});
  }
  return out;
}
inline void append(std::vector<ParamInfo>& dst, const std::vector<ParamInfo>& src) {
  dst.insert(dst.end(), src.begin(), src.end());
}
template <class V>
void check_bound(const char* op, const std::vector<ParamInfo>& expected, std::span<const V> got) {
  MMSPARSE_CHECK(got.size() == expected.size(),
                 op,
                 "weights",
                 std::to_string(expected.size()) + " views",
                 got.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    MMSPARSE_CHECK(got[i].shape() == expected[i].shape,
                   op,
                   expected[i].name,
                   expected[i].shape,
                   got[i].shape());
  }
}

// QkvProjection weights <-> the flat view list of its parameter_shapes() (norm views if used).
template <class Qkv, class V>
std::vector<V> qkv_views(const typename Qkv::Weights& w, QkNorm qk) {
  std::vector<V> out = {w.wq, w.wk, w.wv};
  if (qk != QkNorm::none) {
    out.push_back(w.q_norm);
    if (qk == QkNorm::layer_norm) {
      out.push_back(w.q_norm_bias);
    }
    out.push_back(w.k_norm);
    if (qk == QkNorm::layer_norm) {
      out.push_back(w.k_norm_bias);
    }
  }
  return out;
}
template <class Qkv, class V>
typename Qkv::Weights qkv_weights(std::span<const V> v, QkNorm qk) {
  typename Qkv::Weights w{};
  w.wq = v[0];
  w.wk = v[1];
  w.wv = v[2];
  std::size_t i = 3;
  if (qk != QkNorm::none) {
    w.q_norm = v[i++];
    if (qk == QkNorm::layer_norm) {
      w.q_norm_bias = v[i++];
    }
    w.k_norm = v[i++];
    if (qk == QkNorm::layer_norm) {
      w.k_norm_bias = v[i++];
    }
  }
  return w;
}

// A [1, d] RMSNorm weight initialised to 1, with the statistics its forward keeps.
template <class T, class B>
struct NormSaved {
  Tensor<T, typename B::space> x;              // [n, d] input
  Tensor<accum_t<T>, typename B::space> rstd;  // [n, 1]
};

template <class T, class B>
void saved_rms_forward(B& b,
                       View<T, typename B::space> y,
                       View<const T, typename B::space> x,
                       View<const T, typename B::space> w,
                       double eps,
                       NormSaved<T, B>* saved) {
  using S = typename B::space;
  using A = accum_t<T>;
  if (saved == nullptr) {
    auto frame = b.workspace().frame();
    auto r = b.workspace().template take_span<A>(x.rows);
    rms_norm_forward(b, y, r, x, w, eps);
    return;
  }
  reshape_storage(saved->x, x.rows, x.cols);
  reshape_storage(saved->rstd, x.rows, 1);
  b.copy(saved->x.view(), x);
  rms_norm_forward(b, y, saved->rstd.span(), View<const T, S>(saved->x.view()), w, eps);
}

// dx += norm backward of dy; dw += its weight gradient.
template <class T, class B>
void saved_rms_backward(B& b,
                        View<T, typename B::space> dx,
                        View<T, typename B::space> dw,
                        View<const T, typename B::space> dy,
                        View<const T, typename B::space> w,
                        const NormSaved<T, B>& saved) {
  using S = typename B::space;
  rms_norm_backward(b, dx, dw, dy, View<const T, S>(saved.x.view()), w, saved.rstd.span());
}

// Causal attention of each sequence over its own rows (sequences may differ in length, e.g. the
// tokens a MoD layer kept), at the tokens' original positions.
template <class T, class B>
struct SequenceAttentionSaved {
  std::vector<typename CoreAttention<T, B>::Saved> runs;  // one per non-empty sequence
  std::vector<std::int64_t> sequences;
};

template <class T, class B>
void sequence_attention_forward(B& b,
                                const CoreAttention<T, B>& core,
                                View<const T, typename B::space> q,
                                View<const T, typename B::space> k,
                                View<const T, typename B::space> v,
                                Span<const std::int32_t, typename B::space> positions,
                                std::span<const std::int64_t> sequences,
                                View<T, typename B::space> out,
                                SequenceAttentionSaved<T, B>* saved) {
  if (saved != nullptr) {
    saved->sequences.assign(sequences.begin(), sequences.end());
    saved->runs.resize(sequences.size() - 1);
  }
  for (std::size_t s = 0; s + 1 < sequences.size(); ++s) {
    const std::int64_t r0 = sequences[s];
    const std::int64_t len = sequences[s + 1] - r0;
    if (len == 0) {
      continue;
    }
    const auto mask = AttentionMask::causal(len);
    if (saved != nullptr) {
      core.forward(b,
                   q.row_block(r0, len),
                   k.row_block(r0, len),
                   v.row_block(r0, len),
                   positions.subspan(r0, len),
                   mask,
                   out.row_block(r0, len),
                   saved->runs[s]);
    } else {
      core.forward(b,
                   q.row_block(r0, len),
                   k.row_block(r0, len),
                   v.row_block(r0, len),
                   positions.subspan(r0, len),
                   mask,
                   out.row_block(r0, len));
    }
  }
}

// dq, dk, dv += the gradients given dout.
template <class T, class B>
void sequence_attention_backward(B& b,
                                 const CoreAttention<T, B>& core,
                                 const SequenceAttentionSaved<T, B>& saved,
                                 View<const T, typename B::space> dout,
                                 View<T, typename B::space> dq,
                                 View<T, typename B::space> dk,
                                 View<T, typename B::space> dv) {
  for (std::size_t s = 0; s + 1 < saved.sequences.size(); ++s) {
    const std::int64_t r0 = saved.sequences[s];
    const std::int64_t len = saved.sequences[s + 1] - r0;
    if (len == 0) {
      continue;
    }
    core.backward(b,
                  saved.runs[s],
                  dout.row_block(r0, len),
                  dq.row_block(r0, len),
                  dk.row_block(r0, len),
                  dv.row_block(r0, len));
  }
}

// FLOPs of causal attention over the sequences: 4 dh H per visible (query, key) pair.
inline double sequence_attention_flops(const AttentionConfig& a,
                                       std::span<const std::int64_t> sequences) {
  double pairs = 0.0;
  for (std::size_t s = 0; s + 1 < sequences.size(); ++s) {
    const auto len = static_cast<double>(sequences[s + 1] - sequences[s]);
    pairs += len * (len + 1.0) / 2.0;
  }
  return 4.0 * static_cast<double>(a.head_dim * a.heads) * pairs;
}

}  // namespace detail

}  // namespace mmsparse

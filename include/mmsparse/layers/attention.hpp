// mmsparse/layers/attention.hpp
//
// Causal multi-head self-attention, global over the whole mixed-modality sequence (MoT §2.2 Eq. 3),
// with GQA, Chameleon's QK-norm (per head over head_dim, before RoPE: PAPERS.md §1.9, §3) and RoPE.
// Split for Mixture-of-Transformers: QkvProjection and OutProjection (untied per modality by a MoT
// block) around one CoreAttention (softmax(QK^T/√dh + mask) V); `Attention` composes them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/linear.hpp>
#include <mmsparse/layers/norm.hpp>
#include <mmsparse/layers/rope.hpp>

namespace mmsparse {

enum class QkNorm { none, rms_norm, layer_norm };

struct AttentionConfig {
  std::int64_t d = 0;
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;  // 0: heads; fewer: grouped-query attention (heads % kv_heads == 0)
  std::int64_t head_dim = 0;  // 0: d / heads
  QkNorm qk_norm = QkNorm::none;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;    // 0: no rotary embedding
  std::int64_t query_tile = 128;  // query rows per score block [tile, keys] of CoreAttention
  std::uint64_t seed = 0;         // weight initialisation

  [[nodiscard]] std::int64_t q_width() const {
    return heads * head_dim;
  }
  [[nodiscard]] std::int64_t kv_width() const {
    return kv_heads * head_dim;
  }
};

// The config with its defaults filled in (kv_heads, head_dim), validated; errors name `op`.
[[nodiscard]] inline AttentionConfig resolve_attention_config(AttentionConfig cfg, const char* op) {
  MMSPARSE_CHECK(cfg.d > 0, op, "d", "> 0", cfg.d);
  MMSPARSE_CHECK(cfg.heads > 0, op, "heads", "> 0", cfg.heads);
  if (cfg.kv_heads == 0) {
    cfg.kv_heads = cfg.heads;
  }
  MMSPARSE_CHECK(cfg.kv_heads > 0 && cfg.heads % cfg.kv_heads == 0,
                 op,
                 "kv_heads",
                 "a divisor of heads = " + std::to_string(cfg.heads),
                 cfg.kv_heads);
  if (cfg.head_dim == 0) {
    MMSPARSE_CHECK(
        cfg.d % cfg.heads == 0,
        op,
        "d",
        "a multiple of heads = " + std::to_string(cfg.heads) + " (or an explicit head_dim)",
        cfg.d);
    cfg.head_dim = cfg.d / cfg.heads;
  }
  MMSPARSE_CHECK(cfg.head_dim > 0, op, "head_dim", "> 0", cfg.head_dim);
  MMSPARSE_CHECK(cfg.rope_theta >= 0.0, op, "rope_theta", ">= 0 (0: no RoPE)", cfg.rope_theta);
  MMSPARSE_CHECK(cfg.rope_theta == 0.0 || cfg.head_dim % 2 == 0,
                 op,
                 "head_dim",
                 "an even number (RoPE rotates pairs)",
                 cfg.head_dim);
  MMSPARSE_CHECK(cfg.norm_eps > 0.0, op, "norm_eps", "> 0", cfg.norm_eps);
  MMSPARSE_CHECK(cfg.query_tile > 0, op, "query_tile", "> 0", cfg.query_tile);
  return cfg;
}

// ---- masks ------------------------------------------------------------------

enum class MaskKind {
  causal,               // token t of a sequence sees positions 0..t
  image_bidirectional,  // and every token of its own image run (Transfusion, MoT App. A.2)
};

// The mask of a batch of N = B·S tokens: B sequences of seq_len positions, one after the other.
// Modality ids stay on the host: they are batch metadata, read once per batch (PAPERS.md §4.8).
struct AttentionMask {
  std::int64_t seq_len = 0;
  MaskKind kind = MaskKind::causal;
  std::span<const ModalityId> modality = {};  // [N] host; image_bidirectional only
  ModalityId image = static_cast<ModalityId>(Modality::image);

  [[nodiscard]] static AttentionMask causal(std::int64_t seq_len) {
    return {seq_len, MaskKind::causal, {}, static_cast<ModalityId>(Modality::image)};
  }
  [[nodiscard]] static AttentionMask image_bidirectional(
      std::int64_t seq_len,
      std::span<const ModalityId> modality,
      ModalityId image = static_cast<ModalityId>(Modality::image)) {
    return {seq_len, MaskKind::image_bidirectional, modality, image};
  }
};

// Every query sees a prefix of its sequence's keys: limit[i] = t + 1 for the token at position
// t, or e for a token of an image run [b, e) (a contiguous run of `image` ids inside one
// sequence). Causal plus bidirectional image runs is therefore a per-row key count.
[[nodiscard]] inline std::vector<std::int32_t> attention_key_limits(const AttentionMask& mask,
                                                                    std::int64_t tokens,
                                                                    const char* op) {
  MMSPARSE_CHECK(mask.seq_len > 0 && mask.seq_len <= INT32_MAX,
                 op,
                 "mask.seq_len",
                 "a sequence length in [1, 2^31)",
                 mask.seq_len);
  MMSPARSE_CHECK(tokens % mask.seq_len == 0,
                 op,
                 "tokens",
                 "a multiple of mask.seq_len = " + std::to_string(mask.seq_len),
                 tokens);
  const bool spans = mask.kind == MaskKind::image_bidirectional;
  if (spans) {
    MMSPARSE_CHECK(static_cast<std::int64_t>(mask.modality.size()) == tokens,
                   op,
                   "mask.modality",
                   "one id per token (" + std::to_string(tokens) + ")",
                   mask.modality.size());
  }
  const std::int64_t seq = mask.seq_len;
  std::vector<std::int32_t> limit(static_cast<std::size_t>(tokens));
  for (std::int64_t s = 0; s < tokens / seq; ++s) {
    for (std::int64_t t = 0; t < seq;) {
      const std::int64_t i = s * seq + t;
      if (spans && mask.modality[static_cast<std::size_t>(i)] == mask.image) {
        std::int64_t e = t + 1;
        while (e < seq && mask.modality[static_cast<std::size_t>(s * seq + e)] == mask.image) {
          ++e;
        }
        for (; t < e; ++t) {
          limit[static_cast<std::size_t>(s * seq + t)] = static_cast<std::int32_t>(e);
        }
      } else {
        limit[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(t + 1);
        ++t;
      }
    }
  }
  return limit;
}

namespace detail {

template <class T, class S>
View<const T, S> cview(View<T, S> v) {
  return v;
}

// The same contiguous buffer as one row per head: [rows, heads * dh] -> [rows * heads, dh].
template <class T, class S>
View<T, S> per_head(View<T, S> v, std::int64_t dh) {
  MMSPARSE_ASSERT(v.contiguous() || v.rows == 0);
  return View<T, S>(v.data, v.rows * (v.cols / dh), dh);
}

// Keys the query rows [t0, t0 + rows) need: the largest of their limits, at most `keys`.
inline std::int64_t tile_keys(std::span<const std::int32_t> limit,
                              std::int64_t t0,
                              std::int64_t rows,
                              std::int64_t keys) {
  std::int64_t kc = 0;
  for (std::int64_t r = t0; r < t0 + rows; ++r) {
    kc = std::max<std::int64_t>(kc, limit[static_cast<std::size_t>(r)]);
  }
  return std::min(kc, keys);
}

// out [n, H·dh] = for each head h: softmax(q_h k_g^T / √dh, row r over keys [0, limit[r])) v_g,
// g = h / (H / Hkv), for the queries q [n, H·dh] of one sequence against its keys k, v
// [m, Hkv·dh] (RoPE already applied). Query rows go by tiles, each over only the keys its rows
// see, so a causal mask computes about half of the full score matrix.
template <class B>
void attention_rows_forward(B& b,
                            const AttentionConfig& cfg,
                            View<typename B::scalar, typename B::space> out,
                            View<const typename B::scalar, typename B::space> q,
                            View<const typename B::scalar, typename B::space> k,
                            View<const typename B::scalar, typename B::space> v,
                            Span<const std::int32_t, typename B::space> limit,
                            std::span<const std::int32_t> host_limit) {
  using T = typename B::scalar;
  using S = typename B::space;
  const std::int64_t n = q.rows;
  const std::int64_t dh = cfg.head_dim;
  const std::int64_t group = cfg.heads / cfg.kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  if (n == 0) {
    return;
  }
  const std::int64_t tile = std::min(cfg.query_tile, n);
  auto frame = b.workspace().frame();
  auto scores = b.workspace().template take<T>(tile, std::max<std::int64_t>(k.rows, 1));
  for (std::int64_t t0 = 0; t0 < n; t0 += tile) {
    const std::int64_t rows = std::min(tile, n - t0);
    const std::int64_t kc = tile_keys(host_limit, t0, rows, k.rows);
    auto o_t = out.row_block(t0, rows);
    if (kc == 0) {
      b.fill(o_t, T{});
      continue;
    }
    auto p = View<T, S>(scores.data, rows, kc);  // [rows, kc]
    auto q_t = q.row_block(t0, rows);
    auto lim = limit.subspan(t0, rows);
    for (std::int64_t h = 0; h < cfg.heads; ++h) {
      const std::int64_t g = h / group;
      b.gemm(p,
             q_t.col_block(h * dh, dh),
             Trans::no,
             k.row_block(0, kc).col_block(g * dh, dh),
             Trans::yes,
             1.0,
             0.0);
      b.masked_softmax_rows(p, cview(p), lim, scale);
      b.gemm(o_t.col_block(h * dh, dh),
             cview(p),
             Trans::no,
             v.row_block(0, kc).col_block(g * dh, dh),
             Trans::no,
             1.0,
             0.0);
    }
  }
}

// Backward of attention_rows_forward, recomputing the probabilities tile by tile (nothing of
// size [n, m] is kept): dq, dk, dv += the gradients, given dout.
template <class B>
void attention_rows_backward(B& b,
                             const AttentionConfig& cfg,
                             View<typename B::scalar, typename B::space> dq,
                             View<typename B::scalar, typename B::space> dk,
                             View<typename B::scalar, typename B::space> dv,
                             View<const typename B::scalar, typename B::space> dout,
                             View<const typename B::scalar, typename B::space> q,
                             View<const typename B::scalar, typename B::space> k,
                             View<const typename B::scalar, typename B::space> v,
                             Span<const std::int32_t, typename B::space> limit,
                             std::span<const std::int32_t> host_limit) {
  using T = typename B::scalar;
  using S = typename B::space;
  const std::int64_t n = q.rows;
  const std::int64_t dh = cfg.head_dim;
  const std::int64_t group = cfg.heads / cfg.kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  if (n == 0) {
    return;
  }
  const std::int64_t tile = std::min(cfg.query_tile, n);
  auto frame = b.workspace().frame();
  auto p_buf = b.workspace().template take<T>(tile, std::max<std::int64_t>(k.rows, 1));
  auto dp_buf = b.workspace().template take<T>(tile, std::max<std::int64_t>(k.rows, 1));
  for (std::int64_t t0 = 0; t0 < n; t0 += tile) {
    const std::int64_t rows = std::min(tile, n - t0);
    const std::int64_t kc = tile_keys(host_limit, t0, rows, k.rows);
    if (kc == 0) {
      continue;
    }
    auto p = View<T, S>(p_buf.data, rows, kc);    // [rows, kc] probabilities
    auto dp = View<T, S>(dp_buf.data, rows, kc);  // [rows, kc] dL/dP, then dL/dscores
    auto q_t = q.row_block(t0, rows);
    auto do_t = dout.row_block(t0, rows);
    auto dq_t = dq.row_block(t0, rows);
    auto lim = limit.subspan(t0, rows);
    for (std::int64_t h = 0; h < cfg.heads; ++h) {
      const std::int64_t g = h / group;
      auto k_g = k.row_block(0, kc).col_block(g * dh, dh);
      auto v_g = v.row_block(0, kc).col_block(g * dh, dh);
      auto q_h = q_t.col_block(h * dh, dh);
      auto do_h = do_t.col_block(h * dh, dh);
      b.gemm(p, q_h, Trans::no, k_g, Trans::yes, 1.0, 0.0);
      b.masked_softmax_rows(p, cview(p), lim, scale);
      b.gemm(dp, do_h, Trans::no, v_g, Trans::yes, 1.0, 0.0);
      b.gemm(dv.row_block(0, kc).col_block(g * dh, dh),
             cview(p),
             Trans::yes,
             do_h,
             Trans::no,
             1.0,
             1.0);
      b.masked_softmax_rows_backward(dp, cview(p), cview(dp), lim, scale);
      b.gemm(dq_t.col_block(h * dh, dh), cview(dp), Trans::no, k_g, Trans::no, 1.0, 1.0);
      b.gemm(dk.row_block(0, kc).col_block(g * dh, dh),
             cview(dp),
             Trans::yes,
             q_h,
             Trans::no,
             1.0,
             1.0);
    }
  }
}

// y = x rotated by RoPE (or copied when theta = 0).
template <class B>
void rope_or_copy(B& b,
                  const AttentionConfig& cfg,
                  View<typename B::scalar, typename B::space> y,
                  View<const typename B::scalar, typename B::space> x,
                  Span<const std::int32_t, typename B::space> positions) {
  if (cfg.rope_theta > 0.0) {
    rope_forward(b, y, x, positions, RopeConfig{cfg.head_dim, cfg.rope_theta});
  } else {
    b.copy(y, x);
  }
}

}  // namespace detail

// ---- core attention ---------------------------------------------------------

// softmax(Q Kᵀ/√dh + mask) V over the whole batch, RoPE applied to q and k at the given positions.
// In: q [N, H·dh], k, v [N, Hkv·dh] (q and k normalised, not rotated), positions [N] (original
// positions: they survive routing). Out: [N, H·dh]. No weights: shared by all modalities (MoT).
template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class CoreAttention {
 public:
  using S = typename B::space;

  struct Saved {
    Tensor<T, S> q;                         // [N, H·dh] after RoPE
    Tensor<T, S> k;                         // [N, Hkv·dh] after RoPE
    Tensor<T, S> v;                         // [N, Hkv·dh]
    Tensor<std::int32_t, S> positions;      // [N, 1]
    Tensor<std::int32_t, S> limits;         // [N, 1] keys each query sees
    std::vector<std::int32_t> host_limits;  // [N] the same, on the host (tile bounds)
    std::int64_t seq_len = 0;
    bool valid = false;
  };

  explicit CoreAttention(AttentionConfig cfg)
      : cfg_(resolve_attention_config(cfg, "CoreAttention")) {}

  [[nodiscard]] const AttentionConfig& config() const {
    return cfg_;
  }

  // out [N, H·dh] = attention(q, k, v); inference: nothing is kept.
  void forward(B& b,
               View<const T, S> q,
               View<const T, S> k,
               View<const T, S> v,
               Span<const std::int32_t, S> positions,
               const AttentionMask& mask,
               View<T, S> out) const {
    constexpr const char* op = "CoreAttention::forward";
    const auto host_limits = checked_limits(op, q, k, v, positions, mask, out);
    auto frame = b.workspace().frame();
    auto qr = b.workspace().template take<T>(q.rows, q.cols);  // [N, H·dh]
    auto kr = b.workspace().template take<T>(k.rows, k.cols);  // [N, Hkv·dh]
    auto lim = b.workspace().template take_span<std::int32_t>(q.rows);
    b.copy_from_host(lim, std::span<const std::int32_t>(host_limits));
    detail::rope_or_copy(b, cfg_, qr, q, positions);
    detail::rope_or_copy(b, cfg_, kr, k, positions);
    run(b,
        out,
        detail::cview(qr),
        detail::cview(kr),
        v,
        Span<const std::int32_t, S>(lim),
        host_limits,
        mask.seq_len);
  }

  // Training forward: as forward, and keeps what backward needs in `saved`.
  void forward(B& b,
               View<const T, S> q,
               View<const T, S> k,
               View<const T, S> v,
               Span<const std::int32_t, S> positions,
               const AttentionMask& mask,
               View<T, S> out,
               Saved& saved) const {
    constexpr const char* op = "CoreAttention::forward";
    auto host_limits = checked_limits(op, q, k, v, positions, mask, out);
    const std::int64_t n = q.rows;
    saved.valid = false;
    reshape(saved.q, n, cfg_.q_width());
    reshape(saved.k, n, cfg_.kv_width());
    reshape(saved.v, n, cfg_.kv_width());
    reshape(saved.positions, n, 1);
    reshape(saved.limits, n, 1);
    b.copy(saved.v.view(), v);
    b.copy(saved.positions.view(), positions.as_column());
    b.copy_from_host(saved.limits.span(), std::span<const std::int32_t>(host_limits));
    saved.host_limits = std::move(host_limits);
    saved.seq_len = mask.seq_len;
    detail::rope_or_copy(b, cfg_, saved.q.view(), q, positions);
    detail::rope_or_copy(b, cfg_, saved.k.view(), k, positions);
    run(b,
        out,
        std::as_const(saved.q).view(),
        std::as_const(saved.k).view(),
        std::as_const(saved.v).view(),
        std::as_const(saved.limits).span(),
        saved.host_limits,
        saved.seq_len);
    saved.valid = true;
  }

  // dq [N, H·dh], dk, dv [N, Hkv·dh] += the gradients, given dout = dL/dout [N, H·dh].
  void backward(B& b,
                const Saved& saved,
                View<const T, S> dout,
                View<T, S> dq,
                View<T, S> dk,
                View<T, S> dv) const {
    constexpr const char* op = "CoreAttention::backward";
    MMSPARSE_CHECK(saved.valid, op, "saved", "the context of a training forward", "none");
    const std::int64_t n = saved.q.rows();
    check_shape(op, "dout", dout.shape(), {n, cfg_.q_width()});
    check_shape(op, "dq", dq.shape(), {n, cfg_.q_width()});
    check_shape(op, "dk", dk.shape(), {n, cfg_.kv_width()});
    check_shape(op, "dv", dv.shape(), {n, cfg_.kv_width()});
    auto frame = b.workspace().frame();
    auto dqr = b.workspace().template take<T>(n, cfg_.q_width());   // [N, H·dh] dL/d(rotated q)
    auto dkr = b.workspace().template take<T>(n, cfg_.kv_width());  // [N, Hkv·dh]
    b.fill(dqr, T{});
    b.fill(dkr, T{});
    const std::int64_t seq = saved.seq_len;
    const auto limits = saved.limits.span();
    for (std::int64_t s = 0; s < n / seq; ++s) {
      detail::attention_rows_backward(
          b,
          cfg_,
          dqr.row_block(s * seq, seq),
          dkr.row_block(s * seq, seq),
          dv.row_block(s * seq, seq),
          dout.row_block(s * seq, seq),
          saved.q.view().row_block(s * seq, seq),
          saved.k.view().row_block(s * seq, seq),
          saved.v.view().row_block(s * seq, seq),
          limits.subspan(s * seq, seq),
          std::span<const std::int32_t>(saved.host_limits).subspan(s * seq, seq));
    }
    const auto positions = saved.positions.span();
    if (cfg_.rope_theta > 0.0) {
      const RopeConfig rope{cfg_.head_dim, cfg_.rope_theta};
      rope_backward(b, dq, detail::cview(dqr), positions, rope);
      rope_backward(b, dk, detail::cview(dkr), positions, rope);
    } else {
      b.axpy(dq, detail::cview(dqr), 1.0);
      b.axpy(dk, detail::cview(dkr), 1.0);
    }
  }

  // FLOPs of the score and value products over the visible (query, key) pairs: 4·dh·H·pairs.
  [[nodiscard]] double flops(const AttentionMask& mask, std::int64_t tokens) const {
    double pairs = 0;
    for (const std::int32_t l : attention_key_limits(mask, tokens, "CoreAttention::flops")) {
      pairs += l;
    }
    return 4.0 * static_cast<double>(cfg_.head_dim * cfg_.heads) * pairs;
  }
  // Workspace bytes a forward or backward over `tokens` tokens in sequences of seq_len takes.
  [[nodiscard]] std::size_t workspace_bytes(std::int64_t tokens, std::int64_t seq_len) const {
    using W = Workspace<S>;
    const std::int64_t tile = std::min(cfg_.query_tile, std::max<std::int64_t>(seq_len, 1));
    return W::template bytes_for<T>(tokens * cfg_.q_width()) +
           W::template bytes_for<T>(tokens * cfg_.kv_width()) +
           W::template bytes_for<std::int32_t>(tokens) +
           2 * W::template bytes_for<T>(tile * std::max<std::int64_t>(seq_len, 1));
  }

 private:
  static void check_shape(const char* op, const char* arg, Shape got, Shape expected) {
    MMSPARSE_CHECK(got == expected, op, arg, expected, got);
  }
  template <class U>
  static void reshape(Tensor<U, S>& t, std::int64_t rows, std::int64_t cols) {
    if (t.rows() != rows || t.cols() != cols) {
      t = Tensor<U, S>(rows, cols);
    }
  }
  std::vector<std::int32_t> checked_limits(const char* op,
                                           View<const T, S> q,
                                           View<const T, S> k,
                                           View<const T, S> v,
                                           Span<const std::int32_t, S> positions,
                                           const AttentionMask& mask,
                                           View<T, S> out) const {
    const std::int64_t n = q.rows;
    check_shape(op, "q", q.shape(), {n, cfg_.q_width()});
    check_shape(op, "k", k.shape(), {n, cfg_.kv_width()});
    check_shape(op, "v", v.shape(), {n, cfg_.kv_width()});
    check_shape(op, "out", out.shape(), {n, cfg_.q_width()});
    MMSPARSE_CHECK(positions.size == n,
                   op,
                   "positions",
                   "one position per token (" + std::to_string(n) + ")",
                   positions.size);
    return attention_key_limits(mask, n, op);
  }
  void run(B& b,
           View<T, S> out,
           View<const T, S> q,
           View<const T, S> k,
           View<const T, S> v,
           Span<const std::int32_t, S> limits,
           std::span<const std::int32_t> host_limits,
           std::int64_t seq) const {
    for (std::int64_t s = 0; s < q.rows / seq; ++s) {
      detail::attention_rows_forward(b,
                                     cfg_,
                                     out.row_block(s * seq, seq),
                                     q.row_block(s * seq, seq),
                                     k.row_block(s * seq, seq),
                                     v.row_block(s * seq, seq),
                                     limits.subspan(s * seq, seq),
                                     host_limits.subspan(s * seq, seq));
    }
  }

  AttentionConfig cfg_;
};

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
  struct Saved {
    Tensor<T, S> x;       // [n, d]
    Tensor<T, S> q_raw;   // [n, H·dh] x Wq, before QK-norm (empty without)
    Tensor<T, S> k_raw;   // [n, Hkv·dh]
    Tensor<A, S> q_mean;  // [n·H, 1] layer_norm only
    Tensor<A, S> q_rstd;  // [n·H, 1]
    Tensor<A, S> k_mean;  // [n·Hkv, 1]
    Tensor<A, S> k_rstd;  // [n·Hkv, 1]
    bool valid = false;
  };

  explicit QkvProjection(AttentionConfig cfg)
      : cfg_(resolve_attention_config(cfg, "QkvProjection")) {
    const std::int64_t d = cfg_.d;
    const std::int64_t dh = cfg_.head_dim;
    wq_ = Tensor<T, S>(d, cfg_.q_width());
    wk_ = Tensor<T, S>(d, cfg_.kv_width());
    wv_ = Tensor<T, S>(d, cfg_.kv_width());
    Rng rng(cfg_.seed);
    const double std_in = 1.0 / std::sqrt(static_cast<double>(d));
    fill_normal(wq_, rng, std_in);
    fill_normal(wk_, rng, std_in);
    fill_normal(wv_, rng, std_in);
    weights_ = {wq_.view(), wk_.view(), wv_.view(), {}, {}, {}, {}};
    if (cfg_.qk_norm != QkNorm::none) {
      q_norm_ = Tensor<T, S>(1, dh);
      k_norm_ = Tensor<T, S>(1, dh);
      fill_value(q_norm_, T{1});
      fill_value(k_norm_, T{1});
      weights_.q_norm = q_norm_.view();
      weights_.k_norm = k_norm_.view();
    }
    if (cfg_.qk_norm == QkNorm::layer_norm) {
      q_norm_bias_ = Tensor<T, S>(1, dh);
      k_norm_bias_ = Tensor<T, S>(1, dh);
      fill_value(q_norm_bias_, T{});
      fill_value(k_norm_bias_, T{});
      weights_.q_norm_bias = q_norm_bias_.view();
      weights_.k_norm_bias = k_norm_bias_.view();
    }
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
    if (cfg.qk_norm != QkNorm::none) {
      shapes.push_back({"q_norm", {1, cfg.head_dim}});
      if (cfg.qk_norm == QkNorm::layer_norm) {
        shapes.push_back({"q_norm_bias", {1, cfg.head_dim}});
      }
      shapes.push_back({"k_norm", {1, cfg.head_dim}});
      if (cfg.qk_norm == QkNorm::layer_norm) {
        shapes.push_back({"k_norm_bias", {1, cfg.head_dim}});
      }
    }
    return shapes;
  }

  // Uses the caller's memory from now on (shapes checked); the layer's own storage is released.
  void bind(Weights w) {
    check_weights("QkvProjection::bind", w, "");
    weights_ = w;
    wq_ = {};
    wk_ = {};
    wv_ = {};
    q_norm_ = {};
    k_norm_ = {};
    q_norm_bias_ = {};
    k_norm_bias_ = {};
  }

  // q [n, H·dh], k, v [n, Hkv·dh] from x [n, d]; inference: nothing is kept.
  void forward(B& b, View<const T, S> x, View<T, S> q, View<T, S> k, View<T, S> v) const {
    check_io("QkvProjection::forward", x, q, k, v);
    auto frame = b.workspace().frame();
    const std::int64_t n = x.rows;
    if (cfg_.qk_norm == QkNorm::none) {
      project(b, x, q, k, v);
      return;
    }
    auto q_raw = b.workspace().template take<T>(n, cfg_.q_width());   // [n, H·dh]
    auto k_raw = b.workspace().template take<T>(n, cfg_.kv_width());  // [n, Hkv·dh]
    auto q_mean = b.workspace().template take_span<A>(n * cfg_.heads);
    auto q_rstd = b.workspace().template take_span<A>(n * cfg_.heads);
    auto k_mean = b.workspace().template take_span<A>(n * cfg_.kv_heads);
    auto k_rstd = b.workspace().template take_span<A>(n * cfg_.kv_heads);
    project(b, x, q_raw, k_raw, v);
    normalize(b, q, q_raw, weights_.q_norm, weights_.q_norm_bias, q_mean, q_rstd);
    normalize(b, k, k_raw, weights_.k_norm, weights_.k_norm_bias, k_mean, k_rstd);
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
    reshape(saved.q_raw, n, cfg_.q_width());
    reshape(saved.k_raw, n, cfg_.kv_width());
    reshape(saved.q_mean, n * cfg_.heads, 1);
    reshape(saved.q_rstd, n * cfg_.heads, 1);
    reshape(saved.k_mean, n * cfg_.kv_heads, 1);
    reshape(saved.k_rstd, n * cfg_.kv_heads, 1);
    project(b, xs, saved.q_raw.view(), saved.k_raw.view(), v);
    normalize(b,
              q,
              saved.q_raw.view(),
              weights_.q_norm,
              weights_.q_norm_bias,
              saved.q_mean.span(),
              saved.q_rstd.span());
    normalize(b,
              k,
              saved.k_raw.view(),
              weights_.k_norm,
              weights_.k_norm_bias,
              saved.k_mean.span(),
              saved.k_rstd.span());
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
    if (cfg_.qk_norm == QkNorm::none) {
      linear_backward(b, dx, grads.wq, none, dq, x, cview(weights_.wq));
      linear_backward(b, dx, grads.wk, none, dk, x, cview(weights_.wk));
    } else {
      auto dq_raw = b.workspace().template take<T>(n, cfg_.q_width());   // [n, H·dh]
      auto dk_raw = b.workspace().template take<T>(n, cfg_.kv_width());  // [n, Hkv·dh]
      normalize_backward(b,
                         dq_raw,
                         grads.q_norm,
                         grads.q_norm_bias,
                         dq,
                         saved.q_raw.view(),
                         weights_.q_norm,
                         saved.q_mean.span(),
                         saved.q_rstd.span());
      normalize_backward(b,
                         dk_raw,
                         grads.k_norm,
                         grads.k_norm_bias,
                         dk,
                         saved.k_raw.view(),
                         weights_.k_norm,
                         saved.k_mean.span(),
                         saved.k_rstd.span());
      linear_backward(b, dx, grads.wq, none, cview(dq_raw), x, cview(weights_.wq));
      linear_backward(b, dx, grads.wk, none, cview(dk_raw), x, cview(weights_.wk));
    }
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
  static View<const T, S> cview(View<const T, S> v) {
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
  static void fill_normal(Tensor<T, S>& t, Rng& rng, double stddev) {
    static_assert(std::is_same_v<S, host_space>,
                  "layers initialise their own weights on the host; bind() device weights");
    for (std::int64_t i = 0; i < t.size(); ++i) {
      t.data()[i] = scalar_cast<T>(stddev * rng.normal());
    }
  }
  static void fill_value(Tensor<T, S>& t, T value) {
    std::fill(t.data(), t.data() + t.size(), value);
  }

  // Weights (bind) must all have their shapes; gradients may also be 0-row views (skipped).
  void check_weights(const char* op, const Weights& w, const std::string& prefix) const {
    const std::int64_t d = cfg_.d;
    const std::int64_t dh = cfg_.head_dim;
    const bool grads = !prefix.empty();
    auto need = [&](const View<T, S>& v, const char* name, Shape expected) {
      MMSPARSE_CHECK(
          v.shape() == expected || (grads && v.rows == 0), op, prefix + name, expected, v.shape());
    };
    auto opt = [&](const View<T, S>& v, const char* name, bool used) {
      if (used) {
        need(v, name, {1, dh});
      } else {
        MMSPARSE_CHECK(
            v.empty(), op, prefix + name, "an empty view (not used by this qk_norm)", v.shape());
      }
    };
    need(w.wq, "wq", {d, cfg_.q_width()});
    need(w.wk, "wk", {d, cfg_.kv_width()});
    need(w.wv, "wv", {d, cfg_.kv_width()});
    const bool norm = cfg_.qk_norm != QkNorm::none;
    const bool bias = cfg_.qk_norm == QkNorm::layer_norm;
    opt(w.q_norm, "q_norm", norm);
    opt(w.k_norm, "k_norm", norm);
    opt(w.q_norm_bias, "q_norm_bias", bias);
    opt(w.k_norm_bias, "k_norm_bias", bias);
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

  // y [n, heads·dh] = per-head norm of raw (contiguous). A strided y goes through the workspace.
  void normalize(B& b,
                 View<T, S> y,
                 View<T, S> raw,
                 View<T, S> w,
                 View<T, S> bias,
                 Span<A, S> mean,
                 Span<A, S> rstd) const {
    const std::int64_t dh = cfg_.head_dim;
    auto frame = b.workspace().frame();
    View<T, S> dst = y.contiguous() ? y : b.workspace().template take<T>(y.rows, y.cols);
    const auto x_h = detail::per_head(cview(raw), dh);
    if (cfg_.qk_norm == QkNorm::rms_norm) {
      rms_norm_forward(b, detail::per_head(dst, dh), rstd, x_h, cview(w), cfg_.norm_eps);
    } else {
      layer_norm_forward(
          b, detail::per_head(dst, dh), mean, rstd, x_h, cview(w), cview(bias), cfg_.norm_eps);
    }
    if (dst.data != y.data) {
      b.copy(y, cview(dst));
    }
  }
  // draw [n, heads·dh] = dL/d(raw) (overwritten), dw, dbias += the norm weight gradients.
  void normalize_backward(B& b,
                          View<T, S> draw,
                          View<T, S> dw,
                          View<T, S> dbias,
                          View<const T, S> dy,
                          View<const T, S> raw,
                          View<T, S> w,
                          Span<const A, S> mean,
                          Span<const A, S> rstd) const {
    const std::int64_t dh = cfg_.head_dim;
    auto frame = b.workspace().frame();
    View<const T, S> dy_c = dy;
    if (!dy.contiguous()) {
      auto tmp = b.workspace().template take<T>(dy.rows, dy.cols);
      b.copy(tmp, dy);
      dy_c = tmp;
    }
    // A frozen norm weight (empty gradient) still needs somewhere to accumulate.
    View<T, S> dw_use = dw;
    if (dw.empty()) {
      dw_use = b.workspace().template take<T>(1, dh);
      b.fill(dw_use, T{});
    }
    b.fill(draw, T{});
    const auto dy_h = detail::per_head(dy_c, dh);
    const auto x_h = detail::per_head(raw, dh);
    if (cfg_.qk_norm == QkNorm::rms_norm) {
      rms_norm_backward(b, detail::per_head(draw, dh), dw_use, dy_h, x_h, cview(w), rstd);
    } else {
      View<T, S> db_use = dbias;
      if (dbias.empty()) {
        db_use = b.workspace().template take<T>(1, dh);
        b.fill(db_use, T{});
      }
      layer_norm_backward(
          b, detail::per_head(draw, dh), dw_use, db_use, dy_h, x_h, cview(w), mean, rstd);
    }
  }

  AttentionConfig cfg_;
  Tensor<T, S> wq_, wk_, wv_, q_norm_, k_norm_, q_norm_bias_, k_norm_bias_;  // own storage
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
    wo_ = Tensor<T, S>(cfg_.q_width(), cfg_.d);
    static_assert(std::is_same_v<S, host_space>,
                  "layers initialise their own weights on the host; bind() device weights");
    Rng rng(cfg_.seed ^ 0x9e3779b97f4a7c15ull);  // a stream apart from QkvProjection's
    const double stddev = 1.0 / std::sqrt(static_cast<double>(cfg_.q_width()));
    for (std::int64_t i = 0; i < wo_.size(); ++i) {
      wo_.data()[i] = scalar_cast<T>(stddev * rng.normal());
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

  // y [N, d] = attention(x [N, d]) at positions [N] under `mask`; inference.
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
  [[nodiscard]] std::size_t workspace_bytes(std::int64_t tokens, std::int64_t seq_len) const {
    using W = Workspace<S>;
    return 2 * W::template bytes_for<T>(tokens * cfg_.q_width()) +
           2 * W::template bytes_for<T>(tokens * cfg_.kv_width()) +
           2 * W::template bytes_for<T>(tokens * cfg_.q_width()) +
           4 * W::template bytes_for<accum_t<T>>(tokens * cfg_.heads) +
           core_.workspace_bytes(tokens, seq_len);
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

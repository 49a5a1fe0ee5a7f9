// mmsparse/layers/attention_core.hpp
//
// The weightless core of global self-attention (MoT §2.2 Eq. 3): RoPE at per-token positions,
// then softmax(QKᵀ/√dh + mask) V over the whole mixed sequence, with GQA. Masks: causal, or
// causal with bidirectional image spans (Transfusion, PAPERS.md §4.18). Also AttentionConfig.
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
#include <mmsparse/core/tensor.hpp>
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

// Runs body(i, ops, scratch) for i in [0, count), `scratch` being scratch_elems scalars of the
// item's own and `ops` the kernels it calls (gemm, masked_softmax_rows and its backward). A
// backend with for_each_head may run the items side by side (CpuBackend: one thread each);
// otherwise they run in order on b, with scratch from its workspace.
template <class B, class F>
void for_each_head(B& b, std::int64_t count, std::int64_t scratch_elems, F&& body) {
  using T = typename B::scalar;
  if constexpr (requires { b.template for_each_head<T>(count, scratch_elems, body); }) {
    b.template for_each_head<T>(count, scratch_elems, body);
  } else {
    auto frame = b.workspace().frame();
    T* scratch = b.workspace().template take_span<T>(scratch_elems).data;
    for (std::int64_t i = 0; i < count; ++i) {
      body(i, b, scratch);
    }
  }
}

// out [n, H·dh] = for each head h: softmax(q_h k_g^T / √dh, row r over keys [0, limit[r])) v_g,
// g = h / (H / Hkv), for the queries q [n, H·dh] of one sequence against its keys k, v
// [m, Hkv·dh] (RoPE already applied). Query rows go by tiles, each over only the keys its rows
// see, so a causal mask computes about half of the full score matrix. Within a tile the heads
// are independent items of for_each_head.
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
  for (std::int64_t t0 = 0; t0 < n; t0 += tile) {
    const std::int64_t rows = std::min(tile, n - t0);
    const std::int64_t kc = tile_keys(host_limit, t0, rows, k.rows);
    auto o_t = out.row_block(t0, rows);
    if (kc == 0) {
      b.fill(o_t, T{});
      continue;
    }
    auto q_t = q.row_block(t0, rows);
    auto lim = limit.subspan(t0, rows);
    for_each_head(b, cfg.heads, rows * kc, [&](std::int64_t h, auto& ops, T* scratch) {
      const std::int64_t g = h / group;
      auto p = View<T, S>(scratch, rows, kc);  // [rows, kc]
      ops.gemm(p,
               q_t.col_block(h * dh, dh),
               Trans::no,
               k.row_block(0, kc).col_block(g * dh, dh),
               Trans::yes,
               1.0,
               0.0);
      ops.masked_softmax_rows(p, cview(p), lim, scale);
      ops.gemm(o_t.col_block(h * dh, dh),
               cview(p),
               Trans::no,
               v.row_block(0, kc).col_block(g * dh, dh),
               Trans::no,
               1.0,
               0.0);
    });
  }
}

// Backward of attention_rows_forward, recomputing the probabilities tile by tile (nothing of
// size [n, m] is kept): dq, dk, dv += the gradients, given dout. The items of for_each_head are
// the kv groups (the heads of a group add into the same dk, dv columns).
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
  for (std::int64_t t0 = 0; t0 < n; t0 += tile) {
    const std::int64_t rows = std::min(tile, n - t0);
    const std::int64_t kc = tile_keys(host_limit, t0, rows, k.rows);
    if (kc == 0) {
      continue;
    }
    auto q_t = q.row_block(t0, rows);
    auto do_t = dout.row_block(t0, rows);
    auto dq_t = dq.row_block(t0, rows);
    auto lim = limit.subspan(t0, rows);
    for_each_head(b, cfg.kv_heads, 2 * rows * kc, [&](std::int64_t g, auto& ops, T* scratch) {
      auto p = View<T, S>(scratch, rows, kc);               // [rows, kc] probabilities
      auto dp = View<T, S>(scratch + rows * kc, rows, kc);  // dL/dP, then dL/dscores
      auto k_g = k.row_block(0, kc).col_block(g * dh, dh);
      auto v_g = v.row_block(0, kc).col_block(g * dh, dh);
      auto dk_g = dk.row_block(0, kc).col_block(g * dh, dh);
      auto dv_g = dv.row_block(0, kc).col_block(g * dh, dh);
      for (std::int64_t h = g * group; h < (g + 1) * group; ++h) {
        auto q_h = q_t.col_block(h * dh, dh);
        auto do_h = do_t.col_block(h * dh, dh);
        ops.gemm(p, q_h, Trans::no, k_g, Trans::yes, 1.0, 0.0);
        ops.masked_softmax_rows(p, cview(p), lim, scale);
        ops.gemm(dp, do_h, Trans::no, v_g, Trans::yes, 1.0, 0.0);
        ops.gemm(dv_g, cview(p), Trans::yes, do_h, Trans::no, 1.0, 1.0);
        ops.masked_softmax_rows_backward(dp, cview(p), cview(dp), lim, scale);
        ops.gemm(dq_t.col_block(h * dh, dh), cview(dp), Trans::no, k_g, Trans::no, 1.0, 1.0);
        ops.gemm(dk_g, cview(dp), Trans::yes, q_h, Trans::no, 1.0, 1.0);
      }
    });
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
    const std::size_t q = W::template bytes_for<T>(tokens * cfg_.q_width());
    const std::size_t kv = W::template bytes_for<T>(tokens * cfg_.kv_width());
    const std::size_t scores = W::template bytes_for<T>(tile * std::max<std::int64_t>(seq_len, 1));
    const std::size_t forward = q + kv + W::template bytes_for<std::int32_t>(tokens) + scores;
    const std::size_t backward = q + kv + std::max(2 * scores, q);  // then RoPE's inverse
    return std::max(forward, backward);
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

}  // namespace mmsparse

// mmsparse/layers/kv_cache.hpp
//
// Per-layer key/value cache for token-by-token decoding, and attention of new tokens against it.
// Every (layer, sequence) has its own length: a token that skips a MoD layer writes no K/V there
// (PAPERS.md §4.11). Keys are cached after RoPE at the token's original position; a new query sees
// every cached key and the new keys up to itself, so decoding is causal by construction.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention.hpp>

namespace mmsparse {

template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class KvCache {
 public:
  using S = typename B::space;

  struct Config {
    std::string name = "kv_cache";  // names the cache in errors, e.g. "layer 3"
    std::int64_t sequences = 1;
    std::int64_t capacity = 0;  // positions per sequence
    std::int64_t width = 0;     // Hkv·dh (AttentionConfig::kv_width())
  };

  explicit KvCache(Config cfg) : cfg_(std::move(cfg)) {
    constexpr const char* op = "KvCache";
    MMSPARSE_CHECK(cfg_.sequences > 0, op, "sequences", "> 0", cfg_.sequences);
    MMSPARSE_CHECK(cfg_.capacity > 0, op, "capacity", "> 0", cfg_.capacity);
    MMSPARSE_CHECK(cfg_.width > 0, op, "width", "> 0", cfg_.width);
    k_ = Tensor<T, S>(cfg_.sequences * cfg_.capacity, cfg_.width);
    v_ = Tensor<T, S>(cfg_.sequences * cfg_.capacity, cfg_.width);
    length_.assign(static_cast<std::size_t>(cfg_.sequences), 0);
  }

  [[nodiscard]] const std::string& name() const {
    return cfg_.name;
  }
  [[nodiscard]] std::int64_t sequences() const {
    return cfg_.sequences;
  }
  [[nodiscard]] std::int64_t capacity() const {
    return cfg_.capacity;
  }
  [[nodiscard]] std::int64_t width() const {
    return cfg_.width;
  }
  [[nodiscard]] std::int64_t length(std::int64_t seq) const {
    check_sequence("KvCache::length", seq);
    return length_[static_cast<std::size_t>(seq)];
  }
  // The cached keys / values of a sequence: [length(seq), width].
  [[nodiscard]] View<const T, S> keys(std::int64_t seq) const {
    check_sequence("KvCache::keys", seq);
    return std::as_const(k_).view().row_block(seq * cfg_.capacity, length(seq));
  }
  [[nodiscard]] View<const T, S> values(std::int64_t seq) const {
    check_sequence("KvCache::values", seq);
    return std::as_const(v_).view().row_block(seq * cfg_.capacity, length(seq));
  }

  // Throws unless `count` more positions fit in sequence `seq`.
  void check_room(const char* op, std::int64_t seq, std::int64_t count) const {
    check_sequence(op, seq);
    const std::int64_t want = length_[static_cast<std::size_t>(seq)] + count;
    MMSPARSE_CHECK(want <= cfg_.capacity,
                   op,
                   "cache '" + cfg_.name + "' sequence " + std::to_string(seq) + " length",
                   "at most its capacity " + std::to_string(cfg_.capacity),
                   want);
  }

  // Appends k, v [n, width] (keys already rotated) to sequence `seq`.
  void append(B& b, std::int64_t seq, View<const T, S> k, View<const T, S> v) {
    constexpr const char* op = "KvCache::append";
    MMSPARSE_CHECK(
        k.cols == cfg_.width, op, "k", "[n, " + std::to_string(cfg_.width) + "]", k.shape());
    MMSPARSE_CHECK(v.shape() == k.shape(), op, "v", k.shape(), v.shape());
    check_room(op, seq, k.rows);
    auto& len = length_[static_cast<std::size_t>(seq)];
    const std::int64_t row = seq * cfg_.capacity + len;
    b.copy(k_.view().row_block(row, k.rows), k);
    b.copy(v_.view().row_block(row, v.rows), v);
    len += k.rows;
  }

  // Forgets every sequence (or one): the next append starts at row 0.
  void reset() {
    length_.assign(length_.size(), 0);
  }
  void reset(std::int64_t seq) {
    check_sequence("KvCache::reset", seq);
    length_[static_cast<std::size_t>(seq)] = 0;
  }

 private:
  void check_sequence(const char* op, std::int64_t seq) const {
    MMSPARSE_CHECK(seq >= 0 && seq < cfg_.sequences,
                   op,
                   "sequence (of cache '" + cfg_.name + "')",
                   "an index in [0, " + std::to_string(cfg_.sequences) + ")",
                   seq);
  }

  Config cfg_;
  Tensor<T, S> k_;  // [sequences · capacity, width]
  Tensor<T, S> v_;  // [sequences · capacity, width]
  std::vector<std::int64_t> length_;
};

// The n new tokens of sequence `seq` (q [n, H·dh], k, v [n, Hkv·dh]: projected and normalised,
// not rotated; positions [n]: their original positions) are rotated, appended to the cache, and
// attend over it: out [n, H·dh]. New token r sees the cached keys and new keys 0..r.
template <class T, class B>
void core_attention_decode(B& b,
                           const CoreAttention<T, B>& core,
                           KvCache<T, B>& cache,
                           std::int64_t seq,
                           std::type_identity_t<View<const T, typename B::space>> q,
                           std::type_identity_t<View<const T, typename B::space>> k,
                           std::type_identity_t<View<const T, typename B::space>> v,
                           Span<const std::int32_t, typename B::space> positions,
                           std::type_identity_t<View<T, typename B::space>> out) {
  constexpr const char* op = "core_attention_decode";
  const AttentionConfig& cfg = core.config();
  const std::int64_t n = q.rows;
  MMSPARSE_CHECK(
      q.cols == cfg.q_width(), op, "q", "[n, " + std::to_string(cfg.q_width()) + "]", q.shape());
  MMSPARSE_CHECK(
      k.shape() == (Shape{n, cfg.kv_width()}), op, "k", (Shape{n, cfg.kv_width()}), k.shape());
  MMSPARSE_CHECK(v.shape() == k.shape(), op, "v", k.shape(), v.shape());
  MMSPARSE_CHECK(out.shape() == q.shape(), op, "out", q.shape(), out.shape());
  MMSPARSE_CHECK(positions.size == n,
                 op,
                 "positions",
                 "one position per new token (" + std::to_string(n) + ")",
                 positions.size);
  MMSPARSE_CHECK(cache.width() == cfg.kv_width(),
                 op,
                 "cache '" + cache.name() + "' width",
                 cfg.kv_width(),
                 cache.width());
  cache.check_room(op, seq, n);  // before anything is written
  const std::int64_t before = cache.length(seq);
  std::vector<std::int32_t> host_limits(static_cast<std::size_t>(n));
  for (std::int64_t r = 0; r < n; ++r) {
    host_limits[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(before + r + 1);
  }
  auto frame = b.workspace().frame();
  auto qr = b.workspace().template take<T>(n, cfg.q_width());   // [n, H·dh]
  auto kr = b.workspace().template take<T>(n, cfg.kv_width());  // [n, Hkv·dh]
  auto lim = b.workspace().template take_span<std::int32_t>(n);
  b.copy_from_host(lim, std::span<const std::int32_t>(host_limits));
  detail::rope_or_copy(b, cfg, qr, q, positions);
  detail::rope_or_copy(b, cfg, kr, k, positions);
  cache.append(b, seq, detail::cview(kr), v);
  detail::attention_rows_forward(b,
                                 cfg,
                                 out,
                                 detail::cview(qr),
                                 cache.keys(seq),
                                 cache.values(seq),
                                 Span<const std::int32_t, typename B::space>(lim),
                                 host_limits);
}

// y [n, d] for the n new tokens x [n, d] of sequence `seq` at their original positions [n]:
// projections, core_attention_decode against `cache`, output projection. Inference only.
template <class T, class B>
void attention_decode(B& b,
                      const Attention<T, B>& layer,
                      KvCache<T, B>& cache,
                      std::int64_t seq,
                      std::type_identity_t<View<const T, typename B::space>> x,
                      Span<const std::int32_t, typename B::space> positions,
                      std::type_identity_t<View<T, typename B::space>> y) {
  constexpr const char* op = "attention_decode";
  const AttentionConfig& cfg = layer.config();
  const std::int64_t n = x.rows;
  MMSPARSE_CHECK(x.cols == cfg.d, op, "x", "[n, " + std::to_string(cfg.d) + "]", x.shape());
  MMSPARSE_CHECK(y.shape() == x.shape(), op, "y", x.shape(), y.shape());
  cache.check_room(op, seq, n);
  auto frame = b.workspace().frame();
  auto q = b.workspace().template take<T>(n, cfg.q_width());   // [n, H·dh]
  auto k = b.workspace().template take<T>(n, cfg.kv_width());  // [n, Hkv·dh]
  auto v = b.workspace().template take<T>(n, cfg.kv_width());  // [n, Hkv·dh]
  auto a = b.workspace().template take<T>(n, cfg.q_width());   // [n, H·dh]
  layer.qkv().forward(b, x, q, k, v);
  core_attention_decode(b,
                        layer.core(),
                        cache,
                        seq,
                        detail::cview(q),
                        detail::cview(k),
                        detail::cview(v),
                        positions,
                        a);
  layer.out().forward(b, detail::cview(a), y);
}

}  // namespace mmsparse

// mmsparse/layers/generate.hpp
//
// Inference for a Decoder (model.hpp): a DecodeSession holds one KV cache per layer (per-layer,
// per-sequence lengths: a token a MoD layer skips writes no K/V there, PAPERS.md §4.11), prefills a
// prompt and decodes token by token; expert choice and MoD decide with their aux routers (MoMa
// §2.4). Sampling: greedy, or temperature with top-k, seeded (counter-based), within an id range.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/kv_cache.hpp>
#include <mmsparse/layers/model.hpp>

namespace mmsparse {

struct SamplingConfig {
  double temperature = 0.0;        // 0: greedy (argmax; ties: lower id)
  std::int64_t top_k = 0;          // > 0: sample among the k most likely ids only
  std::uint64_t seed = 0;          // draws are uniform_open(seed, step): reproducible
  std::int32_t allowed_begin = 0;  // ids sampled from [allowed_begin, allowed_end);
  std::int32_t allowed_end = 0;    // 0, 0: the whole vocabulary (e.g. the image codebook only)
};

// The next token from one row of logits; `step` is the counter of the random draw.
[[nodiscard]] inline std::int32_t sample_token(std::span<const double> logits,
                                               const SamplingConfig& cfg,
                                               std::uint64_t step) {
  constexpr const char* op = "sample_token";
  const auto v = static_cast<std::int32_t>(logits.size());
  const std::int32_t lo = cfg.allowed_end > 0 ? cfg.allowed_begin : 0;
  const std::int32_t hi = cfg.allowed_end > 0 ? cfg.allowed_end : v;
  MMSPARSE_CHECK(v > 0, op, "logits", "at least one id", v);
  MMSPARSE_CHECK(lo >= 0 && lo < hi && hi <= v,
                 op,
                 "allowed_begin, allowed_end",
                 "a non-empty range inside [0, " + std::to_string(v) + ")",
                 std::to_string(lo) + ", " + std::to_string(hi));
  MMSPARSE_CHECK(cfg.temperature >= 0.0 && std::isfinite(cfg.temperature),
                 op,
                 "temperature",
                 ">= 0",
                 cfg.temperature);
  MMSPARSE_CHECK(cfg.top_k >= 0, op, "top_k", ">= 0 (0: no cut)", cfg.top_k);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(hi - lo));
  std::iota(ids.begin(), ids.end(), lo);
  auto better = [&](std::int32_t a, std::int32_t c) {
    const double la = logits[static_cast<std::size_t>(a)];
    const double lc = logits[static_cast<std::size_t>(c)];
    return la > lc || (la == lc && a < c);
  };
  if (cfg.temperature == 0.0) {
    return *std::min_element(ids.begin(), ids.end(), better);
  }
  const auto k = cfg.top_k > 0
                     ? std::min<std::size_t>(static_cast<std::size_t>(cfg.top_k), ids.size())
                     : ids.size();
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), better);
  ids.resize(k);
  const double top = logits[static_cast<std::size_t>(ids[0])];
  std::vector<double> p(k);
  double sum = 0.0;
  for (std::size_t i = 0; i < k; ++i) {
    p[i] = std::exp((logits[static_cast<std::size_t>(ids[i])] - top) / cfg.temperature);
    sum += p[i];
  }
  double u = uniform_open(cfg.seed, step) * sum;
  for (std::size_t i = 0; i < k; ++i) {
    u -= p[i];
    if (u <= 0.0) {
      return ids[i];
    }
  }
  return ids[k - 1];
}

// The caches and positions of `sequences` sequences being decoded by one model.
template <class Model>
class DecodeSession {
 public:
  using T = typename Model::scalar;
  using B = typename Model::backend_type;
  using S = typename B::space;

  DecodeSession(const Model& model, std::int64_t sequences, std::int64_t capacity)
      : model_(model),
        length_(static_cast<std::size_t>(sequences), 0),
        last_(static_cast<std::size_t>(sequences)) {
    constexpr const char* op = "DecodeSession";
    MMSPARSE_CHECK(sequences > 0, op, "sequences", "> 0", sequences);
    MMSPARSE_CHECK(capacity > 0, op, "capacity", "> 0", capacity);
    capacity_ = capacity;
    for (std::int64_t l = 0; l < model.layers(); ++l) {
      caches_.emplace_back(typename KvCache<T, B>::Config{
          "layer " + std::to_string(l), sequences, capacity, model.kv_width(l)});
    }
  }

  [[nodiscard]] const Model& model() const {
    return model_;
  }
  [[nodiscard]] std::int64_t capacity() const {
    return capacity_;
  }
  // Tokens sequence `seq` has consumed so far.
  [[nodiscard]] std::int64_t length(std::int64_t seq) const {
    check_sequence("DecodeSession::length", seq);
    return length_[static_cast<std::size_t>(seq)];
  }
  // Cached positions of layer l for sequence `seq` (fewer than length() in a MoD layer).
  [[nodiscard]] std::int64_t cached(std::int64_t layer, std::int64_t seq) const {
    MMSPARSE_CHECK(layer >= 0 && layer < model_.layers(),
                   "DecodeSession::cached",
                   "layer",
                   "an index in [0, " + std::to_string(model_.layers()) + ")",
                   layer);
    return caches_[static_cast<std::size_t>(layer)].length(seq);
  }
  // The logits of the last token sequence `seq` consumed (host), empty before any.
  [[nodiscard]] const std::vector<double>& last_logits(std::int64_t seq) const {
    check_sequence("DecodeSession::last_logits", seq);
    return last_[static_cast<std::size_t>(seq)];
  }

  // Feeds `tokens` to sequence `seq` (a prompt, or one token at a time): logits [n, V] of each.
  // Everything is checked (room in the cache, ids in the vocabulary) before anything is written.
  typename Model::Stats append(B& b,
                               std::int64_t seq,
                               std::span<const std::int32_t> tokens,
                               View<T, S> logits) {
    constexpr const char* op = "DecodeSession::append";
    check_sequence(op, seq);
    const auto n = static_cast<std::int64_t>(tokens.size());
    const std::int64_t at = length_[static_cast<std::size_t>(seq)];
    MMSPARSE_CHECK(at + n <= capacity_,
                   op,
                   "sequence " + std::to_string(seq) + " length",
                   "at most the cache capacity " + std::to_string(capacity_),
                   at + n);
    auto st = model_.decode(b, std::span<KvCache<T, B>>(caches_), seq, tokens, at, logits);
    length_[static_cast<std::size_t>(seq)] += n;
    if (n > 0) {
      std::vector<T> row(static_cast<std::size_t>(logits.cols));
      b.copy_to_host(std::span<T>(row), Span<const T, S>(logits.row(n - 1), logits.cols));
      last_[static_cast<std::size_t>(seq)].assign(row.begin(), row.end());
    }
    return st;
  }

  // Forgets every sequence.
  void reset() {
    for (auto& c : caches_) {
      c.reset();
    }
    std::fill(length_.begin(), length_.end(), 0);
    for (auto& l : last_) {
      l.clear();
    }
  }

 private:
  void check_sequence(const char* op, std::int64_t seq) const {
    MMSPARSE_CHECK(seq >= 0 && seq < static_cast<std::int64_t>(length_.size()),
                   op,
                   "sequence",
                   "an index in [0, " + std::to_string(length_.size()) + ")",
                   seq);
  }

  const Model& model_;
  std::int64_t capacity_ = 0;
  std::vector<KvCache<T, B>> caches_;  // one per layer
  std::vector<std::int64_t> length_;   // per sequence
  std::vector<std::vector<double>> last_;
};

// Feeds `prompt` (may be empty: continue after the last token) to sequence `seq`, then samples
// `count` tokens one by one, each fed back (so a later call continues). Returns the samples.
template <class Model>
std::vector<std::int32_t> generate(typename Model::backend_type& b,
                                   DecodeSession<Model>& session,
                                   std::int64_t seq,
                                   std::span<const std::int32_t> prompt,
                                   std::int64_t count,
                                   const SamplingConfig& cfg) {
  using T = typename Model::scalar;
  constexpr const char* op = "generate";
  MMSPARSE_CHECK(count >= 0, op, "count", ">= 0", count);
  MMSPARSE_CHECK(!prompt.empty() || !session.last_logits(seq).empty(),
                 op,
                 "prompt",
                 "tokens, or a sequence that has consumed some",
                 "an empty prompt for an empty sequence");
  MMSPARSE_CHECK(
      session.length(seq) + static_cast<std::int64_t>(prompt.size()) + count <= session.capacity(),
      op,
      "count",
      "a total length within the cache capacity " + std::to_string(session.capacity()),
      session.length(seq) + static_cast<std::int64_t>(prompt.size()) + count);
  const std::int64_t v = session.model().config().vocab;
  if (!prompt.empty()) {
    Tensor<T, typename Model::backend_type::space> logits(static_cast<std::int64_t>(prompt.size()),
                                                          v);
    (void)session.append(b, seq, prompt, logits.view());
  }
  std::vector<std::int32_t> out;
  Tensor<T, typename Model::backend_type::space> logits(1, v);
  for (std::int64_t i = 0; i < count; ++i) {
    const auto step = static_cast<std::uint64_t>(session.length(seq));
    const std::int32_t next = sample_token(session.last_logits(seq), cfg, step);
    out.push_back(next);
    (void)session.append(b, seq, std::span<const std::int32_t>(&out.back(), 1), logits.view());
  }
  return out;
}

}  // namespace mmsparse

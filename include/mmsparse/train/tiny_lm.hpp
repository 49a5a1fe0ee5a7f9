// mmsparse/train/tiny_lm.hpp
//
// A tiny mixed-modal token model for examples and tests: embedding -> [RMSNorm -> FFN + residual]
// x layers -> RMSNorm -> linear head -> cross-entropy (pre-norm residual blocks, no attention).
// The FFN type is the one knob: SwiGluFfn (dense) or any SparseFfn (MoMa 1t1i, 4t4i, MoD, ...).
// All parameters live in one ParamArena; the aux losses of sparse layers join the loss.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>

namespace mmsparse {

template <class Ffn, class B>
class TinyLm {
 public:
  using T = typename B::scalar;
  using S = typename B::space;
  static constexpr bool sparse = requires {
    typename Ffn::router_type;
  };

  struct Config {
    std::int64_t vocab = 0;
    std::int64_t d = 0;
    std::int64_t layers = 2;
    std::int64_t modalities = 2;
    typename Ffn::Config ffn{};  // its d must equal d
    double norm_eps = 1e-5;
    std::uint64_t seed = 0;
  };
  struct Batch {
    Span<const std::int32_t, S> tokens;   // [N]
    Span<const std::int32_t, S> targets;  // [N]
    Span<const ModalityId, S> modality;   // [N]
  };
  struct Output {
    Var<T, B> loss;             // [1, 1] cross-entropy + aux losses: backward from here
    CrossEntropyReport report;  // the cross-entropy alone, overall and per modality
    double aux = 0.0;           // sum of the sparse layers' aux losses
  };

  TinyLm(B& b, Config cfg) : cfg_(std::move(cfg)) {
    constexpr const char* op = "TinyLm";
    MMSPARSE_CHECK(cfg_.vocab > 0, op, "vocab", "> 0", cfg_.vocab);
    MMSPARSE_CHECK(cfg_.d > 0, op, "d", "> 0", cfg_.d);
    MMSPARSE_CHECK(cfg_.layers >= 1, op, "layers", ">= 1", cfg_.layers);
    MMSPARSE_CHECK(cfg_.ffn.d == cfg_.d, op, "ffn.d", cfg_.d, cfg_.ffn.d);
    const std::int64_t d = cfg_.d;
    embed_ = arena_.add("embed", {cfg_.vocab, d}, /*decay=*/false);
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const std::string p = "layer" + std::to_string(l);
      norms_.push_back(arena_.add(p + ".norm", {1, d}, /*decay=*/false));
      ffn_ids_.push_back(declare_layer<Ffn>(arena_, p + ".ffn", cfg_.ffn));
    }
    final_norm_ = arena_.add("final_norm", {1, d}, /*decay=*/false);
    head_ = arena_.add("head", {d, cfg_.vocab});
    arena_.allocate(b);

    Rng rng(cfg_.seed);
    rng.fill_normal(arena_.value(embed_), 1.0);
    rng.fill_normal(arena_.value(head_), 1.0 / std::sqrt(static_cast<double>(d)));
    for (const auto id : norms_) {
      b.fill(arena_.value(id), T{1});
    }
    b.fill(arena_.value(final_norm_), T{1});
    ffns_.reserve(static_cast<std::size_t>(cfg_.layers));  // ops keep references to the layers
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      auto c = cfg_.ffn;
      c.seed = cfg_.seed + 1000 + static_cast<std::uint64_t>(l);  // each layer its own init
      ffns_.emplace_back(c);
      Ffn& layer = ffns_.back();
      const auto own = layer.weights();  // the layer's initial weights, copied into the arena
      const auto ids = ffn_ids_[static_cast<std::size_t>(l)];
      const auto dst = layer_weights<Ffn>(arena_, ids, false);
      copy_weights(b, dst, own);
      layer.bind(dst);
      grads_.push_back(layer_weights<Ffn>(arena_, ids, true));
    }
  }
  TinyLm(const TinyLm&) = delete;
  TinyLm& operator=(const TinyLm&) = delete;

  [[nodiscard]] ParamArena<T, B>& params() {
    return arena_;
  }
  [[nodiscard]] const Config& config() const {
    return cfg_;
  }
  [[nodiscard]] const Ffn& ffn(std::int64_t layer) const {
    return ffns_[static_cast<std::size_t>(layer)];
  }

  // The loss of one batch; with the tape recording, tape.backward(out.loss) fills params().
  // `training` turns router noise on (seeded by `seed`). The batch must outlive the backward.
  [[nodiscard]] Output forward(
      Tape& tape, B& b, const Batch& batch, bool training = false, std::uint64_t seed = 0) {
    const std::int64_t n = batch.tokens.size;
    MMSPARSE_CHECK(batch.targets.size == n, "TinyLm::forward", "targets", n, batch.targets.size);
    MMSPARSE_CHECK(batch.modality.size == n, "TinyLm::forward", "modality", n, batch.modality.size);
    Output out;
    Var<T, B> h = embedding(tape, b, batch.tokens, param(b, embed_));  // [N, d]
    std::vector<Var<T, B>> aux;
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const auto li = static_cast<std::size_t>(l);
      Var<T, B> z = rms_norm(tape, b, h, param(b, norms_[li]), cfg_.norm_eps);
      if constexpr (sparse) {
        typename Ffn::ForwardOptions opt;
        opt.training = training;
        opt.seed = seed * 1315423911ull + static_cast<std::uint64_t>(l);
        auto r = sparse_ffn(tape, b, ffns_[li], grads_[li], z, batch.modality, opt);
        out.aux += static_cast<double>(r.stats.aux.total());
        aux.push_back(r.aux);
        h = add(tape, b, h, r.y);
      } else {
        h = add(tape, b, h, swiglu_ffn(tape, b, ffns_[li], grads_[li], z));
      }
    }
    Var<T, B> o = rms_norm(tape, b, h, param(b, final_norm_), cfg_.norm_eps);
    Var<T, B> logits = linear(tape, b, o, param(b, head_));  // [N, V]
    auto ce = cross_entropy(tape, b, logits, batch.targets, batch.modality, cfg_.modalities);
    out.report = ce.report;
    out.loss = ce.loss;
    for (const auto& a : aux) {
      out.loss = add(tape, b, out.loss, a);
    }
    return out;
  }

 private:
  Var<T, B> param(B& b, std::int64_t id) {
    return arena_.var(b, id);
  }

  template <class Wt>
  static void copy_weights(B& b, const Wt& dst, const Wt& src) {
    if constexpr (sparse) {
      b.copy(dst.router, View<const typename Ffn::W, S>(src.router));
    }
    b.copy(dst.w1, View<const T, S>(src.w1));
    b.copy(dst.w3, View<const T, S>(src.w3));
    b.copy(dst.w2, View<const T, S>(src.w2));
  }

  Config cfg_;
  ParamArena<T, B> arena_;
  std::int64_t embed_ = 0;
  std::vector<std::int64_t> norms_;
  std::vector<std::vector<std::int64_t>> ffn_ids_;
  std::int64_t final_norm_ = 0;
  std::int64_t head_ = 0;
  std::vector<Ffn> ffns_;
  std::vector<typename Ffn::Weights> grads_;
};

}  // namespace mmsparse

// mmsparse/layers/model.hpp
//
// Decoder-only LM over a joint vocabulary (MoMa §2.1, Chameleon: text BPE ids and image codebook
// ids in one vocabulary; a token's modality is its id range): embedding, N blocks (two block types
// alternate, e.g. MoD on layers 0, 2, 4, ...: MoMa §4.1), final RMSNorm, untied LM head. Forward,
// backward, token-by-token decode (generate.hpp), safetensors save/load (all or nothing), presets.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/safetensors.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/block.hpp>
#include <mmsparse/layers/embedding.hpp>
#include <mmsparse/layers/kv_cache.hpp>
#include <mmsparse/layers/linear.hpp>
#include <mmsparse/layers/mod_block.hpp>
#include <mmsparse/layers/moma_block.hpp>
#include <mmsparse/layers/mot_block.hpp>
#include <mmsparse/routing/token_choice.hpp>

namespace mmsparse {

template <class T, class Even, class Odd, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class Decoder {
 public:
  using S = typename B::space;
  using scalar = T;
  using backend_type = B;
  using even_type = Even;
  using odd_type = Odd;

  struct Config {
    std::int64_t vocab = 0;
    std::vector<std::int64_t> modality_begin = {0};  // first id of each modality ({0, 40}: text
                                                     // [0, 40), image [40, vocab))
    std::int64_t layers = 2;  // layer l is an Even block for even l, an Odd block for odd l
    typename Even::Config even{};
    typename Odd::Config odd{};
    bool route_per_sequence = false;  // routing group of expert choice and MoD: sequence or batch
    std::uint64_t seed = 0;
  };
  // B sequences of equal length, one after the other (host token ids).
  struct Batch {
    std::span<const std::int32_t> tokens;  // [B * S]
    std::int64_t sequences = 1;
  };
  struct ForwardOptions {
    RoutingMode routing = RoutingMode::batch;  // aux: the causal inference decisions
    bool training = false;                     // router noise on
    std::uint64_t seed = 0;
    bool trace = false;  // keep every routing decision in the stats
  };
  struct Stats {
    double flops = 0.0;  // matrix-product FLOPs of what ran, the LM head included
    double aux_loss = 0.0;
    std::int64_t tokens = 0;
    std::vector<BlockStats> layers;
    [[nodiscard]] double flops_per_token() const {
      return tokens > 0 ? flops / static_cast<double>(tokens) : 0.0;
    }
  };
  struct Saved {
    Tensor<std::int32_t, S> tokens;     // [N, 1]
    Tensor<ModalityId, S> modality;     // [N, 1]
    Tensor<std::int32_t, S> positions;  // [N, 1]
    std::vector<std::int64_t> sequences;
    std::vector<typename Even::Saved> even;
    std::vector<typename Odd::Saved> odd;
    detail::NormSaved<T, B> final_norm;
    Tensor<T, S> head_in;  // [N, d] normalised final states
    bool valid = false;
  };

  explicit Decoder(Config cfg) : cfg_(checked(std::move(cfg))) {
    const std::int64_t d = block().d;
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      if (l % 2 == 0) {
        auto c = cfg_.even;
        seed_of(c) = cfg_.seed * 7919u + static_cast<std::uint64_t>(l) + 1;
        even_.emplace_back(c);
      } else {
        auto c = cfg_.odd;
        seed_of(c) = cfg_.seed * 7919u + static_cast<std::uint64_t>(l) + 1;
        odd_.emplace_back(c);
      }
    }
    embed_ = Tensor<T, S>::weight(cfg_.vocab, d);
    head_ = Tensor<T, S>::weight(d, cfg_.vocab);
    final_norm_ = Tensor<T, S>(1, d);
    Rng rng(cfg_.seed ^ 0xa0761d6478bd642full);
    rng.fill_normal(embed_.view(), 1.0);
    rng.fill_normal(head_.view(), 1.0 / std::sqrt(static_cast<double>(d)));
    final_norm_.fill(T{1});
    embed_v_ = embed_.view();
    head_v_ = head_.view();
    final_v_ = final_norm_.view();
  }

  [[nodiscard]] const Config& config() const {
    return cfg_;
  }
  [[nodiscard]] std::int64_t layers() const {
    return cfg_.layers;
  }
  [[nodiscard]] std::int64_t modalities() const {
    return static_cast<std::int64_t>(cfg_.modality_begin.size());
  }
  [[nodiscard]] const BlockConfig& block() const {
    return Even::block_config(cfg_.even);
  }
  [[nodiscard]] const Even& even_layer(std::int64_t l) const {
    return even_[static_cast<std::size_t>(l / 2)];
  }
  [[nodiscard]] const Odd& odd_layer(std::int64_t l) const {
    return odd_[static_cast<std::size_t>(l / 2)];
  }
  // K/V width of layer l's attention (KvCache::Config::width).
  [[nodiscard]] std::int64_t kv_width(std::int64_t l) const {
    return l % 2 == 0 ? even_layer(l).attention_config().kv_width()
                      : odd_layer(l).attention_config().kv_width();
  }
  // Modality of a token id: the last m with modality_begin[m] <= id.
  [[nodiscard]] ModalityId modality_of(std::int32_t id) const {
    const auto it = std::upper_bound(cfg_.modality_begin.begin(), cfg_.modality_begin.end(), id);
    return static_cast<ModalityId>(it - cfg_.modality_begin.begin() - 1);
  }

  // "embed" [V, d], "layers.<l>.<block param>", "final_norm" [1, d], "head" [d, V].
  [[nodiscard]] std::vector<ParamInfo> parameters() const {
    std::vector<ParamInfo> p = {{"embed", {cfg_.vocab, block().d}, false}};
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const auto layer = l % 2 == 0 ? Even::parameters(cfg_.even) : Odd::parameters(cfg_.odd);
      for (auto i : layer) {
        i.name = "layers." + std::to_string(l) + "." + i.name;
        p.push_back(std::move(i));
      }
    }
    p.push_back({"final_norm", {1, block().d}, false});
    p.push_back({"head", {block().d, cfg_.vocab}, true});
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> weights() const {
    std::vector<View<T, S>> w = {embed_v_};
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const auto v = l % 2 == 0 ? even_layer(l).weights() : odd_layer(l).weights();
      w.insert(w.end(), v.begin(), v.end());
    }
    w.push_back(final_v_);
    w.push_back(head_v_);
    return w;
  }
  // Uses the caller's memory (e.g. slices of a ParamArena) from now on; shapes checked first.
  void bind(std::span<const View<T, S>> w) {
    detail::check_bound("Decoder::bind", parameters(), w);
    std::size_t i = 1;
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const std::size_t count = layer_parameter_count(l);
      if (l % 2 == 0) {
        even_[static_cast<std::size_t>(l / 2)].bind(w.subspan(i, count));
      } else {
        odd_[static_cast<std::size_t>(l / 2)].bind(w.subspan(i, count));
      }
      i += count;
    }
    embed_v_ = w[0];
    final_v_ = w[i];
    head_v_ = w[i + 1];
    embed_ = {};
    final_norm_ = {};
    head_ = {};
  }
  // The aux routers of every layer, "layers.<l>.<name>": trained apart (MoMa §2.4).
  [[nodiscard]] std::vector<ParamInfo> aux_parameters() const {
    std::vector<ParamInfo> p;
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const auto layer =
          l % 2 == 0 ? Even::aux_parameters(cfg_.even) : Odd::aux_parameters(cfg_.odd);
      for (auto i : layer) {
        i.name = "layers." + std::to_string(l) + "." + i.name;
        p.push_back(std::move(i));
      }
    }
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> aux_weights() const {
    std::vector<View<T, S>> w;
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const auto v = l % 2 == 0 ? even_layer(l).aux_weights() : odd_layer(l).aux_weights();
      w.insert(w.end(), v.begin(), v.end());
    }
    return w;
  }
  void bind_aux(std::span<const View<T, S>> w) {
    detail::check_bound("Decoder::bind_aux", aux_parameters(), w);
    std::size_t i = 0;
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const std::size_t count = layer_aux_count(l);
      if (l % 2 == 0) {
        even_[static_cast<std::size_t>(l / 2)].bind_aux(w.subspan(i, count));
      } else {
        odd_[static_cast<std::size_t>(l / 2)].bind_aux(w.subspan(i, count));
      }
      i += count;
    }
  }

  // logits [N, V] of a batch; with `saved`, keeps what backward needs (batch routing only).
  Stats forward(B& b,
                const Batch& batch,
                View<T, S> logits,
                Saved* saved = nullptr,
                const ForwardOptions& opt = {}) const {
    constexpr const char* op = "Decoder::forward";
    const std::int64_t n = static_cast<std::int64_t>(batch.tokens.size());
    MMSPARSE_CHECK(batch.sequences >= 1 && n % batch.sequences == 0 && n > 0,
                   op,
                   "batch.sequences",
                   "a divisor of the " + std::to_string(n) + " tokens",
                   batch.sequences);
    MMSPARSE_CHECK(logits.shape() == (Shape{n, cfg_.vocab}),
                   op,
                   "logits",
                   (Shape{n, cfg_.vocab}),
                   logits.shape());
    MMSPARSE_CHECK(saved == nullptr || opt.routing == RoutingMode::batch,
                   op,
                   "routing",
                   "batch routing for a training forward (aux routing is for inference)",
                   "aux");
    const std::int64_t len = n / batch.sequences;
    std::vector<std::int64_t> sequences;
    for (std::int64_t s = 0; s <= batch.sequences; ++s) {
      sequences.push_back(s * len);
    }
    std::vector<std::int32_t> positions(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) {
      positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % len);
    }
    Inputs io;
    if (saved != nullptr) {  // the backward reads the token ids (embedding gradient)
      io.tokens = &saved->tokens;
      io.modality = &saved->modality;
      io.positions = &saved->positions;
    }
    upload(b, op, batch.tokens, positions, io);
    if (saved != nullptr) {
      saved->valid = false;
      saved->sequences = sequences;
      saved->even.resize(even_.size());
      saved->odd.resize(odd_.size());
    }
    BlockInput<S> in;
    in.modality = io.modality->span();
    in.positions = io.positions->span();
    in.sequences = saved != nullptr ? std::span<const std::int64_t>(saved->sequences)
                                    : std::span<const std::int64_t>(sequences);
    in.routing = opt.routing;
    in.routing_group = cfg_.route_per_sequence ? len : 0;
    in.training = opt.training;
    in.trace = opt.trace;
    Stats st;
    st.tokens = n;
    Tensor<T, S> h(n, block().d);  // [N, d] the residual stream
    embedding_forward(b, h.view(), io.tokens->span(), detail::cv(embed_v_));
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      in.seed = opt.seed * 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(l);
      const auto u = static_cast<std::size_t>(l / 2);
      BlockStats ls =
          l % 2 == 0 ? even_[u].forward(
                           b, detail::cv(h.view()), in, h.view(), saved ? &saved->even[u] : nullptr)
                     : odd_[u].forward(
                           b, detail::cv(h.view()), in, h.view(), saved ? &saved->odd[u] : nullptr);
      st.flops += ls.flops;
      st.aux_loss += ls.aux_loss;
      st.layers.push_back(std::move(ls));
    }
    head(b, h, logits, saved);
    st.flops += 2.0 * static_cast<double>(n * block().d * cfg_.vocab);
    if (saved != nullptr) {
      saved->valid = true;
    }
    return st;
  }

  // Given dlogits = dL/dlogits [N, V]: grads += dL/dW (parameters() order); aux_scale = dL/d(aux
  // losses).
  void backward(B& b,
                const Saved& saved,
                View<const T, S> dlogits,
                std::span<const View<T, S>> grads,
                double aux_scale = 1.0) const {
    constexpr const char* op = "Decoder::backward";
    MMSPARSE_CHECK(saved.valid, op, "saved", "the context of a training forward", "none");
    const std::int64_t n = saved.tokens.rows();
    const std::int64_t d = block().d;
    MMSPARSE_CHECK(dlogits.shape() == (Shape{n, cfg_.vocab}),
                   op,
                   "dlogits",
                   (Shape{n, cfg_.vocab}),
                   dlogits.shape());
    detail::check_bound(op, parameters(), grads);
    auto frame = b.workspace().frame();
    auto dhn = b.workspace().template take<T>(n, d);  // [N, d]
    auto dh = b.workspace().template take<T>(n, d);   // [N, d]
    auto dp = b.workspace().template take<T>(n, d);   // [N, d]
    b.fill(dhn, T{});
    b.fill(dh, T{});
    const std::size_t last = grads.size() - 1;
    linear_backward(
        b, dhn, grads[last], View<T, S>{}, dlogits, saved.head_in.view(), detail::cv(head_v_));
    detail::saved_rms_backward(
        b, dh, grads[last - 1], detail::cv(dhn), detail::cv(final_v_), saved.final_norm);
    std::size_t end = last - 1;  // one past layer l's gradients
    for (std::int64_t l = cfg_.layers - 1; l >= 0; --l) {
      const std::size_t count = layer_parameter_count(l);
      const auto g = grads.subspan(end - count, count);
      const auto u = static_cast<std::size_t>(l / 2);
      b.fill(dp, T{});
      if (l % 2 == 0) {
        even_[u].backward(b, saved.even[u], detail::cv(dh), dp, g, aux_scale);
      } else {
        odd_[u].backward(b, saved.odd[u], detail::cv(dh), dp, g, aux_scale);
      }
      std::swap(dh, dp);
      end -= count;
    }
    embedding_backward(b, grads[0], detail::cv(dh), saved.tokens.span());
  }

  // Fits every aux router to the decisions of a training forward (`saved`); only aux_grads
  // (aux_parameters() order) change: the model is frozen, or its gradient stopped (MoMa §2.4).
  AuxRouterFit aux_fit(B& b, const Saved& saved, std::span<const View<T, S>> aux_grads) const {
    MMSPARSE_CHECK(saved.valid, "Decoder::aux_fit", "saved", "a training forward", "none");
    detail::check_bound("Decoder::aux_fit", aux_parameters(), aux_grads);
    AuxRouterFit fit;
    std::size_t i = 0;
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      const std::size_t count = layer_aux_count(l);
      const auto u = static_cast<std::size_t>(l / 2);
      if (l % 2 == 0) {
        even_[u].aux_fit(b, saved.even[u], aux_grads.subspan(i, count), fit);
      } else {
        odd_[u].aux_fit(b, saved.odd[u], aux_grads.subspan(i, count), fit);
      }
      i += count;
    }
    return fit;
  }

  // Decoding: the n new tokens of sequence `seq` at positions start.. through every layer against
  // its cache (caches[l], one per layer); logits [n, V]. Routers decide per token (aux routing).
  Stats decode(B& b,
               std::span<KvCache<T, B>> caches,
               std::int64_t seq,
               std::span<const std::int32_t> tokens,
               std::int64_t start,
               View<T, S> logits) const {
    constexpr const char* op = "Decoder::decode";
    const auto n = static_cast<std::int64_t>(tokens.size());
    MMSPARSE_CHECK(static_cast<std::int64_t>(caches.size()) == cfg_.layers,
                   op,
                   "caches",
                   "one per layer (" + std::to_string(cfg_.layers) + ")",
                   caches.size());
    MMSPARSE_CHECK(logits.shape() == (Shape{n, cfg_.vocab}),
                   op,
                   "logits",
                   (Shape{n, cfg_.vocab}),
                   logits.shape());
    for (const auto& c : caches) {  // checked before any layer writes
      c.check_room(op, seq, n);
    }
    std::vector<std::int32_t> positions(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) {
      positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(start + i);
    }
    Inputs io;
    upload(b, op, tokens, positions, io);
    const std::vector<std::int64_t> sequences = {0, n};
    BlockInput<S> in;
    in.modality = io.modality->span();
    in.positions = io.positions->span();
    in.sequences = sequences;
    in.routing = RoutingMode::aux;
    Stats st;
    st.tokens = n;
    Tensor<T, S> h(n, block().d);  // [n, d]
    embedding_forward(b, h.view(), io.tokens->span(), detail::cv(embed_v_));
    for (std::int64_t l = 0; l < cfg_.layers; ++l) {
      auto& cache = caches[static_cast<std::size_t>(l)];
      const auto u = static_cast<std::size_t>(l / 2);
      BlockStats ls = l % 2 == 0
                          ? even_[u].decode(b, detail::cv(h.view()), in, cache, seq, h.view())
                          : odd_[u].decode(b, detail::cv(h.view()), in, cache, seq, h.view());
      st.flops += ls.flops;
      st.layers.push_back(std::move(ls));
    }
    head(b, h, logits, nullptr);
    st.flops += 2.0 * static_cast<double>(n * block().d * cfg_.vocab);
    return st;
  }

  // Writes every parameter and aux-router weight to a safetensors file.
  void save(const std::string& path) const {
    static_assert(std::is_same_v<S, host_space>, "Decoder::save writes host weights");
    std::vector<NamedTensorView> views;
    const auto names = all_parameters();
    const auto w = all_weights();
    for (std::size_t i = 0; i < w.size(); ++i) {
      views.emplace_back(names[i].name, View<const T, S>(w[i]));
    }
    save_safetensors(path, views, {{"format", "mmsparse.decoder"}});
  }
  // Reads every parameter from `path`, all or nothing: the file must hold exactly this model's
  // tensors, each with its name, dtype and shape; nothing is written before all are checked and
  // staged (core/safetensors.hpp). The backend drops what it derived from the old weights.
  void load(B& b, const std::string& path) {
    static_assert(std::is_same_v<S, host_space>, "Decoder::load reads host weights");
    constexpr const char* op = "Decoder::load";
    const SafetensorsFile file(path);
    const auto names = all_parameters();
    std::set<std::string> expected;
    for (const auto& p : names) {
      expected.insert(p.name);
      MMSPARSE_CHECK(file.contains(p.name),
                     op,
                     path + ": tensor '" + p.name + "'",
                     "present (a file of this model's configuration)",
                     "missing");
    }
    for (const auto& name : file.names()) {
      MMSPARSE_CHECK(expected.count(name) == 1,
                     op,
                     path + ": tensor '" + name + "'",
                     "a parameter of this model",
                     "an unknown tensor (a file of another configuration)");
    }
    std::vector<NamedTensorView> views;
    const auto w = all_weights();
    for (std::size_t i = 0; i < w.size(); ++i) {
      views.emplace_back(names[i].name, w[i]);
    }
    load_into(path, views);
    b.weights_updated();
  }

 private:
  struct Inputs {
    Tensor<std::int32_t, S> own_tokens, own_modality, own_positions;
    Tensor<std::int32_t, S>* tokens = &own_tokens;  // [N, 1]
    Tensor<ModalityId, S>* modality = &own_modality;
    Tensor<std::int32_t, S>* positions = &own_positions;
  };

  static Config checked(Config cfg) {
    constexpr const char* op = "Decoder";
    MMSPARSE_CHECK(cfg.vocab > 0, op, "vocab", "> 0", cfg.vocab);
    MMSPARSE_CHECK(cfg.layers >= 1, op, "layers", ">= 1", cfg.layers);
    const auto m = static_cast<std::int64_t>(cfg.modality_begin.size());
    MMSPARSE_CHECK(m >= 1 && cfg.modality_begin[0] == 0,
                   op,
                   "modality_begin",
                   "first ids of each modality, starting at 0",
                   m >= 1 ? cfg.modality_begin[0] : -1);
    for (std::size_t i = 1; i < cfg.modality_begin.size(); ++i) {
      MMSPARSE_CHECK(
          cfg.modality_begin[i] > cfg.modality_begin[i - 1] && cfg.modality_begin[i] < cfg.vocab,
          op,
          "modality_begin[" + std::to_string(i) + "]",
          "rising ids below vocab = " + std::to_string(cfg.vocab),
          cfg.modality_begin[i]);
    }
    const BlockConfig& e = Even::block_config(cfg.even);
    const BlockConfig& o = Odd::block_config(cfg.odd);
    MMSPARSE_CHECK(e.modalities == m,
                   op,
                   "even block modalities",
                   "the " + std::to_string(m) + " modalities of the vocabulary",
                   e.modalities);
    MMSPARSE_CHECK(o.modalities == m,
                   op,
                   "odd block modalities",
                   "the " + std::to_string(m) + " modalities of the vocabulary",
                   o.modalities);
    MMSPARSE_CHECK(o.d == e.d, op, "odd block d", e.d, o.d);
    return cfg;
  }
  template <class C>
  static std::uint64_t& seed_of(C& c) {
    if constexpr (requires { c.inner; }) {
      return seed_of(c.inner);
    } else {
      return c.block.seed;
    }
  }
  std::size_t layer_parameter_count(std::int64_t l) const {
    return l % 2 == 0 ? Even::parameters(cfg_.even).size() : Odd::parameters(cfg_.odd).size();
  }
  std::size_t layer_aux_count(std::int64_t l) const {
    return l % 2 == 0 ? Even::aux_parameters(cfg_.even).size()
                      : Odd::aux_parameters(cfg_.odd).size();
  }
  std::vector<ParamInfo> all_parameters() const {
    auto p = parameters();
    detail::append(p, aux_parameters());
    return p;
  }
  std::vector<View<T, S>> all_weights() const {
    auto w = weights();
    const auto a = aux_weights();
    w.insert(w.end(), a.begin(), a.end());
    return w;
  }

  // Token ids (checked against the vocabulary), their modality (by id range) and positions, on
  // the backend.
  void upload(B& b,
              const char* op,
              std::span<const std::int32_t> tokens,
              const std::vector<std::int32_t>& positions,
              Inputs& io) const {
    const auto n = static_cast<std::int64_t>(tokens.size());
    std::vector<ModalityId> modality(tokens.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      MMSPARSE_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.vocab,
                     op,
                     "tokens[" + std::to_string(i) + "]",
                     "an id in [0, " + std::to_string(cfg_.vocab) + ")",
                     tokens[i]);
      modality[i] = modality_of(tokens[i]);
    }
    detail::reshape_storage(*io.tokens, n, 1);
    detail::reshape_storage(*io.modality, n, 1);
    detail::reshape_storage(*io.positions, n, 1);
    b.copy_from_host(io.tokens->span(), tokens);
    b.copy_from_host(io.modality->span(), std::span<const ModalityId>(modality));
    b.copy_from_host(io.positions->span(), std::span<const std::int32_t>(positions));
  }

  // logits = norm(h) W_head.
  void head(B& b, const Tensor<T, S>& h, View<T, S> logits, Saved* saved) const {
    const std::int64_t n = h.rows();
    const std::int64_t d = block().d;
    Tensor<T, S> local;
    Tensor<T, S>& hn = saved != nullptr ? saved->head_in : local;
    detail::reshape_storage(hn, n, d);
    detail::saved_rms_forward(b,
                              hn.view(),
                              h.view(),
                              detail::cv(final_v_),
                              block().norm_eps,
                              saved != nullptr ? &saved->final_norm : nullptr);
    linear_forward(b, logits, std::as_const(hn).view(), detail::cv(head_v_));
  }

  Config cfg_;
  std::vector<Even> even_;
  std::vector<Odd> odd_;
  Tensor<T, S> embed_, final_norm_, head_;  // own storage (empty after bind)
  View<T, S> embed_v_, final_v_, head_v_;
};

// ---- presets ----------------------------------------------------------------------------

// The numbers of a preset decoder (the configurations of MoMa Table 1 / MoT, at any size).
struct DecoderShape {
  std::int64_t vocab = 0;
  std::vector<std::int64_t> modality_begin = {0};
  std::int64_t layers = 2;
  BlockConfig block;  // d, heads, norm order, ...; modalities = modality_begin.size()
  std::int64_t experts_per_modality = 4;  // MoMa 4t4i
  double capacity_factor = 1.0;           // expert choice: c_e = capacity_factor / E (MoMa §2.2)
  std::int64_t experts = 8;               // flat MoE (token choice top-2)
  double depth_capacity = 0.25;           // MoD c_d (MoMa §4.1)
  GatePlacement gate = GatePlacement::after_norm;
  bool route_per_sequence = false;
  std::uint64_t seed = 0;
};

template <class Inner>
struct is_mod_block : std::false_type {};
template <class Inner>
struct is_mod_block<ModBlock<Inner>> : std::true_type {};

namespace detail {
template <class F>
typename F::Config ffn_preset(const DecoderShape& s) {
  typename F::Config c{};
  if constexpr (requires {
                  c.experts;
                  c.gate;
                }) {
    using R = typename F::Ffn::router_type;
    const std::size_t m = s.modality_begin.size();
    if constexpr (std::is_same_v<R, ModalityHard>) {
      c.experts.assign(m, 1);
    } else if constexpr (F::grouped) {
      c.experts.assign(m, s.experts_per_modality);
      c.router.capacity_factor = s.capacity_factor;
    } else if constexpr (std::is_same_v<R, TokenChoice>) {
      c.experts = {s.experts};
      c.router.k = 2;
      c.router.dropless = true;  // causal: no token's slot depends on another token
      c.router.renormalize = true;
    } else {
      c.experts = {s.experts};
      c.router.capacity_factor = s.capacity_factor;
    }
    c.gate = s.gate;
  }
  return c;
}
}  // namespace detail

// The config of one block type of a preset.
template <class Blk>
typename Blk::Config block_preset(const DecoderShape& s) {
  if constexpr (is_mod_block<Blk>::value) {
    typename Blk::Config c{block_preset<typename Blk::inner_type>(s), {}};
    c.router.capacity = s.depth_capacity;
    return c;
  } else {
    typename Blk::Config c;
    c.block = s.block;
    c.block.modalities = static_cast<std::int64_t>(s.modality_begin.size());
    c.ffn = detail::ffn_preset<typename Blk::ffn_type>(s);
    return c;
  }
}

template <class Model>
typename Model::Config decoder_preset(const DecoderShape& s) {
  typename Model::Config c;
  c.vocab = s.vocab;
  c.modality_begin = s.modality_begin;
  c.layers = s.layers;
  c.even = block_preset<typename Model::even_type>(s);
  c.odd = block_preset<typename Model::odd_type>(s);
  c.route_per_sequence = s.route_per_sequence;
  c.seed = s.seed;
  return c;
}

// The configurations of the papers as types (D: the dispatch scheme of the sparse FFNs).
template <class T, class B, class D = SortedGather>
struct Decoders {
  using Dense = Decoder<T, DenseBlock<T, B>, DenseBlock<T, B>, B>;
  using Mot = Decoder<T, MotBlock<T, B>, MotBlock<T, B>, B>;
  using Moma1t1i = Decoder<T, Moma1t1iBlock<T, D, B>, Moma1t1iBlock<T, D, B>, B>;
  using Moma4t4i =
      Decoder<T, MomaBlock<T, ExpertChoice, D, B>, MomaBlock<T, ExpertChoice, D, B>, B>;
  // MoD on layers 0, 2, 4, ... around MoMa 4t4i blocks (MoMa §4.1 "mod_moe_4t4i").
  using ModMoma4t4i =
      Decoder<T, ModBlock<MomaBlock<T, ExpertChoice, D, B>>, MomaBlock<T, ExpertChoice, D, B>, B>;
  using TokenChoiceTop2 =
      Decoder<T, MoeBlock<T, TokenChoice, D, B>, MoeBlock<T, TokenChoice, D, B>, B>;
};

}  // namespace mmsparse

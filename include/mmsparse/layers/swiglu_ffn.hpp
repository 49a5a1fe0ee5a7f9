// mmsparse/layers/swiglu_ffn.hpp
//
// The dense SwiGLU FFN, y = (silu(x W1) ⊙ (x W3)) W2 (Shazeer 2020; LLaMA/Chameleon FFN, PAPERS.md
// §1.9). Hidden width f defaults to swiglu_hidden(d) = (2/3)·4d rounded up to a multiple of 256
// (PAPERS.md §4.17). The baseline of the sparse layers: it runs the expert code with one expert.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/experts.hpp>

namespace mmsparse {

template <class T, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class SwiGluFfn {
 public:
  using S = typename B::space;

  struct Config {
    std::int64_t d = 0;
    std::int64_t hidden = 0;  // 0: swiglu_hidden(d)
    std::uint64_t seed = 0;   // weight initialisation
  };
  struct Weights {
    View<T, S> w1;  // [d, f]
    View<T, S> w3;  // [d, f]
    View<T, S> w2;  // [f, d]
  };
  // Activations kept for the backward.
  struct Saved {
    Tensor<T, S> x;  // [N, d]
    Tensor<T, S> a;  // [N, f] x W1
    Tensor<T, S> g;  // [N, f] x W3
    bool valid = false;
  };

  explicit SwiGluFfn(Config cfg) : cfg_(cfg) {
    MMSPARSE_CHECK(cfg_.d > 0, "SwiGluFfn", "d", "> 0", cfg_.d);
    MMSPARSE_CHECK(
        cfg_.hidden >= 0, "SwiGluFfn", "hidden", ">= 0 (0: swiglu_hidden(d))", cfg_.hidden);
    if (cfg_.hidden == 0) {
      cfg_.hidden = swiglu_hidden(cfg_.d);
    }
    const std::int64_t d = cfg_.d;
    const std::int64_t f = cfg_.hidden;
    w1_ = Tensor<T, S>::weight(d, f);
    w3_ = Tensor<T, S>::weight(d, f);
    w2_ = Tensor<T, S>::weight(f, d);
    Rng rng(cfg_.seed);
    detail::init_normal(w1_, rng, 1.0 / std::sqrt(static_cast<double>(d)));
    detail::init_normal(w3_, rng, 1.0 / std::sqrt(static_cast<double>(d)));
    detail::init_normal(w2_, rng, 1.0 / std::sqrt(static_cast<double>(f)));
    weights_ = {w1_.view(), w3_.view(), w2_.view()};
  }

  [[nodiscard]] const Config& config() const {
    return cfg_;
  }
  [[nodiscard]] std::int64_t hidden() const {
    return cfg_.hidden;
  }
  [[nodiscard]] Weights weights() {
    return weights_;
  }

  // Uses the caller's memory from now on (shapes checked); the layer's own storage is released.
  void bind(Weights external) {
    const std::int64_t d = cfg_.d;
    const std::int64_t f = cfg_.hidden;
    detail::check_shape("SwiGluFfn::bind", "w1", external.w1, {d, f});
    detail::check_shape("SwiGluFfn::bind", "w3", external.w3, {d, f});
    detail::check_shape("SwiGluFfn::bind", "w2", external.w2, {f, d});
    weights_ = external;
    w1_ = {};
    w3_ = {};
    w2_ = {};
  }

  [[nodiscard]] static std::vector<std::pair<std::string, Shape>> parameter_shapes(Config cfg) {
    const std::int64_t f = cfg.hidden > 0 ? cfg.hidden : swiglu_hidden(cfg.d);
    return {{"w1", {cfg.d, f}}, {"w3", {cfg.d, f}}, {"w2", {f, cfg.d}}};
  }

  // y [N, d] = FFN(x [N, d]); y is overwritten and may be x itself.
  void forward(B& b, View<const T, S> x, View<T, S> y) const {
    check_io("SwiGluFfn::forward", x, y);
    auto frame = b.workspace().frame();
    auto a = b.workspace().template take<T>(x.rows, cfg_.hidden);  // [N, f]
    auto g = b.workspace().template take<T>(x.rows, cfg_.hidden);  // [N, f]
    run(b, x, y, a, g);
  }
  // Training forward: as forward, and keeps what backward needs in `saved`.
  void forward(B& b, View<const T, S> x, View<T, S> y, Saved& saved) const {
    check_io("SwiGluFfn::forward", x, y);
    saved.valid = false;
    detail::reshape_storage(saved.x, x.rows, cfg_.d);
    detail::reshape_storage(saved.a, x.rows, cfg_.hidden);
    detail::reshape_storage(saved.g, x.rows, cfg_.hidden);
    b.copy(saved.x.view(), x);
    auto frame = b.workspace().frame();
    run(b, View<const T, S>(saved.x.view()), y, saved.a.view(), saved.g.view());
    saved.valid = true;
  }

  // dx [N, d] += dL/dx and grads += dL/dW, given dy = dL/dy [N, d] and a training forward's saved.
  void backward(B& b, const Saved& saved, View<const T, S> dy, View<T, S> dx, Weights grads) const {
    constexpr const char* op = "SwiGluFfn::backward";
    MMSPARSE_CHECK(saved.valid, op, "saved", "the context of a training forward", "none");
    const std::int64_t n = saved.x.rows();
    const std::int64_t d = cfg_.d;
    const std::int64_t f = cfg_.hidden;
    detail::check_shape(op, "dy", dy, {n, d});
    detail::check_shape(op, "dx", dx, {n, d});
    detail::check_shape(op, "grads.w1", grads.w1, {d, f});
    detail::check_shape(op, "grads.w3", grads.w3, {d, f});
    detail::check_shape(op, "grads.w2", grads.w2, {f, d});
    const std::int64_t offsets[2] = {0, n};
    experts_backward(b,
                     dx,
                     ExpertGrads<T, S>{grads.w1, grads.w3, grads.w2},
                     dy,
                     saved.x.view(),
                     saved.a.view(),
                     saved.g.view(),
                     expert_weights(),
                     offsets,
                     /*accumulate_dx=*/true);
  }

  // FLOPs of a forward over `tokens` tokens (the three GEMMs).
  [[nodiscard]] double flops(std::int64_t tokens) const {
    return expert_flops(tokens, cfg_.d, cfg_.hidden);
  }
  // Workspace bytes a forward or backward over `tokens` tokens takes at most.
  [[nodiscard]] std::size_t workspace_bytes(std::int64_t tokens) const {
    const std::size_t forward = 3 * Workspace<S>::template bytes_for<T>(tokens * cfg_.hidden);
    return std::max(forward, experts_backward_bytes<B>(tokens, cfg_.hidden));
  }

 private:
  ExpertWeights<T, S> expert_weights() const {
    return {weights_.w1, weights_.w3, weights_.w2};
  }
  void check_io(const char* op, View<const T, S> x, View<T, S> y) const {
    MMSPARSE_CHECK(
        x.cols == cfg_.d, op, "x", "shape [N, " + std::to_string(cfg_.d) + "]", x.shape());
    detail::check_shape(op, "y", y, {x.rows, cfg_.d});
  }
  // a, g: [N, f] destinations of x W1 and x W3; h comes from the workspace.
  void run(B& b, View<const T, S> x, View<T, S> y, View<T, S> a, View<T, S> g) const {
    auto h = b.workspace().template take<T>(x.rows, cfg_.hidden);  // [N, f]
    const std::int64_t offsets[2] = {0, x.rows};
    experts_forward(b, y, a, g, h, x, expert_weights(), offsets);
  }

  Config cfg_;
  Tensor<T, S> w1_, w3_, w2_;  // own storage (empty after bind)
  Weights weights_;
};

}  // namespace mmsparse

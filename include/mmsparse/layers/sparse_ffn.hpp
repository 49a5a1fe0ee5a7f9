// mmsparse/layers/sparse_ffn.hpp
//
// The sparse (mixture-of-experts) SwiGLU FFN: y = Σ_e g_e(x) · FFN_e(x) over the experts the router
// picked (MoMa §2.2 Eq. 1; token choice, expert choice, MoD, MoT's untied FFN). Three policies name
// the layer: R routes (routing/), D lays the plan out in buffer rows (dispatch/), B computes.
// Gates are not renormalised; a token no expert took gets exactly 0 (PAPERS.md §4.3, §4.7).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/dispatch/concepts.hpp>
#include <mmsparse/dispatch/layout.hpp>
#include <mmsparse/layers/experts.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/mixture_of_depths.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/modality_hard.hpp>
#include <mmsparse/routing/plan.hpp>
#include <mmsparse/routing/token_choice.hpp>

namespace mmsparse {

// Hidden width of the dense SwiGLU FFN whose FLOPs equal the active expert FLOPs of a sparse
// forward: f_dense = f · slots / N, slots = the (token, expert) pairs the plan selected (padding
// rows and masked rows excluded; PAPERS.md §4.19). Rounded to the nearest integer, at least 1.
[[nodiscard]] inline std::int64_t equal_flops_dense_hidden(std::int64_t hidden,
                                                           std::int64_t slots,
                                                           std::int64_t tokens) {
  MMSPARSE_CHECK(tokens > 0, "equal_flops_dense_hidden", "tokens", "> 0", tokens);
  const double f =
      static_cast<double>(hidden) * static_cast<double>(slots) / static_cast<double>(tokens);
  return std::max<std::int64_t>(1, std::llround(f));
}

namespace detail {

// Upper bounds of the plan slots of the library's routers over `tokens` tokens routed as one
// group (workspace sizing; any modality mix). A router may state its own as a member
// `max_slots(experts_per_group, tokens)`; others are bounded by every expert taking every token.
inline std::int64_t slot_bound(const ModalityHard&, std::span<const std::int64_t>, std::int64_t n) {
  return n;
}
inline std::int64_t slot_bound(const TokenChoice& r,
                               std::span<const std::int64_t>,
                               std::int64_t n) {
  return r.cfg.k * n;
}
// Σ_g E_g·ceil(c·N_g/E_g) <= c·N + E (+1 per group for the rounding of c·N_g/E_g).
inline std::int64_t slot_bound(const ExpertChoice& r,
                               std::span<const std::int64_t> groups,
                               std::int64_t n) {
  std::int64_t e = 0;
  for (auto g : groups) {
    e += g;
  }
  const auto bound =
      static_cast<std::int64_t>(std::ceil(r.cfg.capacity_factor * static_cast<double>(n))) + e +
      static_cast<std::int64_t>(groups.size());
  return std::min(bound, e * n);
}
inline std::int64_t slot_bound(const MixtureOfDepths& r,
                               std::span<const std::int64_t> groups,
                               std::int64_t n) {
  const auto bound = static_cast<std::int64_t>(std::ceil(r.cfg.capacity * static_cast<double>(n))) +
                     2 * static_cast<std::int64_t>(groups.size());
  return std::min(bound, static_cast<std::int64_t>(groups.size()) * n);
}
template <class Inner>
std::int64_t slot_bound(const ModalityAware<Inner>& r,
                        std::span<const std::int64_t> groups,
                        std::int64_t n) requires requires(const Inner& in) {
  slot_bound(in, groups, n);
}
{ return slot_bound(r.inner(), groups, n); }

// The dispatch layout of `rows` rows for a forward: in the token, gate and slot storage of
// `saved` (a training forward, whose backward walks the layout again) when it is not null, else
// in the workspace (`scratch`, inside the caller's frame).
template <backend B, class Saved>
layout_t<B>& forward_layout(B& b, std::int64_t rows, Saved* saved, layout_t<B>& scratch) {
  if (saved == nullptr) {
    scratch = take_layout(b, rows);
    return scratch;
  }
  reshape_storage(saved->token, rows, 1);
  reshape_storage(saved->gate, rows, 1);
  reshape_storage(saved->slot, rows, 1);
  saved->layout.token = saved->token.span();
  saved->layout.gate = saved->gate.span();
  saved->layout.slot = saved->slot.span();
  return saved->layout;
}

}  // namespace detail

template <class T, class R, class D, class B>
  requires backend<B> && router_for<R, B> && dispatch_scheme_for<D, B> &&
      std::is_same_v<T, typename B::scalar>
class SparseFfn {
 public:
  using W = router_t<T>;
  using S = typename B::space;
  using router_type = R;
  using dispatch_type = D;
  using backend_type = B;

  struct Config {
    std::int64_t d = 0;
    std::int64_t hidden = 0;            // 0: swiglu_hidden(d)
    std::vector<std::int64_t> experts;  // experts per modality group ({4,4} = 4t4i); flat: {E}
    std::int64_t modalities = 0;        // 0: experts.size()
    typename R::Config router{};
    std::uint64_t seed = 0;         // weight initialisation
    typename D::Config dispatch{};  // e.g. a fixed PaddedCapacity capacity
  };
  struct Weights {
    View<W, S> router;  // [d, E_r]
    View<T, S> w1;      // [E*d, f]
    View<T, S> w3;      // [E*d, f]
    View<T, S> w2;      // [E*f, d]
  };
  struct ForwardOptions {
    bool training = false;             // router noise on
    std::uint64_t seed = 0;            // noise seed
    std::int64_t sequence_length = 0;  // > 0: route each sequence of this length on its own
  };
  struct Stats {
    std::vector<std::int64_t> tokens_per_expert;
    std::int64_t dropped = 0;
    AuxLosses<W> aux;
    double flops = 0;  // what ran: expert rows (padding and masked rows included) + router GEMM
  };
  // Activations and routing a training forward keeps for the backward.
  struct Saved {
    Tensor<T, S> x;                  // [N, d] input copy (the router's backward reads it)
    Tensor<ModalityId, S> modality;  // [N, 1]
    ForwardOptions options;
    plan_t<B> plan;
    typename R::template Saved<B> router;
    Tensor<std::int32_t, S> token;  // [R, 1] layout storage
    Tensor<W, S> gate;              // [R, 1]
    Tensor<std::int32_t, S> slot;   // [R, 1]
    layout_t<B> layout;             // views of token, gate, slot
    Tensor<T, S> a;                 // [R, f] x W1
    Tensor<T, S> g;                 // [R, f] x W3
    Tensor<T, S> o;                 // [R, d] expert outputs (the gate gradient reads them)
    bool valid = false;
  };

  explicit SparseFfn(Config cfg)
      : cfg_(std::move(cfg)), router_{cfg_.router}, dispatch_{cfg_.dispatch} {
    constexpr const char* op = "SparseFfn";
    MMSPARSE_CHECK(cfg_.d > 0, op, "d", "> 0", cfg_.d);
    MMSPARSE_CHECK(cfg_.hidden >= 0, op, "hidden", ">= 0 (0: swiglu_hidden(d))", cfg_.hidden);
    MMSPARSE_CHECK(!cfg_.experts.empty(), op, "experts", "at least one group", "none");
    for (std::size_t g = 0; g < cfg_.experts.size(); ++g) {
      MMSPARSE_CHECK(
          cfg_.experts[g] >= 1, op, "experts[" + std::to_string(g) + "]", ">= 1", cfg_.experts[g]);
    }
    MMSPARSE_CHECK(
        cfg_.modalities >= 0, op, "modalities", ">= 0 (0: experts.size())", cfg_.modalities);
    if (cfg_.hidden == 0) {
      cfg_.hidden = swiglu_hidden(cfg_.d);
    }
    if (cfg_.modalities == 0) {
      cfg_.modalities = static_cast<std::int64_t>(cfg_.experts.size());
    }
    experts_ = std::accumulate(cfg_.experts.begin(), cfg_.experts.end(), std::int64_t{0});
    router_columns_ = router_.router_columns(std::span<const std::int64_t>(cfg_.experts));
    MMSPARSE_CHECK(router_columns_ >= 0, op, "router columns", ">= 0", router_columns_);

    // A layer on device memory owns no weights: the caller bind()s them (initialised on the host
    // and copied over, or the engine's own buffers).
    if constexpr (std::is_same_v<S, host_space>) {
      const std::int64_t d = cfg_.d;
      const std::int64_t f = cfg_.hidden;
      router_w_ = Tensor<W, S>::weight(d, router_columns_);
      w1_ = Tensor<T, S>::weight(experts_ * d, f);
      w3_ = Tensor<T, S>::weight(experts_ * d, f);
      w2_ = Tensor<T, S>::weight(experts_ * f, d);
      Rng rng(cfg_.seed);
      detail::init_normal(router_w_, rng, 1.0 / std::sqrt(static_cast<double>(d)));
      detail::init_normal(w1_, rng, 1.0 / std::sqrt(static_cast<double>(d)));
      detail::init_normal(w3_, rng, 1.0 / std::sqrt(static_cast<double>(d)));
      detail::init_normal(w2_, rng, 1.0 / std::sqrt(static_cast<double>(f)));
      weights_ = {router_w_.view(), w1_.view(), w3_.view(), w2_.view()};
    }
  }

  [[nodiscard]] const Config& config() const {
    return cfg_;
  }
  [[nodiscard]] std::int64_t num_experts() const {
    return experts_;
  }
  [[nodiscard]] std::int64_t router_columns() const {
    return router_columns_;
  }
  [[nodiscard]] const R& router() const {
    return router_;
  }
  [[nodiscard]] const D& dispatch() const {
    return dispatch_;
  }
  [[nodiscard]] Weights weights() {
    return weights_;
  }

  // Uses the caller's memory from now on (shapes checked); the layer's own storage is released.
  void bind(Weights external) {
    constexpr const char* op = "SparseFfn::bind";
    const auto shapes = parameter_shapes(cfg_);
    detail::check_shape(op, "router", external.router, shapes[0].second);
    detail::check_shape(op, "w1", external.w1, shapes[1].second);
    detail::check_shape(op, "w3", external.w3, shapes[2].second);
    detail::check_shape(op, "w2", external.w2, shapes[3].second);
    weights_ = external;
    router_w_ = {};
    w1_ = {};
    w3_ = {};
    w2_ = {};
  }

  // {"router", [d, E_r]}, {"w1", [E*d, f]}, {"w3", [E*d, f]}, {"w2", [E*f, d]}.
  [[nodiscard]] static std::vector<std::pair<std::string, Shape>> parameter_shapes(
      const Config& cfg) {
    const std::int64_t f = cfg.hidden > 0 ? cfg.hidden : swiglu_hidden(cfg.d);
    const std::int64_t e = std::accumulate(cfg.experts.begin(), cfg.experts.end(), std::int64_t{0});
    const R r{cfg.router};
    const std::int64_t er = r.router_columns(std::span<const std::int64_t>(cfg.experts));
    return {{"router", {cfg.d, er}},
            {"w1", {e * cfg.d, f}},
            {"w3", {e * cfg.d, f}},
            {"w2", {e * f, cfg.d}}};
  }

  // y [N, d] = Σ_e gate · FFN_e(x [N, d]) for the plan the router makes of x and modality [N].
  // y is overwritten (and may be x). Arguments are validated before anything is written.
  Stats forward(B& b,
                View<const T, S> x,
                Span<const ModalityId, S> modality,
                View<T, S> y,
                const ForwardOptions& opt = {}) const {
    return forward_impl(b, x, modality, y, nullptr, opt);
  }
  // Training forward: as forward, and keeps what backward needs in `saved` (reused across calls).
  Stats forward(B& b,
                View<const T, S> x,
                Span<const ModalityId, S> modality,
                View<T, S> y,
                Saved& saved,
                const ForwardOptions& opt = {}) const {
    return forward_impl(b, x, modality, y, &saved, opt);
  }

  // Given dy = dL/dy [N, d] and a training forward's `saved`: dx [N, d] += dL/dx and grads +=
  // dL/dW for every weight, the router's through the gates (and the aux losses, scaled by
  // aux_scale = dL/d(aux total)). Indices are constants (DESIGN.md "autograd").
  void backward(B& b,
                const Saved& saved,
                View<const T, S> dy,
                View<T, S> dx,
                Weights grads,
                double aux_scale = 1.0) const {
    constexpr const char* op = "SparseFfn::backward";
    MMSPARSE_CHECK(saved.valid, op, "saved", "the context of a training forward", "none");
    const std::int64_t n = saved.x.rows();
    const std::int64_t d = cfg_.d;
    detail::check_shape(op, "dy", dy, {n, d});
    detail::check_shape(op, "dx", dx, {n, d});
    const auto shapes = parameter_shapes(cfg_);
    detail::check_shape(op, "grads.router", grads.router, shapes[0].second);
    detail::check_shape(op, "grads.w1", grads.w1, shapes[1].second);
    detail::check_shape(op, "grads.w3", grads.w3, shapes[2].second);
    detail::check_shape(op, "grads.w2", grads.w2, shapes[3].second);
    MMSPARSE_CHECK(std::isfinite(aux_scale), op, "aux_scale", "a finite number", aux_scale);

    const layout_t<B>& layout = saved.layout;
    const std::int64_t rows = layout.rows();
    auto frame = b.workspace().frame();
    auto xg = b.workspace().template take<T>(rows, d);    // [R, d] gathered x, then its gradient
    auto dout = b.workspace().template take<T>(rows, d);  // [R, d]
    auto dgate = b.workspace().template take_span<W>(saved.plan.slots());  // [S]
    dispatch_gather(b, xg, View<const T, S>(saved.x.view()), layout);
    dispatch_combine_backward(b, dgate, dout, dy, saved.o.view(), layout);
    experts_backward(b,
                     xg,  // dL/d(gathered x) overwrites the gathered x once it is spent
                     ExpertGrads<T, S>{grads.w1, grads.w3, grads.w2},
                     View<const T, S>(dout),
                     View<const T, S>(xg),
                     saved.a.view(),
                     saved.g.view(),
                     expert_weights(),
                     layout.segments(),
                     /*accumulate_dx=*/false);
    dispatch_gather_backward(b, dx, View<const T, S>(xg), layout);
    const RouteArgs<B> args = route_args(saved.x.view(), saved.modality.span(), saved.options);
    router_.backward(b,
                     args,
                     saved.router,
                     Span<const W, S>(dgate),
                     RouterGrads<B>{dx, grads.router, aux_scale});
  }

  // Upper bound of the workspace bytes a forward or backward over `tokens` tokens takes.
  [[nodiscard]] std::size_t workspace_bytes(std::int64_t tokens) const {
    using Ws = Workspace<S>;
    const std::int64_t slots = max_slots(tokens);
    const std::int64_t rows = dispatch_.max_rows(experts_, tokens, slots);
    const std::int64_t d = cfg_.d;
    const std::int64_t f = cfg_.hidden;
    const std::size_t row_d = Ws::template bytes_for<T>(rows * d);
    const std::size_t row_f = Ws::template bytes_for<T>(rows * f);
    const std::size_t forward = layout_bytes<B>(rows) + 2 * row_d + 3 * row_f;
    const std::size_t backward =
        2 * row_d + Ws::template bytes_for<W>(slots) +
        std::max(Ws::template bytes_for<W>(rows), experts_backward_bytes<B>(rows, f));
    return std::max({forward, backward, router_workspace_bytes(tokens)});
  }

 private:
  ExpertWeights<T, S> expert_weights() const {
    return {weights_.w1, weights_.w3, weights_.w2};
  }

  RouteArgs<B> route_args(View<const T, S> x,
                          Span<const ModalityId, S> modality,
                          const ForwardOptions& opt) const {
    RouteArgs<B> args;
    args.x = x;
    args.modality = modality;
    args.router_weight = weights_.router;
    args.num_modalities = cfg_.modalities;
    args.experts_per_group = cfg_.experts;
    args.sequence_length = opt.sequence_length;
    args.training = opt.training;
    args.seed = opt.seed;
    return args;
  }

  // Most plan slots the router can fill for `tokens` tokens routed as one group: the router's
  // own bound where it states one, the library routers' bounds, else every expert taking every
  // token. (Routing per sequence can exceed it by the rounding of each sequence's capacity; the
  // workspace then grows once.)
  std::int64_t max_slots(std::int64_t tokens) const {
    const std::span<const std::int64_t> groups(cfg_.experts);
    if constexpr (requires { router_.max_slots(groups, tokens); }) {
      return router_.max_slots(groups, tokens);
    } else if constexpr (requires { detail::slot_bound(router_, groups, tokens); }) {
      return detail::slot_bound(router_, groups, tokens);
    } else {
      return experts_ * tokens;
    }
  }
  // The router's scratch: its own statement where it makes one, else a generous estimate (x
  // gathered and widened to router precision, logits, scores, their gradients and index arrays).
  std::size_t router_workspace_bytes(std::int64_t tokens) const {
    const std::span<const std::int64_t> groups(cfg_.experts);
    if constexpr (requires { router_.workspace_bytes(groups, tokens, cfg_.d); }) {
      return router_.workspace_bytes(groups, tokens, cfg_.d);
    } else {
      using Ws = Workspace<S>;
      const std::int64_t columns = std::max<std::int64_t>(router_columns_, 1);
      return 2 * (Ws::template bytes_for<T>(tokens * cfg_.d) +
                  Ws::template bytes_for<W>(tokens * cfg_.d) +
                  4 * Ws::template bytes_for<W>(tokens * columns) +
                  4 * Ws::template bytes_for<std::int32_t>(tokens * columns) +
                  8 * Ws::template bytes_for<std::int32_t>(tokens));
    }
  }

  Stats forward_impl(B& b,
                     View<const T, S> x,
                     Span<const ModalityId, S> modality,
                     View<T, S> y,
                     Saved* saved,
                     const ForwardOptions& opt) const {
    constexpr const char* op = "SparseFfn::forward";
    const std::int64_t n = x.rows;
    const std::int64_t d = cfg_.d;
    const std::int64_t f = cfg_.hidden;
    MMSPARSE_CHECK(weights_.w1.data != nullptr, op, "weights", "bound with bind()", "none");
    MMSPARSE_CHECK(x.cols == d, op, "x", "shape [N, " + std::to_string(d) + "]", x.shape());
    detail::check_shape(op, "y", y, {n, d});
    MMSPARSE_CHECK(
        modality.size == n, op, "modality", "size N = " + std::to_string(n), modality.size);
    if constexpr (std::is_same_v<S, host_space>) {
      check_modality_ids(op, modality, cfg_.modalities);
    }
    MMSPARSE_CHECK(opt.sequence_length >= 0,
                   op,
                   "sequence_length",
                   ">= 0 (0: whole batch)",
                   opt.sequence_length);

    auto frame = b.workspace().frame();
    typename R::template Saved<B> local_router;
    View<const T, S> xin = x;
    Span<const ModalityId, S> mod = modality;
    if (saved != nullptr) {
      saved->valid = false;
      detail::reshape_storage(saved->x, n, d);
      detail::reshape_storage(saved->modality, n, 1);
      b.copy(saved->x.view(), x);
      b.copy(saved->modality.view(), modality.as_column());
      xin = saved->x.view();
      mod = saved->modality.span();
    }
    auto& router_saved = saved != nullptr ? saved->router : local_router;
    plan_t<B> plan = router_.route(b, route_args(xin, mod, opt), router_saved);
    MMSPARSE_ASSERT(plan.num_experts == experts_ && plan.num_tokens == n);

    // Layout: in the workspace, or in `saved` for the backward.
    const std::int64_t rows = dispatch_.rows(plan);
    layout_t<B> scratch_layout;
    layout_t<B>& layout = detail::forward_layout(b, rows, saved, scratch_layout);
    make_layout(b, layout, dispatch_, plan);

    auto xg = b.workspace().template take<T>(rows, d);  // [R, d]
    auto h = b.workspace().template take<T>(rows, f);   // [R, f]
    View<T, S> a, g, o;                                 // [R, f], [R, f], [R, d]
    if (saved != nullptr) {
      detail::reshape_storage(saved->a, rows, f);
      detail::reshape_storage(saved->g, rows, f);
      detail::reshape_storage(saved->o, rows, d);
      a = saved->a.view();
      g = saved->g.view();
      o = saved->o.view();
    } else {
      a = b.workspace().template take<T>(rows, f);
      g = b.workspace().template take<T>(rows, f);
      o = b.workspace().template take<T>(rows, d);
    }
    dispatch_gather(b, xg, xin, layout);
    experts_forward(b, o, a, g, h, View<const T, S>(xg), expert_weights(), layout.segments());
    dispatch_combine(b, y, View<const T, S>(o), layout);

    Stats stats;
    stats.tokens_per_expert = plan.tokens_per_expert();
    stats.dropped = plan.dropped;
    stats.aux = plan.aux;
    stats.flops = expert_flops(rows, d, f) + 2.0 * static_cast<double>(n) * static_cast<double>(d) *
                                                 static_cast<double>(router_columns_);
    if (saved != nullptr) {
      saved->options = opt;
      saved->plan = std::move(plan);
      saved->valid = true;
    }
    return stats;
  }

  Config cfg_;
  R router_;
  D dispatch_;
  std::int64_t experts_ = 0;
  std::int64_t router_columns_ = 0;
  Tensor<W, S> router_w_;      // own storage (empty after bind)
  Tensor<T, S> w1_, w3_, w2_;  // own storage (empty after bind)
  Weights weights_;
};

}  // namespace mmsparse

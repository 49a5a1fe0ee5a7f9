// mmsparse/layers/mod_block.hpp
//
// Mixture-of-depths around a whole block (MoMa §2.3 Eq. 2, Raposo et al. Eq. 1; PAPERS.md §1.2):
// a sigmoid router picks the top-C tokens of each routing group (capacity 0.25 by default); they
// run through the wrapped block ALONE (attention among the kept tokens only: staged MoDE, MoMa fn.
// 4) at their original positions; out = x + r * (block(x_kept) - x_kept); the rest skip. MoD comes
// before the inner block's modality split and MoE routing (§4.12). Decoding: aux router > 0.5.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/block.hpp>
#include <mmsparse/layers/kv_cache.hpp>
#include <mmsparse/layers/moma_block.hpp>
#include <mmsparse/routing/aux_router.hpp>
#include <mmsparse/routing/mixture_of_depths.hpp>

namespace mmsparse {

template <class Inner>
class ModBlock {
 public:
  using T = typename Inner::scalar;
  using B = typename Inner::backend_type;
  using S = typename B::space;
  using W = router_t<T>;
  using scalar = T;
  using backend_type = B;
  using inner_type = Inner;
  using Aux = AuxRouter<T, B>;
  static_assert(
      std::is_same_v<W, T>,
      "ModBlock keeps its router weight with the block's parameters: use float or double");

  struct Config {
    typename Inner::Config inner;
    MixtureOfDepths::Config router{};  // capacity c_d (0.25; 0.125 as in Raposo), Gumbel noise
  };
  struct Saved {
    Tensor<T, S> x;                  // [N, d] router input
    Tensor<ModalityId, S> modality;  // [N, 1]
    BlockInput<S> route;             // routing options of the forward (spans unused)
    plan_t<B> plan;                  // one segment: the kept tokens, ascending, with gates
    typename MixtureOfDepths::template Saved<B> router;
    Tensor<T, S> delta;  // [C, d] block(x_kept) - x_kept
    typename Inner::Saved inner;
    std::int64_t tokens = 0;
    bool valid = false;
  };

  explicit ModBlock(Config cfg)
      : cfg_(std::move(cfg)),
        inner_(cfg_.inner),
        router_{cfg_.router},
        aux_(typename Aux::Config{block().d, 1, 0, block().seed * 1000003ull + 50}) {
    router_.check_experts("ModBlock", 1);
    router_w_ = Tensor<W, S>(block().d, 1);
    Rng rng(block().seed * 1000003ull + 51);
    rng.fill_normal(router_w_.view(), 1.0 / std::sqrt(static_cast<double>(block().d)));
    router_v_ = router_w_.view();
  }

  [[nodiscard]] const Config& config() const {
    return cfg_;
  }
  [[nodiscard]] static const BlockConfig& block_config(const Config& cfg) {
    return Inner::block_config(cfg.inner);
  }
  [[nodiscard]] const Inner& inner() const {
    return inner_;
  }
  [[nodiscard]] const AttentionConfig& attention_config() const {
    return inner_.attention_config();
  }

  // "router" [d, 1], then the wrapped block's parameters under "inner.".
  [[nodiscard]] static std::vector<ParamInfo> parameters(const Config& cfg) {
    std::vector<ParamInfo> p = {{"router", {block_config(cfg).d, 1}, true}};
    for (auto i : Inner::parameters(cfg.inner)) {
      i.name = "inner." + i.name;
      p.push_back(std::move(i));
    }
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> weights() const {
    std::vector<View<T, S>> w = {router_v_};
    for (const auto& v : inner_.weights()) {
      w.push_back(v);
    }
    return w;
  }
  void bind(std::span<const View<T, S>> w) {
    detail::check_bound("ModBlock::bind", parameters(cfg_), w);
    inner_.bind(w.subspan(1));
    router_v_ = w[0];
    router_w_ = {};
  }
  // "aux.w1", "aux.w2" (the MoD aux router), then the wrapped block's under "inner.".
  [[nodiscard]] static std::vector<ParamInfo> aux_parameters(const Config& cfg) {
    auto p = detail::prefixed(
        "aux.", Aux::parameter_shapes(typename Aux::Config{block_config(cfg).d, 1, 0, 0}));
    for (auto i : Inner::aux_parameters(cfg.inner)) {
      i.name = "inner." + i.name;
      p.push_back(std::move(i));
    }
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> aux_weights() const {
    std::vector<View<T, S>> w = {aux_.weights().w1, aux_.weights().w2};
    for (const auto& v : inner_.aux_weights()) {
      w.push_back(v);
    }
    return w;
  }
  void bind_aux(std::span<const View<T, S>> w) {
    detail::check_bound("ModBlock::bind_aux", aux_parameters(cfg_), w);
    aux_.bind({w[0], w[1]});
    inner_.bind_aux(w.subspan(2));
  }

  // y [N, d] = x + r * (block(x_kept) - x_kept) on the kept rows, x elsewhere. y may be x.
  BlockStats forward(B& b,
                     View<const T, S> x,
                     const BlockInput<S>& in,
                     View<T, S> y,
                     Saved* saved = nullptr) const {
    constexpr const char* op = "ModBlock::forward";
    const std::int64_t n = x.rows;
    const std::int64_t d = block().d;
    MMSPARSE_CHECK(x.cols == d, op, "x", "shape [N, " + std::to_string(d) + "]", x.shape());
    MMSPARSE_CHECK(y.shape() == x.shape(), op, "y", x.shape(), y.shape());
    detail::check_block_input(op, in, n, block().modalities);
    MMSPARSE_CHECK(saved == nullptr || in.routing == RoutingMode::batch,
                   op,
                   "routing",
                   "batch routing for a training forward (aux routing is for inference)",
                   "aux");
    BlockStats st;
    View<const T, S> xin = x;
    Span<const ModalityId, S> mod = in.modality;
    if (saved != nullptr) {
      saved->valid = false;
      detail::reshape_storage(saved->x, n, d);
      detail::reshape_storage(saved->modality, n, 1);
      b.copy(saved->x.view(), x);
      b.copy(saved->modality.view(), in.modality.as_column());
      xin = saved->x.view();
      mod = saved->modality.span();
      saved->route = in;
    }
    typename MixtureOfDepths::template Saved<B> local;
    plan_t<B> plan;
    if (in.routing == RoutingMode::aux) {
      plan = aux_plan(b, xin, st);
    } else {
      plan = router_.route(b, route_args(xin, mod, in), saved ? saved->router : local);
      st.flops += 2.0 * static_cast<double>(n * d);
    }
    const std::int64_t c = plan.slots();
    auto frame = b.workspace().frame();
    View<T, S> delta = b.workspace().template take<T>(saved ? 0 : c, d);  // [C, d]
    if (saved != nullptr) {
      detail::reshape_storage(saved->delta, c, d);
      delta = saved->delta.view();
    }
    st += through_kept(b, xin, in, plan, delta, y, [&](auto xs, const auto& inner_in, auto ys) {
      return inner_.forward(b, xs, inner_in, ys, saved ? &saved->inner : nullptr);
    });
    if (in.trace) {
      st.routing.push_back(RoutingTrace::of(b, MixtureOfDepths::name, plan));
    }
    if (saved != nullptr) {
      saved->plan = std::move(plan);
      saved->tokens = n;
      saved->valid = true;
    }
    return st;
  }

  // The n new tokens of sequence `seq`: those the aux router keeps run the wrapped block (and
  // append K/V to `cache`); the others leave no K/V in this layer (PAPERS.md §4.11).
  BlockStats decode(B& b,
                    View<const T, S> x,
                    const BlockInput<S>& in,
                    KvCache<T, B>& cache,
                    std::int64_t seq,
                    View<T, S> y) const {
    constexpr const char* op = "ModBlock::decode";
    const std::int64_t n = x.rows;
    const std::int64_t d = block().d;
    MMSPARSE_CHECK(x.cols == d, op, "x", "shape [n, " + std::to_string(d) + "]", x.shape());
    MMSPARSE_CHECK(y.shape() == x.shape(), op, "y", x.shape(), y.shape());
    detail::check_block_input(op, in, n, block().modalities);
    cache.check_room(op, seq, n);
    BlockStats st;
    plan_t<B> plan = aux_plan(b, x, st);
    auto frame = b.workspace().frame();
    auto delta = b.workspace().template take<T>(plan.slots(), d);  // [C, d]
    st += through_kept(b, x, in, plan, delta, y, [&](auto xs, const auto& inner_in, auto ys) {
      return inner_.decode(b, xs, inner_in, cache, seq, ys);
    });
    return st;
  }

  // dx [N, d] += dL/dx, grads += dL/dW; the router gets r's gradient <delta, dy> (MoD §3.4).
  void backward(B& b,
                const Saved& saved,
                View<const T, S> dy,
                View<T, S> dx,
                std::span<const View<T, S>> grads,
                double aux_scale = 1.0) const {
    constexpr const char* op = "ModBlock::backward";
    MMSPARSE_CHECK(saved.valid, op, "saved", "the context of a training forward", "none");
    const Shape shape{saved.tokens, block().d};
    MMSPARSE_CHECK(dy.shape() == shape, op, "dy", shape, dy.shape());
    MMSPARSE_CHECK(dx.shape() == shape, op, "dx", shape, dx.shape());
    detail::check_bound(op, parameters(cfg_), grads);
    const std::int64_t c = saved.plan.slots();
    auto frame = b.workspace().frame();
    auto dys = b.workspace().template take<T>(c, shape.cols);  // [C, d] dL/d block(x_kept)
    auto dxs = b.workspace().template take<T>(c, shape.cols);  // [C, d] dL/d x_kept
    auto dgate = b.workspace().template take_span<W>(c);       // [C]
    b.axpy(dx, dy, 1.0);                                       // every token's residual
    b.gathered_row_dot(dgate, saved.delta.view(), dy, saved.plan.tokens());
    b.gather_rows(dys, dy, saved.plan.tokens());
    b.scale_rows(dys, saved.plan.gates());
    b.fill(dxs, T{});
    b.axpy(dxs, detail::cv(dys), -1.0);  // the "- x_kept" of the delta
    if (c > 0) {
      inner_.backward(b, saved.inner, detail::cv(dys), dxs, grads.subspan(1), aux_scale);
    }
    b.scatter_add_rows(dx, detail::cv(dxs), saved.plan.tokens(), Span<const W, S>{});
    router_.backward(b,
                     route_args(saved.x.view(), saved.modality.span(), saved.route),
                     saved.router,
                     Span<const W, S>(dgate),
                     RouterGrads<B>{dx, grads[0], aux_scale});
  }

  // Fits the MoD aux router (and the wrapped block's) to a training forward's decisions.
  void aux_fit(B& b,
               const Saved& saved,
               std::span<const View<T, S>> aux_grads,
               AuxRouterFit& fit) const {
    detail::check_bound("ModBlock::aux_fit", aux_parameters(cfg_), aux_grads);
    const std::int64_t n = saved.x.rows();
    std::vector<std::int32_t> kept(static_cast<std::size_t>(saved.plan.slots()));
    b.copy_to_host(std::span<std::int32_t>(kept), saved.plan.tokens());
    std::vector<std::int32_t> target(static_cast<std::size_t>(n), 0);
    for (const auto t : kept) {
      target[static_cast<std::size_t>(t)] = 1;
    }
    fit += aux_.fit(b, saved.x.view(), target, {aux_grads[0], aux_grads[1]});
    if (saved.plan.slots() > 0) {
      inner_.aux_fit(b, saved.inner, aux_grads.subspan(2), fit);
    }
  }

 private:
  static constexpr std::array<std::int64_t, 1> one_group = {1};

  [[nodiscard]] const BlockConfig& block() const {
    return block_config(cfg_);
  }
  RouteArgs<B> route_args(View<const T, S> x,
                          Span<const ModalityId, S> modality,
                          const BlockInput<S>& in) const {
    RouteArgs<B> args;
    args.x = x;
    args.modality = modality;
    args.router_weight = router_v_;
    args.num_modalities = block().modalities;
    args.experts_per_group = one_group;
    args.sequence_length = in.routing_group;
    args.training = in.training;
    args.seed = in.seed;
    return args;
  }

  // Inference: kept when aux(x) > 0.5, gate = sigmoid(x w) of the main router (MoMa §2.4).
  plan_t<B> aux_plan(B& b, View<const T, S> x, BlockStats& st) const {
    const std::int64_t n = x.rows;
    const auto dec = aux_.decide(b, x);
    std::vector<std::vector<std::int32_t>> chosen(1);
    for (std::int64_t t = 0; t < n; ++t) {
      if (dec[static_cast<std::size_t>(t)] != 0) {
        chosen[0].push_back(static_cast<std::int32_t>(t));
      }
    }
    auto frame = b.workspace().frame();
    auto score = b.workspace().template take<W>(n, 1);  // [N, 1]
    if (n > 0) {
      b.gemm(score, x, Trans::no, detail::cv(router_v_), Trans::no, 1.0, 0.0);
      b.sigmoid(score, detail::cv(score));
    }
    st.flops += aux_.flops(n) + 2.0 * static_cast<double>(n * block().d);
    return detail::plan_from_host<B>(b, chosen, n, detail::cv(score));
  }

  // y = x + gate * delta on the kept rows of `plan` and x elsewhere (y may be x), where delta
  // [C, d] gets inner(x_kept) - x_kept: run_inner(x_kept, kept input, out) runs the wrapped block
  // over the kept rows and returns its stats.
  template <class RunInner>
  BlockStats through_kept(B& b,
                          View<const T, S> x,
                          const BlockInput<S>& in,
                          const plan_t<B>& plan,
                          View<T, S> delta,
                          View<T, S> y,
                          RunInner&& run_inner) const {
    const std::int64_t c = plan.slots();
    BlockStats st;
    auto frame = b.workspace().frame();
    auto xs = b.workspace().template take<T>(c, x.cols);  // [C, d] kept rows
    auto ys = b.workspace().template take<T>(c, x.cols);  // [C, d] the block's output on them
    if (c > 0) {
      std::vector<std::int64_t> sequences;
      const BlockInput<S> inner_in = kept_input(b, in, plan, x.rows, sequences);
      b.gather_rows(xs, x, plan.tokens());
      st = run_inner(detail::cv(xs), inner_in, ys);
      b.copy(delta, detail::cv(ys));
      b.axpy(delta, detail::cv(xs), -1.0);
    }
    b.copy(y, x);
    b.scatter_add_rows(y, detail::cv(delta), plan.tokens(), plan.gates());
    return st;
  }

  // The wrapped block's input: the kept tokens' modality and original positions (workspace, in
  // the caller's frame), their per-sequence row offsets in `sequences`, and the routing group.
  BlockInput<S> kept_input(B& b,
                           const BlockInput<S>& in,
                           const plan_t<B>& plan,
                           std::int64_t n,
                           std::vector<std::int64_t>& sequences) const {
    const std::int64_t c = plan.slots();
    std::vector<std::int32_t> kept(static_cast<std::size_t>(c));
    b.copy_to_host(std::span<std::int32_t>(kept), plan.tokens());
    sequences.assign(in.sequences.size(), 0);
    for (std::size_t s = 1; s < in.sequences.size(); ++s) {  // kept rows ascend
      sequences[s] = std::lower_bound(kept.begin(), kept.end(), in.sequences[s]) - kept.begin();
    }
    auto positions = b.workspace().template take_span<std::int32_t>(c);
    auto modality = b.workspace().template take_span<ModalityId>(c);
    b.gather_values(positions, in.positions, plan.tokens(), std::int32_t{-1});
    b.gather_values(modality, in.modality, plan.tokens(), ModalityId{-1});
    BlockInput<S> out = in;
    out.positions = positions;
    out.modality = modality;
    out.sequences = sequences;
    out.seed = in.seed * 0x9e3779b97f4a7c15ull + 1;
    // Per-sequence routing keeps C of each group of L: the kept groups hold C * L / N tokens each.
    out.routing_group =
        in.routing == RoutingMode::batch && in.routing_group > 0 ? c * in.routing_group / n : 0;
    return out;
  }

  Config cfg_;
  Inner inner_;
  MixtureOfDepths router_;
  Aux aux_;
  Tensor<W, S> router_w_;  // [d, 1] own storage (empty after bind)
  View<W, S> router_v_;
};

}  // namespace mmsparse

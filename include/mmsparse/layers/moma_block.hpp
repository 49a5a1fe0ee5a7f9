// mmsparse/layers/moma_block.hpp
//
// MoMa block (MoMa §2.2): shared attention + a sparse SwiGLU FFN under any router (ModalityAware<
// ExpertChoice> for 4t4i, ModalityHard for 1t1i, TokenChoice for a flat top-k MoE), with the gate
// placed before or after the post-norm (GatePlacement, PAPERS.md §4.3). Expert-choice routers get
// one aux router per modality group (MoMa §2.4), used by RoutingMode::aux and at decode time.
#pragma once

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
#include <mmsparse/dispatch/concepts.hpp>
#include <mmsparse/dispatch/layout.hpp>
#include <mmsparse/layers/block.hpp>
#include <mmsparse/layers/experts.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>
#include <mmsparse/routing/aux_router.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/modality_hard.hpp>

namespace mmsparse {

namespace detail {
template <class R>
struct expert_choice_router : std::false_type {};
template <>
struct expert_choice_router<ExpertChoice> : std::true_type {};
template <>
struct expert_choice_router<ModalityAware<ExpertChoice>> : std::true_type {};

template <class R>
struct modality_grouped_router : std::false_type {};  // one expert group per modality
template <class I>
struct modality_grouped_router<ModalityAware<I>> : std::true_type {};
template <>
struct modality_grouped_router<ModalityHard> : std::true_type {};

// A plan from host token lists (ascending) per expert, gates = score(token, expert).
template <class B>
plan_t<B> plan_from_host(B& b,
                         const std::vector<std::vector<std::int32_t>>& chosen,
                         std::int64_t tokens,
                         View<const router_scalar_t<B>, typename B::space> score) {
  using W = router_scalar_t<B>;
  using S = typename B::space;
  plan_t<B> plan;
  plan.num_tokens = tokens;
  plan.num_experts = static_cast<std::int64_t>(chosen.size());
  plan.offsets.assign(1, 0);
  std::vector<std::int32_t> flat;
  for (const auto& c : chosen) {
    flat.insert(flat.end(), c.begin(), c.end());
    plan.offsets.push_back(static_cast<std::int64_t>(flat.size()));
  }
  plan.token = Tensor<std::int32_t, S>(plan.slots(), 1);  // [S, 1]
  plan.gate = Tensor<W, S>(plan.slots(), 1);              // [S, 1]
  b.copy_from_host(plan.token.span(), std::span<const std::int32_t>(flat));
  for (std::int64_t e = 0; e < plan.num_experts; ++e) {
    const std::int64_t o = plan.offsets[static_cast<std::size_t>(e)];
    const std::int64_t count = plan.tokens_of(e);
    if (count > 0) {
      b.gather_rows(View<W, S>(plan.gate.data() + o, count, 1),
                    score.col_block(e, 1),
                    Span<const std::int32_t, S>(plan.token.data() + o, count));
    }
  }
  return plan;
}
}  // namespace detail

// F(h) = norm(sum_e g_e FFN_e(h)) or sum_e g_e norm(FFN_e(h)) (post-norm, by GatePlacement), or
// sum_e g_e FFN_e(norm(h)) (pre-norm). Parameters: router [d, E_r], w1, w3, w2, norm [1, d].
template <class T, class R, class D, class B>
  requires backend<B> && std::is_same_v<T, typename B::scalar>
class SparseFfnPart {
 public:
  using S = typename B::space;
  using W = router_t<T>;
  using Ffn = SparseFfn<T, R, D, B>;
  using Aux = AuxRouter<T, B>;
  static_assert(
      std::is_same_v<W, T>,
      "SparseFfnPart keeps router weights with the block's parameters: use float or double");
  static constexpr bool has_aux = detail::expert_choice_router<R>::value;
  static constexpr bool grouped = detail::modality_grouped_router<R>::value;

  struct Config {
    std::vector<std::int64_t>
        experts;  // per modality ({4, 4}: 4t4i; ModalityHard: {1, 1}); flat: {E}
    typename R::Config router{};
    typename D::Config dispatch{};
    GatePlacement gate = GatePlacement::after_norm;  // post-norm only (docs/design.md "Blocks")
  };
  struct Saved {
    detail::NormSaved<T, B> in_norm;  // pre-norm: the norm of the part's input
    Tensor<T, S> x;                   // [N, d] the experts' (and router's) input
    Tensor<ModalityId, S> modality;   // [N, 1]
    BlockInput<S> route;              // routing options of the forward (spans unused)
    plan_t<B> plan;
    typename R::template Saved<B> router;
    Tensor<std::int32_t, S> token, slot;  // [R, 1] layout storage
    Tensor<W, S> gate;                    // [R, 1]
    layout_t<B> layout;
    Tensor<T, S> a, g, o;              // [R, f], [R, f], [R, d] expert activations
    Tensor<T, S> on;                   // [R, d] norm(o) rows (after_norm)
    detail::NormSaved<T, B> out_norm;  // post-norm statistics (of o rows or of the sum)
  };

  SparseFfnPart(const BlockConfig& bc, const Config& cfg)
      : bc_(bc), cfg_(cfg), ffn_(ffn_config(bc, cfg)), ffn_w_(ffn_.weights()) {
    norm_ = Tensor<T, S>(1, bc_.d);
    norm_.fill(T{1});
    norm_w_ = norm_.view();
    if constexpr (has_aux) {
      for (const auto& c : aux_configs(bc_, cfg_)) {
        aux_.emplace_back(c);
      }
    }
  }

  [[nodiscard]] const Ffn& ffn() const {
    return ffn_;
  }
  [[nodiscard]] const Config& config() const {
    return cfg_;
  }
  [[nodiscard]] static std::vector<ParamInfo> parameters(const BlockConfig& bc, const Config& cfg) {
    auto p = detail::prefixed("", Ffn::parameter_shapes(ffn_config(bc, cfg)));
    p.push_back({"norm", {1, bc.d}, false});
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> weights() const {
    return {ffn_w_.router, ffn_w_.w1, ffn_w_.w3, ffn_w_.w2, norm_w_};
  }
  void bind(std::span<const View<T, S>> w) {
    detail::check_bound("SparseFfnPart::bind", parameters(bc_, cfg_), w);
    ffn_w_ = {w[0], w[1], w[2], w[3]};
    ffn_.bind(ffn_w_);
    norm_w_ = w[4];
    norm_ = {};
  }
  // Aux routers: "aux<m>.w1", "aux<m>.w2" per modality group (grouped), or "aux.w1", "aux.w2".
  [[nodiscard]] static std::vector<ParamInfo> aux_parameters(const BlockConfig& bc,
                                                             const Config& cfg) {
    std::vector<ParamInfo> p;
    if constexpr (has_aux) {
      const auto configs = aux_configs(bc, cfg);
      for (std::size_t m = 0; m < configs.size(); ++m) {
        const std::string prefix = grouped ? "aux" + std::to_string(m) + "." : "aux.";
        detail::append(p, detail::prefixed(prefix, Aux::parameter_shapes(configs[m])));
      }
    }
    return p;
  }
  [[nodiscard]] std::vector<View<T, S>> aux_weights() const {
    std::vector<View<T, S>> v;
    for (const auto& a : aux_) {
      v.push_back(a.weights().w1);
      v.push_back(a.weights().w2);
    }
    return v;
  }
  void bind_aux(std::span<const View<T, S>> w) {
    detail::check_bound("SparseFfnPart::bind_aux", aux_parameters(bc_, cfg_), w);
    for (std::size_t m = 0; m < aux_.size(); ++m) {
      aux_[m].bind({w[2 * m], w[2 * m + 1]});
    }
  }

  BlockStats forward(
      B& b, View<const T, S> x, const BlockInput<S>& in, View<T, S> delta, Saved* saved) const {
    const std::int64_t n = x.rows;
    const std::int64_t d = bc_.d;
    const std::int64_t f = ffn_.config().hidden;
    const bool post = bc_.norm_order == NormOrder::post;
    const bool after = post && cfg_.gate == GatePlacement::after_norm;
    auto frame = b.workspace().frame();
    auto tmp = b.workspace().template take<T>(n, d);  // [N, d] norm(x), or the gated sum
    View<const T, S> xin = x;
    Span<const ModalityId, S> mod = in.modality;
    if (!post) {
      detail::saved_rms_forward(
          b, tmp, x, detail::cv(norm_w_), bc_.norm_eps, saved ? &saved->in_norm : nullptr);
      xin = tmp;
    }
    BlockStats st;
    plan_t<B> plan;
    typename R::template Saved<B> local_router;
    if (saved != nullptr) {
      detail::reshape_storage(saved->x, n, d);
      detail::reshape_storage(saved->modality, n, 1);
      b.copy(saved->x.view(), xin);
      b.copy(saved->modality.view(), in.modality.as_column());
      xin = saved->x.view();
      mod = saved->modality.span();
      saved->route = in;
    }
    if constexpr (has_aux) {
      if (in.routing == RoutingMode::aux) {
        plan = aux_plan(b, xin, mod, st.flops);
      }
    }
    if (plan.offsets.empty()) {
      plan = ffn_.router().route(b, route_args(xin, mod, in), saved ? saved->router : local_router);
    }

    const std::int64_t rows = ffn_.dispatch().rows(plan);
    layout_t<B> scratch_layout;
    layout_t<B>& layout = detail::forward_layout(b, rows, saved, scratch_layout);
    make_layout(b, layout, ffn_.dispatch(), plan);

    auto xg = b.workspace().template take<T>(rows, d);  // [R, d]
    auto h = b.workspace().template take<T>(rows, f);   // [R, f]
    View<T, S> a, g, o, on;                             // [R, f], [R, f], [R, d], [R, d]
    if (saved != nullptr) {
      for (auto* t : {&saved->a, &saved->g}) {
        detail::reshape_storage(*t, rows, f);
      }
      detail::reshape_storage(saved->o, rows, d);
      detail::reshape_storage(saved->on, after ? rows : 0, d);
      a = saved->a.view();
      g = saved->g.view();
      o = saved->o.view();
      on = saved->on.view();
    } else {
      a = b.workspace().template take<T>(rows, f);
      g = b.workspace().template take<T>(rows, f);
      o = b.workspace().template take<T>(rows, d);
      on = b.workspace().template take<T>(after ? rows : 0, d);
    }
    dispatch_gather(b, xg, xin, layout);
    experts_forward(b, o, a, g, h, detail::cv(xg), expert_weights(), layout.segments());
    auto* out_norm = saved ? &saved->out_norm : nullptr;
    if (after) {  // each expert's output normalised, then gated and summed
      detail::saved_rms_forward(b, on, detail::cv(o), detail::cv(norm_w_), bc_.norm_eps, out_norm);
      dispatch_combine(b, delta, detail::cv(on), layout);
    } else if (post) {  // the gated sum normalised (a lone gate cancels)
      dispatch_combine(b, tmp, detail::cv(o), layout);
      detail::saved_rms_forward(
          b, delta, detail::cv(tmp), detail::cv(norm_w_), bc_.norm_eps, out_norm);
    } else {
      dispatch_combine(b, delta, detail::cv(o), layout);
    }

    st.flops += expert_flops(rows, d, f) + 2.0 * static_cast<double>(n * d * ffn_.router_columns());
    st.aux_loss = static_cast<double>(plan.aux.total());
    if (in.trace) {
      st.routing.push_back(RoutingTrace::of(b, R::name, plan));
    }
    if (saved != nullptr) {
      saved->plan = std::move(plan);
    }
    return st;
  }

  // dx += dL/dx, grads += dL/dW (parameters() order), the router's through the gates and, scaled
  // by aux_scale, its aux losses.
  void backward(B& b,
                const Saved& saved,
                View<const T, S> ddelta,
                View<T, S> dx,
                std::span<const View<T, S>> grads,
                double aux_scale = 1.0) const {
    const std::int64_t n = ddelta.rows;
    const std::int64_t d = bc_.d;
    const bool post = bc_.norm_order == NormOrder::post;
    const bool after = post && cfg_.gate == GatePlacement::after_norm;
    const layout_t<B>& layout = saved.layout;
    const std::int64_t rows = layout.rows();
    const View<T, S> dnorm = grads[4];
    auto frame = b.workspace().frame();
    View<const T, S> dcomb = ddelta;
    if (post && !after) {
      auto du = b.workspace().template take<T>(n, d);  // [N, d] dL/d(gated sum)
      b.fill(du, T{});
      detail::saved_rms_backward(b, du, dnorm, ddelta, detail::cv(norm_w_), saved.out_norm);
      dcomb = du;
    }
    auto xg = b.workspace().template take<T>(rows, d);    // [R, d] gathered x, then its gradient
    auto dout = b.workspace().template take<T>(rows, d);  // [R, d]
    auto dgate = b.workspace().template take_span<W>(saved.plan.slots());
    dispatch_gather(b, xg, View<const T, S>(saved.x.view()), layout);
    dispatch_combine_backward(
        b, dgate, dout, dcomb, after ? saved.on.view() : saved.o.view(), layout);
    View<const T, S> dexp = dout;
    if (after) {
      auto d_o = b.workspace().template take<T>(rows, d);  // [R, d]
      b.fill(d_o, T{});
      detail::saved_rms_backward(
          b, d_o, dnorm, detail::cv(dout), detail::cv(norm_w_), saved.out_norm);
      dexp = d_o;
    }
    experts_backward(b,
                     xg,  // dL/d(gathered x) overwrites the gathered x once it is spent
                     ExpertGrads<T, S>{grads[1], grads[2], grads[3]},
                     dexp,
                     detail::cv(xg),
                     saved.a.view(),
                     saved.g.view(),
                     expert_weights(),
                     layout.segments(),
                     /*accumulate_dx=*/false);
    View<T, S> dxin = dx;
    if (!post) {
      dxin = b.workspace().template take<T>(n, d);
      b.fill(dxin, T{});
    }
    dispatch_gather_backward(b, dxin, detail::cv(xg), layout);
    ffn_.router().backward(b,
                           route_args(saved.x.view(), saved.modality.span(), saved.route),
                           saved.router,
                           Span<const W, S>(dgate),
                           RouterGrads<B>{dxin, grads[0], aux_scale});
    if (!post) {
      detail::saved_rms_backward(
          b, dx, dnorm, detail::cv(dxin), detail::cv(norm_w_), saved.in_norm);
    }
  }

  // Fits the aux routers to the top-C decisions of a training forward (per-expert BCE, the model
  // frozen or stopped: only aux grads change). aux_grads in aux_parameters() order.
  void aux_fit(B& b,
               const Saved& saved,
               std::span<const View<T, S>> aux_grads,
               AuxRouterFit& fit) const {
    if constexpr (has_aux) {
      detail::check_bound("SparseFfnPart::aux_fit", aux_parameters(bc_, cfg_), aux_grads);
      const std::int64_t n = saved.x.rows();
      std::vector<std::int32_t> tokens(static_cast<std::size_t>(saved.plan.slots()));
      b.copy_to_host(std::span<std::int32_t>(tokens), saved.plan.tokens());
      const auto& off = saved.plan.offsets;
      auto frame = b.workspace().frame();
      if constexpr (grouped) {
        const Groups gr = modality_groups(b, saved.modality.span(), n);
        std::vector<std::int64_t> row_of(static_cast<std::size_t>(n));
        for (std::int64_t r = 0; r < n; ++r) {
          row_of[static_cast<std::size_t>(gr.order_host[static_cast<std::size_t>(r)])] = r;
        }
        std::int64_t e0 = 0;
        for (std::size_t m = 0; m < aux_.size(); ++m) {
          const std::int64_t begin = gr.offsets[m];
          const std::int64_t n_m = gr.offsets[m + 1] - begin;
          const std::int64_t e_m = cfg_.experts[m];
          std::vector<std::int32_t> target(static_cast<std::size_t>(n_m * e_m), 0);
          for (std::int64_t e = 0; e < e_m; ++e) {
            for (auto s = off[static_cast<std::size_t>(e0 + e)];
                 s < off[static_cast<std::size_t>(e0 + e + 1)];
                 ++s) {
              const std::int64_t r = row_of[static_cast<std::size_t>(tokens[s])] - begin;
              target[static_cast<std::size_t>(r * e_m + e)] = 1;
            }
          }
          auto xm = b.workspace().template take<T>(n_m, bc_.d);  // [n_m, d]
          b.gather_rows(xm, saved.x.view(), gr.order.subspan(begin, n_m));
          fit += aux_[m].fit(b, detail::cv(xm), target, {aux_grads[2 * m], aux_grads[2 * m + 1]});
          e0 += e_m;
        }
      } else {
        const std::int64_t e = ffn_.num_experts();
        std::vector<std::int32_t> target(static_cast<std::size_t>(n * e), 0);
        for (std::int64_t x = 0; x < e; ++x) {
          for (auto s = off[static_cast<std::size_t>(x)]; s < off[static_cast<std::size_t>(x + 1)];
               ++s) {
            target[static_cast<std::size_t>(tokens[s] * e + x)] = 1;
          }
        }
        fit += aux_[0].fit(b, saved.x.view(), target, {aux_grads[0], aux_grads[1]});
      }
    } else {
      (void)b, (void)saved, (void)aux_grads, (void)fit;
    }
  }

 private:
  struct Groups {
    Span<const std::int32_t, S> order;  // [N] tokens by modality (workspace, caller's frame)
    std::vector<std::int32_t> order_host;
    std::vector<std::int64_t> offsets;  // [M + 1]
  };

  static typename Ffn::Config ffn_config(const BlockConfig& bc, const Config& cfg) {
    constexpr const char* op = "SparseFfnPart";
    if constexpr (grouped) {
      MMSPARSE_CHECK(static_cast<std::int64_t>(cfg.experts.size()) == bc.modalities,
                     op,
                     "experts",
                     "one expert group per modality (" + std::to_string(bc.modalities) + ")",
                     cfg.experts.size());
    }
    typename Ffn::Config c;
    c.d = bc.d;
    c.hidden = bc.ffn_hidden();
    c.experts = cfg.experts;
    c.modalities = bc.modalities;
    c.router = cfg.router;
    c.dispatch = cfg.dispatch;
    c.seed = bc.seed * 1000003ull + 4;
    return c;
  }
  static std::vector<typename Aux::Config> aux_configs(const BlockConfig& bc, const Config& cfg) {
    std::vector<typename Aux::Config> out;
    if constexpr (grouped) {
      for (std::size_t m = 0; m < cfg.experts.size(); ++m) {
        out.push_back({bc.d, cfg.experts[m], 0, bc.seed * 1000003ull + 10 + m});
      }
    } else {
      std::int64_t e = 0;
      for (const auto x : cfg.experts) {
        e += x;
      }
      out.push_back({bc.d, e, 0, bc.seed * 1000003ull + 10});
    }
    return out;
  }
  ExpertWeights<T, S> expert_weights() const {
    return {ffn_w_.w1, ffn_w_.w3, ffn_w_.w2};
  }
  RouteArgs<B> route_args(View<const T, S> x,
                          Span<const ModalityId, S> modality,
                          const BlockInput<S>& in) const {
    RouteArgs<B> args;
    args.x = x;
    args.modality = modality;
    args.router_weight = ffn_w_.router;
    args.num_modalities = bc_.modalities;
    args.experts_per_group = ffn_.config().experts;
    args.sequence_length = in.routing_group;
    args.training = in.training;
    args.seed = in.seed;
    return args;
  }

  Groups modality_groups(B& b, Span<const ModalityId, S> modality, std::int64_t n) const {
    Groups gr;
    auto order = b.workspace().template take_span<std::int32_t>(n);
    b.bucket_sort(order, gr.offsets, modality, bc_.modalities);
    gr.order = order;
    gr.order_host.resize(static_cast<std::size_t>(n));
    b.copy_to_host(std::span<std::int32_t>(gr.order_host), gr.order);
    return gr;
  }

  // The causal plan: token t goes to expert e when aux_e(x_t) > 0.5 (its modality's group), with
  // the main router's score as gate (MoMa §2.4). No capacity: the expert count per token varies.
  plan_t<B> aux_plan(B& b,
                     View<const T, S> x,
                     Span<const ModalityId, S> modality,
                     double& flops) const {
    const std::int64_t n = x.rows;
    const std::int64_t e_total = ffn_.num_experts();
    auto frame = b.workspace().frame();
    auto logits = b.workspace().template take<W>(n, e_total);  // [N, E]
    auto score = b.workspace().template take<W>(n, e_total);   // [N, E]
    if (n > 0) {
      b.gemm(logits, x, Trans::no, View<const W, S>(ffn_w_.router), Trans::no, 1.0, 0.0);
    }
    std::vector<std::vector<std::int32_t>> chosen(static_cast<std::size_t>(e_total));
    auto gate_of = [&](std::int64_t c0, std::int64_t count) {
      if (gate_fn() == GateFn::sigmoid) {
        b.sigmoid(score.col_block(c0, count), detail::cv(logits.col_block(c0, count)));
      } else {
        b.softmax_rows(score.col_block(c0, count), detail::cv(logits.col_block(c0, count)));
      }
    };
    if constexpr (grouped) {
      const Groups gr = modality_groups(b, modality, n);
      std::int64_t e0 = 0;
      for (std::size_t m = 0; m < aux_.size(); ++m) {
        const std::int64_t begin = gr.offsets[m];
        const std::int64_t n_m = gr.offsets[m + 1] - begin;
        const std::int64_t e_m = cfg_.experts[m];
        gate_of(e0, e_m);
        if (n_m > 0) {
          auto xm = b.workspace().template take<T>(n_m, bc_.d);  // [n_m, d]
          b.gather_rows(xm, x, gr.order.subspan(begin, n_m));
          const auto dec = aux_[m].decide(b, detail::cv(xm));
          flops += aux_[m].flops(n_m);
          for (std::int64_t r = 0; r < n_m; ++r) {
            for (std::int64_t e = 0; e < e_m; ++e) {
              if (dec[static_cast<std::size_t>(r * e_m + e)] != 0) {
                chosen[static_cast<std::size_t>(e0 + e)].push_back(
                    gr.order_host[static_cast<std::size_t>(begin + r)]);
              }
            }
          }
        }
        e0 += e_m;
      }
    } else {
      gate_of(0, e_total);
      const auto dec = aux_[0].decide(b, x);
      flops += aux_[0].flops(n);
      for (std::int64_t t = 0; t < n; ++t) {
        for (std::int64_t e = 0; e < e_total; ++e) {
          if (dec[static_cast<std::size_t>(t * e_total + e)] != 0) {
            chosen[static_cast<std::size_t>(e)].push_back(static_cast<std::int32_t>(t));
          }
        }
      }
    }
    return detail::plan_from_host<B>(b, chosen, n, detail::cv(score));
  }

  GateFn gate_fn() const {
    if constexpr (has_aux) {
      return ffn_.router().cfg.gate;
    } else {
      return GateFn::sigmoid;
    }
  }

  BlockConfig bc_;
  Config cfg_;
  Ffn ffn_;
  typename Ffn::Weights ffn_w_;  // the FFN's current weights
  Tensor<T, S> norm_;            // [1, d] own storage (empty after bind)
  View<T, S> norm_w_;
  std::vector<Aux> aux_;  // one per modality group (grouped) or one (flat); expert choice only
};

// MoMa with expert groups per modality and a learned router inside each (4t4i: Inner =
// ExpertChoice, experts {4, 4}).
template <class T, class Inner, class D, class B>
using MomaBlock = Block<T, SharedAttention<T, B>, SparseFfnPart<T, ModalityAware<Inner>, D, B>, B>;

// MoMa 1t1i: one FFN per modality, hard routing (MoMa §2.2; the seed of upcycling, §2.5).
template <class T, class D, class B>
using Moma1t1iBlock = Block<T, SharedAttention<T, B>, SparseFfnPart<T, ModalityHard, D, B>, B>;

// A flat mixture of experts under router R (e.g. token-choice top-2) with shared attention.
template <class T, class R, class D, class B>
using MoeBlock = Block<T, SharedAttention<T, B>, SparseFfnPart<T, R, D, B>, B>;

}  // namespace mmsparse

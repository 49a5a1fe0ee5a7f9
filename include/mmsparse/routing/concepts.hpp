// mmsparse/routing/concepts.hpp
//
// What a routing policy is (DESIGN.md "routing"): a type with a nested Config,
// a name, a `causal` flag, and
//   route(b, args, saved) -> RoutingPlan       who goes where, with gates
//   backward(b, args, saved, dgate, grads)      gate gradients -> router weights and x
// Selected indices are constants; gradient reaches the router only through the
// gates (and the aux losses). `Saved` is whatever the policy keeps for backward.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/routing/plan.hpp>

namespace mmsparse {

template <backend B>
using router_scalar_t = router_t<typename B::scalar>;

template <backend B>
using plan_t = RoutingPlan<router_scalar_t<B>, typename B::space>;

// Inputs of a routing call. Experts are numbered group by group: group g owns
// experts [sum_{h<g} experts_per_group[h], ... + experts_per_group[g]).
template <backend B>
struct RouteArgs {
  using T = typename B::scalar;
  using W = router_scalar_t<B>;
  using S = typename B::space;

  View<const T, S> x;                  // [N, d] token states
  Span<const ModalityId, S> modality;  // [N] modality of each token
  View<const W, S> router_weight;      // [d, E_router] (0 columns for ModalityHard)
  std::int64_t num_modalities = 1;
  std::span<const std::int64_t> experts_per_group;  // one group for flat routers
  std::int64_t sequence_length = 0;  // > 0: routing groups are sequences of this length
  bool training = false;             // enables Gumbel noise
  std::uint64_t seed = 0;            // noise seed (training only)
};

// Where a router's backward accumulates (+=) its gradients.
template <backend B>
struct RouterGrads {
  View<typename B::scalar, typename B::space> dx;              // [N, d]
  View<router_scalar_t<B>, typename B::space> drouter_weight;  // [d, E_router]
  double aux_scale = 1.0;  // dLoss/d(aux loss): 1 when the aux losses are part of the loss
};

template <class R, class B>
concept router_for = backend<B> && requires(const R& r,
                                            B& b,
                                            const RouteArgs<B>& in,
                                            typename R::template Saved<B>& saved,
                                            const typename R::template Saved<B>& csaved,
                                            Span<const router_scalar_t<B>, typename B::space> dgate,
                                            const RouterGrads<B>& grads) {
  typename R::Config;
  { R::name } -> std::convertible_to<std::string_view>;
  { R::causal } -> std::convertible_to<bool>;
  { r.route(b, in, saved) } -> std::same_as<plan_t<B>>;
  r.backward(b, in, csaved, dgate, grads);
  { r.router_columns(in.experts_per_group) } -> std::convertible_to<std::int64_t>;
};

}  // namespace mmsparse

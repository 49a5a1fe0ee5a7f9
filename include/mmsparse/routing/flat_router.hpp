// mmsparse/routing/flat_router.hpp
//
// The public route and backward of a flat router, one expert group over the batch or each
// sequence (PAPERS.md §4.5): expert choice, token choice and mixture-of-depths check their
// arguments alike and then run their own route_rows / backward_rows over the flat rows
// (ModalityAware calls route_rows per modality instead).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/logits.hpp>
#include <mmsparse/routing/plan.hpp>
#include <mmsparse/routing/validate.hpp>

namespace mmsparse::detail {

// R::route: the arguments checked (one group, R's own config checks), then R::route_rows over
// the flat rows. `saved` is replaced only once routing has succeeded.
template <class R, backend B>
[[nodiscard]] plan_t<B> flat_route(const R& router,
                                   B& b,
                                   const RouteArgs<B>& args,
                                   typename R::template Saved<B>& saved) {
  const std::string op = std::string(R::name) + "::route";
  check_route_args(b, op, args, R::router_columns(args.experts_per_group));
  check_single_group(op, args.experts_per_group);
  router.check_experts(op, args.experts_per_group[0]);
  typename R::template Saved<B> s;
  plan_t<B> plan = router.route_rows(b, flat_rows(R::name, args, router.cfg.gumbel), s);
  saved = std::move(s);
  return plan;
}

// R::backward: the tokens, router weight and gradients checked against what route saved (its
// scores [saved_rows, columns]), then R::backward_rows over the flat rows.
template <class R, backend B>
void flat_backward(const R& router,
                   B& b,
                   const RouteArgs<B>& args,
                   const typename R::template Saved<B>& saved,
                   Shape saved_scores,
                   Span<const router_scalar_t<B>, typename B::space> dgate,
                   const RouterGrads<B>& grads) {
  const std::string op = std::string(R::name) + "::backward";
  check_saved_tokens(op, args, saved_scores.rows);
  MMSPARSE_CHECK(args.router_weight.cols == saved_scores.cols,
                 op,
                 "router_weight",
                 "the " + std::to_string(saved_scores.cols) + " column(s) of route",
                 args.router_weight.cols);
  check_router_grads(op, args, dgate, saved.offsets.back(), grads, saved_scores.cols);
  router.backward_rows(b,
                       flat_rows(R::name, args, router.cfg.gumbel),
                       saved,
                       dgate,
                       grads.dx,
                       grads.drouter_weight,
                       grads.aux_scale);
}

}  // namespace mmsparse::detail

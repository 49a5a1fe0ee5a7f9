// mmsparse/routing/modality_aware.hpp
//
// MoMa's hierarchical routing (MoMa §2.2, PAPERS.md §1.1): a hard split by modality (stable,
// ascending tokens), then Inner (ExpertChoice, TokenChoice, MixtureOfDepths) inside each group on
// the group's tokens, with the group's own router columns and experts (1t1i, 4t4i, 2t6i, ...).
// Group g owns router columns from sum_{h<g} Inner::router_columns({E_h}) and experts from
// sum_{h<g} E_h. An empty group yields empty segments; per-sequence routing groups hold the
// tokens of the modality within each sequence. Aux losses and drops: sums over the groups.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#if !defined(__CUDACC__)  // the CPU backend (Eigen) stays out of nvcc translation units
#include <mmsparse/backend/cpu/backend.hpp>
#endif
#include <mmsparse/core/error.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/logits.hpp>
#include <mmsparse/routing/plan.hpp>
#include <mmsparse/routing/validate.hpp>

namespace mmsparse {

// A learned router that can route a subset of the batch (RouteRows): what ModalityAware nests.
template <class R, class B>
concept group_router_for = router_for<R, B> &&
    requires(const R& r,
             B& b,
             const RouteRows<B>& rows,
             typename R::template Saved<B>& saved,
             const typename R::template Saved<B>& csaved,
             Span<const router_scalar_t<B>, typename B::space> dgate,
             View<typename B::scalar, typename B::space> dx,
             View<router_scalar_t<B>, typename B::space> dweight) {
  r.check_experts(std::string_view{}, std::int64_t{1});
  { r.route_rows(b, rows, saved) } -> std::same_as<plan_t<B>>;
  r.backward_rows(b, rows, csaved, dgate, dx, dweight, 1.0);
};

template <class Inner>
struct ModalityAware {
  using Config = typename Inner::Config;  // the same knobs for every modality group

  static constexpr std::string_view name = "modality_aware";
  static constexpr bool causal = Inner::causal;

  template <backend B>
  struct Saved {
    std::int64_t num_tokens = 0;
    Tensor<std::int32_t, typename B::space> order;         // [N, 1] tokens sorted by modality
    std::vector<std::int64_t> modality_offsets;            // [M + 1] segments of `order`
    std::vector<std::vector<std::int64_t>> groups;         // per modality: routing groups
    std::vector<typename Inner::template Saved<B>> inner;  // per modality
    std::vector<std::int64_t> slot_offsets;                // [M + 1] each modality's plan slots
  };

  Config cfg;

  [[nodiscard]] Inner inner() const {
    return Inner{cfg};
  }

  // Sum over the groups of the inner router's columns.
  [[nodiscard]] std::int64_t router_columns(std::span<const std::int64_t> per_group) const {
    std::int64_t c = 0;
    for (std::size_t g = 0; g < per_group.size(); ++g) {
      c += inner().router_columns(per_group.subspan(g, 1));
    }
    return c;
  }

  template <backend B>
  [[nodiscard]] plan_t<B> route(B& b, const RouteArgs<B>& args, Saved<B>& saved) const {
    static_assert(group_router_for<Inner, B>,
                  "ModalityAware needs an Inner router with route_rows/backward_rows "
                  "(ExpertChoice, TokenChoice, MixtureOfDepths)");
    using W = router_scalar_t<B>;
    using S = typename B::space;
    const std::string op = std::string(name) + "::route";
    const Inner in = inner();
    check_route_args(b, op, args, router_columns(args.experts_per_group));
    const auto m = static_cast<std::int64_t>(args.experts_per_group.size());
    MMSPARSE_CHECK(m == args.num_modalities,
                   op,
                   "experts_per_group",
                   "one group per modality (" + std::to_string(args.num_modalities) + ")",
                   m);
    for (std::size_t g = 0; g < args.experts_per_group.size(); ++g) {
      in.check_experts(op, args.experts_per_group[g]);
    }

    const std::int64_t n = args.x.rows;
    Saved<B> s;
    s.num_tokens = n;
    s.order = Tensor<std::int32_t, S>(n, 1);  // [N, 1]
    b.bucket_sort(s.order.span(), s.modality_offsets, args.modality, m);
    s.groups.resize(static_cast<std::size_t>(m));
    s.inner.resize(static_cast<std::size_t>(m));
    std::vector<plan_t<B>> part(static_cast<std::size_t>(m));
    {
      auto frame = b.workspace().frame();
      for (std::int64_t g = 0; g < m; ++g) {
        const auto u = static_cast<std::size_t>(g);
        s.groups[u] = modality_groups(b, args, s, g);
        auto x = gather_group(b, args, s, g);  // [n_g, d]
        part[u] = in.route_rows(b, group_rows(args, s, g, detail::as_const(x)), s.inner[u]);
      }
    }

    plan_t<B> plan;
    plan.num_tokens = n;
    plan.offsets.assign(1, 0);
    s.slot_offsets.assign(1, 0);
    for (const auto& p : part) {
      for (std::int64_t e = 0; e < p.num_experts; ++e) {
        plan.offsets.push_back(plan.offsets.back() + p.tokens_of(e));
      }
      plan.num_experts += p.num_experts;
      plan.dropped += p.dropped;
      plan.aux.balance += p.aux.balance;
      plan.aux.z += p.aux.z;
      s.slot_offsets.push_back(s.slot_offsets.back() + p.slots());
    }
    plan.token = Tensor<std::int32_t, S>(plan.slots(), 1);  // [S, 1]
    plan.gate = Tensor<W, S>(plan.slots(), 1);              // [S, 1]
    for (std::int64_t g = 0; g < m; ++g) {
      const auto u = static_cast<std::size_t>(g);
      const std::int64_t slot0 = s.slot_offsets[u];
      const std::int64_t count = part[u].slots();
      if (count == 0) {
        continue;
      }
      // group row -> global token (ascending rows map to ascending tokens)
      b.gather_values(plan.token.span().subspan(slot0, count),
                      order_of(s, g),
                      part[u].tokens(),
                      std::int32_t{-1});
      b.copy(View<W, S>(plan.gate.data() + slot0, count, 1), detail::as_const(part[u].gate.view()));
    }
    saved = std::move(s);
    return plan;
  }

  template <backend B>
  void backward(B& b,
                const RouteArgs<B>& args,
                const Saved<B>& saved,
                Span<const router_scalar_t<B>, typename B::space> dgate,
                const RouterGrads<B>& grads) const {
    using W = router_scalar_t<B>;
    using S = typename B::space;
    const std::string op = std::string(name) + "::backward";
    check_saved_tokens(op, args, saved.num_tokens);
    const auto m = static_cast<std::int64_t>(saved.inner.size());
    MMSPARSE_CHECK(static_cast<std::int64_t>(args.experts_per_group.size()) == m,
                   op,
                   "experts_per_group",
                   "the " + std::to_string(m) + " groups of route",
                   args.experts_per_group.size());
    const std::int64_t columns = router_columns(args.experts_per_group);
    MMSPARSE_CHECK(args.router_weight.cols == columns,
                   op,
                   "router_weight",
                   std::to_string(columns) + " columns",
                   args.router_weight.cols);
    check_router_grads(op, args, dgate, saved.slot_offsets.back(), grads, columns);
    const Inner in = inner();
    for (std::int64_t g = 0; g < m; ++g) {
      const auto u = static_cast<std::size_t>(g);
      const std::int64_t n_g = group_size(saved, g);
      if (n_g == 0) {
        continue;
      }
      auto frame = b.workspace().frame();
      auto x = gather_group(b, args, saved, g);                                     // [n_g, d]
      auto dx = b.workspace().template take<typename B::scalar>(n_g, args.x.cols);  // [n_g, d]
      b.fill(dx, typename B::scalar{});
      const auto rows = group_rows(args, saved, g, detail::as_const(x));
      const std::int64_t slot0 = saved.slot_offsets[u];
      in.backward_rows(b,
                       rows,
                       saved.inner[u],
                       dgate.subspan(slot0, saved.slot_offsets[u + 1] - slot0),
                       dx,
                       grads.drouter_weight.col_block(rows.column_offset, rows.experts()),
                       grads.aux_scale);
      b.scatter_add_rows(grads.dx, detail::as_const(dx), order_of(saved, g), Span<const W, S>{});
    }
  }

 private:
  template <class Sv>
  static std::int64_t group_size(const Sv& s, std::int64_t g) {
    const auto u = static_cast<std::size_t>(g);
    return s.modality_offsets[u + 1] - s.modality_offsets[u];
  }

  // The global tokens of modality g, ascending.
  template <class Sv>
  static auto order_of(const Sv& s, std::int64_t g) {
    return detail::as_const(
        s.order.span().subspan(s.modality_offsets[static_cast<std::size_t>(g)], group_size(s, g)));
  }

  // Routing groups of modality g as row offsets into its tokens: {0, n_g}, or with sequences of
  // length L one group per sequence holding that sequence's tokens of modality g.
  template <backend B, class Sv>
  static std::vector<std::int64_t> modality_groups(B& b,
                                                   const RouteArgs<B>& args,
                                                   const Sv& s,
                                                   std::int64_t g) {
    const std::int64_t n_g = group_size(s, g);
    const std::int64_t len = args.sequence_length;
    if (len == 0 || n_g == 0) {
      return {0, n_g};
    }
    auto frame = b.workspace().frame();
    auto sequence = b.workspace().template take_span<std::int32_t>(n_g);  // [n_g] of each token
    auto scratch = b.workspace().template take_span<std::int32_t>(n_g);
    b.map_index(sequence, order_of(s, g), len, 0);
    std::vector<std::int64_t> offsets;
    b.bucket_sort(scratch, offsets, detail::as_const(sequence), args.x.rows / len);
    return offsets;
  }

  template <backend B, class Sv>
  static View<typename B::scalar, typename B::space> gather_group(B& b,
                                                                  const RouteArgs<B>& args,
                                                                  const Sv& s,
                                                                  std::int64_t g) {
    auto x = b.workspace().template take<typename B::scalar>(group_size(s, g), args.x.cols);
    b.gather_rows(x, args.x, order_of(s, g));
    return x;
  }

  template <backend B, class Sv>
  RouteRows<B> group_rows(const RouteArgs<B>& args,
                          const Sv& s,
                          std::int64_t g,
                          View<const typename B::scalar, typename B::space> x) const {
    std::int64_t column = 0;
    for (std::int64_t h = 0; h < g; ++h) {
      column +=
          inner().router_columns(args.experts_per_group.subspan(static_cast<std::size_t>(h), 1));
    }
    RouteRows<B> rows;
    rows.op = std::string(name) + "::route";
    rows.x = x;
    rows.weight = args.router_weight.col_block(
        column,
        inner().router_columns(args.experts_per_group.subspan(static_cast<std::size_t>(g), 1)));
    rows.groups = s.groups[static_cast<std::size_t>(g)];
    rows.token_id = order_of(s, g);
    rows.column_offset = column;
    rows.total_columns = args.router_weight.cols;
    rows.noise = args.training && cfg.gumbel;
    rows.seed = args.seed;
    return rows;
  }
};

#if !defined(__CUDACC__)
static_assert(router_for<ModalityAware<ExpertChoice>, CpuBackend<float>>,
              "ModalityAware<ExpertChoice> must model router_for<CpuBackend<float>>");
#endif

}  // namespace mmsparse

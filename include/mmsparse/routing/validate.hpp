// mmsparse/routing/validate.hpp
//
// Argument checks shared by the routers' public entry points (STYLE.md §9, tier 2): shapes of x
// and the router weight, modality ids (PAPERS.md §4.8), experts per group, the routing group
// (whole batch or each sequence, §4.5) and the gradients' shapes. Each throws mmsparse::Error.
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/routing/concepts.hpp>

namespace mmsparse {

namespace detail {
[[nodiscard]] inline std::string shape_text(Shape s) {
  std::ostringstream os;
  os << s;
  return os.str();
}
}  // namespace detail

// Checks what every router needs of its arguments: x [N, d] with d >= 1 and N < 2^31, modality
// [N] with ids in [0, num_modalities), experts_per_group non-empty with every count >= 1,
// router_weight [d, router_columns] (any row count when router_columns == 0), and
// sequence_length >= 0 dividing N.
template <backend B>
void check_route_args(B& b,
                      std::string_view op,
                      const RouteArgs<B>& args,
                      std::int64_t router_columns) {
  const std::int64_t n = args.x.rows;
  const std::int64_t d = args.x.cols;
  MMSPARSE_CHECK(d >= 1, op, "x", "shape [N, d] with d >= 1", args.x.shape());
  MMSPARSE_CHECK(
      n < std::numeric_limits<std::int32_t>::max(), op, "x", "fewer than 2^31 - 1 tokens", n);
  MMSPARSE_CHECK(args.num_modalities >= 1, op, "num_modalities", ">= 1", args.num_modalities);
  MMSPARSE_CHECK(
      args.modality.size == n, op, "modality", "size N = " + std::to_string(n), args.modality.size);
  if constexpr (std::is_same_v<typename B::space, host_space>) {
    check_modality_ids(op, args.modality, args.num_modalities);
  } else {
    std::vector<ModalityId> host(static_cast<std::size_t>(n));
    b.copy_to_host(std::span<ModalityId>(host), args.modality);
    check_modality_ids(op, Span<const ModalityId>(host.data(), n), args.num_modalities);
  }
  MMSPARSE_CHECK(
      !args.experts_per_group.empty(), op, "experts_per_group", "at least one group", "none");
  for (std::size_t g = 0; g < args.experts_per_group.size(); ++g) {
    MMSPARSE_CHECK(args.experts_per_group[g] >= 1,
                   op,
                   "experts_per_group[" + std::to_string(g) + "]",
                   ">= 1",
                   args.experts_per_group[g]);
  }
  const Shape expected{router_columns > 0 ? d : args.router_weight.rows, router_columns};
  MMSPARSE_CHECK(args.router_weight.shape() == expected,
                 op,
                 "router_weight",
                 "shape " + detail::shape_text(expected),
                 args.router_weight.shape());
  MMSPARSE_CHECK(args.sequence_length >= 0,
                 op,
                 "sequence_length",
                 ">= 0 (0: whole batch)",
                 args.sequence_length);
  MMSPARSE_CHECK(args.sequence_length == 0 || n % args.sequence_length == 0,
                 op,
                 "sequence_length",
                 "a divisor of N = " + std::to_string(n),
                 args.sequence_length);
}

// A flat router (one expert group): experts_per_group must hold exactly one count.
inline void check_single_group(std::string_view op, std::span<const std::int64_t> per_group) {
  MMSPARSE_CHECK(per_group.size() == 1,
                 op,
                 "experts_per_group",
                 "one group (wrap the router in ModalityAware for several)",
                 per_group.size());
}

// Checks the gradient outputs of a router's backward and the incoming gate gradient.
template <backend B>
void check_router_grads(std::string_view op,
                        const RouteArgs<B>& args,
                        Span<const router_scalar_t<B>, typename B::space> dgate,
                        std::int64_t slots,
                        const RouterGrads<B>& grads,
                        std::int64_t router_columns) {
  MMSPARSE_CHECK(dgate.size == slots, op, "dgate", "size S = " + std::to_string(slots), dgate.size);
  MMSPARSE_CHECK(grads.dx.shape() == args.x.shape(),
                 op,
                 "grads.dx",
                 "shape " + detail::shape_text(args.x.shape()),
                 grads.dx.shape());
  if (router_columns > 0) {
    const Shape w{args.x.cols, router_columns};
    MMSPARSE_CHECK(grads.drouter_weight.shape() == w,
                   op,
                   "grads.drouter_weight",
                   "shape " + detail::shape_text(w),
                   grads.drouter_weight.shape());
  }
}

// Checks that a backward call routes the tokens its route call saw.
template <backend B>
void check_saved_tokens(std::string_view op, const RouteArgs<B>& args, std::int64_t saved_rows) {
  MMSPARSE_CHECK(saved_rows == args.x.rows,
                 op,
                 "args.x",
                 "the N = " + std::to_string(saved_rows) + " tokens of route",
                 args.x.rows);
}

// Row offsets of the routing groups: {0, N} for the whole batch, {0, L, 2L, ..., N} per sequence.
[[nodiscard]] inline std::vector<std::int64_t> routing_groups(std::int64_t n,
                                                              std::int64_t sequence_length) {
  std::vector<std::int64_t> offsets{0};
  if (sequence_length > 0) {
    for (std::int64_t r = sequence_length; r <= n; r += sequence_length) {
      offsets.push_back(r);
    }
  } else {
    offsets.push_back(n);
  }
  return offsets;
}

}  // namespace mmsparse

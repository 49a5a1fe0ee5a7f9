// mmsparse/routing/logits.hpp
//
// Router logits of a set of rows: z = x W_r in router precision (bf16 x widened first; PAPERS.md
// §1.8, §4.6), Gumbel noise in training (gumbel.hpp), a finiteness check naming the first bad
// (token, expert), and the backward dx += dz W_r^T, dW_r += x^T dz. `RouteRows` is what a learned
// router routes: the whole batch, or one modality's tokens inside ModalityAware (MoMa §2.2).
#pragma once

#include <cstdint>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/gumbel.hpp>
#include <mmsparse/routing/validate.hpp>

namespace mmsparse {

namespace detail {
template <class U, class S>
[[nodiscard]] constexpr View<const U, S> as_const(View<U, S> v) {
  return v;
}
template <class U, class S>
[[nodiscard]] constexpr Span<const U, S> as_const(Span<U, S> v) {
  return v;
}
}  // namespace detail

// The rows one learned-router call routes, with everything the call needs to know about where
// they sit in the batch (global token ids and router columns, for noise counters and messages).
template <backend B>
struct RouteRows {
  using T = typename B::scalar;
  using W = router_scalar_t<B>;
  using S = typename B::space;

  std::string op;                        // "<router>::route", the prefix of error messages
  View<const T, S> x;                    // [n, d] rows to route
  View<const W, S> weight;               // [d, E] the router columns of this call
  std::vector<std::int64_t> groups;      // routing groups: row offsets [G + 1] covering [0, n)
  Span<const std::int32_t, S> token_id;  // [n] global token of each row; empty: row r is token r
  std::int64_t column_offset = 0;        // first column of `weight` in the whole router weight
  std::int64_t total_columns = 0;        // columns of the whole router weight
  bool noise = false;                    // add Gumbel-sigmoid noise (training with gumbel on)
  std::uint64_t seed = 0;

  [[nodiscard]] std::int64_t rows() const {
    return x.rows;
  }
  [[nodiscard]] std::int64_t experts() const {
    return weight.cols;
  }
};

// The rows of a flat (single-group) router: the whole batch, grouped per sequence when
// args.sequence_length > 0. Call after check_route_args.
template <backend B>
[[nodiscard]] RouteRows<B> flat_rows(std::string_view router,
                                     const RouteArgs<B>& args,
                                     bool gumbel) {
  RouteRows<B> rows;
  rows.op = std::string(router) + "::route";
  rows.x = args.x;
  rows.weight = args.router_weight;
  rows.groups = routing_groups(args.x.rows, args.sequence_length);
  rows.column_offset = 0;
  rows.total_columns = args.router_weight.cols;
  rows.noise = args.training && gumbel;
  rows.seed = args.seed;
  return rows;
}

// logits [n, E] = x W_r (+ noise); throws mmsparse::Error naming the router and the first
// non-finite (token, expert) before anything is selected.
template <backend B>
void router_logits(B& b,
                   const RouteRows<B>& rows,
                   View<router_scalar_t<B>, typename B::space> logits) {  // [n, E]
  using T = typename B::scalar;
  using W = router_scalar_t<B>;
  using S = typename B::space;
  const std::int64_t n = rows.rows();
  const std::int64_t d = rows.x.cols;
  MMSPARSE_ASSERT(logits.rows == n && logits.cols == rows.experts());
  if (n == 0) {
    return;
  }
  if constexpr (std::is_same_v<T, W>) {
    b.gemm(logits, rows.x, Trans::no, rows.weight, Trans::no, 1.0, 0.0);
  } else {
    auto frame = b.workspace().frame();
    auto xw = b.workspace().template take<W>(n, d);  // [n, d] x widened to router precision
    b.copy(xw, rows.x);
    b.gemm(logits, detail::as_const(xw), Trans::no, rows.weight, Trans::no, 1.0, 0.0);
  }
  if (rows.noise) {
    add_gumbel_noise(b, logits, rows.token_id, rows.seed, rows.total_columns, rows.column_offset);
  }
  const std::int64_t bad = b.find_nonfinite(detail::as_const(logits));
  if (bad >= 0) {
    const std::int64_t r = bad / logits.cols;
    const std::int64_t c = bad % logits.cols;
    W value{};
    b.copy_to_host(std::span<W>(&value, 1), Span<const W, S>(logits.row(r) + c, 1));
    std::int32_t token = static_cast<std::int32_t>(r);
    if (!rows.token_id.empty()) {
      b.copy_to_host(std::span<std::int32_t>(&token, 1), rows.token_id.subspan(r, 1));
    }
    std::ostringstream got;
    got << value << " at token " << token << ", expert " << rows.column_offset + c;
    throw Error(detail::format_error(rows.op, "router logits", "finite values", got.str()));
  }
}

// dx += dlogits W_r^T and dweight += x^T dlogits (the noise is a constant).
template <backend B>
void router_logits_backward(B& b,
                            const RouteRows<B>& rows,
                            View<const router_scalar_t<B>, typename B::space> dlogits,  // [n, E]
                            View<typename B::scalar, typename B::space> dx,             // [n, d]
                            View<router_scalar_t<B>, typename B::space> dweight) {      // [d, E]
  using T = typename B::scalar;
  using W = router_scalar_t<B>;
  const std::int64_t n = rows.rows();
  const std::int64_t d = rows.x.cols;
  if (n == 0 || rows.experts() == 0) {
    return;
  }
  if constexpr (std::is_same_v<T, W>) {
    b.gemm(dweight, rows.x, Trans::yes, dlogits, Trans::no, 1.0, 1.0);
    b.gemm(dx, dlogits, Trans::no, rows.weight, Trans::yes, 1.0, 1.0);
  } else {
    auto frame = b.workspace().frame();
    auto xw = b.workspace().template take<W>(n, d);  // [n, d] x in router precision
    b.copy(xw, rows.x);
    b.gemm(dweight, detail::as_const(xw), Trans::yes, dlogits, Trans::no, 1.0, 1.0);
    b.copy(xw, detail::as_const(dx));  // accumulate dx in router precision, round once
    b.gemm(xw, dlogits, Trans::no, rows.weight, Trans::yes, 1.0, 1.0);
    b.copy(dx, detail::as_const(xw));
  }
}

// A copy of a tensor made by the backend (works in every memory space).
template <backend B, class U>
[[nodiscard]] Tensor<U, typename B::space> clone_on(B& b, const Tensor<U, typename B::space>& t) {
  Tensor<U, typename B::space> out(t.rows(), t.cols());
  if (t.size() > 0) {
    b.copy(out.view(), t.view());
  }
  return out;
}

}  // namespace mmsparse

// mmsparse/routing/gumbel.hpp
//
// Gumbel-sigmoid router noise (MoMa §2.5, Eq. 5): sigmoid(z + G' - G''), G' - G'' ~ Logistic(0, 1),
// τ = 1. Training only (PAPERS.md §4.15); one draw per (token, router column) from the counter
// token * total_columns + column, so every backend, thread count and batch split draws the same
// value. The noisy score serves both the selection and the gate (as [KF]; MoMa leaves it open,
// PAPERS.md §5); backward treats the noise as a constant.
#pragma once

#include <cstdint>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/routing/concepts.hpp>

namespace mmsparse {

// Counter of the draw for (token, column) of a router weight with `total_columns` columns.
[[nodiscard]] constexpr std::uint64_t gumbel_counter(std::int64_t token,
                                                     std::int64_t column,
                                                     std::int64_t total_columns) {
  return static_cast<std::uint64_t>(token * total_columns + column);
}

// The noise added to logit (token, column): the host reference of add_gumbel_noise.
[[nodiscard]] inline double gumbel_noise(std::uint64_t seed,
                                         std::int64_t token,
                                         std::int64_t column,
                                         std::int64_t total_columns) {
  return logistic_noise(seed, gumbel_counter(token, column, total_columns));
}

// logits(r, j) += gumbel_noise(seed, token_id[r], column_offset + j, total_columns), where
// token_id maps the rows to global tokens (empty: row r is token r) and the logits hold columns
// [column_offset, column_offset + E) of the router weight.
template <backend B>
void add_gumbel_noise(B& b,
                      View<router_scalar_t<B>, typename B::space> logits,  // [n, E]
                      Span<const std::int32_t, typename B::space> token_id,
                      std::uint64_t seed,
                      std::int64_t total_columns,
                      std::int64_t column_offset) {
  b.add_logistic_noise(logits, token_id, seed, total_columns, column_offset);
}

}  // namespace mmsparse

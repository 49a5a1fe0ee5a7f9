// mmsparse/layers/embedding.hpp
//
// Token embedding, forward and backward side by side (llm.c's encoder_forward/backward):
//   y [N, d] = table [V, d] rows at tokens [N]          (a row gather)
//   dtable[tokens[i]] += dy[i]                           (a scatter-add; repeated tokens add up)
// Token ids are validated on the host before anything is written.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>

namespace mmsparse {

namespace detail {
template <class Space>
void check_token_ids(const char* op,
                     const char* arg,
                     Span<const std::int32_t, Space> tokens,
                     std::int64_t vocab) {
  if constexpr (std::is_same_v<Space, host_space>) {
    for (std::int64_t i = 0; i < tokens.size; ++i) {
      if (tokens[i] < 0 || tokens[i] >= vocab) {
        throw Error(format_error(op,
                                 std::string(arg) + "[" + std::to_string(i) + "]",
                                 "an id in [0, " + std::to_string(vocab) + ")",
                                 tokens[i]));
      }
    }
  }
}
}  // namespace detail

template <backend B>
void embedding_forward(B& b,
                       View<typename B::scalar, typename B::space> y,
                       Span<const std::int32_t, typename B::space> tokens,
                       View<const typename B::scalar, typename B::space> table) {
  MMSPARSE_CHECK(y.shape() == (Shape{tokens.size, table.cols}),
                 "embedding_forward",
                 "y",
                 (Shape{tokens.size, table.cols}),
                 y.shape());
  detail::check_token_ids("embedding_forward", "tokens", tokens, table.rows);
  b.gather_rows(y, table, tokens);
}

template <backend B>
void embedding_backward(B& b,
                        View<typename B::scalar, typename B::space> dtable,
                        View<const typename B::scalar, typename B::space> dy,
                        Span<const std::int32_t, typename B::space> tokens) {
  MMSPARSE_CHECK(dy.shape() == (Shape{tokens.size, dtable.cols}),
                 "embedding_backward",
                 "dy",
                 (Shape{tokens.size, dtable.cols}),
                 dy.shape());
  detail::check_token_ids("embedding_backward", "tokens", tokens, dtable.rows);
  b.scatter_add_rows(
      dtable, dy, tokens, Span<const accum_t<typename B::scalar>, typename B::space>{});
}

}  // namespace mmsparse

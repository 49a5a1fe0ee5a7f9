// mmsparse/layers/linear.hpp
//
// Linear layer, forward and hand-written backward side by side (llm.c's matmul_forward/backward):
//   y [N, out] = x [N, in] w [in, out] (+ bias [1, out])
// The backward accumulates: dx += dy w^T, dw += x^T dy, dbias += sum_rows(dy). Empty gradient
// views (0 rows) are skipped, so a frozen weight or a constant input costs nothing.
#pragma once

#include <cstdint>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>

namespace mmsparse {

template <backend B>
void linear_forward(B& b,
                    View<typename B::scalar, typename B::space> y,
                    View<const typename B::scalar, typename B::space> x,
                    View<const typename B::scalar, typename B::space> w,
                    View<const typename B::scalar, typename B::space> bias = {}) {
  using T = typename B::scalar;
  MMSPARSE_CHECK(w.rows == x.cols, "linear_forward", "w", (Shape{x.cols, y.cols}), w.shape());
  MMSPARSE_CHECK(y.shape() == (Shape{x.rows, w.cols}),
                 "linear_forward",
                 "y",
                 (Shape{x.rows, w.cols}),
                 y.shape());
  MMSPARSE_CHECK(bias.empty() || bias.shape() == (Shape{1, w.cols}),
                 "linear_forward",
                 "bias",
                 (Shape{1, w.cols}),
                 bias.shape());
  b.gemm(y, x, Trans::no, w, Trans::no, 1.0, 0.0);  // [N, out]
  if (!bias.empty() && x.rows > 0) {
    auto frame = b.workspace().frame();
    auto ones = b.workspace().template take<T>(x.rows, 1);  // [N, 1]
    b.fill(ones, T{1});
    b.gemm(y, View<const T, typename B::space>(ones), Trans::no, bias, Trans::no, 1.0, 1.0);
  }
}

template <backend B>
void linear_backward(B& b,
                     View<typename B::scalar, typename B::space> dx,
                     View<typename B::scalar, typename B::space> dw,
                     View<typename B::scalar, typename B::space> dbias,
                     View<const typename B::scalar, typename B::space> dy,
                     View<const typename B::scalar, typename B::space> x,
                     View<const typename B::scalar, typename B::space> w) {
  using T = typename B::scalar;
  MMSPARSE_CHECK(dy.shape() == (Shape{x.rows, w.cols}),
                 "linear_backward",
                 "dy",
                 (Shape{x.rows, w.cols}),
                 dy.shape());
  MMSPARSE_CHECK(
      dx.rows == 0 || dx.shape() == x.shape(), "linear_backward", "dx", x.shape(), dx.shape());
  MMSPARSE_CHECK(
      dw.rows == 0 || dw.shape() == w.shape(), "linear_backward", "dw", w.shape(), dw.shape());
  MMSPARSE_CHECK(dbias.rows == 0 || dbias.shape() == (Shape{1, w.cols}),
                 "linear_backward",
                 "dbias",
                 (Shape{1, w.cols}),
                 dbias.shape());
  if (dx.rows > 0) {
    b.gemm(dx, dy, Trans::no, w, Trans::yes, 1.0, 1.0);  // [N, in] += [N, out] [out, in]
  }
  if (dw.rows > 0) {
    b.gemm(dw, x, Trans::yes, dy, Trans::no, 1.0, 1.0);  // [in, out] += [in, N] [N, out]
  }
  if (dbias.rows > 0 && x.rows > 0) {
    auto frame = b.workspace().frame();
    auto ones = b.workspace().template take<T>(x.rows, 1);  // [N, 1]
    b.fill(ones, T{1});
    b.gemm(dbias, View<const T, typename B::space>(ones), Trans::yes, dy, Trans::no, 1.0, 1.0);
  }
}

}  // namespace mmsparse

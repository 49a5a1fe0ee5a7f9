// mmsparse/layers/norm.hpp
//
// RMSNorm (Zhang & Sennrich 2019; LLaMA, Chameleon §2.3) and LayerNorm, forward and backward
// side by side. The forward writes y and the per-row statistics (rstd, and mean for LayerNorm)
// that the backward needs; the backward accumulates into dx, dw and dbias.
// Weights are rows: w [1, d], bias [1, d] (bias may be empty: no bias).
#pragma once

#include <cstdint>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>

namespace mmsparse {

template <backend B>
using stat_span_t = Span<accum_t<typename B::scalar>, typename B::space>;

namespace detail {
template <class V, class C>
void check_norm_args(const char* op, const V& y, const C& x, const C& w, std::int64_t stats) {
  MMSPARSE_CHECK(w.shape() == (Shape{1, x.cols}), op, "w", (Shape{1, x.cols}), w.shape());
  MMSPARSE_CHECK(y.shape() == x.shape(), op, "y", x.shape(), y.shape());
  MMSPARSE_CHECK(stats == x.rows, op, "rstd", "one entry per row of x", stats);
}
}  // namespace detail

// y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps)
template <backend B>
void rms_norm_forward(B& b,
                      View<typename B::scalar, typename B::space> y,
                      stat_span_t<B> rstd,
                      View<const typename B::scalar, typename B::space> x,
                      View<const typename B::scalar, typename B::space> w,
                      double eps = 1e-5) {
  detail::check_norm_args("rms_norm_forward", y, x, w, rstd.size);
  MMSPARSE_CHECK(eps > 0.0, "rms_norm_forward", "eps", "> 0", eps);
  b.rms_norm(y, rstd, x, w, eps);
}

template <backend B>
void rms_norm_backward(B& b,
                       View<typename B::scalar, typename B::space> dx,
                       View<typename B::scalar, typename B::space> dw,
                       View<const typename B::scalar, typename B::space> dy,
                       View<const typename B::scalar, typename B::space> x,
                       View<const typename B::scalar, typename B::space> w,
                       Span<const accum_t<typename B::scalar>, typename B::space> rstd) {
  detail::check_norm_args("rms_norm_backward", dy, x, w, rstd.size);
  MMSPARSE_CHECK(dx.shape() == x.shape(), "rms_norm_backward", "dx", x.shape(), dx.shape());
  MMSPARSE_CHECK(dw.shape() == w.shape(), "rms_norm_backward", "dw", w.shape(), dw.shape());
  b.rms_norm_backward(dx, dw, dy, x, w, rstd);
}

// y = (x - mean) * rstd * w + bias, rstd = 1 / sqrt(var(x) + eps)
template <backend B>
void layer_norm_forward(B& b,
                        View<typename B::scalar, typename B::space> y,
                        stat_span_t<B> mean,
                        stat_span_t<B> rstd,
                        View<const typename B::scalar, typename B::space> x,
                        View<const typename B::scalar, typename B::space> w,
                        View<const typename B::scalar, typename B::space> bias,
                        double eps = 1e-5) {
  detail::check_norm_args("layer_norm_forward", y, x, w, rstd.size);
  MMSPARSE_CHECK(
      mean.size == x.rows, "layer_norm_forward", "mean", "one entry per row of x", mean.size);
  MMSPARSE_CHECK(bias.empty() || bias.shape() == w.shape(),
                 "layer_norm_forward",
                 "bias",
                 w.shape(),
                 bias.shape());
  MMSPARSE_CHECK(eps > 0.0, "layer_norm_forward", "eps", "> 0", eps);
  b.layer_norm(y, mean, rstd, x, w, bias, eps);
}

template <backend B>
void layer_norm_backward(B& b,
                         View<typename B::scalar, typename B::space> dx,
                         View<typename B::scalar, typename B::space> dw,
                         View<typename B::scalar, typename B::space> dbias,
                         View<const typename B::scalar, typename B::space> dy,
                         View<const typename B::scalar, typename B::space> x,
                         View<const typename B::scalar, typename B::space> w,
                         Span<const accum_t<typename B::scalar>, typename B::space> mean,
                         Span<const accum_t<typename B::scalar>, typename B::space> rstd) {
  detail::check_norm_args("layer_norm_backward", dy, x, w, rstd.size);
  MMSPARSE_CHECK(
      mean.size == x.rows, "layer_norm_backward", "mean", "one entry per row of x", mean.size);
  MMSPARSE_CHECK(dx.shape() == x.shape(), "layer_norm_backward", "dx", x.shape(), dx.shape());
  MMSPARSE_CHECK(dw.shape() == w.shape(), "layer_norm_backward", "dw", w.shape(), dw.shape());
  MMSPARSE_CHECK(dbias.empty() || dbias.shape() == w.shape(),
                 "layer_norm_backward",
                 "dbias",
                 w.shape(),
                 dbias.shape());
  b.layer_norm_backward(dx, dw, dbias, dy, x, w, mean, rstd);
}

}  // namespace mmsparse

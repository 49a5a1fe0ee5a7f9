// mmsparse/autograd/ops.hpp
//
// Tape adapters: each op runs a layer's forward, then records a closure that owns the saved
// context and calls the layer's hand-written backward (STYLE.md §7). An op records nothing and
// saves nothing when no input needs a gradient or the tape is under NoGrad. Closures skip their
// backward when no gradient reached their output. Ops: linear, add, embedding, rms_norm,
// layer_norm, swiglu, cross_entropy, and the FFN layers swiglu_ffn and sparse_ffn.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/autograd/var.hpp>
#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/embedding.hpp>
#include <mmsparse/layers/linear.hpp>
#include <mmsparse/layers/loss.hpp>
#include <mmsparse/layers/norm.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>
#include <mmsparse/layers/swiglu_ffn.hpp>

namespace mmsparse {

namespace detail {

template <class... V>
bool any_requires_grad(const V&... v) {
  return ((v.defined() && v.requires_grad()) || ...);
}

// The gradient of `v` if it needs one, else an empty view (the layer backward then skips it).
template <class T, class B>
View<T, typename B::space> grad_or_empty(const Var<T, B>& v) {
  return v.defined() && v.requires_grad() ? v.grad() : View<T, typename B::space>{};
}

// A zeroed workspace buffer (inside the caller's frame).
template <class T, class B>
View<T, typename B::space> scratch_zeros(B& b, Shape shape) {
  auto s = b.workspace().template take<T>(shape.rows, shape.cols);
  b.fill(s, T{});
  return s;
}

// The gradient of `v` if it needs one, else a workspace buffer of its shape that is thrown away.
template <class T, class B>
View<T, typename B::space> grad_or_scratch(B& b, const Var<T, B>& v) {
  return v.requires_grad() ? v.grad() : scratch_zeros<T>(b, v.shape());
}

template <class T, class S>
View<const T, S> const_view(View<T, S> v) {
  return v;
}

}  // namespace detail

// y [N, out] = x [N, in] w [in, out] (+ bias [1, out]); bias may be an empty Var.
template <class B, class T = typename B::scalar>
[[nodiscard]] Var<T, B> linear(
    Tape& tape, B& b, const Var<T, B>& x, const Var<T, B>& w, const Var<T, B>& bias = {}) {
  using S = typename B::space;
  const bool grad = tape.recording() && detail::any_requires_grad(x, w, bias);
  Var<T, B> y(b, Tensor<T, S>(x.shape().rows, w.shape().cols), grad);
  linear_forward(b,
                 y.value(),
                 detail::const_view(x.value()),
                 detail::const_view(w.value()),
                 bias.defined() ? detail::const_view(bias.value()) : View<const T, S>{});
  if (grad) {
    tape.record([&b, x, w, bias, y] {
      if (!y.has_grad()) {
        return;
      }
      linear_backward(b,
                      detail::grad_or_empty(x),
                      detail::grad_or_empty(w),
                      detail::grad_or_empty(bias),
                      detail::const_view(y.grad()),
                      detail::const_view(x.value()),
                      detail::const_view(w.value()));
    });
  }
  return y;
}

// y = a + c (same shapes).
template <class B, class T = typename B::scalar>
[[nodiscard]] Var<T, B> add(Tape& tape, B& b, const Var<T, B>& a, const Var<T, B>& c) {
  using S = typename B::space;
  MMSPARSE_CHECK(a.shape() == c.shape(), "add", "c", a.shape(), c.shape());
  const bool grad = tape.recording() && detail::any_requires_grad(a, c);
  Var<T, B> y(b, Tensor<T, S>(a.shape()), grad);
  b.copy(y.value(), detail::const_view(a.value()));
  b.axpy(y.value(), detail::const_view(c.value()), 1.0);
  if (grad) {
    tape.record([&b, a, c, y] {
      if (!y.has_grad()) {
        return;
      }
      for (const auto* v : {&a, &c}) {
        if (v->requires_grad()) {
          b.axpy(v->grad(), detail::const_view(y.grad()), 1.0);
        }
      }
    });
  }
  return y;
}

// y [N, d] = table [V, d] rows at tokens [N] (tokens must outlive the backward pass).
template <class B, class T = typename B::scalar>
[[nodiscard]] Var<T, B> embedding(Tape& tape,
                                  B& b,
                                  Span<const std::int32_t, typename B::space> tokens,
                                  const Var<T, B>& table) {
  using S = typename B::space;
  const bool grad = tape.recording() && table.requires_grad();
  Var<T, B> y(b, Tensor<T, S>(tokens.size, table.shape().cols), grad);
  embedding_forward(b, y.value(), tokens, detail::const_view(table.value()));
  if (grad) {
    tape.record([&b, tokens, table, y] {
      if (y.has_grad()) {
        embedding_backward(b, table.grad(), detail::const_view(y.grad()), tokens);
      }
    });
  }
  return y;
}

// RMSNorm over rows: y = x * rstd * w, w [1, d].
template <class B, class T = typename B::scalar>
[[nodiscard]] Var<T, B> rms_norm(
    Tape& tape, B& b, const Var<T, B>& x, const Var<T, B>& w, double eps = 1e-5) {
  using S = typename B::space;
  using A = accum_t<T>;
  const bool grad = tape.recording() && detail::any_requires_grad(x, w);
  Var<T, B> y(b, Tensor<T, S>(x.shape()), grad);
  auto frame = b.workspace().frame();
  Tensor<A, S> rstd;  // [N, 1], kept for the backward
  auto r = grad ? (rstd = Tensor<A, S>(x.shape().rows, 1), rstd.span())
                : b.workspace().template take_span<A>(x.shape().rows);
  rms_norm_forward(
      b, y.value(), r, detail::const_view(x.value()), detail::const_view(w.value()), eps);
  if (grad) {
    tape.record([&b, x, w, y, rstd = std::move(rstd)] {
      if (!y.has_grad()) {
        return;
      }
      auto f = b.workspace().frame();
      rms_norm_backward(b,
                        detail::grad_or_scratch(b, x),
                        detail::grad_or_scratch(b, w),
                        detail::const_view(y.grad()),
                        detail::const_view(x.value()),
                        detail::const_view(w.value()),
                        rstd.span());
    });
  }
  return y;
}

// LayerNorm over rows: y = (x - mean) * rstd * w + bias; bias may be an empty Var.
template <class B, class T = typename B::scalar>
[[nodiscard]] Var<T, B> layer_norm(Tape& tape,
                                   B& b,
                                   const Var<T, B>& x,
                                   const Var<T, B>& w,
                                   const Var<T, B>& bias = {},
                                   double eps = 1e-5) {
  using S = typename B::space;
  using A = accum_t<T>;
  const bool grad = tape.recording() && detail::any_requires_grad(x, w, bias);
  Var<T, B> y(b, Tensor<T, S>(x.shape()), grad);
  auto frame = b.workspace().frame();
  Tensor<A, S> stats;  // [2, N]: mean, rstd; kept for the backward
  Span<A, S> mean;
  Span<A, S> rstd;
  if (grad) {
    stats = Tensor<A, S>(2, x.shape().rows);
    mean = Span<A, S>(stats.data(), x.shape().rows);
    rstd = Span<A, S>(stats.data() + x.shape().rows, x.shape().rows);
  } else {
    mean = b.workspace().template take_span<A>(x.shape().rows);
    rstd = b.workspace().template take_span<A>(x.shape().rows);
  }
  layer_norm_forward(b,
                     y.value(),
                     mean,
                     rstd,
                     detail::const_view(x.value()),
                     detail::const_view(w.value()),
                     bias.defined() ? detail::const_view(bias.value()) : View<const T, S>{},
                     eps);
  if (grad) {
    tape.record([&b, x, w, bias, y, stats = std::move(stats)] {
      if (!y.has_grad()) {
        return;
      }
      auto f = b.workspace().frame();
      const std::int64_t n = stats.cols();
      layer_norm_backward(b,
                          detail::grad_or_scratch(b, x),
                          detail::grad_or_scratch(b, w),
                          detail::grad_or_empty(bias),
                          detail::const_view(y.grad()),
                          detail::const_view(x.value()),
                          detail::const_view(w.value()),
                          Span<const A, S>(stats.data(), n),
                          Span<const A, S>(stats.data() + n, n));
    });
  }
  return y;
}

// h = silu(a) * g (Shazeer 2020), the gated unit of a SwiGLU FFN.
template <class B, class T = typename B::scalar>
[[nodiscard]] Var<T, B> swiglu(Tape& tape, B& b, const Var<T, B>& a, const Var<T, B>& g) {
  using S = typename B::space;
  MMSPARSE_CHECK(a.shape() == g.shape(), "swiglu", "g", a.shape(), g.shape());
  const bool grad = tape.recording() && detail::any_requires_grad(a, g);
  Var<T, B> h(b, Tensor<T, S>(a.shape()), grad);
  b.swiglu(h.value(), detail::const_view(a.value()), detail::const_view(g.value()));
  if (grad) {
    tape.record([&b, a, g, h] {
      if (!h.has_grad()) {
        return;
      }
      auto f = b.workspace().frame();
      auto da = b.workspace().template take<T>(a.shape().rows, a.shape().cols);  // [N, f]
      auto dg = b.workspace().template take<T>(a.shape().rows, a.shape().cols);  // [N, f]
      b.swiglu_backward(da,
                        dg,
                        detail::const_view(h.grad()),
                        detail::const_view(a.value()),
                        detail::const_view(g.value()));
      if (a.requires_grad()) {
        b.axpy(a.grad(), detail::const_view(da), 1.0);
      }
      if (g.requires_grad()) {
        b.axpy(g.grad(), detail::const_view(dg), 1.0);
      }
    });
  }
  return h;
}

template <class T, class B>
struct CrossEntropyResult {
  Var<T, B> loss;             // [1, 1] mean over tokens: the Var to add to and backward from
  CrossEntropyReport report;  // mean and per-modality means, as doubles (for logging)
};

// Mean softmax cross-entropy of logits [N, V] against targets [N]. With modality ids the
// report splits the loss per modality; the gradient is that of the overall mean.
// targets must outlive the backward pass.
template <class B, class T = typename B::scalar>
[[nodiscard]] CrossEntropyResult<T, B> cross_entropy(
    Tape& tape,
    B& b,
    const Var<T, B>& logits,
    Span<const std::int32_t, typename B::space> targets,
    Span<const ModalityId, typename B::space> modality = {},
    std::int64_t num_modalities = 0) {
  using S = typename B::space;
  using A = accum_t<T>;
  const std::int64_t n = logits.shape().rows;
  MMSPARSE_CHECK(n > 0, "cross_entropy", "logits", "at least one row", logits.shape());
  const bool grad = tape.recording() && logits.requires_grad();
  Tensor<A, S> stats(2, n);  // [2, N]: per-token loss, logsumexp
  Span<A, S> loss(stats.data(), n);
  Span<A, S> lse(stats.data() + n, n);
  cross_entropy_forward(b, loss, lse, detail::const_view(logits.value()), targets);
  CrossEntropyResult<T, B> out;
  out.report = cross_entropy_report(Span<const A, S>(loss), modality, num_modalities);
  Tensor<T, S> value(1, 1);
  value(0, 0) = scalar_cast<T>(out.report.mean);
  out.loss = Var<T, B>(b, std::move(value), grad);
  if (grad) {
    tape.record([&b, logits, targets, y = out.loss, stats = std::move(stats)] {
      if (!y.has_grad()) {
        return;
      }
      const std::int64_t rows = stats.cols();
      const double dl = static_cast<double>(scalar_cast<A>(y.grad()(0, 0)));
      cross_entropy_backward(b,
                             logits.grad(),
                             detail::const_view(logits.value()),
                             Span<const A, S>(stats.data() + rows, rows),
                             targets,
                             dl / static_cast<double>(rows));
    });
  }
  return out;
}

// The dense SwiGLU FFN: y = layer(x). `grads` are the gradient views of the layer's weights
// (layer_weights(arena, ids, true)); the backward adds into them and into x's gradient.
template <class B, class T = typename B::scalar>
[[nodiscard]] Var<T, B> swiglu_ffn(Tape& tape,
                                   B& b,
                                   const SwiGluFfn<T, B>& layer,
                                   typename SwiGluFfn<T, B>::Weights grads,
                                   const Var<T, B>& x) {
  using S = typename B::space;
  using Layer = SwiGluFfn<T, B>;
  const bool grad = tape.recording();
  Var<T, B> y(b, Tensor<T, S>(x.shape()), grad);
  if (!grad) {
    layer.forward(b, detail::const_view(x.value()), y.value());
    return y;
  }
  typename Layer::Saved saved;
  layer.forward(b, detail::const_view(x.value()), y.value(), saved);
  tape.record([&b, &layer, grads, x, y, saved = std::move(saved)] {
    if (!y.has_grad()) {
      return;
    }
    auto f = b.workspace().frame();
    layer.backward(b, saved, detail::const_view(y.grad()), detail::grad_or_scratch(b, x), grads);
  });
  return y;
}

template <class Layer, class T, class B>
struct SparseFfnResult {
  Var<T, B> y;    // [N, d]
  Var<T, B> aux;  // [1, 1] the router's aux losses (balance + z, with their coefficients)
  typename Layer::Stats stats;
};

// The sparse FFN: y = layer(x, modality). Add `aux` to the loss to train with the aux losses:
// the backward reads d(loss)/d(aux) from aux's gradient and passes it as aux_scale (0 when aux
// was left out of the loss). Gradients reach the router through the gates and the aux losses.
// `modality` must outlive the backward pass.
template <class T, class R, class D, class B>
[[nodiscard]] SparseFfnResult<SparseFfn<T, R, D, B>, T, B> sparse_ffn(
    Tape& tape,
    B& b,
    const SparseFfn<T, R, D, B>& layer,
    typename SparseFfn<T, R, D, B>::Weights grads,
    const Var<T, B>& x,
    Span<const ModalityId, typename B::space> modality,
    const typename SparseFfn<T, R, D, B>::ForwardOptions& options = {}) {
  using S = typename B::space;
  using Layer = SparseFfn<T, R, D, B>;
  const bool grad = tape.recording();
  SparseFfnResult<Layer, T, B> out;
  out.y = Var<T, B>(b, Tensor<T, S>(x.shape()), grad);
  typename Layer::Saved saved;
  if (grad) {
    out.stats =
        layer.forward(b, detail::const_view(x.value()), modality, out.y.value(), saved, options);
  } else {
    out.stats = layer.forward(b, detail::const_view(x.value()), modality, out.y.value(), options);
  }
  Tensor<T, S> aux(1, 1);
  aux(0, 0) = scalar_cast<T>(out.stats.aux.total());
  out.aux = Var<T, B>(b, std::move(aux), grad);
  if (grad) {
    tape.record([&b, &layer, grads, x, y = out.y, a = out.aux, saved = std::move(saved)] {
      if (!y.has_grad() && !a.has_grad()) {
        return;
      }
      auto f = b.workspace().frame();
      const double aux_scale =
          a.has_grad() ? static_cast<double>(scalar_cast<accum_t<T>>(a.grad()(0, 0))) : 0.0;
      View<T, S> dy = y.has_grad() ? y.grad() : detail::scratch_zeros<T>(b, y.shape());
      layer.backward(
          b, saved, detail::const_view(dy), detail::grad_or_scratch(b, x), grads, aux_scale);
    });
  }
  return out;
}

}  // namespace mmsparse

// mmsparse/autograd/blocks.hpp
//
// Tape adapters for the transformer blocks and the decoder (layers/block.hpp ... model.hpp): each
// runs the layer's forward, then records a closure that owns the saved context and calls the
// layer's hand-written backward (STYLE.md §7). Also: binding a block's or a decoder's parameters
// (or its aux routers) to one ParamArena, so zero_grad, AdamW and checkpoints are flat loops.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/autograd/params.hpp>
#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/autograd/var.hpp>
#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/block.hpp>

namespace mmsparse {

namespace detail {

template <class Layer>
std::vector<ParamInfo> layer_parameters(const Layer& layer, bool aux) {
  if constexpr (requires { layer.parameters(); }) {  // a decoder
    return aux ? layer.aux_parameters() : layer.parameters();
  } else {  // a block: static, from its config
    return aux ? Layer::aux_parameters(layer.config()) : Layer::parameters(layer.config());
  }
}

// A zeroed workspace buffer (inside the caller's frame).
template <class T, class B>
View<T, typename B::space> zeros(B& b, Shape shape) {
  auto s = b.workspace().template take<T>(shape.rows, shape.cols);
  b.fill(s, T{});
  return s;
}
template <class T, class B>
View<T, typename B::space> grad_or_zeros(B& b, const Var<T, B>& v) {
  return v.has_grad() ? v.grad() : zeros<T>(b, v.shape());
}

template <class T, class B, class Layer>
std::vector<View<T, typename B::space>> bind_to_arena(
    ParamArena<T, B>& arena, B& b, Layer& layer, const std::string& prefix, bool aux) {
  using S = typename B::space;
  const auto infos = layer_parameters(layer, aux);
  const auto own = aux ? layer.aux_weights() : layer.weights();
  std::vector<std::int64_t> ids;
  for (const auto& p : infos) {
    ids.push_back(arena.add(prefix + p.name, p.shape, p.decay));
  }
  arena.allocate(b);
  std::vector<View<T, S>> values;
  std::vector<View<T, S>> grads;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    values.push_back(arena.value(ids[i]));
    grads.push_back(arena.grad(ids[i]));
    b.copy(values.back(), View<const T, S>(own[i]));  // the layer's initial weights
  }
  if (aux) {
    layer.bind_aux(values);
  } else {
    layer.bind(values);
  }
  return grads;
}

}  // namespace detail

// Declares every parameter of `layer` (a block or a Decoder) in `arena` (unallocated), allocates
// it, copies the layer's initial weights there and binds the layer to them. Returns the gradient
// views in parameters() order: what backward and the adapters below take.
template <class T, class B, class Layer>
std::vector<View<T, typename B::space>> bind_parameters(ParamArena<T, B>& arena,
                                                        B& b,
                                                        Layer& layer,
                                                        const std::string& prefix = "") {
  return detail::bind_to_arena(arena, b, layer, prefix, false);
}

// The same for the aux routers (their own arena: trained post hoc with the model frozen, or
// jointly with the gradient stopped, MoMa §2.4).
template <class T, class B, class Layer>
std::vector<View<T, typename B::space>> bind_aux_parameters(ParamArena<T, B>& arena,
                                                            B& b,
                                                            Layer& layer,
                                                            const std::string& prefix = "") {
  return detail::bind_to_arena(arena, b, layer, prefix, true);
}

template <class T, class B>
struct BlockResult {
  Var<T, B> y;    // [N, d]
  Var<T, B> aux;  // [1, 1] the router aux losses (token choice); add it to the loss to train them
  BlockStats stats;
};

// y = block(x). `in` is read during the forward only; `grads` (bind_parameters) must outlive
// the backward, which adds into them and into x's gradient.
template <class Layer, class B, class T = typename B::scalar>
[[nodiscard]] BlockResult<T, B> block(Tape& tape,
                                      B& b,
                                      const Layer& layer,
                                      std::span<const View<T, typename B::space>> grads,
                                      const Var<T, B>& x,
                                      const BlockInput<typename B::space>& in) {
  using S = typename B::space;
  const bool grad = tape.recording();
  BlockResult<T, B> out;
  out.y = Var<T, B>(b, Tensor<T, S>(x.shape()), grad);
  typename Layer::Saved saved;
  out.stats =
      layer.forward(b, View<const T, S>(x.value()), in, out.y.value(), grad ? &saved : nullptr);
  Tensor<T, S> aux(1, 1);
  aux(0, 0) = scalar_cast<T>(out.stats.aux_loss);
  out.aux = Var<T, B>(b, std::move(aux), grad);
  if (grad) {
    std::vector<View<T, S>> g(grads.begin(), grads.end());
    tape.record(
        [&b, &layer, g = std::move(g), x, y = out.y, a = out.aux, saved = std::move(saved)] {
          if (!y.has_grad() && !a.has_grad()) {
            return;
          }
          auto frame = b.workspace().frame();
          const double aux_scale = a.has_grad() ? static_cast<double>(a.grad()(0, 0)) : 0.0;
          const auto dy = detail::grad_or_zeros(b, y);
          const auto dx = x.requires_grad() ? x.grad() : detail::zeros<T>(b, x.shape());
          layer.backward(
              b, saved, View<const T, S>(dy), dx, std::span<const View<T, S>>(g), aux_scale);
        });
  }
  return out;
}

template <class Model, class T, class B>
struct DecoderResult {
  Var<T, B> logits;  // [N, V]
  Var<T, B> aux;     // [1, 1] the router aux losses
  typename Model::Stats stats;
};

// logits = model(batch); the token ids are copied, so the batch need not outlive the backward.
template <class Model, class B, class T = typename B::scalar>
[[nodiscard]] DecoderResult<Model, T, B> decoder(Tape& tape,
                                                 B& b,
                                                 const Model& model,
                                                 std::span<const View<T, typename B::space>> grads,
                                                 const typename Model::Batch& batch,
                                                 const typename Model::ForwardOptions& opt = {}) {
  using S = typename B::space;
  const bool grad = tape.recording();
  const auto n = static_cast<std::int64_t>(batch.tokens.size());
  DecoderResult<Model, T, B> out;
  out.logits = Var<T, B>(b, Tensor<T, S>(n, model.config().vocab), grad);
  typename Model::Saved saved;
  out.stats = model.forward(b, batch, out.logits.value(), grad ? &saved : nullptr, opt);
  Tensor<T, S> aux(1, 1);
  aux(0, 0) = scalar_cast<T>(out.stats.aux_loss);
  out.aux = Var<T, B>(b, std::move(aux), grad);
  if (grad) {
    std::vector<View<T, S>> g(grads.begin(), grads.end());
    tape.record(
        [&b, &model, g = std::move(g), y = out.logits, a = out.aux, saved = std::move(saved)] {
          if (!y.has_grad() && !a.has_grad()) {
            return;
          }
          auto frame = b.workspace().frame();
          const double aux_scale = a.has_grad() ? static_cast<double>(a.grad()(0, 0)) : 0.0;
          const auto dy = detail::grad_or_zeros(b, y);
          model.backward(b, saved, View<const T, S>(dy), std::span<const View<T, S>>(g), aux_scale);
        });
  }
  return out;
}

}  // namespace mmsparse

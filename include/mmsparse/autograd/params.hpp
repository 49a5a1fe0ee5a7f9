// mmsparse/autograd/params.hpp
//
// ParamArena<T, B>: every parameter of a model in one buffer and every gradient in another, as
// named [rows, cols] slices (llm.c's params_memory / grads_memory). zero_grad, AdamW, clipping and
// checkpoints are then one loop each. Layers bind their weights to value slices; their gradient
// views are the matching slices of the gradient buffer. Declare all slices, then allocate().
// Host slices have the row layout of Tensor::weight; their padding stays zero (a zero gradient
// leaves a zero weight under AdamW).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/autograd/var.hpp>
#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mmsparse {

struct ParamSlice {
  std::string name;
  Shape shape;
  std::int64_t offset = 0;  // elements from the start of the arena
  bool decay = true;        // AdamW applies weight decay (false for norms, embeddings, biases)
  std::int64_t stride = 0;  // elements between rows: cols, or padded (weight_row_stride)

  // Elements the slice spans in the arena, row padding included.
  [[nodiscard]] std::int64_t extent() const {
    return shape.rows * stride;
  }
};

template <class T, backend B>
class ParamArena {
 public:
  using space = typename B::space;
  using view_type = View<T, space>;
  // Slices start on 64-byte boundaries, so every weight is as aligned as a fresh Tensor.
  static constexpr std::int64_t align = 64 / static_cast<std::int64_t>(sizeof(T)) > 0
                                            ? 64 / static_cast<std::int64_t>(sizeof(T))
                                            : 1;

  ParamArena() = default;
  ParamArena(const ParamArena&) = delete;
  ParamArena& operator=(const ParamArena&) = delete;
  ParamArena(ParamArena&&) noexcept = default;
  ParamArena& operator=(ParamArena&&) noexcept = default;

  // Declares a slice and returns its id. Names must be unique.
  std::int64_t add(std::string name, Shape shape, bool decay = true) {
    MMSPARSE_CHECK(!allocated(),
                   "ParamArena::add",
                   name,
                   "a slice declared before allocate()",
                   "a slice declared after allocate()");
    MMSPARSE_CHECK(
        shape.rows >= 0 && shape.cols >= 0, "ParamArena::add", name, "non-negative dims", shape);
    MMSPARSE_CHECK(find(name) < 0, "ParamArena::add", "name", "a new name", name);
    const std::int64_t offset = (size_ + align - 1) / align * align;
    // Host weights get the layout of Tensor::weight: rows that would alias are padded.
    const std::int64_t stride = std::is_same_v<space, host_space>
                                    ? weight_row_stride<T>(shape.rows, shape.cols)
                                    : shape.cols;
    slices_.push_back({std::move(name), shape, offset, decay, stride});
    size_ = offset + shape.rows * stride;
    return static_cast<std::int64_t>(slices_.size()) - 1;
  }

  // Allocates both buffers; values and gradients start at zero (padding stays zero).
  void allocate(B& b) {
    MMSPARSE_CHECK(
        !allocated(), "ParamArena::allocate", "arena", "not yet allocated", "allocated twice");
    values_ = Tensor<T, space>(1, size_);
    grads_ = Tensor<T, space>(1, size_);
    b.fill(values_.view(), T{});
    b.fill(grads_.view(), T{});
    allocated_ = true;
  }

  [[nodiscard]] bool allocated() const {
    return allocated_;
  }
  [[nodiscard]] const std::vector<ParamSlice>& slices() const {
    return slices_;
  }
  // Elements of the arena, alignment and row padding included.
  [[nodiscard]] std::int64_t size() const {
    return size_;
  }
  // Number of parameters, padding excluded.
  [[nodiscard]] std::int64_t count() const {
    std::int64_t n = 0;
    for (const auto& s : slices_) {
      n += s.shape.rows * s.shape.cols;
    }
    return n;
  }
  // Id of the slice called `name`, or -1.
  [[nodiscard]] std::int64_t find(std::string_view name) const {
    for (std::size_t i = 0; i < slices_.size(); ++i) {
      if (slices_[i].name == name) {
        return static_cast<std::int64_t>(i);
      }
    }
    return -1;
  }
  [[nodiscard]] std::int64_t id(std::string_view name) const {
    const std::int64_t i = find(name);
    MMSPARSE_CHECK(i >= 0, "ParamArena", "name", "a declared slice", name);
    return i;
  }

  [[nodiscard]] view_type value(std::int64_t id) {
    return slice(values_, id, "value");
  }
  [[nodiscard]] view_type grad(std::int64_t id) {
    return slice(grads_, id, "grad");
  }
  [[nodiscard]] view_type value(std::string_view name) {
    return value(id(name));
  }
  [[nodiscard]] view_type grad(std::string_view name) {
    return grad(id(name));
  }
  // The parameter as a Var whose gradient is the arena's gradient slice.
  [[nodiscard]] Var<T, B> var(B& b, std::int64_t id) {
    return Var<T, B>(b, value(id), grad(id));
  }

  // The whole arena as one row: [1, size()].
  [[nodiscard]] view_type values() {
    return checked(values_).view();
  }
  [[nodiscard]] view_type grads() {
    return checked(grads_).view();
  }
  [[nodiscard]] View<const T, space> values() const {
    return checked(values_).view();
  }
  [[nodiscard]] View<const T, space> grads() const {
    return checked(grads_).view();
  }

  void zero_grad(B& b) {
    b.fill(grads(), T{});
  }

 private:
  template <class Tn>
  Tn& checked(Tn& t) const {
    MMSPARSE_CHECK(allocated_, "ParamArena", "arena", "allocated", "not allocated yet");
    return t;
  }
  view_type slice(Tensor<T, space>& t, std::int64_t id, const char* what) {
    MMSPARSE_CHECK(id >= 0 && id < static_cast<std::int64_t>(slices_.size()),
                   "ParamArena",
                   what,
                   "a slice id in [0, " + std::to_string(slices_.size()) + ")",
                   id);
    const ParamSlice& s = slices_[static_cast<std::size_t>(id)];
    return view_type(checked(t).data() + s.offset, s.shape.rows, s.shape.cols, s.stride);
  }

  std::vector<ParamSlice> slices_;
  std::int64_t size_ = 0;
  Tensor<T, space> values_;
  Tensor<T, space> grads_;
  bool allocated_ = false;
};

namespace detail {
// True when Weights can be brace-initialised from sizeof...(I) views.
template <class Weights, class V, std::size_t... I>
constexpr bool brace_init_with(std::index_sequence<I...>) {
  return requires {
    Weights{(static_cast<void>(I), std::declval<V>())...};
  };
}
// Number of view members of an aggregate Weights (at most 16).
template <class Weights, class V, std::size_t N = 1>
constexpr std::size_t view_fields() {
  if constexpr (N < 16 && brace_init_with<Weights, V>(std::make_index_sequence<N + 1>{})) {
    return view_fields<Weights, V, N + 1>();
  } else {
    return N;
  }
}
template <class Weights, class V, std::size_t... I>
Weights weights_from(const std::vector<V>& views, std::index_sequence<I...>) {
  return Weights{views[I]...};
}
}  // namespace detail

// Declares the parameters of a layer (Layer::parameter_shapes(cfg), in order) as slices named
// "<prefix>.<name>" and returns their ids, for layer_weights() once the arena is allocated.
template <class Layer, class T, backend B>
std::vector<std::int64_t> declare_layer(ParamArena<T, B>& arena,
                                        const std::string& prefix,
                                        const typename Layer::Config& cfg,
                                        bool decay = true) {
  std::vector<std::int64_t> ids;
  for (const auto& [name, shape] : Layer::parameter_shapes(cfg)) {
    ids.push_back(arena.add(prefix + "." + name, shape, decay));
  }
  return ids;
}

// The layer's Weights struct (an aggregate of views, in parameter_shapes order) over the value
// slices (for layer.bind) or, with grads = true, over the gradient slices (for backward).
template <class Layer, class T, backend B>
[[nodiscard]] typename Layer::Weights layer_weights(ParamArena<T, B>& arena,
                                                    std::span<const std::int64_t> ids,
                                                    bool grads) {
  using Weights = typename Layer::Weights;
  using V = View<T, typename B::space>;
  constexpr std::size_t fields = detail::view_fields<Weights, V>();
  MMSPARSE_CHECK(ids.size() == fields, "layer_weights", "ids", fields, ids.size());
  std::vector<V> views;
  for (const std::int64_t id : ids) {
    views.push_back(grads ? arena.grad(id) : arena.value(id));
  }
  return detail::weights_from<Weights>(views, std::make_index_sequence<fields>{});
}

}  // namespace mmsparse

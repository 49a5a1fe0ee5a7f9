// mmsparse/autograd/var.hpp
//
// Var<T, B>: a cheap shared {value, grad} handle (DESIGN.md "The autograd tape"). Copies share
// one node. The value is owned (a Tensor) or borrowed (a view, e.g. a slice of the parameter
// arena); the gradient is borrowed, or allocated and zeroed on first use, and it accumulates.
// A Var made with requires_grad = false has no gradient: asking for it throws.
#pragma once

#include <memory>
#include <utility>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mmsparse {

template <class T, backend B>
class Var {
 public:
  using space = typename B::space;
  using view_type = View<T, space>;

  Var() = default;
  // Owns `value`; the gradient is allocated (zeroed) on first use.
  Var(B& b, Tensor<T, space> value, bool requires_grad = true) : node_(std::make_shared<Node>()) {
    node_->b = &b;
    node_->value_storage = std::move(value);
    node_->value = node_->value_storage.view();
    node_->requires_grad = requires_grad;
  }
  // Borrows `value` (the caller keeps it alive); the gradient is allocated on first use.
  Var(B& b, view_type value, bool requires_grad) : node_(std::make_shared<Node>()) {
    node_->b = &b;
    node_->value = value;
    node_->requires_grad = requires_grad;
  }
  // Borrows both the value and the gradient buffer (a parameter: slices of ParamArena).
  Var(B& b, view_type value, view_type grad) : node_(std::make_shared<Node>()) {
    MMSPARSE_CHECK(grad.shape() == value.shape(), "Var", "grad", value.shape(), grad.shape());
    node_->b = &b;
    node_->value = value;
    node_->grad = grad;
    node_->requires_grad = true;
    node_->has_grad = true;
  }

  [[nodiscard]] bool defined() const {
    return node_ != nullptr;
  }
  [[nodiscard]] view_type value() const {
    return node().value;
  }
  [[nodiscard]] Shape shape() const {
    return node().value.shape();
  }
  [[nodiscard]] bool requires_grad() const {
    return node().requires_grad;
  }
  // True once a gradient buffer exists (something flowed into it, or it is borrowed).
  [[nodiscard]] bool has_grad() const {
    return node().has_grad;
  }
  [[nodiscard]] B& backend() const {
    return *node().b;
  }

  // The gradient, allocated and zeroed on first use.
  [[nodiscard]] view_type grad() const {
    Node& n = node();
    MMSPARSE_CHECK(n.requires_grad,
                   "Var::grad",
                   "requires_grad",
                   "a variable that requires a gradient",
                   "a no-grad variable (a constant, or "
                   "made under NoGrad)");
    if (!n.has_grad) {
      n.grad_storage = Tensor<T, space>(n.value.rows, n.value.cols);
      n.grad = n.grad_storage.view();
      n.b->fill(n.grad, T{});
      n.has_grad = true;
    }
    return n.grad;
  }
  void zero_grad() const {
    if (node().has_grad) {
      node().b->fill(node().grad, T{});
    }
  }
  // True when both handles share one node.
  [[nodiscard]] bool same(const Var& o) const {
    return node_ == o.node_;
  }

 private:
  struct Node {
    B* b = nullptr;
    Tensor<T, space> value_storage;
    Tensor<T, space> grad_storage;
    view_type value;
    view_type grad;
    bool requires_grad = false;
    bool has_grad = false;
  };
  Node& node() const {
    MMSPARSE_CHECK(node_ != nullptr, "Var", "handle", "a defined variable", "an empty Var");
    return *node_;
  }

  std::shared_ptr<Node> node_;
};

}  // namespace mmsparse

// mmsparse/autograd/tape.hpp
//
// A Wengert list (STYLE.md §7): the tape records one closure per op in execution order, which is
// already topological, and backward() replays them in reverse. Each closure owns its op's saved
// context (activations, routing plan) and is destroyed as soon as it has run, so activations are
// freed during the backward pass. Gradients accumulate (+=); zeroing them is explicit.
#pragma once

#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/autograd/var.hpp>
#include <mmsparse/core/error.hpp>

namespace mmsparse {

class Tape {
 public:
  Tape() = default;
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;

  // False under NoGrad: ops then record nothing and save no activations.
  [[nodiscard]] bool recording() const {
    return enabled_;
  }
  [[nodiscard]] std::size_t size() const {
    return steps_.size();
  }

  // Appends a backward step (a move-only callable run once, in reverse order).
  template <class F>
  void record(F&& step) {
    if (!enabled_) {
      return;
    }
    steps_.push_back(std::make_unique<StepOf<std::decay_t<F>>>(std::forward<F>(step)));
    state_ = State::recorded;
  }

  // Seeds d(root)/d(root) = 1 for a scalar root ([1, 1], a loss) and runs the backward pass.
  template <class T, class B>
  void backward(const Var<T, B>& root) {
    MMSPARSE_CHECK(root.shape() == (Shape{1, 1}),
                   "Tape::backward",
                   "root",
                   "a scalar [1, 1] (pass a seed gradient for other shapes)",
                   root.shape());
    B& b = root.backend();
    auto frame = b.workspace().frame();
    auto one = b.workspace().template take<T>(1, 1);  // [1, 1]
    b.fill(one, T{1});
    backward(root, View<const T, typename B::space>(one));
  }

  // Adds `seed` to root's gradient and runs the backward pass.
  template <class T, class B>
  void backward(const Var<T, B>& root, View<const T, typename B::space> seed) {
    check_ready();
    MMSPARSE_CHECK(
        seed.shape() == root.shape(), "Tape::backward", "seed", root.shape(), seed.shape());
    root.backend().axpy(root.grad(), seed, 1.0);
    run();
  }

  // Runs the recorded steps in reverse when the roots' gradients are already seeded.
  void backward() {
    check_ready();
    run();
  }

  // Drops every recorded step and its saved activations (e.g. after a forward-only pass).
  void clear() {
    steps_.clear();
    state_ = State::empty;
  }

 private:
  friend class NoGrad;

  struct Step {
    virtual ~Step() = default;
    virtual void run() = 0;
  };
  template <class F>
  struct StepOf final : Step {
    explicit StepOf(F f) : fn(std::move(f)) {}
    void run() override {
      fn();
    }
    F fn;
  };
  enum class State { empty, recorded, consumed };

  void check_ready() const {
    MMSPARSE_CHECK(state_ != State::empty,
                   "Tape::backward",
                   "tape",
                   "a recorded forward pass",
                   "nothing recorded: run a forward pass first");
    MMSPARSE_CHECK(state_ != State::consumed,
                   "Tape::backward",
                   "tape",
                   "a recorded forward pass",
                   "backward already ran for this forward pass: run a new forward pass first");
  }
  void run() {
    state_ = State::consumed;
    while (!steps_.empty()) {
      std::unique_ptr<Step> step = std::move(steps_.back());
      steps_.pop_back();
      step->run();  // `step` and the activations it owns are freed at the end of this iteration
    }
  }

  std::vector<std::unique_ptr<Step>> steps_;
  State state_ = State::empty;
  bool enabled_ = true;
};

}  // namespace mmsparse

// mmsparse/autograd/no_grad.hpp
//
// NoGrad: an RAII scope in which the tape records nothing, so ops keep no activations and their
// outputs require no gradient (evaluation, inference, finite differences). Scopes nest.
#pragma once

#include <mmsparse/autograd/tape.hpp>

namespace mmsparse {

class NoGrad {
 public:
  explicit NoGrad(Tape& tape) : tape_(tape), previous_(tape.enabled_) {
    tape_.enabled_ = false;
  }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;
  ~NoGrad() {
    tape_.enabled_ = previous_;
  }

 private:
  Tape& tape_;
  bool previous_;
};

}  // namespace mmsparse

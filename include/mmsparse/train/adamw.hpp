// mmsparse/train/adamw.hpp
//
// AdamW (Loshchilov & Hutter 2019) over a whole ParamArena, one flat loop, following PyTorch's
// torch.optim.AdamW: theta -= lr * wd * theta; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// theta -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). Moments and master weights are
// accum_t<T> (fp32 for bf16/fp32, fp64 for double). Calls b.weights_updated() where it exists.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <mmsparse/autograd/params.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mmsparse {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;  // Chameleon §2.3 / MoT App. A.2
  double eps = 1e-8;
  double weight_decay = 0.1;  // applied to slices with decay = true only
};

template <class T, backend B>
  requires std::is_same_v<typename B::space, host_space>
class AdamW {
 public:
  using A = accum_t<T>;
  static constexpr bool has_master = !std::is_same_v<T, A>;  // bf16: keep fp32 master weights

  explicit AdamW(ParamArena<T, B>& params, AdamWConfig cfg = {})
      : params_(params), cfg_(cfg), m_(1, params.size()), v_(1, params.size()) {
    MMSPARSE_CHECK(params.allocated(), "AdamW", "params", "an allocated arena", "not allocated");
    MMSPARSE_CHECK(cfg.beta1 >= 0 && cfg.beta1 < 1, "AdamW", "beta1", "in [0, 1)", cfg.beta1);
    MMSPARSE_CHECK(cfg.beta2 >= 0 && cfg.beta2 < 1, "AdamW", "beta2", "in [0, 1)", cfg.beta2);
    m_.fill(A{});
    v_.fill(A{});
    if constexpr (has_master) {
      master_ = Tensor<A>(1, params.size());
      const auto p = params.values();
      for (std::int64_t i = 0; i < params.size(); ++i) {
        master_[i] = scalar_cast<A>(p(0, i));
      }
    }
  }

  [[nodiscard]] std::int64_t steps() const {
    return t_;
  }

  void step(B& b, double lr) {
    ++t_;
    const A b1 = static_cast<A>(cfg_.beta1);
    const A b2 = static_cast<A>(cfg_.beta2);
    const A c1 = static_cast<A>(1.0 - std::pow(cfg_.beta1, static_cast<double>(t_)));
    const A c2 = static_cast<A>(1.0 - std::pow(cfg_.beta2, static_cast<double>(t_)));
    const A a_lr = static_cast<A>(lr);
    const A a_eps = static_cast<A>(cfg_.eps);
    T* p = params_.values().data;
    const T* g = params_.grads().data;
    for (const ParamSlice& s : params_.slices()) {
      const A decay = s.decay ? static_cast<A>(1.0 - lr * cfg_.weight_decay) : A{1};
      const std::int64_t end = s.offset + s.extent();  // row padding included: it stays 0
#pragma omp parallel for schedule(static) if (end - s.offset > (1 << 16))
      for (std::int64_t i = s.offset; i < end; ++i) {
        const A gi = scalar_cast<A>(g[i]);
        A theta;
        if constexpr (has_master) {
          theta = master_[i];
        } else {
          theta = scalar_cast<A>(p[i]);
        }
        theta *= decay;
        m_[i] = b1 * m_[i] + (A{1} - b1) * gi;
        v_[i] = b2 * v_[i] + (A{1} - b2) * gi * gi;
        theta -= a_lr * (m_[i] / c1) / (std::sqrt(v_[i] / c2) + a_eps);
        if constexpr (has_master) {
          master_[i] = theta;
        }
        p[i] = scalar_cast<T>(theta);
      }
    }
    if constexpr (requires { b.weights_updated(); }) {
      b.weights_updated();  // e.g. pre-packed GEMM weights are stale now
    }
  }

 private:
  ParamArena<T, B>& params_;
  AdamWConfig cfg_;
  Tensor<A> m_;       // [1, P] first moment
  Tensor<A> v_;       // [1, P] second moment
  Tensor<A> master_;  // [1, P] master weights (bf16 parameters only)
  std::int64_t t_ = 0;
};

}  // namespace mmsparse

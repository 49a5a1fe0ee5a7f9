// mmsparse/train/clip.hpp
//
// Global-norm gradient clipping (Pascanu et al. 2013; torch.nn.utils.clip_grad_norm_): one loop
// over the whole gradient arena. When ||g||_2 > max_norm, g *= max_norm / (||g||_2 + 1e-6).
// Returns the norm before clipping (worth logging: spikes precede divergence).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <mmsparse/autograd/params.hpp>
#include <mmsparse/core/error.hpp>

namespace mmsparse {

template <class T, backend B>
  requires std::is_same_v<typename B::space, host_space>
[[nodiscard]] double grad_norm(const ParamArena<T, B>& params) {
  const auto g = params.grads();
  double ss = 0.0;
#pragma omp parallel for reduction(+ : ss) schedule(static) if (g.cols > (1 << 16))
  for (std::int64_t i = 0; i < g.cols; ++i) {
    const double v = static_cast<double>(scalar_cast<accum_t<T>>(g(0, i)));
    ss += v * v;
  }
  return std::sqrt(ss);
}

template <class T, backend B>
  requires std::is_same_v<typename B::space, host_space>
double clip_grad_norm(ParamArena<T, B>& params, double max_norm) {
  MMSPARSE_CHECK(max_norm > 0.0, "clip_grad_norm", "max_norm", "> 0", max_norm);
  const double norm = grad_norm(params);
  if (norm > max_norm) {
    const auto s = static_cast<accum_t<T>>(max_norm / (norm + 1e-6));
    auto g = params.grads();
#pragma omp parallel for schedule(static) if (g.cols > (1 << 16))
    for (std::int64_t i = 0; i < g.cols; ++i) {
      g(0, i) = scalar_cast<T>(s * scalar_cast<accum_t<T>>(g(0, i)));
    }
  }
  return norm;
}

}  // namespace mmsparse

// mmsparse/backend/cpu/loss.hpp
//
// Softmax cross-entropy over a vocabulary, per row (token):
//   cross_entropy           loss[i] = lse[i] - logits[i, target[i]],  lse = logsumexp of the row
//   cross_entropy_backward  dlogits[i, :] += scale * (softmax(logits[i, :]) - onehot(target[i]))
// The forward keeps only lse [N] (not the [N, V] probabilities); the backward recomputes them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

inline constexpr std::int64_t loss_parallel_min = 1 << 14;

template <class T>
void cross_entropy(Span<accum_t<T>> loss,
                   Span<accum_t<T>> lse,
                   View<const T> logits,
                   Span<const std::int32_t> target) {
  using A = accum_t<T>;
  const std::int64_t v = logits.cols;
#pragma omp parallel for schedule(static) if (logits.rows * v > loss_parallel_min)
  for (std::int64_t i = 0; i < logits.rows; ++i) {
    const T* l = logits.row(i);
    A m = scalar_cast<A>(l[0]);
    for (std::int64_t j = 1; j < v; ++j) {
      m = std::max(m, scalar_cast<A>(l[j]));
    }
    A s{};
    for (std::int64_t j = 0; j < v; ++j) {
      s += std::exp(scalar_cast<A>(l[j]) - m);
    }
    const A z = m + std::log(s);
    lse[i] = z;
    loss[i] = z - scalar_cast<A>(l[target[i]]);
  }
}

template <class T>
void cross_entropy_backward(View<T> dlogits,
                            View<const T> logits,
                            Span<const accum_t<T>> lse,
                            Span<const std::int32_t> target,
                            double scale) {
  using A = accum_t<T>;
  const A s = static_cast<A>(scale);
  const std::int64_t v = logits.cols;
#pragma omp parallel for schedule(static) if (logits.rows * v > loss_parallel_min)
  for (std::int64_t i = 0; i < logits.rows; ++i) {
    const T* l = logits.row(i);
    T* d = dlogits.row(i);
    const A z = lse[i];
    for (std::int64_t j = 0; j < v; ++j) {
      const A p = std::exp(scalar_cast<A>(l[j]) - z) - (j == target[i] ? A{1} : A{0});
      d[j] = scalar_cast<T>(scalar_cast<A>(d[j]) + s * p);
    }
  }
}

}  // namespace mmsparse::cpu

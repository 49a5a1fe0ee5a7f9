// mmsparse/backend/cpu/norm.hpp
//
// Row normalisation kernels of the CPU backend, forward and backward:
//   rms_norm    y = x * rstd * w,                 rstd = 1 / sqrt(mean(x^2) + eps)   (LLaMA,
//   Chameleon) layer_norm  y = (x - mean) * rstd * w + bias, rstd = 1 / sqrt(var(x) + eps)
// The forward saves rstd (and mean) per row; the backward accumulates (+=) into dx, dw, dbias.
// Weight reductions split the work by columns, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

inline constexpr std::int64_t norm_parallel_min = 1 << 14;

template <class T>
void rms_norm(View<T> y, Span<accum_t<T>> rstd, View<const T> x, View<const T> w, double eps) {
  using A = accum_t<T>;
  const std::int64_t d = x.cols;
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t i = 0; i < x.rows; ++i) {
    const T* in = x.row(i);
    A ss{};
    for (std::int64_t j = 0; j < d; ++j) {
      ss += scalar_cast<A>(in[j]) * scalar_cast<A>(in[j]);
    }
    const A r = A{1} / std::sqrt(ss / static_cast<A>(d) + static_cast<A>(eps));
    rstd[i] = r;
    T* out = y.row(i);
    for (std::int64_t j = 0; j < d; ++j) {
      out[j] = scalar_cast<T>(scalar_cast<A>(in[j]) * r * scalar_cast<A>(w(0, j)));
    }
  }
}

// dx += r (w . dy) - x r^3 / d * sum_j(w_j dy_j x_j);   dw += sum_i dy_i x_i r_i
template <class T>
void rms_norm_backward(View<T> dx,
                       View<T> dw,
                       View<const T> dy,
                       View<const T> x,
                       View<const T> w,
                       Span<const accum_t<T>> rstd) {
  using A = accum_t<T>;
  const std::int64_t d = x.cols;
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t i = 0; i < x.rows; ++i) {
    const A r = rstd[i];
    A dot{};
    for (std::int64_t j = 0; j < d; ++j) {
      dot += scalar_cast<A>(w(0, j)) * scalar_cast<A>(dy(i, j)) * scalar_cast<A>(x(i, j));
    }
    const A c = dot * r * r * r / static_cast<A>(d);
    for (std::int64_t j = 0; j < d; ++j) {
      const A g =
          r * scalar_cast<A>(w(0, j)) * scalar_cast<A>(dy(i, j)) - c * scalar_cast<A>(x(i, j));
      dx(i, j) = scalar_cast<T>(scalar_cast<A>(dx(i, j)) + g);
    }
  }
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t j = 0; j < d; ++j) {
    A s{};
    for (std::int64_t i = 0; i < x.rows; ++i) {
      s += scalar_cast<A>(dy(i, j)) * scalar_cast<A>(x(i, j)) * rstd[i];
    }
    dw(0, j) = scalar_cast<T>(scalar_cast<A>(dw(0, j)) + s);
  }
}

// bias may be empty (cols == 0): no bias.
template <class T>
void layer_norm(View<T> y,
                Span<accum_t<T>> mean,
                Span<accum_t<T>> rstd,
                View<const T> x,
                View<const T> w,
                View<const T> bias,
                double eps) {
  using A = accum_t<T>;
  const std::int64_t d = x.cols;
  const bool has_bias = !bias.empty();
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t i = 0; i < x.rows; ++i) {
    const T* in = x.row(i);
    A m{};
    for (std::int64_t j = 0; j < d; ++j) {
      m += scalar_cast<A>(in[j]);
    }
    m /= static_cast<A>(d);
    A v{};
    for (std::int64_t j = 0; j < d; ++j) {
      const A c = scalar_cast<A>(in[j]) - m;
      v += c * c;
    }
    const A r = A{1} / std::sqrt(v / static_cast<A>(d) + static_cast<A>(eps));
    mean[i] = m;
    rstd[i] = r;
    T* out = y.row(i);
    for (std::int64_t j = 0; j < d; ++j) {
      const A b = has_bias ? scalar_cast<A>(bias(0, j)) : A{};
      out[j] = scalar_cast<T>((scalar_cast<A>(in[j]) - m) * r * scalar_cast<A>(w(0, j)) + b);
    }
  }
}

// With xh = (x - mean) rstd and g = w . dy:
//   dx += rstd (g - mean_j(g) - xh mean_j(g xh));   dw += sum_i dy xh;   dbias += sum_i dy
template <class T>
void layer_norm_backward(View<T> dx,
                         View<T> dw,
                         View<T> dbias,
                         View<const T> dy,
                         View<const T> x,
                         View<const T> w,
                         Span<const accum_t<T>> mean,
                         Span<const accum_t<T>> rstd) {
  using A = accum_t<T>;
  const std::int64_t d = x.cols;
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t i = 0; i < x.rows; ++i) {
    const A m = mean[i];
    const A r = rstd[i];
    A mg{};
    A mgx{};
    for (std::int64_t j = 0; j < d; ++j) {
      const A g = scalar_cast<A>(w(0, j)) * scalar_cast<A>(dy(i, j));
      mg += g;
      mgx += g * (scalar_cast<A>(x(i, j)) - m) * r;
    }
    mg /= static_cast<A>(d);
    mgx /= static_cast<A>(d);
    for (std::int64_t j = 0; j < d; ++j) {
      const A g = scalar_cast<A>(w(0, j)) * scalar_cast<A>(dy(i, j));
      const A xh = (scalar_cast<A>(x(i, j)) - m) * r;
      dx(i, j) = scalar_cast<T>(scalar_cast<A>(dx(i, j)) + r * (g - mg - xh * mgx));
    }
  }
  const bool has_bias = !dbias.empty();
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t j = 0; j < d; ++j) {
    A sw{};
    A sb{};
    for (std::int64_t i = 0; i < x.rows; ++i) {
      const A g = scalar_cast<A>(dy(i, j));
      sw += g * (scalar_cast<A>(x(i, j)) - mean[i]) * rstd[i];
      sb += g;
    }
    dw(0, j) = scalar_cast<T>(scalar_cast<A>(dw(0, j)) + sw);
    if (has_bias) {
      dbias(0, j) = scalar_cast<T>(scalar_cast<A>(dbias(0, j)) + sb);
    }
  }
}

}  // namespace mmsparse::cpu

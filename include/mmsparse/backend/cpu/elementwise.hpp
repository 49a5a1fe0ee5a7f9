// mmsparse/backend/cpu/elementwise.hpp
//
// Element-wise and row-wise kernels of the CPU backend: fill, copy (with
// conversion), axpy, scale_rows, sigmoid, softmax_rows, and SwiGLU
// (h = silu(a) * g, Shazeer 2020) with its backward. All accumulate in
// accum_t<T> (float for bf16), so bf16 activations lose no more than rounding;
// SwiGLU on floats runs eight lanes at a time with simd::exp8 (simd_math.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <mmsparse/backend/cpu/simd_math.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

inline constexpr std::int64_t elementwise_parallel_min = 1 << 15;

template <class T, class F>
void for_each_row(std::int64_t rows, std::int64_t cols, F&& f) {
#pragma omp parallel for schedule(static) if (rows * cols > elementwise_parallel_min)
  for (std::int64_t i = 0; i < rows; ++i) {
    f(i);
  }
}

template <class T>
void fill(View<T> y, T value) {
  for_each_row<T>(
      y.rows, y.cols, [&](std::int64_t i) { std::fill(y.row(i), y.row(i) + y.cols, value); });
}

template <class To, class From>
void copy(View<To> y, View<const From> x) {
  for_each_row<To>(y.rows, y.cols, [&](std::int64_t i) {
    const From* in = x.row(i);
    To* out = y.row(i);
    for (std::int64_t j = 0; j < y.cols; ++j) {
      out[j] = scalar_cast<To>(in[j]);
    }
  });
}

// y += alpha * x
template <class T>
void axpy(View<T> y, View<const T> x, double alpha) {
  using A = accum_t<T>;
  const A a = static_cast<A>(alpha);
  for_each_row<T>(y.rows, y.cols, [&](std::int64_t i) {
    const T* in = x.row(i);
    T* out = y.row(i);
    for (std::int64_t j = 0; j < y.cols; ++j) {
      out[j] = scalar_cast<T>(scalar_cast<A>(out[j]) + a * scalar_cast<A>(in[j]));
    }
  });
}

// y[r, :] *= w[r]
template <class T, class W>
void scale_rows(View<T> y, Span<const W> w) {
  using A = accum_t<T>;
  for_each_row<T>(y.rows, y.cols, [&](std::int64_t i) {
    const A s = static_cast<A>(w[i]);
    T* out = y.row(i);
    for (std::int64_t j = 0; j < y.cols; ++j) {
      out[j] = scalar_cast<T>(s * scalar_cast<A>(out[j]));
    }
  });
}

// y *= s
template <class T>
void scale_rows_uniform(View<T> y, double s) {
  using A = accum_t<T>;
  for_each_row<T>(y.rows, y.cols, [&](std::int64_t i) {
    T* out = y.row(i);
    for (std::int64_t j = 0; j < y.cols; ++j) {
      out[j] = scalar_cast<T>(static_cast<A>(s) * scalar_cast<A>(out[j]));
    }
  });
}

template <class W>
W sigmoid_scalar(W x) {
  return x >= W{0} ? W{1} / (W{1} + std::exp(-x)) : std::exp(x) / (W{1} + std::exp(x));
}

template <class W>
void sigmoid(View<W> y, View<const W> x) {
  for_each_row<W>(y.rows, y.cols, [&](std::int64_t i) {
    for (std::int64_t j = 0; j < y.cols; ++j) {
      y(i, j) = sigmoid_scalar(x(i, j));
    }
  });
}

template <class W>
void softmax_rows(View<W> y, View<const W> x) {
  for_each_row<W>(y.rows, y.cols, [&](std::int64_t i) {
    const W* in = x.row(i);
    W* out = y.row(i);
    const W m = *std::max_element(in, in + y.cols);
    W s{};
    for (std::int64_t j = 0; j < y.cols; ++j) {
      out[j] = std::exp(in[j] - m);
      s += out[j];
    }
    for (std::int64_t j = 0; j < y.cols; ++j) {
      out[j] /= s;
    }
  });
}

// h = silu(a) * g, silu(a) = a * sigmoid(a). Floats go eight at a time through simd::exp8.
template <class T>
void swiglu(View<T> h, View<const T> a, View<const T> g) {
  using A = accum_t<T>;
  for_each_row<T>(h.rows, h.cols, [&](std::int64_t i) {
    const T* pa = a.row(i);
    const T* pg = g.row(i);
    T* out = h.row(i);
    std::int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float>) {
      const __m256 one = _mm256_set1_ps(1.0f);
      for (; j + 8 <= h.cols; j += 8) {
        const __m256 x = _mm256_loadu_ps(pa + j);
        const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));  // exp(-x)
        const __m256 silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + j, _mm256_mul_ps(silu, _mm256_loadu_ps(pg + j)));
      }
    }
#endif
    for (; j < h.cols; ++j) {
      const A x = scalar_cast<A>(pa[j]);
      out[j] = scalar_cast<T>(x / (A{1} + std::exp(-x)) * scalar_cast<A>(pg[j]));
    }
  });
}

// da = dh * g * silu'(a), dg = dh * silu(a); silu'(a) = s (1 + a (1 - s)), s = sigmoid(a)
template <class T>
void swiglu_backward(View<T> da, View<T> dg, View<const T> dh, View<const T> a, View<const T> g) {
  using A = accum_t<T>;
  for_each_row<T>(dh.rows, dh.cols, [&](std::int64_t i) {
    std::int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float>) {
      const float* pa = a.row(i);
      const float* pg = g.row(i);
      const float* pd = dh.row(i);
      float* out_a = da.row(i);
      float* out_g = dg.row(i);
      const __m256 one = _mm256_set1_ps(1.0f);
      for (; j + 8 <= dh.cols; j += 8) {
        const __m256 x = _mm256_loadu_ps(pa + j);
        const __m256 s = _mm256_div_ps(
            one, _mm256_add_ps(one, simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
        const __m256 d = _mm256_loadu_ps(pd + j);
        const __m256 ds = _mm256_mul_ps(d, s);
        const __m256 slope = _mm256_fmadd_ps(x, _mm256_sub_ps(one, s), one);  // 1 + x (1 - s)
        _mm256_storeu_ps(out_a + j,
                         _mm256_mul_ps(_mm256_mul_ps(ds, _mm256_loadu_ps(pg + j)), slope));
        _mm256_storeu_ps(out_g + j, _mm256_mul_ps(ds, x));
      }
    }
#endif
    for (; j < dh.cols; ++j) {
      const A x = scalar_cast<A>(a(i, j));
      const A s = sigmoid_scalar(x);
      const A d = scalar_cast<A>(dh(i, j));
      da(i, j) = scalar_cast<T>(d * scalar_cast<A>(g(i, j)) * s * (A{1} + x * (A{1} - s)));
      dg(i, j) = scalar_cast<T>(d * x * s);
    }
  });
}

}  // namespace mmsparse::cpu

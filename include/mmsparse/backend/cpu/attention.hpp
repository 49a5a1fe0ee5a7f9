// mmsparse/backend/cpu/attention.hpp
//
// Attention kernels of the CPU backend (its GEMMs go through the backend's gemm):
//   rope_rotate          RoPE of [n, heads * head_dim] rows at per-row positions, or its inverse
//   masked_softmax_rows  softmax of scale * x over the first limit[r] columns of row r (+ backward)
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

inline constexpr std::int64_t attention_parallel_min = 1 << 14;

// exp(x) for float in branch-free arithmetic the compiler vectorises: Cody-Waite reduction by
// ln 2 and Cephes' degree-6 polynomial (about 2 ulp). x is first clamped to [-87.3, 88.3] on its
// bit pattern (an unsigned min per sign: no float compare or floor, which GCC does not vectorise
// under -ftrapping-math), so the result is a normal float; -inf and NaN give the clamp values.
// Double uses std::exp (the oracle stays exact).
inline float exp_approx(float x) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  u = std::min(u, 0x42b0999au + (u >> 31) * 0x7ffe0000u);  // 88.3f, or -87.3f when negative
  x = std::bit_cast<float>(u);
  // n = round(x / ln 2): adding 1.5 * 2^23 leaves the integer in the low mantissa bits.
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  const std::int32_t i = std::bit_cast<std::int32_t>(t) - 0x4b400000;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((i + 127) << 23);
}
inline double exp_approx(double x) {
  return std::exp(x);
}

// Largest |angle| sin_cos reduces itself (k pi/2 is exact in the first part of pi/2 for k < 2^20);
// beyond it, std::sin and std::cos.
inline constexpr double sin_cos_max_angle = 1.6e6;

// sin and cos of a double angle to within a few double ulp: reduction by the nearest multiple k of
// pi/2 (pi/2 in two parts, as fdlibm), Cephes' polynomials on [-pi/4, pi/4], then the quadrant k
// mod 4; several times faster than std::sin and std::cos.
inline void sin_cos(double angle, double& s, double& c) {
  if (!(std::abs(angle) <= sin_cos_max_angle)) {
    s = std::sin(angle);
    c = std::cos(angle);
    return;
  }
  constexpr double two_over_pi = 6.36619772367581382433e-01;
  constexpr double pio2_1 = 1.57079632673412561417e+00;   // the first 33 bits of pi/2
  constexpr double pio2_1t = 6.07710050650619224932e-11;  // pi/2 - pio2_1
  const double k = std::nearbyint(angle * two_over_pi);
  const double r = (angle - k * pio2_1) - k * pio2_1t;
  const double z = r * r;
  const double sr = r + r * z *
                            (((((1.58962301576546568060e-10 * z - 2.50507477628578072866e-8) * z +
                                2.75573136213857245213e-6) *
                                   z -
                               1.98412698295895385996e-4) *
                                  z +
                              8.33333333332211858878e-3) *
                                 z -
                             1.66666666666666307295e-1);
  const double cr = 1.0 - 0.5 * z +
                    z * z *
                        (((((-1.13585365213876817300e-11 * z + 2.08757008419747316778e-9) * z -
                            2.75573141792967388112e-7) *
                               z +
                           2.48015872888517045348e-5) *
                              z -
                          1.38888888888730564116e-3) *
                             z +
                         4.16666666666665929218e-2);
  const auto q = static_cast<std::int64_t>(k) & 3;  // sin(r + q pi/2), cos(r + q pi/2)
  s = q == 0 ? sr : q == 1 ? cr : q == 2 ? -sr : -cr;
  c = q == 0 ? cr : q == 1 ? -sr : q == 2 ? -cr : sr;
}

// y = R(pos) x (inverse: R(pos)^T x), interleaved pairs as in LLaMA/Chameleon (Su et al. 2021):
// per head, the pair (2i, 2i + 1) turns by pos * theta^(-2i / head_dim). Angles and their sines
// are taken in double, so large positions keep full precision (std::sin and std::cos for double
// data, the oracle; sin_cos otherwise). y may be x.
template <class T>
void rope_rotate(View<T> y,
                 View<const T> x,
                 Span<const std::int32_t> pos,
                 std::int64_t head_dim,
                 double theta,
                 bool inverse) {
  using A = accum_t<T>;
  const std::int64_t half = head_dim / 2;
  const std::int64_t heads = x.cols / head_dim;
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) {
    inv_freq[static_cast<std::size_t>(i)] =
        std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  }
  const double sign = inverse ? -1.0 : 1.0;
#pragma omp parallel for schedule(static) if (x.rows * x.cols > attention_parallel_min)
  for (std::int64_t r = 0; r < x.rows; ++r) {
    thread_local std::vector<A> turn;  // [2, half]: the row's cosines, then its sines
    turn.resize(static_cast<std::size_t>(2 * half));
    A* cosines = turn.data();
    A* sines = cosines + half;
    const double p = static_cast<double>(pos[r]);
    for (std::int64_t i = 0; i < half; ++i) {
      const double angle = p * inv_freq[static_cast<std::size_t>(i)];
      double sd = 0.0;
      double cd = 0.0;
      if constexpr (std::is_same_v<A, double>) {
        sd = std::sin(angle);
        cd = std::cos(angle);
      } else {
        sin_cos(angle, sd, cd);
      }
      cosines[i] = static_cast<A>(cd);
      sines[i] = static_cast<A>(sign * sd);
    }
    for (std::int64_t h = 0; h < heads; ++h) {
      const T* in = x.row(r) + h * head_dim;
      T* out = y.row(r) + h * head_dim;
      for (std::int64_t i = 0; i < half; ++i) {
        const A a = scalar_cast<A>(in[2 * i]);
        const A b = scalar_cast<A>(in[2 * i + 1]);
        out[2 * i] = scalar_cast<T>(cosines[i] * a - sines[i] * b);
        out[2 * i + 1] = scalar_cast<T>(sines[i] * a + cosines[i] * b);
      }
    }
  }
}

// y[r, j] = softmax_j(scale * x[r, :L]) for j < L = min(limit[r], cols), 0 for j >= L (a row
// with L <= 0 is all zeros). y may be x.
template <class T>
void masked_softmax_rows(View<T> y, View<const T> x, Span<const std::int32_t> limit, double scale) {
  using A = accum_t<T>;
  const A sc = static_cast<A>(scale);
#pragma omp parallel for schedule(static) if (x.rows * x.cols > attention_parallel_min)
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const T* in = x.row(r);
    T* out = y.row(r);
    const std::int64_t n = std::clamp<std::int64_t>(limit[r], 0, x.cols);
    if (n > 0) {
      A m = sc * scalar_cast<A>(in[0]);
#pragma omp simd reduction(max : m)
      for (std::int64_t j = 1; j < n; ++j) {
        m = std::max(m, sc * scalar_cast<A>(in[j]));
      }
      A sum{};
#pragma omp simd reduction(+ : sum)
      for (std::int64_t j = 0; j < n; ++j) {
        const A e = exp_approx(sc * scalar_cast<A>(in[j]) - m);
        out[j] = scalar_cast<T>(e);
        sum += e;
      }
      const A inv = A{1} / sum;
#pragma omp simd
      for (std::int64_t j = 0; j < n; ++j) {
        out[j] = scalar_cast<T>(scalar_cast<A>(out[j]) * inv);
      }
    }
    std::fill(out + n, out + x.cols, T{});
  }
}

// Backward of masked_softmax_rows: dx = scale * y . (dy - <y, dy>) on the first limit[r]
// columns, 0 elsewhere. Overwrites dx; dx may be dy.
template <class T>
void masked_softmax_rows_backward(
    View<T> dx, View<const T> y, View<const T> dy, Span<const std::int32_t> limit, double scale) {
  using A = accum_t<T>;
  const A sc = static_cast<A>(scale);
#pragma omp parallel for schedule(static) if (y.rows * y.cols > attention_parallel_min)
  for (std::int64_t r = 0; r < y.rows; ++r) {
    const T* py = y.row(r);
    const T* pdy = dy.row(r);
    T* out = dx.row(r);
    const std::int64_t n = std::clamp<std::int64_t>(limit[r], 0, y.cols);
    A dot{};
#pragma omp simd reduction(+ : dot)
    for (std::int64_t j = 0; j < n; ++j) {
      dot += scalar_cast<A>(py[j]) * scalar_cast<A>(pdy[j]);
    }
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) {
      out[j] = scalar_cast<T>(sc * scalar_cast<A>(py[j]) * (scalar_cast<A>(pdy[j]) - dot));
    }
    std::fill(out + n, out + y.cols, T{});
  }
}

}  // namespace mmsparse::cpu

// mmsparse/backend/cpu/norm.hpp
//
// Row normalisation kernels of the CPU backend, forward and backward:
//   rms_norm    y = x * rstd * w,                 rstd = 1 / sqrt(mean(x^2) + eps)   (LLaMA,
//               Chameleon)
//   layer_norm  y = (x - mean) * rstd * w + bias, rstd = 1 / sqrt(var(x) + eps)
// The forward saves rstd (and mean) per row; the backward accumulates (+=) into dx, dw, dbias.
// Row sums run in norm_lanes interleaved partial sums (vector code, a fixed order). The backward
// makes each chunk of norm_chunk_rows rows' share of dw (and dbias) while the chunk's dy and x
// are in cache, then adds the chunks' shares in order: no result depends on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

inline constexpr std::int64_t norm_parallel_min = 1 << 14;
inline constexpr int norm_lanes = 8;
inline constexpr std::int64_t norm_chunk_rows = 32;

namespace norm_detail {

// sum_{j < d} f(j) in norm_lanes interleaved partial sums, added in a fixed order.
template <class A, class F>
A lane_sum(std::int64_t d, F&& f) {
  A part[norm_lanes] = {};
  std::int64_t j = 0;
  for (; j + norm_lanes <= d; j += norm_lanes) {
#pragma GCC unroll 8
    for (int l = 0; l < norm_lanes; ++l) {
      part[l] += f(j + l);
    }
  }
  for (int l = 0; j + l < d; ++l) {
    part[l] += f(j + l);
  }
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
}

// Scratch of the calling thread for the chunks' shares of a weight gradient: grows only.
template <class A>
A* chunk_shares(std::int64_t count) {
  thread_local std::vector<A> buffer;
  if (static_cast<std::int64_t>(buffer.size()) < count) {
    buffer.resize(static_cast<std::size_t>(count));
  }
  return buffer.data();
}

// g(0, j) += sum over chunks c (in order) of shares[c d + j].
template <class T, class A>
void add_chunk_shares(View<T> g, const A* shares, std::int64_t chunks) {
  const std::int64_t d = g.cols;
#pragma omp parallel for schedule(static) if (chunks * d > norm_parallel_min)
  for (std::int64_t j = 0; j < d; ++j) {
    A s{};
    for (std::int64_t c = 0; c < chunks; ++c) {
      s += shares[c * d + j];
    }
    g(0, j) = scalar_cast<T>(scalar_cast<A>(g(0, j)) + s);
  }
}

}  // namespace norm_detail

template <class T>
void rms_norm(View<T> y, Span<accum_t<T>> rstd, View<const T> x, View<const T> w, double eps) {
  using A = accum_t<T>;
  const std::int64_t d = x.cols;
  const T* wr = w.row(0);
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t i = 0; i < x.rows; ++i) {
    const T* in = x.row(i);
    const A ss = norm_detail::lane_sum<A>(d, [&](std::int64_t j) {
      const A v = scalar_cast<A>(in[j]);
      return v * v;
    });
    const A r = A{1} / std::sqrt(ss / static_cast<A>(d) + static_cast<A>(eps));
    rstd[i] = r;
    T* out = y.row(i);
    for (std::int64_t j = 0; j < d; ++j) {
      out[j] = scalar_cast<T>(scalar_cast<A>(in[j]) * r * scalar_cast<A>(wr[j]));
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
  const std::int64_t chunks = (x.rows + norm_chunk_rows - 1) / norm_chunk_rows;
  A* shares = norm_detail::chunk_shares<A>(chunks * d);
  const T* wr = w.row(0);
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t c = 0; c < chunks; ++c) {
    A* share = shares + c * d;
    std::fill(share, share + d, A{});
    for (std::int64_t i = c * norm_chunk_rows; i < std::min(x.rows, (c + 1) * norm_chunk_rows);
         ++i) {
      const T* g = dy.row(i);
      const T* in = x.row(i);
      T* out = dx.row(i);
      const A r = rstd[i];
      const A dot = norm_detail::lane_sum<A>(d, [&](std::int64_t j) {
        return scalar_cast<A>(wr[j]) * scalar_cast<A>(g[j]) * scalar_cast<A>(in[j]);
      });
      const A k = dot * r * r * r / static_cast<A>(d);
      for (std::int64_t j = 0; j < d; ++j) {
        const A gj = scalar_cast<A>(g[j]);
        const A xj = scalar_cast<A>(in[j]);
        out[j] = scalar_cast<T>(scalar_cast<A>(out[j]) + (r * scalar_cast<A>(wr[j]) * gj - k * xj));
        share[j] += gj * xj * r;
      }
    }
  }
  norm_detail::add_chunk_shares(dw, shares, chunks);
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
  const T* wr = w.row(0);
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t i = 0; i < x.rows; ++i) {
    const T* in = x.row(i);
    const A m = norm_detail::lane_sum<A>(d, [&](std::int64_t j) { return scalar_cast<A>(in[j]); }) /
                static_cast<A>(d);
    const A v = norm_detail::lane_sum<A>(d, [&](std::int64_t j) {
      const A c = scalar_cast<A>(in[j]) - m;
      return c * c;
    });
    const A r = A{1} / std::sqrt(v / static_cast<A>(d) + static_cast<A>(eps));
    mean[i] = m;
    rstd[i] = r;
    T* out = y.row(i);
    for (std::int64_t j = 0; j < d; ++j) {
      const A b = has_bias ? scalar_cast<A>(bias(0, j)) : A{};
      out[j] = scalar_cast<T>((scalar_cast<A>(in[j]) - m) * r * scalar_cast<A>(wr[j]) + b);
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
  const bool has_bias = !dbias.empty();
  const std::int64_t chunks = (x.rows + norm_chunk_rows - 1) / norm_chunk_rows;
  A* shares = norm_detail::chunk_shares<A>(2 * chunks * d);  // dw's, then dbias's
  A* bias_shares = shares + chunks * d;
  const T* wr = w.row(0);
#pragma omp parallel for schedule(static) if (x.rows * d > norm_parallel_min)
  for (std::int64_t c = 0; c < chunks; ++c) {
    A* share = shares + c * d;
    A* bias_share = bias_shares + c * d;
    std::fill(share, share + d, A{});
    std::fill(bias_share, bias_share + d, A{});
    for (std::int64_t i = c * norm_chunk_rows; i < std::min(x.rows, (c + 1) * norm_chunk_rows);
         ++i) {
      const T* g = dy.row(i);
      const T* in = x.row(i);
      T* out = dx.row(i);
      const A m = mean[i];
      const A r = rstd[i];
      const A mg =
          norm_detail::lane_sum<A>(
              d, [&](std::int64_t j) { return scalar_cast<A>(wr[j]) * scalar_cast<A>(g[j]); }) /
          static_cast<A>(d);
      const A mgx = norm_detail::lane_sum<A>(d,
                                             [&](std::int64_t j) {
                                               return scalar_cast<A>(wr[j]) * scalar_cast<A>(g[j]) *
                                                      ((scalar_cast<A>(in[j]) - m) * r);
                                             }) /
                    static_cast<A>(d);
      for (std::int64_t j = 0; j < d; ++j) {
        const A gj = scalar_cast<A>(g[j]);
        const A xh = (scalar_cast<A>(in[j]) - m) * r;
        out[j] = scalar_cast<T>(scalar_cast<A>(out[j]) +
                                r * (scalar_cast<A>(wr[j]) * gj - mg - xh * mgx));
        share[j] += gj * xh;
        bias_share[j] += gj;
      }
    }
  }
  norm_detail::add_chunk_shares(dw, shares, chunks);
  if (has_bias) {
    norm_detail::add_chunk_shares(dbias, bias_shares, chunks);
  }
}

}  // namespace mmsparse::cpu

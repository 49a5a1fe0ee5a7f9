// mmsparse/backend/cpu/gather_scatter.hpp
//
// Dispersion primitives on the CPU (DESIGN.md "dispatch"):
//   gather_rows       dst[r] = src[index[r]]            (index < 0: a zero row, padding)
//   scatter_add_rows  dst[index[r]] += w[r] * src[r]     (index < 0: skipped)
//   gathered_row_dot  out[r] = <a[r], b[index[r]]>       (the gate gradient)
//   gather_values     dst[r] = src[index[r]]             (index < 0: `fill`), 1-D
//   scatter_values    dst[index[r]] = src[r]             (index < 0: skipped), 1-D
// Deterministic: scatter_add_rows splits the work by columns, never by rows, so
// every destination row sums its sources in ascending r whatever the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

inline constexpr std::int64_t parallel_min_work = 1 << 15;

template <class T>
void gather_rows(View<T> dst, View<const T> src, Span<const std::int32_t> index) {
  const std::int64_t cols = dst.cols;
#pragma omp parallel for schedule(static) if (dst.rows * cols > parallel_min_work)
  for (std::int64_t r = 0; r < dst.rows; ++r) {
    const std::int32_t t = index[r];
    T* out = dst.row(r);
    if (t < 0) {
      std::fill(out, out + cols, T{});
    } else {
      std::memcpy(static_cast<void*>(out), src.row(t), static_cast<std::size_t>(cols) * sizeof(T));
    }
  }
}

template <class T, class W>
void scatter_add_rows(View<T> dst,
                      View<const T> src,
                      Span<const std::int32_t> index,
                      Span<const W> weight) {
  using A = accum_t<T>;
  const std::int64_t cols = dst.cols;
  const std::int64_t chunk = 64;
  const std::int64_t chunks = (cols + chunk - 1) / chunk;
  const bool weighted = !weight.empty();
#pragma omp parallel for schedule(static) if (src.rows * cols > parallel_min_work)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t j0 = c * chunk;
    const std::int64_t j1 = std::min(cols, j0 + chunk);
    for (std::int64_t r = 0; r < src.rows; ++r) {
      const std::int32_t t = index[r];
      if (t < 0) {
        continue;
      }
      const A w = weighted ? static_cast<A>(weight[r]) : A{1};
      T* out = dst.row(t);
      const T* in = src.row(r);
      for (std::int64_t j = j0; j < j1; ++j) {
        out[j] = scalar_cast<T>(scalar_cast<A>(out[j]) + w * scalar_cast<A>(in[j]));
      }
    }
  }
}

template <class W, class T>
void gathered_row_dot(Span<W> out,
                      View<const T> a,
                      View<const T> b,
                      Span<const std::int32_t> index) {
  using A = accum_t<T>;
  const std::int64_t cols = a.cols;
#pragma omp parallel for schedule(static) if (a.rows * cols > parallel_min_work)
  for (std::int64_t r = 0; r < a.rows; ++r) {
    const std::int32_t t = index[r];
    A s{};
    if (t >= 0) {
      const T* x = a.row(r);
      const T* y = b.row(t);
      for (std::int64_t j = 0; j < cols; ++j) {
        s += scalar_cast<A>(x[j]) * scalar_cast<A>(y[j]);
      }
    }
    out[r] = static_cast<W>(s);
  }
}

template <class U>
void gather_values(Span<U> dst, Span<const U> src, Span<const std::int32_t> index, U fill) {
#pragma omp parallel for schedule(static) if (dst.size > parallel_min_work)
  for (std::int64_t r = 0; r < dst.size; ++r) {
    const std::int32_t i = index[r];
    dst[r] = i < 0 ? fill : src[i];
  }
}

// Indices >= 0 must be distinct (a permutation with holes), so rows never race.
template <class U>
void scatter_values(Span<U> dst, Span<const U> src, Span<const std::int32_t> index) {
#pragma omp parallel for schedule(static) if (src.size > parallel_min_work)
  for (std::int64_t r = 0; r < src.size; ++r) {
    const std::int32_t i = index[r];
    if (i >= 0) {
      dst[i] = src[r];
    }
  }
}

}  // namespace mmsparse::cpu

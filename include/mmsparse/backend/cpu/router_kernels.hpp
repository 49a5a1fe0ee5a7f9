// mmsparse/backend/cpu/router_kernels.hpp
//
// CPU kernels of the routers' math (routing/): finiteness check, counter-based logistic noise
// (MoMa §2.5), sigmoid/softmax/row-normalisation backwards, logsumexp, a transpose, an integer
// index map (decode and shift), a column scatter-add (the adjoint of a per-row gather), and the
// host transfers the routers use for per-expert metadata. All deterministic.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

inline constexpr std::int64_t router_parallel_min = 1 << 15;

// Flat index r * cols + c of the first element that is NaN or infinite, in row-major order; -1 if
// none.
template <class W>
std::int64_t find_nonfinite(View<const W> x) {
  for (std::int64_t i = 0; i < x.rows; ++i) {
    const W* row = x.row(i);
    for (std::int64_t j = 0; j < x.cols; ++j) {
      if (!std::isfinite(row[j])) {
        return i * x.cols + j;
      }
    }
  }
  return -1;
}

// y(r, j) += logistic_noise(seed, id(r) * row_stride + col_offset + j), id(r) = row_id[r] (or r
// when row_id is empty). The draw depends only on (seed, counter): same noise on every backend.
template <class W>
void add_logistic_noise(View<W> y,
                        Span<const std::int32_t> row_id,
                        std::uint64_t seed,
                        std::int64_t row_stride,
                        std::int64_t col_offset) {
#pragma omp parallel for schedule(static) if (y.rows * y.cols > router_parallel_min)
  for (std::int64_t r = 0; r < y.rows; ++r) {
    const std::int64_t id = row_id.empty() ? r : row_id[r];
    const auto base = static_cast<std::uint64_t>(id * row_stride + col_offset);
    W* out = y.row(r);
    for (std::int64_t j = 0; j < y.cols; ++j) {
      out[j] += static_cast<W>(logistic_noise(seed, base + static_cast<std::uint64_t>(j)));
    }
  }
}

// dx = dy * y * (1 - y), y = sigmoid(x)
template <class W>
void sigmoid_backward(View<W> dx, View<const W> dy, View<const W> y) {
#pragma omp parallel for schedule(static) if (dx.rows * dx.cols > router_parallel_min)
  for (std::int64_t r = 0; r < dx.rows; ++r) {
    for (std::int64_t j = 0; j < dx.cols; ++j) {
      const W s = y(r, j);
      dx(r, j) = dy(r, j) * s * (W{1} - s);
    }
  }
}

// dx = y * (dy - <dy, y>) row by row, y = softmax_rows(x)
template <class W>
void softmax_rows_backward(View<W> dx, View<const W> dy, View<const W> y) {
#pragma omp parallel for schedule(static) if (dx.rows * dx.cols > router_parallel_min)
  for (std::int64_t r = 0; r < dx.rows; ++r) {
    double dot = 0.0;
    for (std::int64_t j = 0; j < dx.cols; ++j) {
      dot += static_cast<double>(dy(r, j)) * static_cast<double>(y(r, j));
    }
    for (std::int64_t j = 0; j < dx.cols; ++j) {
      dx(r, j) = y(r, j) * (dy(r, j) - static_cast<W>(dot));
    }
  }
}

// out[r] = log sum_j exp(x(r, j)), shifted by the row maximum.
template <class W>
void logsumexp_rows(Span<W> out, View<const W> x) {
#pragma omp parallel for schedule(static) if (x.rows * x.cols > router_parallel_min)
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const W* in = x.row(r);
    const W m = *std::max_element(in, in + x.cols);
    double s = 0.0;
    for (std::int64_t j = 0; j < x.cols; ++j) {
      s += std::exp(static_cast<double>(in[j] - m));
    }
    out[r] = m + static_cast<W>(std::log(s));
  }
}

// y = x / rowsum(x) (rows of positive values, e.g. the k chosen probabilities of a token).
template <class W>
void normalize_rows(View<W> y, View<const W> x) {
#pragma omp parallel for schedule(static) if (x.rows * x.cols > router_parallel_min)
  for (std::int64_t r = 0; r < x.rows; ++r) {
    double s = 0.0;
    for (std::int64_t j = 0; j < x.cols; ++j) {
      s += static_cast<double>(x(r, j));
    }
    for (std::int64_t j = 0; j < x.cols; ++j) {
      y(r, j) = static_cast<W>(static_cast<double>(x(r, j)) / s);
    }
  }
}

// dx = (dy - <dy, y>) / rowsum(x), the backward of y = normalize_rows(x).
template <class W>
void normalize_rows_backward(View<W> dx, View<const W> dy, View<const W> y, View<const W> x) {
#pragma omp parallel for schedule(static) if (x.rows * x.cols > router_parallel_min)
  for (std::int64_t r = 0; r < x.rows; ++r) {
    double s = 0.0;
    double dot = 0.0;
    for (std::int64_t j = 0; j < x.cols; ++j) {
      s += static_cast<double>(x(r, j));
      dot += static_cast<double>(dy(r, j)) * static_cast<double>(y(r, j));
    }
    for (std::int64_t j = 0; j < x.cols; ++j) {
      dx(r, j) = static_cast<W>((static_cast<double>(dy(r, j)) - dot) / s);
    }
  }
}

// dst [c, r] = src [r, c]^T
template <class U>
void transpose(View<U> dst, View<const U> src) {
#pragma omp parallel for schedule(static) if (src.rows * src.cols > router_parallel_min)
  for (std::int64_t j = 0; j < src.cols; ++j) {
    U* out = dst.row(j);
    for (std::int64_t i = 0; i < src.rows; ++i) {
      out[i] = src(i, j);
    }
  }
}

// out[i] = in[i] / divisor + offset for in[i] >= 0; negative entries (dropped) are copied.
// Decodes a flat (row, column) index into its row, or shifts local indices to global ones.
inline void map_index(Span<std::int32_t> out,
                      Span<const std::int32_t> in,
                      std::int64_t divisor,
                      std::int64_t offset) {
#pragma omp parallel for schedule(static) if (in.size > router_parallel_min)
  for (std::int64_t i = 0; i < in.size; ++i) {
    const std::int32_t v = in[i];
    out[i] = v < 0 ? v : static_cast<std::int32_t>(v / divisor + offset);
  }
}

// dst(r, col(r, j)) += src(r, j) for col(r, j) >= 0: the adjoint of out(r, j) = x(r, col(r, j)).
// Rows are independent and each row adds in ascending j.
template <class W>
void scatter_add_cols(View<W> dst, View<const W> src, View<const std::int32_t> col) {
#pragma omp parallel for schedule(static) if (src.rows * src.cols > router_parallel_min)
  for (std::int64_t r = 0; r < src.rows; ++r) {
    for (std::int64_t j = 0; j < src.cols; ++j) {
      const std::int32_t c = col(r, j);
      if (c >= 0) {
        dst(r, c) += src(r, j);
      }
    }
  }
}

template <class U>
void copy_to_host(std::span<U> dst, Span<const U> src) {
  std::copy(src.data, src.data + src.size, dst.data());
}

template <class U>
void copy_from_host(Span<U> dst, std::span<const U> src) {
  std::copy(src.begin(), src.end(), dst.data);
}

}  // namespace mmsparse::cpu

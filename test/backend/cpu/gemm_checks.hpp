// test/backend/cpu/gemm_checks.hpp
//
// Shared by the GEMM tests (eigen_gemm, onednn_gemm, one_thread_ops, skinny_gemm): random strided
// operands, so every product is checked on views whose row stride exceeds their width, and the
// oracle, a double loop with a rounding bound per element.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gemm_checks {

// A [rows, cols] matrix in a buffer with `pad` extra columns per row; padding is random too.
template <class T>
struct Padded {
  Tensor<T> storage;
  View<T> view;
  [[nodiscard]] View<const T> cview() const {
    return view;
  }
};

template <class T>
Padded<T> random_padded(std::int64_t rows,
                        std::int64_t cols,
                        std::int64_t pad,
                        std::uint64_t seed) {
  Padded<T> p;
  p.storage = Tensor<T>(std::max<std::int64_t>(rows, 1), cols + pad);
  Rng rng(seed);
  for (std::int64_t i = 0; i < p.storage.size(); ++i) {
    p.storage.data()[i] = scalar_cast<T>(rng.normal());
  }
  p.view = View<T>(p.storage.data(), rows, cols, cols + pad);
  return p;
}

template <class T>
double at(View<const T> v, Trans t, std::int64_t i, std::int64_t j) {
  return scalar_cast<double>(t == Trans::no ? v(i, j) : v(j, i));
}

struct Reference {
  std::vector<double> value;  // [m, n]
  std::vector<double> bound;  // |alpha| sum |a||b| + |beta c0|: scale of the rounding error
};

// alpha op(a) op(b) + beta c0 in double over the stored values (c0 is ignored when beta = 0; b
// may hold another type, e.g. bf16 weights).
template <class T, class TB>
Reference reference(View<const T> c0,
                    View<const T> a,
                    Trans ta,
                    View<const TB> b,
                    Trans tb,
                    double alpha,
                    double beta) {
  const std::int64_t m = c0.rows;
  const std::int64_t n = c0.cols;
  const std::int64_t k = ta == Trans::no ? a.cols : a.rows;
  Reference r{std::vector<double>(static_cast<std::size_t>(m * n)),
              std::vector<double>(static_cast<std::size_t>(m * n))};
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      double abs = 0.0;
      for (std::int64_t l = 0; l < k; ++l) {
        const double p = at(a, ta, i, l) * at(b, tb, l, j);
        s += p;
        abs += std::fabs(p);
      }
      const double c = beta == 0.0 ? 0.0 : beta * scalar_cast<double>(c0(i, j));
      r.value[static_cast<std::size_t>(i * n + j)] = alpha * s + c;
      r.bound[static_cast<std::size_t>(i * n + j)] = std::fabs(alpha) * abs + std::fabs(c);
    }
  }
  return r;
}

// Every element within the float rounding bound (K + 4) u of its reference, plus one bf16
// rounding of the output where C is bf16.
template <class T>
void require_close(View<const T> c, const Reference& r, std::int64_t k, const std::string& what) {
  const double tol = static_cast<double>(k + 4) * 1.2e-7;
  const double out = std::is_same_v<T, bf16> ? 0x1.0p-8 : 0.0;
  for (std::int64_t i = 0; i < c.rows; ++i) {
    for (std::int64_t j = 0; j < c.cols; ++j) {
      const auto idx = static_cast<std::size_t>(i * c.cols + j);
      const double got = scalar_cast<double>(c(i, j));
      INFO(what << " at (" << i << ", " << j << "): got " << got << ", want " << r.value[idx]);
      REQUIRE(std::fabs(got - r.value[idx]) <=
              tol * r.bound[idx] + out * std::fabs(r.value[idx]) + 1e-30);
    }
  }
}

// The padding columns of `after` equal those of `before` (nothing written outside the view).
template <class T>
void require_padding_kept(const Padded<T>& after, const Tensor<T>& before) {
  for (std::int64_t i = 0; i < after.view.rows; ++i) {
    for (std::int64_t j = after.view.cols; j < after.storage.cols(); ++j) {
      REQUIRE(scalar_cast<double>(after.storage(i, j)) == scalar_cast<double>(before(i, j)));
    }
  }
}

struct Case {
  std::int64_t m, k, n;
};

// Runs provider.gemm over transposes x (alpha, beta) x shapes with padded operands.
template <class T, class G>
void check_gemm_cases(G& provider, const std::vector<Case>& cases) {
  const std::vector<std::pair<double, double>> scalars = {{1.0, 0.0}, {0.5, 1.0}, {-1.5, 0.25}};
  std::uint64_t seed = 100;
  for (const Case& s : cases) {
    for (const Trans ta : {Trans::no, Trans::yes}) {
      for (const Trans tb : {Trans::no, Trans::yes}) {
        for (const auto& [alpha, beta] : scalars) {
          auto a = ta == Trans::no ? random_padded<T>(s.m, s.k, 3, ++seed)
                                   : random_padded<T>(s.k, s.m, 2, ++seed);
          auto b = tb == Trans::no ? random_padded<T>(s.k, s.n, 1, ++seed)
                                   : random_padded<T>(s.n, s.k, 5, ++seed);
          auto c = random_padded<T>(s.m, s.n, 4, ++seed);
          const auto before = c.storage.clone();
          const Reference r = reference(View<const T>(before.data(), s.m, s.n, before.cols()),
                                        a.cview(),
                                        ta,
                                        b.cview(),
                                        tb,
                                        alpha,
                                        beta);
          provider.gemm(c.view, a.cview(), ta, b.cview(), tb, alpha, beta);
          const std::string what =
              "m=" + std::to_string(s.m) + " k=" + std::to_string(s.k) +
              " n=" + std::to_string(s.n) + " ta=" + std::to_string(ta == Trans::yes) +
              " tb=" + std::to_string(tb == Trans::yes) + " alpha=" + std::to_string(alpha) +
              " beta=" + std::to_string(beta);
          require_close(c.cview(), r, s.k, what);
          require_padding_kept(c, before);
        }
      }
    }
  }
}

// Experts with rows [offsets[e], offsets[e+1]) of a; w stacks E blocks (op(W_e) is [k, n]).
struct Grouped {
  std::vector<std::int64_t> offsets;
  std::int64_t k, n;
};

template <class T>
Reference grouped_reference(View<const T> c0,
                            View<const T> a,
                            View<const T> w,
                            Trans tw,
                            const std::vector<std::int64_t>& offsets,
                            double alpha,
                            double beta) {
  const auto experts = static_cast<std::int64_t>(offsets.size()) - 1;
  const std::int64_t block = w.rows / experts;
  Reference r{std::vector<double>(static_cast<std::size_t>(c0.size())),
              std::vector<double>(static_cast<std::size_t>(c0.size()))};
  for (std::int64_t i = 0; i < c0.rows; ++i) {  // rows outside every segment stay as they are
    for (std::int64_t j = 0; j < c0.cols; ++j) {
      r.value[static_cast<std::size_t>(i * c0.cols + j)] = scalar_cast<double>(c0(i, j));
    }
  }
  for (std::int64_t e = 0; e < experts; ++e) {
    const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
    const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
    const Reference re = reference(c0.row_block(begin, count),
                                   a.row_block(begin, count),
                                   Trans::no,
                                   w.row_block(e * block, block),
                                   tw,
                                   alpha,
                                   beta);
    std::copy(re.value.begin(), re.value.end(), r.value.begin() + begin * c0.cols);
    std::copy(re.bound.begin(), re.bound.end(), r.bound.begin() + begin * c0.cols);
  }
  return r;
}

}  // namespace mmsparse::gemm_checks

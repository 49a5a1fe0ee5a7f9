// test/backend/cpu/eigen_gemm_test.cpp
//
// The Eigen GEMM provider (the fallback without oneDNN) against a naive double loop: every
// transpose, alpha/beta, strided and odd shapes, M = 0 and 1, K = 0, grouped products and their
// weight gradient through CpuBackend, and bf16 within 2x the error of a naive bf16 product.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "backend/cpu/gemm_checks.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mm = mmsparse;
using mm::Trans;

namespace {

using mm::gemm_checks::at;
using mm::gemm_checks::Case;
using mm::gemm_checks::check_gemm_cases;
using mm::gemm_checks::Grouped;
using mm::gemm_checks::grouped_reference;
using mm::gemm_checks::Padded;
using mm::gemm_checks::random_padded;
using mm::gemm_checks::Reference;
using mm::gemm_checks::reference;
using mm::gemm_checks::require_close;
using mm::gemm_checks::require_padding_kept;

// bf16 inputs, products accumulated in float, the result rounded to bf16 once.
std::vector<double> naive_bf16(mm::View<const mm::bf16> c0,
                               mm::View<const mm::bf16> a,
                               Trans ta,
                               mm::View<const mm::bf16> b,
                               Trans tb,
                               double alpha,
                               double beta) {
  const std::int64_t k = ta == Trans::no ? a.cols : a.rows;
  std::vector<double> out(static_cast<std::size_t>(c0.size()));
  for (std::int64_t i = 0; i < c0.rows; ++i) {
    for (std::int64_t j = 0; j < c0.cols; ++j) {
      float acc = 0.0f;
      for (std::int64_t l = 0; l < k; ++l) {
        acc += static_cast<float>(at(a, ta, i, l)) * static_cast<float>(at(b, tb, l, j));
      }
      const float c = beta == 0.0 ? 0.0f : static_cast<float>(beta) * static_cast<float>(c0(i, j));
      out[static_cast<std::size_t>(i * c0.cols + j)] =
          mm::scalar_cast<double>(mm::bf16(static_cast<float>(alpha) * acc + c));
    }
  }
  return out;
}

double rms(mm::View<const mm::bf16> got, const std::vector<double>& want) {
  double s = 0.0;
  for (std::int64_t i = 0; i < got.rows; ++i) {
    for (std::int64_t j = 0; j < got.cols; ++j) {
      const double d =
          mm::scalar_cast<double>(got(i, j)) - want[static_cast<std::size_t>(i * got.cols + j)];
      s += d * d;
    }
  }
  return std::sqrt(s / static_cast<double>(std::max<std::int64_t>(got.size(), 1)));
}

double rms(const std::vector<double>& x, const std::vector<double>& y) {
  double s = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    s += (x[i] - y[i]) * (x[i] - y[i]);
  }
  return std::sqrt(s / static_cast<double>(std::max<std::size_t>(x.size(), 1)));
}

}  // namespace

TEST_CASE("EigenGemm matches a double loop: transposes, alpha/beta, strides, odd shapes",
          "[backend][cpu]") {
  mm::cpu::EigenGemm g;
  check_gemm_cases<float>(
      g, {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {0, 4, 3}, {1, 9, 13}, {5, 0, 4}, {3, 8, 0}});
}

TEST_CASE("EigenGemm in double is exact to double rounding", "[backend][cpu]") {
  mm::cpu::EigenGemm g;
  auto a = random_padded<double>(6, 11, 2, 41);
  auto b = random_padded<double>(4, 11, 1, 42);  // used transposed: op(b) is [11, 4]
  auto c = random_padded<double>(6, 4, 3, 43);
  const auto before = c.storage.clone();
  const Reference r = reference(mm::View<const double>(before.data(), 6, 4, before.cols()),
                                a.cview(),
                                Trans::no,
                                b.cview(),
                                Trans::yes,
                                0.5,
                                -1.0);
  g.gemm(c.view, a.cview(), Trans::no, b.cview(), Trans::yes, 0.5, -1.0);
  for (std::int64_t i = 0; i < 6; ++i) {
    for (std::int64_t j = 0; j < 4; ++j) {
      const auto idx = static_cast<std::size_t>(i * 4 + j);
      REQUIRE(std::fabs(c.view(i, j) - r.value[idx]) <= 16 * 1.2e-16 * r.bound[idx]);
    }
  }
  require_padding_kept(c, before);
}

TEST_CASE("EigenGemm grouped products and weight gradients through CpuBackend", "[backend][cpu]") {
  mm::CpuBackend<float, mm::cpu::EigenGemm> b;
  const std::vector<std::int64_t> offsets = {0, 5, 5, 17, 30};
  const std::int64_t k = 12;
  const std::int64_t n = 9;
  std::uint64_t seed = 60;
  for (const Trans tw : {Trans::no, Trans::yes}) {
    for (const double beta : {0.0, 1.0}) {
      auto a = random_padded<float>(31, k, 2, ++seed);
      auto w = tw == Trans::no ? random_padded<float>(4 * k, n, 0, ++seed)
                               : random_padded<float>(4 * n, k, 3, ++seed);
      auto c = random_padded<float>(31, n, 1, ++seed);
      const auto before = c.storage.clone();
      const Reference r =
          grouped_reference(mm::View<const float>(before.data(), 31, n, before.cols()),
                            a.cview(),
                            w.cview(),
                            tw,
                            offsets,
                            0.75,
                            beta);
      b.pack_weights(w.cview(), tw, 4);  // no-ops for Eigen: nothing is cached
      b.grouped_gemm(c.view, a.cview(), w.cview(), tw, offsets, 0.75, beta);
      b.weights_updated();
      require_close(c.cview(), r, k, "grouped tw=" + std::to_string(tw == Trans::yes));
      require_padding_kept(c, before);
    }
  }
  // W_e = 2 A_e^T B_e + beta W_e; the empty expert 1 only scales.
  auto a = random_padded<float>(30, k, 1, ++seed);
  auto dy = random_padded<float>(30, n, 2, ++seed);
  for (const double beta : {0.0, 0.5}) {
    auto w = random_padded<float>(4 * k, n, 3, ++seed);
    const auto before = w.storage.clone();
    b.grouped_gemm_weight_grad(w.view, a.cview(), dy.cview(), offsets, 2.0, beta);
    for (std::int64_t e = 0; e < 4; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      const Reference r = reference(
          mm::View<const float>(before.data() + e * k * before.cols(), k, n, before.cols()),
          a.cview().row_block(begin, count),
          Trans::yes,
          dy.cview().row_block(begin, count),
          Trans::no,
          2.0,
          beta);
      require_close(mm::View<const float>(w.view.row_block(e * k, k)),
                    r,
                    count,
                    "weight grad expert " + std::to_string(e));
    }
    require_padding_kept(w, before);
  }
}

TEST_CASE("EigenGemm bf16: error within 2x of a naive bf16 product", "[backend][cpu]") {
  mm::cpu::EigenGemm g;
  std::uint64_t seed = 90;
  for (const Case s : {Case{9, 40, 11}, Case{1, 64, 17}, Case{32, 96, 24}}) {
    for (const Trans ta : {Trans::no, Trans::yes}) {
      for (const Trans tb : {Trans::no, Trans::yes}) {
        for (const double beta : {0.0, 1.0}) {
          auto a = ta == Trans::no ? random_padded<mm::bf16>(s.m, s.k, 1, ++seed)
                                   : random_padded<mm::bf16>(s.k, s.m, 1, ++seed);
          auto b = tb == Trans::no ? random_padded<mm::bf16>(s.k, s.n, 2, ++seed)
                                   : random_padded<mm::bf16>(s.n, s.k, 2, ++seed);
          auto c = random_padded<mm::bf16>(s.m, s.n, 1, ++seed);
          const auto before = c.storage.clone();
          const mm::View<const mm::bf16> c0(before.data(), s.m, s.n, before.cols());
          const Reference r = reference(c0, a.cview(), ta, b.cview(), tb, 1.0, beta);
          const auto naive = naive_bf16(c0, a.cview(), ta, b.cview(), tb, 1.0, beta);
          g.gemm(c.view, a.cview(), ta, b.cview(), tb, 1.0, beta);
          const double ours = rms(c.cview(), r.value);
          const double base = rms(naive, r.value);
          INFO("m=" << s.m << " k=" << s.k << " n=" << s.n << " ours " << ours << " naive "
                    << base);
          REQUIRE(base > 0.0);
          REQUIRE(ours <= 2.0 * base);
          require_padding_kept(c, before);
        }
      }
    }
  }
}

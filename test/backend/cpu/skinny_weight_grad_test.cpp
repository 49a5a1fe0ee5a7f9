// test/backend/cpu/skinny_weight_grad_test.cpp
//
// The weight gradient of short segments against a double loop: segments of 0 to
// skinny_grad_max_rows rows (and one longer, left to the caller), K not a multiple of the 6-row
// tile, N not a multiple of 16 (and exactly 16), strided views, alpha/beta with beta = 0 over NaN,
// on one thread and on several; through CpuBackend::grouped_gemm_weight_grad with short and long
// segments in one call; bad shapes are rejected, naming the argument, before anything is written.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <catch2/catch.hpp>

#include "backend/cpu/gemm_checks.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/backend/cpu/skinny_weight_grad.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mm = mmsparse;

namespace {

using mm::gemm_checks::Padded;
using mm::gemm_checks::random_padded;

// Checks block e of w against alpha A_e^T B_e + beta W0_e in double, within the float
// accumulation bound (m + 4) u of sum |alpha a b| + |beta w0|.
void require_segment(mm::View<const float> w,
                     mm::View<const float> w0,
                     mm::View<const float> a,
                     mm::View<const float> b,
                     double alpha,
                     double beta,
                     const std::string& what) {
  const std::int64_t m = a.rows;
  const double tol = static_cast<double>(m + 4) * 1.2e-7;
  for (std::int64_t i = 0; i < w.rows; ++i) {
    for (std::int64_t j = 0; j < w.cols; ++j) {
      double s = 0.0;
      double abs = 0.0;
      for (std::int64_t r = 0; r < m; ++r) {
        const double p = static_cast<double>(a(r, i)) * static_cast<double>(b(r, j));
        s += p;
        abs += std::fabs(p);
      }
      const double c = beta == 0.0 ? 0.0 : beta * static_cast<double>(w0(i, j));
      const double want = alpha * s + c;
      const double bound = std::fabs(alpha) * abs + std::fabs(c);
      INFO(what << " at (" << i << ", " << j << "): got " << w(i, j) << ", want " << want);
      REQUIRE(std::fabs(static_cast<double>(w(i, j)) - want) <= tol * bound + 1e-30);
    }
  }
}

struct Problem {
  std::vector<std::int64_t> offsets;
  Padded<float> a, b, w;
  mm::Tensor<float> before;  // w's storage before the call
  [[nodiscard]] std::int64_t experts() const {
    return static_cast<std::int64_t>(offsets.size()) - 1;
  }
  [[nodiscard]] std::int64_t block() const {
    return w.view.rows / experts();
  }
  [[nodiscard]] mm::View<const float> w0() const {
    return {before.data(), w.view.rows, w.view.cols, before.cols()};
  }
};

// Segments 0, 1, 5, 6, 7, 16, 33, skinny_grad_max_rows and one row more, after a row of no
// segment; W with a NaN-filled option for beta = 0.
Problem make_problem(std::int64_t k, std::int64_t n, bool nan_w, std::uint64_t seed) {
  const std::int64_t max = mm::cpu::skinny_grad_max_rows;
  Problem p;
  p.offsets = {1};
  for (const std::int64_t count : {std::int64_t{0},
                                   std::int64_t{1},
                                   std::int64_t{5},
                                   std::int64_t{6},
                                   std::int64_t{7},
                                   std::int64_t{16},
                                   std::int64_t{33},
                                   max,
                                   max + 1}) {
    p.offsets.push_back(p.offsets.back() + count);
  }
  const std::int64_t rows = p.offsets.back() + 1;
  p.a = random_padded<float>(rows, k, 3, seed);
  p.b = random_padded<float>(rows, n, 5, seed + 1);
  p.w = random_padded<float>(p.experts() * k, n, 2, seed + 2);
  if (nan_w) {
    p.w.storage.fill(std::numeric_limits<float>::quiet_NaN());
  }
  p.before = p.w.storage.clone();
  return p;
}

// Every block whose segment the kernel takes is checked; the longer one and W's padding columns
// are untouched.
void check_kernel(std::int64_t k, std::int64_t n, double alpha, double beta, std::uint64_t seed) {
  Problem p = make_problem(k, n, beta == 0.0, seed);
  mm::cpu::skinny_grouped_weight_grad(p.w.view, p.a.cview(), p.b.cview(), p.offsets, alpha, beta);
  const std::int64_t block = p.block();
  for (std::int64_t e = 0; e < p.experts(); ++e) {
    const std::int64_t begin = p.offsets[static_cast<std::size_t>(e)];
    const std::int64_t count = p.offsets[static_cast<std::size_t>(e + 1)] - begin;
    const auto we = p.w.cview().row_block(e * block, block);
    const std::string what = "k=" + std::to_string(k) + " n=" + std::to_string(n) +
                             " alpha=" + std::to_string(alpha) + " beta=" + std::to_string(beta) +
                             " segment of " + std::to_string(count);
    if (count > mm::cpu::skinny_grad_max_rows) {
      for (std::int64_t i = 0; i < block; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          REQUIRE(std::isnan(we(i, j)) == std::isnan(p.w0()(e * block + i, j)));
          if (!std::isnan(we(i, j))) {
            REQUIRE(we(i, j) == p.w0()(e * block + i, j));
          }
        }
      }
      continue;
    }
    require_segment(we,
                    p.w0().row_block(e * block, block),
                    p.a.cview().row_block(begin, count),
                    p.b.cview().row_block(begin, count),
                    alpha,
                    beta,
                    what);
  }
  for (std::int64_t i = 0; i < p.w.view.rows; ++i) {
    for (std::int64_t j = n; j < p.w.storage.cols(); ++j) {
      REQUIRE(std::isnan(p.w.storage(i, j)) == std::isnan(p.before(i, j)));
      if (!std::isnan(p.before(i, j))) {
        REQUIRE(p.w.storage(i, j) == p.before(i, j));
      }
    }
  }
}

}  // namespace

TEST_CASE("skinny_grouped_weight_grad matches a double loop: segment lengths, edges, alpha/beta",
          "[backend][cpu]") {
  std::uint64_t seed = 700;
  // K = 37: six full 6-row tiles and a 1-row one; N = 29: a full and a partial 16-column tile.
  for (const auto& [k, n] :
       {std::pair<std::int64_t, std::int64_t>{37, 29}, {12, 16}, {5, 3}, {64, 300}}) {
    for (const auto& [alpha, beta] :
         {std::pair{1.0, 1.0}, std::pair{0.5, 0.0}, std::pair{-0.75, 2.0}}) {
      check_kernel(k, n, alpha, beta, seed += 10);
    }
  }
}

TEST_CASE("skinny_grouped_weight_grad on one thread equals the threaded result bit for bit",
          "[backend][cpu]") {
  // 64 x 300 over 97 rows is past the size at which the kernel splits the rows over threads.
  Problem threaded = make_problem(64, 300, false, 900);
  Problem serial = make_problem(64, 300, false, 900);
  mm::cpu::skinny_grouped_weight_grad(
      threaded.w.view, threaded.a.cview(), threaded.b.cview(), threaded.offsets, 0.5, 1.0);
#if defined(_OPENMP)
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  mm::cpu::skinny_grouped_weight_grad(
      serial.w.view, serial.a.cview(), serial.b.cview(), serial.offsets, 0.5, 1.0);
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#endif
  for (std::int64_t i = 0; i < threaded.w.view.rows; ++i) {
    for (std::int64_t j = 0; j < threaded.w.view.cols; ++j) {
      REQUIRE(threaded.w.view(i, j) == serial.w.view(i, j));
    }
  }
}

namespace {

// CpuBackend::grouped_gemm_weight_grad with short and long segments in one call: every block
// against the double loop.
template <class B>
void check_backend(B& b, const std::string& what) {
  for (const auto& [alpha, beta] : {std::pair{1.0, 1.0}, std::pair{0.25, 0.0}}) {
    Problem p = make_problem(37, 45, false, 1000);
    b.grouped_gemm_weight_grad(p.w.view, p.a.cview(), p.b.cview(), p.offsets, alpha, beta);
    const std::int64_t block = p.block();
    for (std::int64_t e = 0; e < p.experts(); ++e) {
      const std::int64_t begin = p.offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = p.offsets[static_cast<std::size_t>(e + 1)] - begin;
      require_segment(p.w.cview().row_block(e * block, block),
                      p.w0().row_block(e * block, block),
                      p.a.cview().row_block(begin, count),
                      p.b.cview().row_block(begin, count),
                      alpha,
                      beta,
                      what + " segment of " + std::to_string(count));
    }
  }
}

}  // namespace

TEST_CASE("CpuBackend::grouped_gemm_weight_grad mixes short and provider segments",
          "[backend][cpu]") {
  SECTION("default provider") {
    mm::CpuBackend<float> b;
    check_backend(b, "default");
  }
  SECTION("Eigen provider") {
    mm::CpuBackend<float, mm::cpu::EigenGemm> b;
    check_backend(b, "eigen");
  }
}

TEST_CASE("skinny_grouped_weight_grad rejects bad shapes, naming the argument, before writing",
          "[backend][cpu]") {
  Problem p = make_problem(8, 10, false, 1100);
  const auto w = p.w.view;
  const auto a = p.a.cview();
  const auto b = p.b.cview();
  using mm::cpu::skinny_grouped_weight_grad;
  REQUIRE_THROWS_WITH(skinny_grouped_weight_grad(w.row_block(0, w.rows - 1), a, b, p.offsets, 1, 1),
                      Catch::Contains("[skinny_grouped_weight_grad] w:") &&
                          Catch::Contains("divisible by the 9 experts"));
  REQUIRE_THROWS_WITH(skinny_grouped_weight_grad(w, a.col_block(0, 7), b, p.offsets, 1, 1),
                      Catch::Contains("[skinny_grouped_weight_grad] a:"));
  REQUIRE_THROWS_WITH(skinny_grouped_weight_grad(w, a, b.col_block(0, 9), p.offsets, 1, 1),
                      Catch::Contains("[skinny_grouped_weight_grad] b:"));
  std::vector<std::int64_t> past = p.offsets;
  past.back() = a.rows + 1;
  REQUIRE_THROWS_AS(skinny_grouped_weight_grad(w, a, b, past, 1, 1), mm::Error);
  std::vector<std::int64_t> falling = p.offsets;
  falling[3] = falling[2] - 1;
  REQUIRE_THROWS_AS(skinny_grouped_weight_grad(w, a, b, falling, 1, 1), mm::Error);
  for (std::int64_t i = 0; i < w.rows; ++i) {
    for (std::int64_t j = 0; j < w.cols; ++j) {
      REQUIRE(w(i, j) == p.before(i, j));
    }
  }
}

// test/backend/cpu/skinny_gemm_transposed_test.cpp
//
// A few rows times a transposed weight against a double loop: segments of 1 to
// skinny_transposed_max_rows rows (empty ones, and one longer left to the caller), row counts
// and K not multiples of the 3 x 3 tile, N past one 512-column slice and not a multiple of the
// vector width, strided views, alpha/beta with beta = 0 over NaN, on one thread and on several;
// through CpuBackend::grouped_gemm (W transposed) with short and long segments in one call; bad
// shapes are rejected, naming the argument, before anything is written.
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
#include <mmsparse/backend/cpu/skinny_gemm_transposed.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mm = mmsparse;

namespace {

using mm::gemm_checks::Padded;
using mm::gemm_checks::random_padded;

// c against alpha a w^T + beta c0 in double, within the float accumulation bound (n + 8) u of
// sum |alpha a w| + |beta c0|.
void require_segment(mm::View<const float> c,
                     mm::View<const float> c0,
                     mm::View<const float> a,
                     mm::View<const float> w,
                     double alpha,
                     double beta,
                     const std::string& what) {
  const double tol = static_cast<double>(a.cols + 8) * 1.2e-7;
  for (std::int64_t r = 0; r < c.rows; ++r) {
    for (std::int64_t i = 0; i < c.cols; ++i) {
      double s = 0.0;
      double abs = 0.0;
      for (std::int64_t j = 0; j < a.cols; ++j) {
        const double p = static_cast<double>(a(r, j)) * static_cast<double>(w(i, j));
        s += p;
        abs += std::fabs(p);
      }
      const double old = beta == 0.0 ? 0.0 : beta * static_cast<double>(c0(r, i));
      const double want = alpha * s + old;
      const double bound = std::fabs(alpha) * abs + std::fabs(old);
      INFO(what << " at (" << r << ", " << i << "): got " << c(r, i) << ", want " << want);
      REQUIRE(std::fabs(static_cast<double>(c(r, i)) - want) <= tol * bound + 1e-30);
    }
  }
}

bool same(float x, float y) {
  return (std::isnan(x) && std::isnan(y)) || x == y;
}

struct Problem {
  std::vector<std::int64_t> offsets;
  Padded<float> a, w, c;
  mm::Tensor<float> before;  // c's storage before the call
  [[nodiscard]] std::int64_t experts() const {
    return static_cast<std::int64_t>(offsets.size()) - 1;
  }
  [[nodiscard]] std::int64_t block() const {
    return w.view.rows / experts();
  }
  [[nodiscard]] mm::View<const float> c0() const {
    return {before.data(), c.view.rows, c.view.cols, before.cols()};
  }
};

// Segments 0, 1, 2, 4, 7 (dot tiles), 15-18, 31, 33, 34 (lane groups, the last one full but
// for a row, and one or two rows beside them), 29, skinny_transposed_max_rows and one row more,
// after a row of no segment; C NaN-filled for beta = 0.
Problem make_problem(std::int64_t k, std::int64_t n, bool nan_c, std::uint64_t seed) {
  const std::int64_t max = mm::cpu::skinny_transposed_max_rows;
  Problem p;
  p.offsets = {1};
  for (const std::int64_t count : {std::int64_t{0},
                                   std::int64_t{1},
                                   std::int64_t{2},
                                   std::int64_t{4},
                                   std::int64_t{7},
                                   std::int64_t{15},
                                   std::int64_t{16},
                                   std::int64_t{17},
                                   std::int64_t{18},
                                   std::int64_t{29},
                                   std::int64_t{31},
                                   std::int64_t{33},
                                   std::int64_t{34},
                                   max,
                                   max + 1}) {
    p.offsets.push_back(p.offsets.back() + count);
  }
  const std::int64_t rows = p.offsets.back() + 1;
  p.a = random_padded<float>(rows, n, 3, seed);
  p.w = random_padded<float>(p.experts() * k, n, 5, seed + 1);
  p.c = random_padded<float>(rows, k, 2, seed + 2);
  if (nan_c) {
    p.c.storage.fill(std::numeric_limits<float>::quiet_NaN());
  }
  p.before = p.c.storage.clone();
  return p;
}

void check_kernel(std::int64_t k, std::int64_t n, double alpha, double beta, std::uint64_t seed) {
  Problem p = make_problem(k, n, beta == 0.0, seed);
  mm::cpu::skinny_grouped_gemm_transposed(
      p.c.view, p.a.cview(), p.w.cview(), p.offsets, alpha, beta);
  const std::int64_t block = p.block();
  std::vector<bool> written(static_cast<std::size_t>(p.c.view.rows), false);
  for (std::int64_t e = 0; e < p.experts(); ++e) {
    const std::int64_t begin = p.offsets[static_cast<std::size_t>(e)];
    const std::int64_t count = p.offsets[static_cast<std::size_t>(e + 1)] - begin;
    if (count == 0 || count > mm::cpu::skinny_transposed_max_rows) {
      continue;
    }
    for (std::int64_t r = begin; r < begin + count; ++r) {
      written[static_cast<std::size_t>(r)] = true;
    }
    require_segment(p.c.cview().row_block(begin, count),
                    p.c0().row_block(begin, count),
                    p.a.cview().row_block(begin, count),
                    p.w.cview().row_block(e * block, block),
                    alpha,
                    beta,
                    "k=" + std::to_string(k) + " n=" + std::to_string(n) +
                        " alpha=" + std::to_string(alpha) + " beta=" + std::to_string(beta) +
                        " segment of " + std::to_string(count));
  }
  // The long segment, the rows outside every segment and the padding are untouched.
  for (std::int64_t r = 0; r < p.c.view.rows; ++r) {
    for (std::int64_t i = 0; i < p.c.storage.cols(); ++i) {
      if (!written[static_cast<std::size_t>(r)] || i >= k) {
        REQUIRE(same(p.c.storage(r, i), p.before(r, i)));
      }
    }
  }
}

}  // namespace

TEST_CASE("skinny_grouped_gemm_transposed matches a double loop: lengths, edges, alpha/beta",
          "[backend][cpu]") {
  std::uint64_t seed = 1300;
  // K = 37: 3-row dot tiles and a 1-row one, 6-row lane tiles and a 1-row one; K = 23: a 5-row
  // lane tile; N = 1100: two full slices and a partial one whose last vector is masked; N = 5:
  // the mask alone.
  for (const auto& [k, n] :
       {std::pair<std::int64_t, std::int64_t>{37, 1100}, {2, 5}, {16, 8}, {50, 300}, {23, 41}}) {
    for (const auto& [alpha, beta] :
         {std::pair{1.0, 0.0}, std::pair{0.5, 1.0}, std::pair{-0.75, 2.0}}) {
      check_kernel(k, n, alpha, beta, seed += 10);
    }
  }
}

TEST_CASE("skinny_grouped_gemm_transposed on one thread equals the threaded result bit for bit",
          "[backend][cpu]") {
  Problem threaded = make_problem(64, 700, false, 1400);
  Problem serial = make_problem(64, 700, false, 1400);
  mm::cpu::skinny_grouped_gemm_transposed(
      threaded.c.view, threaded.a.cview(), threaded.w.cview(), threaded.offsets, 0.5, 1.0);
#if defined(_OPENMP)
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  mm::cpu::skinny_grouped_gemm_transposed(
      serial.c.view, serial.a.cview(), serial.w.cview(), serial.offsets, 0.5, 1.0);
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#endif
  for (std::int64_t r = 0; r < threaded.c.view.rows; ++r) {
    for (std::int64_t i = 0; i < threaded.c.view.cols; ++i) {
      REQUIRE(threaded.c.view(r, i) == serial.c.view(r, i));
    }
  }
}

namespace {

// CpuBackend::grouped_gemm with W transposed, short and long segments in one call.
template <class B>
void check_backend(B& b, const std::string& what) {
  for (const auto& [alpha, beta] : {std::pair{1.0, 0.0}, std::pair{0.25, 1.0}}) {
    Problem p = make_problem(21, 45, false, 1500);
    b.grouped_gemm(p.c.view, p.a.cview(), p.w.cview(), mm::Trans::yes, p.offsets, alpha, beta);
    const std::int64_t block = p.block();
    for (std::int64_t e = 0; e < p.experts(); ++e) {
      const std::int64_t begin = p.offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = p.offsets[static_cast<std::size_t>(e + 1)] - begin;
      require_segment(p.c.cview().row_block(begin, count),
                      p.c0().row_block(begin, count),
                      p.a.cview().row_block(begin, count),
                      p.w.cview().row_block(e * block, block),
                      alpha,
                      beta,
                      what + " segment of " + std::to_string(count));
    }
    for (const std::int64_t r : {std::int64_t{0}, p.c.view.rows - 1}) {
      for (std::int64_t i = 0; i < p.c.view.cols; ++i) {
        REQUIRE(same(p.c.view(r, i), p.before(r, i)));
      }
    }
  }
}

}  // namespace

TEST_CASE("CpuBackend::grouped_gemm with W transposed mixes short and provider segments",
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

TEST_CASE("skinny_grouped_gemm_transposed rejects bad shapes, naming the argument, before writing",
          "[backend][cpu]") {
  Problem p = make_problem(8, 10, false, 1600);
  const auto c = p.c.view;
  const auto a = p.a.cview();
  const auto w = p.w.cview();
  using mm::cpu::skinny_grouped_gemm_transposed;
  REQUIRE_THROWS_WITH(
      skinny_grouped_gemm_transposed(c, a, w.row_block(0, w.rows - 1), p.offsets, 1, 0),
      Catch::Contains("[skinny_grouped_gemm_transposed] w:") &&
          Catch::Contains("divisible by the " + std::to_string(p.experts()) + " experts"));
  REQUIRE_THROWS_WITH(skinny_grouped_gemm_transposed(c, a.col_block(0, 9), w, p.offsets, 1, 0),
                      Catch::Contains("[skinny_grouped_gemm_transposed] a:"));
  REQUIRE_THROWS_WITH(skinny_grouped_gemm_transposed(c.col_block(0, 7), a, w, p.offsets, 1, 0),
                      Catch::Contains("[skinny_grouped_gemm_transposed] c:"));
  std::vector<std::int64_t> past = p.offsets;
  past.back() = a.rows + 1;
  REQUIRE_THROWS_AS(skinny_grouped_gemm_transposed(c, a, w, past, 1, 0), mm::Error);
  for (std::int64_t r = 0; r < c.rows; ++r) {
    for (std::int64_t i = 0; i < c.cols; ++i) {
      REQUIRE(c(r, i) == p.before(r, i));
    }
  }
}

#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>

namespace mm = mmsparse;

namespace {

// Naive C = A op(B) in double.
template <class T>
double naive_entry(const mm::Tensor<T>& a,
                   std::int64_t i,
                   mm::View<const T> w,
                   mm::Trans tw,
                   std::int64_t j,
                   std::int64_t k) {
  double s = 0;
  for (std::int64_t p = 0; p < k; ++p) {
    const double wv = tw == mm::Trans::no ? w(p, j) : w(j, p);
    s += static_cast<double>(a(i, p)) * wv;
  }
  return s;
}

}  // namespace

TEST_CASE("gemm covers every transpose combination, alpha and beta", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(12);
  const std::int64_t m = 7;
  const std::int64_t n = 5;
  const std::int64_t k = 9;
  for (auto ta : {mm::Trans::no, mm::Trans::yes}) {
    for (auto tb : {mm::Trans::no, mm::Trans::yes}) {
      auto a =
          ta == mm::Trans::no ? rng.normal_tensor<double>(m, k) : rng.normal_tensor<double>(k, m);
      auto bb =
          tb == mm::Trans::no ? rng.normal_tensor<double>(k, n) : rng.normal_tensor<double>(n, k);
      auto c = rng.normal_tensor<double>(m, n);
      auto c0 = c.clone();
      b.gemm(c.view(), mm::View<const double>(a), ta, mm::View<const double>(bb), tb, 0.5, -2.0);
      for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (std::int64_t p = 0; p < k; ++p) {
            s += (ta == mm::Trans::no ? a(i, p) : a(p, i)) *
                 (tb == mm::Trans::no ? bb(p, j) : bb(j, p));
          }
          REQUIRE(c(i, j) == Approx(0.5 * s - 2.0 * c0(i, j)).epsilon(1e-12));
        }
      }
    }
  }
}

TEST_CASE("grouped_gemm multiplies each segment by its own weight block", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(13);
  const std::int64_t k = 6;
  const std::int64_t n = 4;
  const std::vector<std::int64_t> offsets = {0, 3, 3, 10, 11};  // expert 1 gets no rows
  const std::int64_t experts = 4;
  auto a = rng.normal_tensor<double>(11, k);
  for (auto tw : {mm::Trans::no, mm::Trans::yes}) {
    auto w = tw == mm::Trans::no ? rng.normal_tensor<double>(experts * k, n)
                                 : rng.normal_tensor<double>(experts * n, k);
    mm::Tensor<double> c(11, n);
    b.grouped_gemm(c.view(), mm::View<const double>(a), mm::View<const double>(w), tw, offsets);
    const std::int64_t block = w.rows() / experts;
    for (std::int64_t e = 0; e < experts; ++e) {
      mm::View<const double> we = mm::View<const double>(w).row_block(e * block, block);
      for (std::int64_t i = offsets[e]; i < offsets[e + 1]; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          REQUIRE(c(i, j) == Approx(naive_entry(a, i, we, tw, j, k)).epsilon(1e-12));
        }
      }
    }
  }
}

TEST_CASE("grouped_gemm_weight_grad accumulates A_e^T B_e per block", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(14);
  const std::vector<std::int64_t> offsets = {0, 4, 4, 9};
  auto a = rng.normal_tensor<double>(9, 3);
  auto g = rng.normal_tensor<double>(9, 2);
  auto w = rng.normal_tensor<double>(3 * 3, 2);
  auto w0 = w.clone();
  b.grouped_gemm_weight_grad(
      w.view(), mm::View<const double>(a), mm::View<const double>(g), offsets, 1.0, 1.0);
  for (std::int64_t e = 0; e < 3; ++e) {
    for (std::int64_t p = 0; p < 3; ++p) {
      for (std::int64_t j = 0; j < 2; ++j) {
        double s = w0(e * 3 + p, j);
        for (std::int64_t i = offsets[e]; i < offsets[e + 1]; ++i) {
          s += a(i, p) * g(i, j);
        }
        REQUIRE(w(e * 3 + p, j) == Approx(s).epsilon(1e-12));
      }
    }
  }
}

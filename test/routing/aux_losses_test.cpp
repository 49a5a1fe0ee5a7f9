// test/routing/aux_losses_test.cpp
//
// Balance and z losses against naive double loops, their gradients against central finite
// differences (through the softmax for the z-loss), the f_i convention, and the empty cases.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "routing/naive_router.hpp"
#include <mmsparse/routing/aux_losses.hpp>

using namespace mmsparse;

TEST_CASE("aux_losses: f_i = choices of expert i / (N k)", "[routing][cpu]") {
  const std::vector<std::int64_t> counts{3, 0, 5, 4};
  const auto f = balance_fractions(counts, 6, 2);
  REQUIRE(f == std::vector<double>{3.0 / 12, 0.0, 5.0 / 12, 4.0 / 12});
  double s = 0.0;
  for (double v : f) {
    s += v;
  }
  REQUIRE(s == Approx(1.0));
  REQUIRE(balance_fractions(counts, 0, 2) == std::vector<double>(4, 0.0));
}

TEMPLATE_TEST_CASE("aux_losses: values equal the naive formulas", "[routing][cpu]", float, double) {
  using W = TestType;
  const double tol = std::is_same_v<W, float> ? 1e-5 : 1e-12;
  CpuBackend<W> b;
  const auto z = naive::random_inputs<W>(13, 5, 1, 1, 4).x;  // logits [13, 5]
  Tensor<W> p(13, 5);
  Tensor<W> lse(13, 1);
  b.softmax_rows(p.view(), View<const W>(z.view()));
  b.logsumexp_rows(lse.span(), View<const W>(z.view()));
  const std::vector<double> f{0.1, 0.3, 0.2, 0.0, 0.4};
  double bal = 0.0;
  double zz = 0.0;
  naive::Matrix zd(13, std::vector<double>(5));  // the logits, in double
  for (std::int64_t t = 0; t < 13; ++t) {
    for (std::int64_t j = 0; j < 5; ++j) {
      zd[static_cast<std::size_t>(t)][static_cast<std::size_t>(j)] = static_cast<double>(z(t, j));
    }
  }
  const auto pd = naive::softmax(zd);
  for (std::size_t i = 0; i < 5; ++i) {
    double mean = 0.0;
    for (std::size_t t = 0; t < 13; ++t) {
      mean += pd[t][i] / 13.0;
    }
    bal += f[i] * mean;
  }
  for (const auto& row : zd) {
    zz += naive::logsumexp(row) * naive::logsumexp(row) / 13.0;
  }
  REQUIRE(static_cast<double>(aux_loss_balance(b, View<const W>(p.view()), f, 0.01)) ==
          Approx(0.01 * 5 * bal).epsilon(tol));
  REQUIRE(static_cast<double>(aux_loss_z(b, Span<const W>(lse.span()), 0.001)) ==
          Approx(0.001 * zz).epsilon(tol));
  REQUIRE(aux_loss_balance(b, View<const W>(p.view()), f, 0.0) == W{0});
  REQUIRE(aux_loss_z(b, Span<const W>(lse.span()).subspan(0, 0), 0.001) == W{0});
}

TEST_CASE("aux_losses: gradients equal central finite differences", "[routing][cpu]") {
  CpuBackend<double> b;
  const std::int64_t n = 7;
  const std::int64_t e = 4;
  auto z = naive::random_inputs<double>(n, e, 1, 1, 8).x;
  const std::vector<double> f{0.25, 0.5, 0.0, 0.25};
  const double coef = 0.3;
  const double zcoef = 0.2;
  const double scale = 1.7;
  // L(z) = scale * (balance(softmax(z)) + zloss(z))
  auto loss = [&](const Tensor<double>& logits) {
    Tensor<double> p(n, e);
    Tensor<double> lse(n, 1);
    b.softmax_rows(p.view(), View<const double>(logits.view()));
    b.logsumexp_rows(lse.span(), View<const double>(logits.view()));
    return scale * (aux_loss_balance(b, View<const double>(p.view()), f, coef) +
                    aux_loss_z(b, Span<const double>(lse.span()), zcoef));
  };
  Tensor<double> p(n, e);
  Tensor<double> lse(n, 1);
  b.softmax_rows(p.view(), View<const double>(z.view()));
  b.logsumexp_rows(lse.span(), View<const double>(z.view()));
  Tensor<double> dp(n, e);
  dp.fill(0.0);
  aux_loss_balance_backward(b, dp.view(), f, coef, scale);
  for (std::int64_t t = 0; t < n; ++t) {
    for (std::int64_t i = 0; i < e; ++i) {
      REQUIRE(dp(t, i) == Approx(scale * coef * e * f[static_cast<std::size_t>(i)] / n));
    }
  }
  Tensor<double> dz(n, e);
  b.softmax_rows_backward(dz.view(), View<const double>(dp.view()), View<const double>(p.view()));
  aux_loss_z_backward(
      b, dz.view(), View<const double>(p.view()), Span<const double>(lse.span()), zcoef, scale);
  const double h = 1e-6;
  for (std::int64_t i = 0; i < z.size(); ++i) {
    const double v = z.data()[i];
    z.data()[i] = v + h;
    const double lp = loss(z);
    z.data()[i] = v - h;
    const double lm = loss(z);
    z.data()[i] = v;
    REQUIRE(dz.data()[i] == Approx((lp - lm) / (2 * h)).epsilon(1e-6).margin(1e-9));
  }
  // scale 0 or coef 0: nothing added
  Tensor<double> untouched(n, e);
  untouched.fill(0.5);
  aux_loss_balance_backward(b, untouched.view(), f, coef, 0.0);
  aux_loss_z_backward(b,
                      untouched.view(),
                      View<const double>(p.view()),
                      Span<const double>(lse.span()),
                      0.0,
                      scale);
  for (std::int64_t i = 0; i < untouched.size(); ++i) {
    REQUIRE(untouched.data()[i] == 0.5);
  }
}

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mm = mmsparse;

namespace {

mm::Span<const std::int32_t> span_of(const std::vector<std::int32_t>& v) {
  return {v.data(), static_cast<std::int64_t>(v.size())};
}

}  // namespace

TEST_CASE("exp_approx is within 2 ulp of exp over the float range", "[backend][cpu]") {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 0.00137) {
    const auto xf = static_cast<float>(x);
    const double e = std::exp(static_cast<double>(xf));
    worst = std::max(worst, std::fabs(mm::cpu::exp_approx(xf) - e) / e);
  }
  INFO("max relative error " << worst);
  REQUIRE(worst < 2.5e-7);  // 2 ulp of float
  REQUIRE(mm::cpu::exp_approx(0.0f) == 1.0f);
  REQUIRE(mm::cpu::exp_approx(-0.0f) == 1.0f);
  // Below the clamp: a tiny normal number, never garbage, inf or NaN.
  for (const float x : {-87.3f, -100.0f, -1e30f, -std::numeric_limits<float>::infinity()}) {
    const float e = mm::cpu::exp_approx(x);
    REQUIRE(e > 0.0f);
    REQUIRE(e < 2e-38f);
  }
  REQUIRE(std::isfinite(mm::cpu::exp_approx(1e30f)));
  REQUIRE(mm::cpu::exp_approx(1.0) == std::exp(1.0));  // double: std::exp itself
}

TEST_CASE("sin_cos is within a few double ulp of std::sin and std::cos", "[backend][cpu]") {
  // Angles of both signs from 1e-8 to past sin_cos_max_angle (where it hands over to std), next
  // to multiples of pi/2, and the positions x frequencies RoPE asks for. The angles are stored
  // first: an expression passed to both functions could be contracted (FMA) in one and not the
  // other.
  mm::Rng rng(5);
  std::vector<double> angles;
  for (int i = 0; i < 200000; ++i) {
    angles.push_back((rng.uniform() < 0.5 ? -1.0 : 1.0) *
                     std::pow(10.0, -8.0 + 14.5 * rng.uniform()));
  }
  for (int k = -40; k <= 40; ++k) {
    for (const double off : {-1e-9, 0.0, 1e-9, 0.7853981, -0.7853981}) {
      angles.push_back(k * 1.5707963267948966 + off);
    }
  }
  for (std::int32_t pos = 0; pos < 70000; pos += 7) {
    for (int i = 0; i < 32; ++i) {
      angles.push_back(pos * std::pow(10000.0, -i / 32.0));
    }
  }
  double worst = 0;
  double worst_at = 0;
  for (const double a : angles) {
    double s = 0;
    double c = 0;
    mm::cpu::sin_cos(a, s, c);
    const double e = std::max(std::fabs(s - std::sin(a)), std::fabs(c - std::cos(a)));
    if (e > worst) {
      worst = e;
      worst_at = a;
    }
  }
  INFO("max absolute error " << worst << " at " << worst_at);
  REQUIRE(worst < 5e-16);
  double s = 0;
  double c = 0;
  mm::cpu::sin_cos(0.0, s, c);
  REQUIRE((s == 0.0 && c == 1.0));
  mm::cpu::sin_cos(3e6, s, c);  // past the reduction's range: std itself
  REQUIRE((s == std::sin(3e6) && c == std::cos(3e6)));
}

TEST_CASE("masked_softmax_rows and its backward match the definitions", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(1);
  const std::int64_t rows = 6;
  const std::int64_t cols = 9;
  auto x = rng.normal_tensor<double>(rows, cols, 3.0);
  auto dy = rng.normal_tensor<double>(rows, cols);
  const std::vector<std::int32_t> limit = {1, 4, 9, 0, 20, 6};  // 0: an empty row; 20: all
  const double scale = 0.7;
  mm::Tensor<double> y(rows, cols);
  y.fill(5.0);
  b.masked_softmax_rows(y.view(), mm::View<const double>(x.view()), span_of(limit), scale);
  mm::Tensor<double> dx(rows, cols);
  dx.fill(5.0);
  b.masked_softmax_rows_backward(dx.view(),
                                 mm::View<const double>(y.view()),
                                 mm::View<const double>(dy.view()),
                                 span_of(limit),
                                 scale);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t n = std::min<std::int64_t>(limit[static_cast<std::size_t>(r)], cols);
    double z = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      z += std::exp(scale * x(r, j));
    }
    // dL/dx_j for L = sum_k dy_k y_k, by central differences of the definition.
    auto loss = [&](std::int64_t jj, double h) {
      double zz = 0;
      for (std::int64_t j = 0; j < n; ++j) {
        zz += std::exp(scale * (x(r, j) + (j == jj ? h : 0.0)));
      }
      double l = 0;
      for (std::int64_t j = 0; j < n; ++j) {
        l += dy(r, j) * std::exp(scale * (x(r, j) + (j == jj ? h : 0.0))) / zz;
      }
      return l;
    };
    for (std::int64_t j = 0; j < cols; ++j) {
      if (j < n) {
        REQUIRE(y(r, j) == Approx(std::exp(scale * x(r, j)) / z).epsilon(1e-13));
        const double fd = (loss(j, 1e-6) - loss(j, -1e-6)) / 2e-6;
        REQUIRE(dx(r, j) == Approx(fd).margin(1e-8));
      } else {
        REQUIRE(y(r, j) == 0.0);  // masked (and all of an empty row)
        REQUIRE(dx(r, j) == 0.0);
      }
    }
  }
  // In place, and float with the vectorised exp close to double.
  auto xi = x.clone();
  b.masked_softmax_rows(xi.view(), mm::View<const double>(xi.view()), span_of(limit), scale);
  for (std::int64_t i = 0; i < y.size(); ++i) {
    REQUIRE(xi.data()[i] == y.data()[i]);
  }
  mm::CpuBackend<float> bf;
  mm::Tensor<float> xf(rows, cols), yf(rows, cols);
  for (std::int64_t i = 0; i < x.size(); ++i) {
    xf.data()[i] = static_cast<float>(x.data()[i]);
  }
  bf.masked_softmax_rows(yf.view(), mm::View<const float>(xf.view()), span_of(limit), scale);
  for (std::int64_t i = 0; i < y.size(); ++i) {
    REQUIRE(yf.data()[i] == Approx(y.data()[i]).margin(1e-6));
  }
}

TEST_CASE("rope_rotate and its inverse are orthogonal rotations", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(2);
  auto x = rng.normal_tensor<double>(5, 12);
  const std::vector<std::int32_t> pos = {0, 3, 17, 999, 40000};
  mm::Tensor<double> y(5, 12), back(5, 12);
  b.rope(y.view(), mm::View<const double>(x.view()), span_of(pos), 4, 10000.0);
  b.rope_backward(back.view(), mm::View<const double>(y.view()), span_of(pos), 4, 10000.0);
  for (std::int64_t r = 0; r < 5; ++r) {
    for (std::int64_t p = 0; p < 6; ++p) {  // every pair keeps its length
      const double a = std::hypot(x(r, 2 * p), x(r, 2 * p + 1));
      REQUIRE(std::hypot(y(r, 2 * p), y(r, 2 * p + 1)) == Approx(a).epsilon(1e-13));
    }
    for (std::int64_t j = 0; j < 12; ++j) {
      REQUIRE(back(r, j) == Approx(x(r, j)).margin(1e-13));
    }
  }
  // The first pair of each head turns by exactly the position (theta^0 = 1).
  REQUIRE(y(2, 4) == Approx(std::cos(17.0) * x(2, 4) - std::sin(17.0) * x(2, 5)).margin(1e-13));
}

#include <cmath>
#include <cstdint>
#include <iterator>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>

namespace mm = mmsparse;

namespace {
double sig(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}
}  // namespace

TEST_CASE("sigmoid and softmax_rows match the textbook formulas", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(9);
  auto x = rng.normal_tensor<double>(13, 6, 4.0);
  x(0, 0) = -800.0;  // no overflow on either side
  x(0, 1) = 800.0;
  mm::Tensor<double> s(13, 6);
  mm::Tensor<double> p(13, 6);
  b.sigmoid(s.view(), mm::View<const double>(x));
  b.softmax_rows(p.view(), mm::View<const double>(x));
  REQUIRE(s(0, 0) == Approx(0.0).margin(1e-300));
  REQUIRE(s(0, 1) == 1.0);
  for (std::int64_t i = 1; i < 13; ++i) {
    double z = 0;
    for (std::int64_t j = 0; j < 6; ++j) {
      z += std::exp(x(i, j));
    }
    double total = 0;
    for (std::int64_t j = 0; j < 6; ++j) {
      REQUIRE(s(i, j) == Approx(sig(x(i, j))).epsilon(1e-14));
      REQUIRE(p(i, j) == Approx(std::exp(x(i, j)) / z).epsilon(1e-13));
      total += p(i, j);
    }
    REQUIRE(total == Approx(1.0).epsilon(1e-14));
  }
  REQUIRE(std::isfinite(p(0, 0)));
}

TEST_CASE("swiglu and its backward match finite differences", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(10);
  auto a = rng.normal_tensor<double>(5, 7, 2.0);
  auto g = rng.normal_tensor<double>(5, 7);
  auto dh = rng.normal_tensor<double>(5, 7);
  mm::Tensor<double> h(5, 7);
  b.swiglu(h.view(), mm::View<const double>(a), mm::View<const double>(g));
  mm::Tensor<double> da(5, 7);
  mm::Tensor<double> dg(5, 7);
  b.swiglu_backward(da.view(),
                    dg.view(),
                    mm::View<const double>(dh),
                    mm::View<const double>(a),
                    mm::View<const double>(g));
  const double eps = 1e-6;
  for (std::int64_t i = 0; i < 5; ++i) {
    for (std::int64_t j = 0; j < 7; ++j) {
      auto f = [&](double av, double gv) { return av * sig(av) * gv; };
      REQUIRE(h(i, j) == Approx(f(a(i, j), g(i, j))).epsilon(1e-14));
      const double num_a = (f(a(i, j) + eps, g(i, j)) - f(a(i, j) - eps, g(i, j))) / (2 * eps);
      const double num_g = (f(a(i, j), g(i, j) + eps) - f(a(i, j), g(i, j) - eps)) / (2 * eps);
      REQUIRE(da(i, j) == Approx(dh(i, j) * num_a).epsilon(1e-7));
      REQUIRE(dg(i, j) == Approx(dh(i, j) * num_g).epsilon(1e-7));
    }
  }
}

TEST_CASE("float swiglu and its backward (eight lanes at a time) match a double computation",
          "[backend][cpu]") {
  // Rows of 37 (four vectors and a scalar tail) in strided views; a from -100 to 100, with the
  // exp clamp (+-87, 88), zero and NaN among them.
  mm::CpuBackend<float> b;
  mm::Rng rng(12);
  const std::int64_t rows = 9;
  const std::int64_t cols = 37;
  const std::int64_t stride = 41;
  auto a_store = rng.normal_tensor<float>(rows, stride, 6.0);
  auto g_store = rng.normal_tensor<float>(rows, stride);
  auto d_store = rng.normal_tensor<float>(rows, stride);
  const float specials[] = {-100.0f,
                            -88.5f,
                            -87.5f,
                            -86.9f,
                            -20.0f,
                            -1.2785f,
                            -1e-3f,
                            0.0f,
                            1e-3f,
                            15.0f,
                            86.9f,
                            87.5f,
                            88.5f,
                            100.0f};
  for (std::size_t k = 0; k < std::size(specials); ++k) {
    a_store(0, static_cast<std::int64_t>(k)) = specials[k];
  }
  a_store(1, 3) = std::nanf("");
  const mm::View<const float> a(a_store.data(), rows, cols, stride);
  const mm::View<const float> g(g_store.data(), rows, cols, stride);
  const mm::View<const float> dh(d_store.data(), rows, cols, stride);
  mm::Tensor<float> h_store(rows, stride);
  mm::Tensor<float> da_store(rows, stride);
  mm::Tensor<float> dg_store(rows, stride);
  h_store.fill(-7.0f);
  b.swiglu(mm::View<float>(h_store.data(), rows, cols, stride), a, g);
  b.swiglu_backward(mm::View<float>(da_store.data(), rows, cols, stride),
                    mm::View<float>(dg_store.data(), rows, cols, stride),
                    dh,
                    a,
                    g);
  for (std::int64_t i = 0; i < rows; ++i) {
    REQUIRE(h_store(i, cols) == -7.0f);  // nothing written past the view
    for (std::int64_t j = 0; j < cols; ++j) {
      const double x = a(i, j);
      const double gv = g(i, j);
      const double d = dh(i, j);
      INFO("a = " << x << " at (" << i << ", " << j << ")");
      if (std::isnan(x)) {
        REQUIRE(std::isnan(h_store(i, j)));
        REQUIRE(std::isnan(da_store(i, j)));
        REQUIRE(std::isnan(dg_store(i, j)));
        continue;
      }
      const double s = sig(x);
      // Each within a few float ulp of the scale of its terms: 1 + x (1 - s) may cancel, and
      // s's own rounding near 1 comes back multiplied by x.
      const double tol = 4e-7;
      REQUIRE(std::fabs(h_store(i, j) - x * s * gv) <= tol * std::fabs(x * s * gv) + 1e-30);
      REQUIRE(std::fabs(dg_store(i, j) - d * x * s) <= tol * std::fabs(d * x * s) + 1e-30);
      const double da = d * gv * s * (1.0 + x * (1.0 - s));
      const double scale = std::fabs(d * gv * s) * (1.0 + std::fabs(x));
      REQUIRE(std::fabs(da_store(i, j) - da) <= tol * scale + 1e-30);
    }
  }
}

TEST_CASE("fill, copy with conversion, axpy, scale_rows", "[backend][cpu]") {
  mm::CpuBackend<float> b;
  mm::Rng rng(11);
  auto x = rng.normal_tensor<float>(4, 3);
  auto y = rng.normal_tensor<float>(4, 3);
  auto y0 = y.clone();
  b.axpy(y.view(), mm::View<const float>(x), -0.5);
  for (std::int64_t i = 0; i < y.size(); ++i) {
    REQUIRE(y.data()[i] == Approx(y0.data()[i] - 0.5f * x.data()[i]));
  }
  float w[4] = {1.0f, -2.0f, 0.0f, 0.5f};
  b.scale_rows(y0.view(), mm::Span<const float>(w, 4));
  REQUIRE(y0(1, 2) == Approx(-2.0f * y(1, 2) - x(1, 2)));  // y0 was y + 0.5 x
  REQUIRE(y0(2, 1) == 0.0f);
  mm::Tensor<mm::bf16> h(4, 3);
  b.copy(h.view(), mm::View<const float>(x));
  mm::Tensor<double> back(4, 3);
  b.copy(back.view(), mm::View<const mm::bf16>(h));
  for (std::int64_t i = 0; i < x.size(); ++i) {
    REQUIRE(back.data()[i] == Approx(x.data()[i]).epsilon(1.0 / 256));
  }
  b.fill(x.view(), 2.5f);
  REQUIRE(x(3, 2) == 2.5f);
}

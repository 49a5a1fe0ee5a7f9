// Linear layer: forward against a naive loop (with and without bias), backward accumulation
// and skipped gradients, and argument errors.
#include <cstdint>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/linear.hpp>

using namespace mmsparse;

TEST_CASE("linear: forward and backward against naive loops", "[layers][cpu]") {
  CpuBackend<double> b;
  const std::int64_t n = 5, in = 4, out = 3;
  Rng rng(21);
  Tensor<double> x = rng.normal_tensor<double>(n, in);
  Tensor<double> w = rng.normal_tensor<double>(in, out);
  Tensor<double> bias = rng.normal_tensor<double>(1, out);
  Tensor<double> dy = rng.normal_tensor<double>(n, out);
  Tensor<double> y(n, out);
  linear_forward(b,
                 y.view(),
                 View<const double>(x.view()),
                 View<const double>(w.view()),
                 View<const double>(bias.view()));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < out; ++j) {
      double s = bias(0, j);
      for (std::int64_t k = 0; k < in; ++k) {
        s += x(i, k) * w(k, j);
      }
      CHECK(y(i, j) == Approx(s).epsilon(1e-13));
    }
  }
  Tensor<double> dx(n, in), dw(in, out), db(1, out);
  dx.fill(1.0);
  dw.fill(1.0);
  db.fill(1.0);
  linear_backward(b,
                  dx.view(),
                  dw.view(),
                  db.view(),
                  View<const double>(dy.view()),
                  View<const double>(x.view()),
                  View<const double>(w.view()));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < in; ++k) {
      double s = 1.0;
      for (std::int64_t j = 0; j < out; ++j) {
        s += dy(i, j) * w(k, j);
      }
      CHECK(dx(i, k) == Approx(s).epsilon(1e-13));
    }
  }
  for (std::int64_t j = 0; j < out; ++j) {
    double sb = 1.0;
    for (std::int64_t i = 0; i < n; ++i) {
      sb += dy(i, j);
    }
    CHECK(db(0, j) == Approx(sb).epsilon(1e-13));
    for (std::int64_t k = 0; k < in; ++k) {
      double s = 1.0;
      for (std::int64_t i = 0; i < n; ++i) {
        s += x(i, k) * dy(i, j);
      }
      CHECK(dw(k, j) == Approx(s).epsilon(1e-13));
    }
  }
  // Empty gradient views are skipped (a frozen weight, a constant input).
  REQUIRE_NOTHROW(linear_backward(b,
                                  View<double>{},
                                  dw.view(),
                                  View<double>{},
                                  View<const double>(dy.view()),
                                  View<const double>(x.view()),
                                  View<const double>(w.view())));
}

TEST_CASE("linear: argument errors name the argument", "[layers][cpu]") {
  CpuBackend<float> b;
  Tensor<float> x(4, 3), w(2, 5), y(4, 5), bias(1, 4);
  REQUIRE_THROWS_WITH(
      linear_forward(b, y.view(), View<const float>(x.view()), View<const float>(w.view())),
      Catch::Contains("[linear_forward] w"));
  Tensor<float> w2(3, 5);
  REQUIRE_THROWS_WITH(linear_forward(b,
                                     y.view(),
                                     View<const float>(x.view()),
                                     View<const float>(w2.view()),
                                     View<const float>(bias.view())),
                      Catch::Contains("[linear_forward] bias: expected [1, 5], got [1, 4]"));
  Tensor<float> dy(4, 4);
  REQUIRE_THROWS_WITH(linear_backward(b,
                                      x.view(),
                                      w2.view(),
                                      View<float>{},
                                      View<const float>(dy.view()),
                                      View<const float>(x.view()),
                                      View<const float>(w2.view())),
                      Catch::Contains("[linear_backward] dy: expected [4, 5], got [4, 4]"));
}

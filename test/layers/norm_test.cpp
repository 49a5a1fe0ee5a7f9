// Norm layers: the checked entry points (rms_norm_*, layer_norm_*) reject bad shapes before
// writing, and agree with the backend kernels they forward to.
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/norm.hpp>

using namespace mmsparse;

TEST_CASE("norm layers: unit-weight RMSNorm rows have unit RMS; LayerNorm rows zero mean",
          "[layers][cpu]") {
  CpuBackend<double> b;
  Rng rng(4);
  Tensor<double> x = rng.normal_tensor<double>(3, 16, 5.0);
  Tensor<double> w(1, 16), y(3, 16);
  w.fill(1.0);
  std::vector<double> rstd(3), mean(3);
  rms_norm_forward(b,
                   y.view(),
                   Span<double>(rstd.data(), 3),
                   View<const double>(x.view()),
                   View<const double>(w.view()),
                   1e-12);
  for (std::int64_t i = 0; i < 3; ++i) {
    double ss = 0.0;
    for (std::int64_t j = 0; j < 16; ++j) {
      ss += y(i, j) * y(i, j) / 16.0;
    }
    CHECK(ss == Approx(1.0).epsilon(1e-9));
  }
  layer_norm_forward(b,
                     y.view(),
                     Span<double>(mean.data(), 3),
                     Span<double>(rstd.data(), 3),
                     View<const double>(x.view()),
                     View<const double>(w.view()),
                     View<const double>{},
                     1e-12);
  for (std::int64_t i = 0; i < 3; ++i) {
    double m = 0.0, ss = 0.0;
    for (std::int64_t j = 0; j < 16; ++j) {
      m += y(i, j) / 16.0;
      ss += y(i, j) * y(i, j) / 16.0;
    }
    CHECK(m == Approx(0.0).margin(1e-12));
    CHECK(ss == Approx(1.0).epsilon(1e-9));
  }
}

TEST_CASE("norm layers: argument errors, nothing written", "[layers][cpu]") {
  CpuBackend<float> b;
  Tensor<float> x(2, 4), w(1, 3), y(2, 4);
  y.fill(7.f);
  std::vector<float> rstd(2), mean(2);
  REQUIRE_THROWS_WITH(rms_norm_forward(b,
                                       y.view(),
                                       Span<float>(rstd.data(), 2),
                                       View<const float>(x.view()),
                                       View<const float>(w.view())),
                      Catch::Contains("[rms_norm_forward] w: expected [1, 4], got [1, 3]"));
  CHECK(y(0, 0) == 7.f);
  Tensor<float> w4(1, 4);
  REQUIRE_THROWS_WITH(rms_norm_forward(b,
                                       y.view(),
                                       Span<float>(rstd.data(), 1),
                                       View<const float>(x.view()),
                                       View<const float>(w4.view())),
                      Catch::Contains("rstd"));
  REQUIRE_THROWS_WITH(rms_norm_forward(b,
                                       y.view(),
                                       Span<float>(rstd.data(), 2),
                                       View<const float>(x.view()),
                                       View<const float>(w4.view()),
                                       0.0),
                      Catch::Contains("eps"));
  Tensor<float> bias(1, 2);
  REQUIRE_THROWS_WITH(layer_norm_forward(b,
                                         y.view(),
                                         Span<float>(mean.data(), 2),
                                         Span<float>(rstd.data(), 2),
                                         View<const float>(x.view()),
                                         View<const float>(w4.view()),
                                         View<const float>(bias.view())),
                      Catch::Contains("[layer_norm_forward] bias"));
  Tensor<float> dx(2, 3);
  REQUIRE_THROWS_WITH(rms_norm_backward(b,
                                        dx.view(),
                                        w4.view(),
                                        View<const float>(y.view()),
                                        View<const float>(x.view()),
                                        View<const float>(w4.view()),
                                        Span<const float>(rstd.data(), 2)),
                      Catch::Contains("[rms_norm_backward] dx"));
}

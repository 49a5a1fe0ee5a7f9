// RMSNorm and LayerNorm kernels: forward against a naive double loop (float within rounding),
// backward against central differences in double, and accumulation (+=) into dx, dw, dbias.
#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/testing/gradcheck.hpp>

using namespace mmsparse;

namespace {
constexpr std::int64_t n = 6, d = 10;
constexpr double eps = 1e-5;

// Naive oracle; layer = false: RMSNorm.
double norm_ref(const Tensor<double>& x,
                const Tensor<double>& w,
                const Tensor<double>& bias,
                std::int64_t i,
                std::int64_t j,
                bool layer) {
  double m = 0.0, ss = 0.0;
  for (std::int64_t k = 0; k < d; ++k) {
    m += x(i, k) / d;
  }
  if (!layer) {
    m = 0.0;
  }
  for (std::int64_t k = 0; k < d; ++k) {
    ss += (x(i, k) - m) * (x(i, k) - m) / d;
  }
  return (x(i, j) - m) / std::sqrt(ss + eps) * w(0, j) + (layer ? bias(0, j) : 0.0);
}

struct Data {
  Rng rng{8};
  Tensor<double> x = rng.normal_tensor<double>(n, d, 2.0);
  Tensor<double> w = rng.normal_tensor<double>(1, d);
  Tensor<double> bias = rng.normal_tensor<double>(1, d);
  Tensor<double> dy = rng.normal_tensor<double>(n, d);
};

template <class T>
Tensor<T> cast(const Tensor<double>& t) {
  Tensor<T> o(t.shape());
  for (std::int64_t i = 0; i < t.size(); ++i) {
    o[i] = static_cast<T>(t[i]);
  }
  return o;
}
}  // namespace

TEMPLATE_TEST_CASE("norm kernels: forward matches the naive oracle",
                   "[backend][cpu]",
                   float,
                   double) {
  using T = TestType;
  CpuBackend<T> b;
  Data s;
  auto x = cast<T>(s.x), w = cast<T>(s.w), bias = cast<T>(s.bias);
  Tensor<T> y(n, d);
  std::vector<accum_t<T>> mean(n), rstd(n);
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  b.rms_norm(y.view(),
             Span<accum_t<T>>(rstd.data(), n),
             View<const T>(x.view()),
             View<const T>(w.view()),
             eps);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      CHECK(static_cast<double>(y(i, j)) ==
            Approx(norm_ref(s.x, s.w, s.bias, i, j, false)).margin(tol).epsilon(tol));
    }
  }
  b.layer_norm(y.view(),
               Span<accum_t<T>>(mean.data(), n),
               Span<accum_t<T>>(rstd.data(), n),
               View<const T>(x.view()),
               View<const T>(w.view()),
               View<const T>(bias.view()),
               eps);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      CHECK(static_cast<double>(y(i, j)) ==
            Approx(norm_ref(s.x, s.w, s.bias, i, j, true)).margin(tol).epsilon(tol));
    }
  }
}

TEST_CASE("norm kernels: backward matches finite differences and accumulates",
          "[backend][cpu][grad]") {
  CpuBackend<double> b;
  for (const bool layer : {false, true}) {
    Data s;
    std::vector<double> mean(n), rstd(n);
    Tensor<double> y(n, d);
    auto forward = [&] {
      if (layer) {
        b.layer_norm(y.view(),
                     Span<double>(mean.data(), n),
                     Span<double>(rstd.data(), n),
                     View<const double>(s.x.view()),
                     View<const double>(s.w.view()),
                     View<const double>(s.bias.view()),
                     eps);
      } else {
        b.rms_norm(y.view(),
                   Span<double>(rstd.data(), n),
                   View<const double>(s.x.view()),
                   View<const double>(s.w.view()),
                   eps);
      }
      double l = 0.0;
      for (std::int64_t i = 0; i < y.size(); ++i) {
        l += y[i] * s.dy[i];
      }
      return l;
    };
    (void)forward();
    // Gradients start at 1: the kernels must add to them.
    Tensor<double> dx(n, d), dw(1, d), db(1, d);
    dx.fill(1.0);
    dw.fill(1.0);
    db.fill(1.0);
    if (layer) {
      b.layer_norm_backward(dx.view(),
                            dw.view(),
                            db.view(),
                            View<const double>(s.dy.view()),
                            View<const double>(s.x.view()),
                            View<const double>(s.w.view()),
                            Span<const double>(mean.data(), n),
                            Span<const double>(rstd.data(), n));
    } else {
      b.rms_norm_backward(dx.view(),
                          dw.view(),
                          View<const double>(s.dy.view()),
                          View<const double>(s.x.view()),
                          View<const double>(s.w.view()),
                          Span<const double>(rstd.data(), n));
    }
    for (auto* t : {&dx, &dw, &db}) {
      for (std::int64_t i = 0; i < t->size(); ++i) {
        (*t)[i] -= 1.0;
      }
    }
    std::vector<GradcheckInput> inputs = {{"x", s.x.view(), dx.view()},
                                          {"w", s.w.view(), dw.view()}};
    if (layer) {
      inputs.push_back({"bias", s.bias.view(), db.view()});
    } else {
      for (std::int64_t j = 0; j < d; ++j) {
        CHECK(db(0, j) == 0.0);  // rms_norm has no bias
      }
    }
    const auto report = gradcheck(forward, inputs);
    INFO((layer ? "layer_norm\n" : "rms_norm\n") << report.str());
    CHECK(report.ok(1e-7));
  }
}

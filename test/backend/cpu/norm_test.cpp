// RMSNorm and LayerNorm kernels: forward against a naive double loop (float within rounding),
// backward against central differences in double, and accumulation (+=) into dx, dw, dbias; at
// larger shapes (several row chunks, rows longer than the lanes with a tail), float against the
// analytic gradient in double, and the same bits on one thread as on two.
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/testing/gradcheck.hpp>

using namespace mmsparse;

namespace {
constexpr double eps = 1e-5;

// Naive oracle; layer = false: RMSNorm.
double norm_ref(const Tensor<double>& x,
                const Tensor<double>& w,
                const Tensor<double>& bias,
                std::int64_t i,
                std::int64_t j,
                bool layer) {
  const std::int64_t d = x.cols();
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
  Data(std::int64_t rows, std::int64_t cols, std::uint64_t seed = 8)
      : rng(seed),
        x(rng.normal_tensor<double>(rows, cols, 2.0)),
        w(rng.normal_tensor<double>(1, cols)),
        bias(rng.normal_tensor<double>(1, cols)),
        dy(rng.normal_tensor<double>(rows, cols)) {}
  Rng rng;
  Tensor<double> x, w, bias, dy;
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
  constexpr std::int64_t n = 6, d = 10;
  Data s(n, d);
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
  // 70 rows: three chunks, the last partial; 19 columns: two lane blocks and a tail.
  for (const auto& [n, d, layer] : {std::tuple{std::int64_t{6}, std::int64_t{10}, false},
                                    std::tuple{std::int64_t{6}, std::int64_t{10}, true},
                                    std::tuple{std::int64_t{70}, std::int64_t{19}, false},
                                    std::tuple{std::int64_t{70}, std::int64_t{19}, true}}) {
    Data s(n, d);
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
    INFO((layer ? "layer_norm " : "rms_norm ") << n << " x " << d << "\n" << report.str());
    CHECK(report.ok(1e-7));
  }
}

namespace {

struct NormGrads {
  Tensor<float> dx, dw, db;
};

// Forward and backward of one norm in float (dx, dw, db start at 0.5: the kernels add to them).
NormGrads float_norm(const Data& s, bool layer) {
  const std::int64_t n = s.x.rows(), d = s.x.cols();
  CpuBackend<float> b;
  const auto x = cast<float>(s.x), w = cast<float>(s.w), bias = cast<float>(s.bias);
  const auto dy = cast<float>(s.dy);
  Tensor<float> y(n, d);
  std::vector<float> mean(static_cast<std::size_t>(n)), rstd(static_cast<std::size_t>(n));
  NormGrads g{Tensor<float>(n, d), Tensor<float>(1, d), Tensor<float>(1, d)};
  g.dx.fill(0.5f);
  g.dw.fill(0.5f);
  g.db.fill(0.5f);
  if (layer) {
    b.layer_norm(y.view(),
                 Span<float>(mean.data(), n),
                 Span<float>(rstd.data(), n),
                 View<const float>(x.view()),
                 View<const float>(w.view()),
                 View<const float>(bias.view()),
                 eps);
    b.layer_norm_backward(g.dx.view(),
                          g.dw.view(),
                          g.db.view(),
                          View<const float>(dy.view()),
                          View<const float>(x.view()),
                          View<const float>(w.view()),
                          Span<const float>(mean.data(), n),
                          Span<const float>(rstd.data(), n));
  } else {
    b.rms_norm(y.view(),
               Span<float>(rstd.data(), n),
               View<const float>(x.view()),
               View<const float>(w.view()),
               eps);
    b.rms_norm_backward(g.dx.view(),
                        g.dw.view(),
                        View<const float>(dy.view()),
                        View<const float>(x.view()),
                        View<const float>(w.view()),
                        Span<const float>(rstd.data(), n));
  }
  return g;
}

// The gradients of sum(y * dy) in double, from the definitions (xh = (x - mean) rstd, mean = 0
// for RMSNorm): dx = rstd (g - mean_j g - xh mean_j(g xh)) with g = w dy (mean_j g dropped for
// RMSNorm), dw = sum_i dy xh, db = sum_i dy.
NormGrads double_norm(const Data& s, bool layer) {
  const std::int64_t n = s.x.rows(), d = s.x.cols();
  Tensor<double> dx(n, d), dw(1, d), db(1, d);
  dw.fill(0.0);
  db.fill(0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    double m = 0.0, v = 0.0;
    for (std::int64_t j = 0; j < d; ++j) {
      m += layer ? s.x(i, j) / static_cast<double>(d) : 0.0;
    }
    for (std::int64_t j = 0; j < d; ++j) {
      v += (s.x(i, j) - m) * (s.x(i, j) - m) / static_cast<double>(d);
    }
    const double r = 1.0 / std::sqrt(v + eps);
    double mg = 0.0, mgx = 0.0;
    for (std::int64_t j = 0; j < d; ++j) {
      const double g = s.w(0, j) * s.dy(i, j);
      mg += layer ? g / static_cast<double>(d) : 0.0;
      mgx += g * (s.x(i, j) - m) * r / static_cast<double>(d);
    }
    for (std::int64_t j = 0; j < d; ++j) {
      const double xh = (s.x(i, j) - m) * r;
      dx(i, j) = r * (s.w(0, j) * s.dy(i, j) - mg - xh * mgx);
      dw(0, j) += s.dy(i, j) * xh;
      db(0, j) += s.dy(i, j);
    }
  }
  NormGrads g{Tensor<float>(n, d), Tensor<float>(1, d), Tensor<float>(1, d)};
  for (std::int64_t i = 0; i < dx.size(); ++i) {
    g.dx[i] = static_cast<float>(dx[i] + 0.5);
  }
  for (std::int64_t j = 0; j < d; ++j) {
    g.dw[j] = static_cast<float>(dw[j] + 0.5);
    g.db[j] = static_cast<float>(layer ? db[j] + 0.5 : 0.5);
  }
  return g;
}

bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
  for (std::int64_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) {
      return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("norm kernels: float backward over many chunks matches double, on any thread count",
          "[backend][cpu][grad]") {
  // 75 x 37: three chunks (the last partial), four lane blocks and a tail; 160 x 512: the model
  // width, five chunks, parallel. Sums over rows grow with n: the bound scales with it.
  for (const auto& [n, d] : {std::pair{std::int64_t{75}, std::int64_t{37}},
                             std::pair{std::int64_t{160}, std::int64_t{512}}}) {
    for (const bool layer : {false, true}) {
      const Data s(n, d, 31);
      const NormGrads got = float_norm(s, layer);
      const NormGrads want = double_norm(s, layer);
      const std::string what = std::string(layer ? "layer_norm " : "rms_norm ") +
                               std::to_string(n) + " x " + std::to_string(d);
      INFO(what);
      for (std::int64_t i = 0; i < got.dx.size(); ++i) {
        REQUIRE(got.dx[i] == Approx(want.dx[i]).margin(2e-5).epsilon(1e-4));
      }
      for (std::int64_t j = 0; j < d; ++j) {
        REQUIRE(got.dw[j] == Approx(want.dw[j]).margin(2e-6 * n).epsilon(1e-4));
        REQUIRE(got.db[j] == Approx(want.db[j]).margin(2e-6 * n).epsilon(1e-4));
      }
#if defined(_OPENMP)
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      const NormGrads serial = float_norm(s, layer);
      omp_set_num_threads(2);
      const NormGrads two = float_norm(s, layer);
      omp_set_num_threads(threads);
      CHECK(same_bits(serial.dx, two.dx));
      CHECK(same_bits(serial.dw, two.dw));
      CHECK(same_bits(serial.db, two.db));
#endif
    }
  }
}

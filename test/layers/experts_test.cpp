// Tests of layers/experts.hpp: the grouped SwiGLU over segments (empty segments included) against
// the double oracle, and its backward against central differences.
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include "layers/layer_checks.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/experts.hpp>
#include <mmsparse/testing/oracle.hpp>

namespace mm = mmsparse;

namespace {

// Segments of 5, 0, 7, 1 rows (expert 1 gets none).
const std::vector<std::int64_t> kOffsets{0, 5, 5, 12, 13};

}  // namespace

TEMPLATE_TEST_CASE("experts_forward runs expert e on its segment", "[layers][cpu]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, double> ? 1e-12 : 1e-5;
  const std::int64_t e = 4, d = 12, f = 20, rows = kOffsets.back();
  mm::Rng rng(1);
  auto x = rng.normal_tensor<T>(rows, d);
  auto w1 = rng.normal_tensor<T>(e * d, f, 0.3);
  auto w3 = rng.normal_tensor<T>(e * d, f, 0.3);
  auto w2 = rng.normal_tensor<T>(e * f, d, 0.2);
  mm::Tensor<T> o(rows, d), a(rows, f), g(rows, f), h(rows, f);
  mm::CpuBackend<T> b;
  mm::experts_forward(b,
                      o.view(),
                      a.view(),
                      g.view(),
                      h.view(),
                      mm::View<const T>(x.view()),
                      mm::ExpertWeights<T>{w1.view(), w3.view(), w2.view()},
                      kOffsets);
  std::vector<mm::ExpertAssignment> rows_of;  // row r of segment e as "token" r with gate 1
  for (std::int64_t k = 0; k < e; ++k) {
    for (std::int64_t r = kOffsets[k]; r < kOffsets[k + 1]; ++r) {
      rows_of.push_back({k, r, 1.0});
    }
  }
  const auto ref = mm::oracle_sparse_ffn<T>(x.view(), rows_of, w1.view(), w3.view(), w2.view(), e);
  CHECK(mm::test::rel_error(o, ref) < tol);
  CHECK(mm::expert_flops(rows, d, f) == 6.0 * rows * d * f);
}

TEST_CASE("experts_backward matches central differences", "[layers][cpu]") {
  const std::int64_t e = 4, d = 5, f = 7, rows = kOffsets.back();
  mm::Rng rng(2);
  auto x = rng.normal_tensor<double>(rows, d);
  auto w1 = rng.normal_tensor<double>(e * d, f, 0.4);
  auto w3 = rng.normal_tensor<double>(e * d, f, 0.4);
  auto w2 = rng.normal_tensor<double>(e * f, d, 0.3);
  const auto c = rng.normal_tensor<double>(rows, d);
  mm::CpuBackend<double> b;
  mm::Tensor<double> o(rows, d), a(rows, f), g(rows, f), h(rows, f);
  const mm::ExpertWeights<double> w{w1.view(), w3.view(), w2.view()};
  auto loss = [&] {
    mm::experts_forward(
        b, o.view(), a.view(), g.view(), h.view(), mm::View<const double>(x.view()), w, kOffsets);
    double l = 0;
    for (std::int64_t i = 0; i < o.size(); ++i) {
      l += c.data()[i] * o.data()[i];
    }
    return l;
  };
  (void)loss();
  mm::Tensor<double> dx(rows, d), g1(e * d, f), g3(e * d, f), g2(e * f, d);
  dx.fill(7.0);  // overwritten: accumulate_dx = false
  g1.fill(1.0);  // weight gradients always accumulate
  g3.fill(0.0);
  g2.fill(0.0);
  mm::experts_backward(b,
                       dx.view(),
                       mm::ExpertGrads<double>{g1.view(), g3.view(), g2.view()},
                       c.view(),
                       x.view(),
                       a.view(),
                       g.view(),
                       w,
                       kOffsets,
                       /*accumulate_dx=*/false);
  auto fd_check = [&](double* p,
                      std::int64_t size,
                      const mm::Tensor<double>& grad,
                      double prefill,
                      const char* what) {
    INFO(what);
    std::vector<double> fd, an;
    for (std::int64_t i = 0; i < size; ++i) {
      const double keep = p[i];
      p[i] = keep + 1e-5;
      const double lp = loss();
      p[i] = keep - 1e-5;
      const double lm = loss();
      p[i] = keep;
      fd.push_back((lp - lm) / 2e-5);
      an.push_back(grad.data()[i] - prefill);
    }
    CHECK(mm::test::rel_error(an.data(), fd.data(), size) < 1e-7);
  };
  fd_check(x.data(), x.size(), dx, 0.0, "dx");
  fd_check(w1.data(), w1.size(), g1, 1.0, "w1");
  fd_check(w3.data(), w3.size(), g3, 0.0, "w3");
  fd_check(w2.data(), w2.size(), g2, 0.0, "w2");
  // The empty segment's expert gets no gradient.
  for (std::int64_t i = 0; i < f * d; ++i) {
    REQUIRE(g2.data()[1 * f * d + i] == 0.0);
  }

  // accumulate_dx = true adds onto dx.
  (void)loss();
  mm::Tensor<double> dx2(rows, d);
  dx2.fill(7.0);
  mm::experts_backward(b,
                       dx2.view(),
                       mm::ExpertGrads<double>{g1.view(), g3.view(), g2.view()},
                       c.view(),
                       x.view(),
                       a.view(),
                       g.view(),
                       w,
                       kOffsets,
                       /*accumulate_dx=*/true);
  for (std::int64_t i = 0; i < dx.size(); ++i) {
    REQUIRE(dx2.data()[i] == Approx(dx.data()[i] + 7.0).epsilon(1e-12));
  }
}

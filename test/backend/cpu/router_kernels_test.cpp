// test/backend/cpu/router_kernels_test.cpp
//
// The CPU router kernels against naive loops in double and finite differences: finiteness
// check, logistic noise, sigmoid/softmax/normalisation backwards, logsumexp, transpose, index
// map, column scatter-add, host transfers.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>

using namespace mmsparse;

namespace {

template <class W>
Tensor<W> random(
    std::int64_t r, std::int64_t c, std::uint64_t seed, double lo = -2, double hi = 2) {
  Rng rng(seed);
  Tensor<W> t(r, c);
  rng.fill_uniform(t.view(), lo, hi);
  return t;
}

template <class W>
View<const W> cv(const Tensor<W>& t) {
  return t.view();
}

}  // namespace

TEMPLATE_TEST_CASE("router kernels: find_nonfinite returns the first bad flat index",
                   "[backend][cpu]",
                   float,
                   double) {
  CpuBackend<TestType> b;
  auto t = random<TestType>(5, 4, 1);
  REQUIRE(b.find_nonfinite(cv(t)) == -1);
  t(3, 2) = -std::numeric_limits<TestType>::infinity();
  REQUIRE(b.find_nonfinite(cv(t)) == 3 * 4 + 2);
  t(1, 3) = std::numeric_limits<TestType>::quiet_NaN();
  REQUIRE(b.find_nonfinite(cv(t)) == 1 * 4 + 3);
  // a strided view (columns 0..1) reports its own flat index and ignores hidden columns
  REQUIRE(b.find_nonfinite(cv(t).col_block(0, 2)) == -1);
  t(4, 1) = std::numeric_limits<TestType>::infinity();
  REQUIRE(b.find_nonfinite(cv(t).col_block(0, 2)) == 4 * 2 + 1);
}

TEMPLATE_TEST_CASE("router kernels: add_logistic_noise adds the counter-based draw",
                   "[backend][cpu]",
                   float,
                   double) {
  CpuBackend<TestType> b;
  Tensor<TestType> y(4, 3);
  y.fill(TestType{1});
  const std::vector<std::int32_t> ids{7, 2, 9, 0};
  b.add_logistic_noise(y.view(), Span<const std::int32_t>(ids.data(), 4), 42, 10, 5);
  for (std::int64_t r = 0; r < 4; ++r) {
    for (std::int64_t j = 0; j < 3; ++j) {
      const auto counter =
          static_cast<std::uint64_t>(ids[static_cast<std::size_t>(r)] * 10 + 5 + j);
      REQUIRE(static_cast<double>(y(r, j)) ==
              Approx(1.0 + logistic_noise(42, counter)).epsilon(1e-6));
    }
  }
  Tensor<TestType> z(3, 2);
  z.fill(TestType{0});
  b.add_logistic_noise(z.view(), Span<const std::int32_t>{}, 3, 2, 0);  // row r is token r
  for (std::int64_t r = 0; r < 3; ++r) {
    for (std::int64_t j = 0; j < 2; ++j) {
      REQUIRE(static_cast<double>(z(r, j)) ==
              Approx(logistic_noise(3, static_cast<std::uint64_t>(r * 2 + j))).epsilon(1e-6));
    }
  }
}

TEST_CASE("router kernels: activation and normalisation backwards match finite differences",
          "[backend][cpu]") {
  CpuBackend<double> b;
  const auto x = random<double>(3, 5, 2);
  const auto dy = random<double>(3, 5, 3);
  const auto pos = random<double>(3, 5, 4, 0.1, 2.0);
  const double h = 1e-6;
  // f(x) = <dy, op(x)>; df/dx(i, j) by central differences
  auto fd = [&](const Tensor<double>& at, auto op) {
    Tensor<double> g(at.rows(), at.cols());
    auto p = at.clone();
    for (std::int64_t i = 0; i < at.size(); ++i) {
      double f[2];
      for (int s = 0; s < 2; ++s) {
        p.data()[i] = at.data()[i] + (s == 0 ? h : -h);
        Tensor<double> y(at.rows(), at.cols());
        op(y.view(), cv(p));
        f[s] = 0.0;
        for (std::int64_t k = 0; k < y.size(); ++k) {
          f[s] += dy.data()[k] * y.data()[k];
        }
      }
      p.data()[i] = at.data()[i];
      g.data()[i] = (f[0] - f[1]) / (2 * h);
    }
    return g;
  };
  auto require_close = [](const Tensor<double>& a, const Tensor<double>& e) {
    for (std::int64_t i = 0; i < a.size(); ++i) {
      REQUIRE(a.data()[i] == Approx(e.data()[i]).margin(1e-8));
    }
  };
  {
    Tensor<double> y(3, 5);
    Tensor<double> dx(3, 5);
    b.sigmoid(y.view(), cv(x));
    b.sigmoid_backward(dx.view(), cv(dy), cv(y));
    require_close(dx, fd(x, [&](View<double> o, View<const double> i) { b.sigmoid(o, i); }));
  }
  {
    Tensor<double> y(3, 5);
    Tensor<double> dx(3, 5);
    b.softmax_rows(y.view(), cv(x));
    b.softmax_rows_backward(dx.view(), cv(dy), cv(y));
    require_close(dx, fd(x, [&](View<double> o, View<const double> i) { b.softmax_rows(o, i); }));
  }
  {
    Tensor<double> y(3, 5);
    Tensor<double> dx(3, 5);
    b.normalize_rows(y.view(), cv(pos));
    for (std::int64_t r = 0; r < 3; ++r) {
      double s = 0.0;
      for (std::int64_t j = 0; j < 5; ++j) {
        s += y(r, j);
      }
      REQUIRE(s == Approx(1.0).epsilon(1e-14));
    }
    b.normalize_rows_backward(dx.view(), cv(dy), cv(y), cv(pos));
    require_close(dx,
                  fd(pos, [&](View<double> o, View<const double> i) { b.normalize_rows(o, i); }));
  }
}

TEMPLATE_TEST_CASE("router kernels: logsumexp_rows is stable for large logits",
                   "[backend][cpu]",
                   float,
                   double) {
  CpuBackend<TestType> b;
  auto x = random<TestType>(4, 6, 5);
  x(2, 1) = TestType{500};
  Tensor<TestType> out(4, 1);
  b.logsumexp_rows(out.span(), cv(x));
  for (std::int64_t r = 0; r < 4; ++r) {
    double m = -1e300;
    for (std::int64_t j = 0; j < 6; ++j) {
      m = std::max(m, static_cast<double>(x(r, j)));
    }
    double s = 0.0;
    for (std::int64_t j = 0; j < 6; ++j) {
      s += std::exp(static_cast<double>(x(r, j)) - m);
    }
    REQUIRE(std::isfinite(static_cast<double>(out[r])));
    REQUIRE(static_cast<double>(out[r]) == Approx(m + std::log(s)).epsilon(1e-6));
  }
}

TEST_CASE("router kernels: transpose, map_index, scatter_add_cols, host transfers",
          "[backend][cpu]") {
  CpuBackend<float> b;
  {
    Tensor<std::int32_t> src(3, 4);
    for (std::int64_t i = 0; i < 12; ++i) {
      src.data()[i] = static_cast<std::int32_t>(i * 7 - 20);
    }
    Tensor<std::int32_t> dst(4, 3);
    b.transpose(dst.view(), cv(src));
    for (std::int64_t i = 0; i < 3; ++i) {
      for (std::int64_t j = 0; j < 4; ++j) {
        REQUIRE(dst(j, i) == src(i, j));
      }
    }
    Tensor<float> big(5, 5);
    big.fill(-1.0f);
    const auto f = random<float>(2, 3, 9);
    b.transpose(big.view().row_block(1, 3).col_block(2, 2), cv(f));  // strided destination
    REQUIRE(big(1, 2) == f(0, 0));
    REQUIRE(big(3, 3) == f(1, 2));
    REQUIRE(big(0, 0) == -1.0f);
    REQUIRE(big(1, 4) == -1.0f);
  }
  {
    const std::vector<std::int32_t> in{0, 5, 11, -1, 12, 3};
    std::vector<std::int32_t> out(6);
    b.map_index(Span<std::int32_t>(out.data(), 6), Span<const std::int32_t>(in.data(), 6), 4, 10);
    REQUIRE(out == std::vector<std::int32_t>{10, 11, 12, -1, 13, 10});
    b.map_index(Span<std::int32_t>(out.data(), 6), Span<const std::int32_t>(in.data(), 6), 1, -3);
    REQUIRE(out == std::vector<std::int32_t>{-3, 2, 8, -1, 9, 0});
  }
  {
    const auto src = random<float>(3, 2, 11);
    Tensor<std::int32_t> col(3, 2);
    const std::int32_t cols[6] = {2, 0, 1, -1, 3, 3};
    for (std::int64_t i = 0; i < 6; ++i) {
      col.data()[i] = cols[i];
    }
    auto dst = random<float>(3, 4, 12);
    const auto before = dst.clone();
    b.scatter_add_cols(dst.view(), cv(src), cv(col));
    Tensor<double> expect(3, 4);
    for (std::int64_t r = 0; r < 3; ++r) {
      for (std::int64_t j = 0; j < 4; ++j) {
        expect(r, j) = before(r, j);
      }
      for (std::int64_t j = 0; j < 2; ++j) {
        if (col(r, j) >= 0) {
          expect(r, col(r, j)) += src(r, j);
        }
      }
    }
    for (std::int64_t i = 0; i < 12; ++i) {
      REQUIRE(dst.data()[i] == Approx(expect.data()[i]).epsilon(1e-6));
    }
  }
  {
    const std::vector<float> host{1.5f, -2.0f, 3.25f};
    Tensor<float> dev(3, 1);
    b.copy_from_host(dev.span(), std::span<const float>(host));
    std::vector<float> back(3);
    b.copy_to_host(std::span<float>(back), Span<const float>(dev.data(), 3));
    REQUIRE(back == host);
  }
}

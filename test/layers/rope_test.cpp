#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/rope.hpp>

namespace mm = mmsparse;

namespace {

// R(pos) for one head, by definition: block-diagonal, block i = [[cos a, -sin a], [sin a, cos a]]
// with a = pos * theta^(-2i / dh).
std::vector<double> rotation_matrix(std::int64_t dh, double theta, std::int64_t pos) {
  std::vector<double> m(static_cast<std::size_t>(dh * dh), 0.0);
  for (std::int64_t i = 0; i < dh / 2; ++i) {
    const double a = static_cast<double>(pos) *
                     std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dh));
    const auto at = [&](std::int64_t r, std::int64_t c) -> double& {
      return m[static_cast<std::size_t>(r * dh + c)];
    };
    at(2 * i, 2 * i) = std::cos(a);
    at(2 * i, 2 * i + 1) = -std::sin(a);
    at(2 * i + 1, 2 * i) = std::sin(a);
    at(2 * i + 1, 2 * i + 1) = std::cos(a);
  }
  return m;
}

// y = R x per head (transpose: R^T x), for x [N, H * dh].
mm::Tensor<double> reference(const mm::Tensor<double>& x,
                             const std::vector<std::int32_t>& pos,
                             std::int64_t dh,
                             double theta,
                             bool transpose) {
  mm::Tensor<double> y(x.rows(), x.cols());
  for (std::int64_t r = 0; r < x.rows(); ++r) {
    const auto m = rotation_matrix(dh, theta, pos[static_cast<std::size_t>(r)]);
    for (std::int64_t h = 0; h < x.cols() / dh; ++h) {
      for (std::int64_t i = 0; i < dh; ++i) {
        double s = 0;
        for (std::int64_t j = 0; j < dh; ++j) {
          const double mij = transpose ? m[static_cast<std::size_t>(j * dh + i)]
                                       : m[static_cast<std::size_t>(i * dh + j)];
          s += mij * x(r, h * dh + j);
        }
        y(r, h * dh + i) = s;
      }
    }
  }
  return y;
}

double max_abs_diff(const mm::Tensor<double>& a, const mm::Tensor<double>& b) {
  double m = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::fabs(a.data()[i] - b.data()[i]));
  }
  return m;
}

mm::Span<const std::int32_t> span_of(const std::vector<std::int32_t>& v) {
  return {v.data(), static_cast<std::int64_t>(v.size())};
}

}  // namespace

TEST_CASE("rope_forward is the rotation matrix at each token's own position", "[layers][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(1);
  const std::int64_t n = 11;
  const std::int64_t dh = 8;
  const std::int64_t heads = 3;
  auto x = rng.normal_tensor<double>(n, heads * dh);
  // Positions in any order (as after routing), repeated, zero and large.
  const std::vector<std::int32_t> pos = {7, 0, 3, 3, 100000, 12, 1, 65535, 2, 9, 5};
  for (const double theta : {10000.0, 500.0}) {
    mm::Tensor<double> y(n, heads * dh);
    mm::rope_forward(b, y.view(), mm::View<const double>(x.view()), span_of(pos), {dh, theta});
    REQUIRE(max_abs_diff(y, reference(x, pos, dh, theta, false)) < 1e-12);
  }
  // Position 0 is the identity; the default theta is 10000.
  REQUIRE(mm::RopeConfig{}.theta == 10000.0);
  mm::Tensor<double> y(n, heads * dh);
  mm::rope_forward(b, y.view(), mm::View<const double>(x.view()), span_of(pos), {dh});
  for (std::int64_t j = 0; j < heads * dh; ++j) {
    REQUIRE(y(1, j) == x(1, j));
  }
  // In place.
  auto z = x.clone();
  mm::rope_forward(b, z.view(), mm::View<const double>(z.view()), span_of(pos), {dh});
  REQUIRE(max_abs_diff(z, y) == 0.0);
}

TEST_CASE("rope scores depend only on the relative position", "[layers][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(2);
  const std::int64_t dh = 16;
  auto q = rng.normal_tensor<double>(1, dh);
  auto k = rng.normal_tensor<double>(1, dh);
  auto score = [&](std::int32_t pq, std::int32_t pk) {
    mm::Tensor<double> qr(1, dh), kr(1, dh);
    const std::vector<std::int32_t> a = {pq};
    const std::vector<std::int32_t> c = {pk};
    mm::rope_forward(b, qr.view(), mm::View<const double>(q.view()), span_of(a), {dh});
    mm::rope_forward(b, kr.view(), mm::View<const double>(k.view()), span_of(c), {dh});
    double s = 0;
    for (std::int64_t j = 0; j < dh; ++j) {
      s += qr(0, j) * kr(0, j);
    }
    return s;
  };
  REQUIRE(score(10, 3) == Approx(score(1010, 1003)).epsilon(1e-10));
  REQUIRE(score(10, 3) != Approx(score(10, 4)).epsilon(1e-6));
}

TEST_CASE("rope_backward accumulates the inverse rotation", "[layers][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(3);
  const std::int64_t n = 9;
  const std::int64_t dh = 6;
  auto x = rng.normal_tensor<double>(n, 2 * dh);
  auto dy = rng.normal_tensor<double>(n, 2 * dh);
  std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    pos[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(rng.integer(0, 5000));
  }
  auto dx = rng.normal_tensor<double>(n, 2 * dh);
  const auto dx0 = dx.clone();
  mm::rope_backward(b, dx.view(), mm::View<const double>(dy.view()), span_of(pos), {dh, 777.0});
  const auto rt = reference(dy, pos, dh, 777.0, true);
  for (std::int64_t i = 0; i < dx.size(); ++i) {
    REQUIRE(dx.data()[i] == Approx(dx0.data()[i] + rt.data()[i]).margin(1e-12));
  }
  // The adjoint identity <R x, dy> = <x, R^T dy>, and R^T R = I.
  mm::Tensor<double> y(n, 2 * dh), back(n, 2 * dh);
  back.fill(0.0);
  mm::rope_forward(b, y.view(), mm::View<const double>(x.view()), span_of(pos), {dh, 777.0});
  mm::rope_backward(b, back.view(), mm::View<const double>(y.view()), span_of(pos), {dh, 777.0});
  REQUIRE(max_abs_diff(back, x) < 1e-12);
  double lhs = 0;
  double rhs = 0;
  for (std::int64_t i = 0; i < y.size(); ++i) {
    lhs += y.data()[i] * dy.data()[i];
    rhs += x.data()[i] * rt.data()[i];
  }
  REQUIRE(lhs == Approx(rhs).epsilon(1e-12));
}

TEST_CASE("rope in float matches double at large positions", "[layers][cpu]") {
  mm::CpuBackend<float> bf;
  mm::Rng rng(4);
  const std::int64_t n = 6;
  const std::int64_t dh = 64;
  mm::Tensor<float> xf(n, 2 * dh);
  mm::Tensor<double> xd(n, 2 * dh);
  for (std::int64_t i = 0; i < xf.size(); ++i) {
    xf.data()[i] = static_cast<float>(rng.normal());
    xd.data()[i] = xf.data()[i];
  }
  const std::vector<std::int32_t> pos = {0, 1, 4095, 32767, 131071, 1000003};
  mm::Tensor<float> yf(n, 2 * dh);
  mm::rope_forward(bf, yf.view(), mm::View<const float>(xf.view()), span_of(pos), {dh});
  const auto yd = reference(xd, pos, dh, 10000.0, false);
  double err = 0;
  for (std::int64_t i = 0; i < yf.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(yf.data()[i]) - yd.data()[i]));
  }
  REQUIRE(err < 1e-5);  // angles in double: no loss of precision at large positions
}

TEST_CASE("rope rejects bad arguments and names them", "[layers][cpu]") {
  using Catch::Matchers::Contains;
  mm::CpuBackend<double> b;
  mm::Tensor<double> x(4, 12), y(4, 12), z(3, 12);
  x.fill(1.0);
  y.fill(2.0);
  const std::vector<std::int32_t> pos = {0, 1, 2, 3};
  const mm::View<const double> cx = x.view();
  REQUIRE_THROWS_WITH(mm::rope_forward(b, y.view(), cx, span_of(pos), {5}),
                      Contains("[rope_forward] head_dim") && Contains("even"));
  REQUIRE_THROWS_WITH(mm::rope_forward(b, y.view(), cx, span_of(pos), {8}),
                      Contains("[rope_forward] x"));
  REQUIRE_THROWS_WITH(mm::rope_forward(b, z.view(), cx, span_of(pos), {6}),
                      Contains("[rope_forward] y"));
  REQUIRE_THROWS_WITH(mm::rope_forward(b, y.view(), cx, span_of(pos).subspan(0, 3), {6}),
                      Contains("[rope_forward] positions"));
  REQUIRE_THROWS_WITH(mm::rope_backward(b, y.view(), cx, span_of(pos), {6, -1.0}),
                      Contains("[rope_backward] theta"));
  for (std::int64_t i = 0; i < y.size(); ++i) {
    REQUIRE(y.data()[i] == 2.0);
  }
}

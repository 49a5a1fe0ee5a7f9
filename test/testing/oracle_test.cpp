// Tests of testing/oracle.hpp: the reference itself against values computed by hand (d = f = 1,
// then d = 2, f = 1), and its three forms against each other.
#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/core/rng.hpp>
#include <mmsparse/testing/oracle.hpp>

namespace mm = mmsparse;

namespace {

double silu(double a) {
  return a / (1 + std::exp(-a));
}

}  // namespace

TEST_CASE("oracle_sparse_ffn by hand", "[testing][cpu]") {
  // Two experts of width d = 1, f = 1: FFN_e(x) = silu(x w1_e) (x w3_e) w2_e.
  const std::vector<double> x_values{0.5, -2.0, 1.5};
  mm::Tensor<double> x = mm::Tensor<double>::from(x_values);
  mm::Tensor<double> w1 = mm::Tensor<double>::from({1.0, -0.5});
  mm::Tensor<double> w3 = mm::Tensor<double>::from({2.0, 3.0});
  mm::Tensor<double> w2 = mm::Tensor<double>::from({0.7, -1.1});
  auto ffn = [&](int e, double v) { return silu(v * w1[e]) * (v * w3[e]) * w2[e]; };
  const std::vector<mm::ExpertAssignment> plan{{0, 0, 0.25}, {1, 0, 0.5}, {1, 2, 1.0}};
  const auto y = mm::oracle_sparse_ffn<double>(x.view(), plan, w1.view(), w3.view(), w2.view(), 2);
  CHECK(y(0, 0) == Approx(0.25 * ffn(0, 0.5) + 0.5 * ffn(1, 0.5)).epsilon(1e-15));
  CHECK(y(1, 0) == 0.0);  // token 1: no expert
  CHECK(y(2, 0) == Approx(ffn(1, 1.5)).epsilon(1e-15));

  // d = 2, f = 1: the hidden unit sees the dot products.
  mm::Tensor<double> x2 = mm::Tensor<double>::from({1.0, 2.0}, 2);  // [1, 2]
  mm::Tensor<double> a1 = mm::Tensor<double>::from({0.5, -0.25});   // [2, 1]
  mm::Tensor<double> a3 = mm::Tensor<double>::from({1.0, 1.0});
  mm::Tensor<double> a2 = mm::Tensor<double>::from({2.0, -3.0}, 2);  // [1, 2]
  const auto y2 = mm::oracle_swiglu_ffn<double>(x2.view(), a1.view(), a3.view(), a2.view());
  const double h = silu(1.0 * 0.5 + 2.0 * -0.25) * (1.0 + 2.0);  // silu(0) = 0
  CHECK(h == 0.0);
  CHECK(y2(0, 0) == 0.0);
  a1(0, 0) = 1.0;  // now x·w1 = 0.5
  const auto y3 = mm::oracle_swiglu_ffn<double>(x2.view(), a1.view(), a3.view(), a2.view());
  CHECK(y3(0, 0) == Approx(silu(0.5) * 3.0 * 2.0).epsilon(1e-15));
  CHECK(y3(0, 1) == Approx(silu(0.5) * 3.0 * -3.0).epsilon(1e-15));
}

TEST_CASE("oracle forms agree: triples, dense gates, one expert", "[testing][cpu]") {
  const std::int64_t n = 7, d = 4, f = 6, e = 3;
  mm::Rng rng(4);
  auto x = rng.normal_tensor<float>(n, d);
  auto w1 = rng.normal_tensor<float>(e * d, f);
  auto w3 = rng.normal_tensor<float>(e * d, f);
  auto w2 = rng.normal_tensor<float>(e * f, d);
  mm::Tensor<double> gates(n, e);
  gates.fill(0.0);
  std::vector<mm::ExpertAssignment> plan;
  for (std::int64_t k = 0; k < e; ++k) {
    for (std::int64_t t = 0; t < n; ++t) {
      if ((t + k) % 2 == 0) {
        gates(t, k) = 0.1 + 0.1 * static_cast<double>(t + k);
        plan.push_back({k, t, gates(t, k)});
      }
    }
  }
  const auto y = mm::oracle_sparse_ffn<float>(x.view(), plan, w1.view(), w3.view(), w2.view(), e);
  const auto y_dense = mm::oracle_sparse_ffn_dense<float, double>(
      x.view(), gates.view(), w1.view(), w3.view(), w2.view());
  for (std::int64_t i = 0; i < y.size(); ++i) {
    REQUIRE(y.data()[i] == Approx(y_dense.data()[i]).epsilon(1e-14).margin(1e-14));
  }
  // Expert 0 alone with gate 1 on every token is the dense FFN of its weights.
  std::vector<mm::ExpertAssignment> all;
  for (std::int64_t t = 0; t < n; ++t) {
    all.push_back({0, t, 1.0});
  }
  const auto y0 = mm::oracle_sparse_ffn<float>(x.view(), all, w1.view(), w3.view(), w2.view(), e);
  const auto y_ffn = mm::oracle_swiglu_ffn<float>(
      x.view(), w1.view().row_block(0, d), w3.view().row_block(0, d), w2.view().row_block(0, f));
  for (std::int64_t i = 0; i < y0.size(); ++i) {
    REQUIRE(y0.data()[i] == y_ffn.data()[i]);
  }
}

TEST_CASE("oracle checks its arguments", "[testing][cpu]") {
  mm::Tensor<double> x(2, 3), w1(6, 4), w3(6, 4), w2(8, 3), bad(6, 5);
  x.fill(1.0);
  w1.fill(0.1);
  w3.fill(0.1);
  w2.fill(0.1);
  REQUIRE_THROWS_AS(
      mm::oracle_sparse_ffn<double>(x.view(), {{2, 0, 1.0}}, w1.view(), w3.view(), w2.view(), 2),
      mm::Error);
  REQUIRE_THROWS_AS(
      mm::oracle_sparse_ffn<double>(x.view(), {{0, 2, 1.0}}, w1.view(), w3.view(), w2.view(), 2),
      mm::Error);
  REQUIRE_THROWS_AS(
      mm::oracle_sparse_ffn<double>(x.view(), {}, w1.view(), bad.view(), w2.view(), 2), mm::Error);
}

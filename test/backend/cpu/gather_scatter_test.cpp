#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>

namespace mm = mmsparse;

TEST_CASE("gather_rows copies indexed rows and zeroes padding rows", "[backend][cpu]") {
  mm::CpuBackend<float> b;
  mm::Rng rng(1);
  auto src = rng.normal_tensor<float>(7, 5);
  std::vector<std::int32_t> index = {3, -1, 0, 3, 6};
  mm::Tensor<float> dst(5, 5);
  dst.fill(9.0f);
  b.gather_rows(
      dst.view(), mm::View<const float>(src), mm::Span<const std::int32_t>(index.data(), 5));
  for (std::int64_t r = 0; r < 5; ++r) {
    for (std::int64_t j = 0; j < 5; ++j) {
      const float want = index[r] < 0 ? 0.0f : src(index[r], j);
      REQUIRE(dst(r, j) == want);
    }
  }
}

TEST_CASE("scatter_add_rows sums weighted rows into their tokens", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(2);
  const std::int64_t n = 9;
  const std::int64_t rows = 300;
  const std::int64_t d = 200;  // wide enough to take the parallel path
  auto src = rng.normal_tensor<double>(rows, d);
  std::vector<std::int32_t> index(rows);
  std::vector<double> w(rows);
  for (std::int64_t r = 0; r < rows; ++r) {
    index[r] = static_cast<std::int32_t>(rng.integer(-1, n));
    w[r] = rng.normal();
  }
  auto dst = rng.normal_tensor<double>(n, d);
  auto want = dst.clone();
  for (std::int64_t r = 0; r < rows; ++r) {
    if (index[r] >= 0) {
      for (std::int64_t j = 0; j < d; ++j) {
        want(index[r], j) += w[r] * src(r, j);
      }
    }
  }
  b.scatter_add_rows(dst.view(),
                     mm::View<const double>(src),
                     mm::Span<const std::int32_t>(index.data(), rows),
                     mm::Span<const double>(w.data(), rows));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      REQUIRE(dst(i, j) == Approx(want(i, j)).epsilon(1e-12));
    }
  }
}

TEST_CASE("scatter_add_rows is bitwise deterministic across thread counts", "[backend][cpu]") {
  mm::Rng rng(3);
  const std::int64_t rows = 4000;
  const std::int64_t d = 64;
  auto src = rng.normal_tensor<float>(rows, d);
  std::vector<std::int32_t> index(rows);
  std::vector<float> w(rows);
  for (std::int64_t r = 0; r < rows; ++r) {
    index[r] = static_cast<std::int32_t>(rng.integer(0, 5));
    w[r] = static_cast<float>(rng.normal());
  }
  auto run = [&](int threads) {
    mm::CpuBackend<float> b({.threads = threads});
    mm::Tensor<float> dst(5, d);
    dst.fill(0.0f);
    b.scatter_add_rows(dst.view(),
                       mm::View<const float>(src),
                       mm::Span<const std::int32_t>(index.data(), rows),
                       mm::Span<const float>(w.data(), rows));
    return dst;
  };
  auto one = run(1);
  auto two = run(2);
  for (std::int64_t i = 0; i < one.size(); ++i) {
    REQUIRE(one.data()[i] == two.data()[i]);
  }
}

TEST_CASE("gathered_row_dot takes the dot product with the indexed row", "[backend][cpu]") {
  mm::CpuBackend<double> b;
  mm::Rng rng(4);
  auto a = rng.normal_tensor<double>(6, 11);
  auto y = rng.normal_tensor<double>(4, 11);
  std::vector<std::int32_t> index = {0, 3, -1, 2, 2, 1};
  std::vector<double> out(6);
  b.gathered_row_dot(mm::Span<double>(out.data(), 6),
                     mm::View<const double>(a),
                     mm::View<const double>(y),
                     mm::Span<const std::int32_t>(index.data(), 6));
  for (std::int64_t r = 0; r < 6; ++r) {
    double want = 0;
    if (index[r] >= 0) {
      for (std::int64_t j = 0; j < 11; ++j) {
        want += a(r, j) * y(index[r], j);
      }
    }
    REQUIRE(out[r] == Approx(want).epsilon(1e-13).margin(1e-15));
  }
}

TEST_CASE("gather_values and scatter_values move 1-D values through an index map",
          "[backend][cpu]") {
  mm::CpuBackend<float> b;
  const std::vector<std::int32_t> src = {10, 11, 12, 13};
  const std::vector<std::int32_t> index = {2, -1, 0, 3, -1};
  std::vector<std::int32_t> dst(5, 99);
  b.gather_values(mm::Span<std::int32_t>(dst.data(), 5),
                  mm::Span<const std::int32_t>(src.data(), 4),
                  mm::Span<const std::int32_t>(index.data(), 5),
                  std::int32_t{-1});
  CHECK(dst == std::vector<std::int32_t>{12, -1, 10, 13, -1});
  const std::vector<float> values = {0.5f, 1.5f, 2.5f, 3.5f, 4.5f};
  std::vector<float> out(4, -2.0f);
  b.scatter_values(mm::Span<float>(out.data(), 4),
                   mm::Span<const float>(values.data(), 5),
                   mm::Span<const std::int32_t>(index.data(), 5));
  CHECK(out == std::vector<float>{2.5f, -2.0f, 0.5f, 3.5f});  // index 1 never named: untouched
  std::vector<float> gathered(5, 7.0f);
  b.gather_values(mm::Span<float>(gathered.data(), 5),
                  mm::Span<const float>(out.data(), 4),
                  mm::Span<const std::int32_t>(index.data(), 5),
                  0.0f);
  CHECK(gathered == std::vector<float>{0.5f, 0.0f, 2.5f, 3.5f, 0.0f});
}

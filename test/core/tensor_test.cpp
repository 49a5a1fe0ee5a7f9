#include <cstdint>
#include <utility>

#include <catch2/catch.hpp>

#include <mmsparse/core/tensor.hpp>

namespace mm = mmsparse;

TEST_CASE("Tensor owns a 64-byte aligned row-major buffer", "[core][cpu]") {
  mm::Tensor<float> t(3, 5);
  REQUIRE(t.rows() == 3);
  REQUIRE(t.cols() == 5);
  REQUIRE(t.shape() == mm::Shape{3, 5});
  REQUIRE(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
  for (std::int64_t i = 0; i < 3; ++i) {
    for (std::int64_t j = 0; j < 5; ++j) {
      t(i, j) = static_cast<float>(10 * i + j);
    }
  }
  REQUIRE(t.data()[2 * 5 + 4] == 24.0f);
  auto v = t.view();
  REQUIRE(v(1, 3) == 13.0f);
  REQUIRE(v.row(2)[0] == 20.0f);
}

TEST_CASE("Tensor moves, and copies only through clone", "[core][cpu]") {
  mm::Tensor<double> a(2, 2);
  a.fill(1.5);
  const double* p = a.data();
  mm::Tensor<double> b(std::move(a));
  REQUIRE(b.data() == p);
  REQUIRE(a.data() == nullptr);  // NOLINT(bugprone-use-after-move)
  REQUIRE(a.rows() == 0);
  mm::Tensor<double> c = b.clone();
  REQUIRE(c.data() != b.data());
  c(0, 0) = 7.0;
  REQUIRE(b(0, 0) == 1.5);
  STATIC_REQUIRE(!std::is_copy_constructible_v<mm::Tensor<float>>);
}

TEST_CASE("Tensor rejects negative shapes and supports empty ones", "[core][cpu]") {
  REQUIRE_THROWS_AS(mm::Tensor<float>(-1, 2), mm::Error);
  REQUIRE_THROWS_WITH(mm::Tensor<float>(2, -3),
                      Catch::Contains("[Tensor] shape") && Catch::Contains("[2, -3]"));
  mm::Tensor<float> e(0, 16);
  REQUIRE(e.size() == 0);
  REQUIRE(e.view().empty());
}

TEST_CASE("Tensor::from builds columns and matrices", "[core][cpu]") {
  auto col = mm::Tensor<int>::from({1, 2, 3});
  REQUIRE(col.shape() == mm::Shape{3, 1});
  auto m = mm::Tensor<int>::from({1, 2, 3, 4, 5, 6}, 3);
  REQUIRE(m.shape() == mm::Shape{2, 3});
  REQUIRE(m(1, 0) == 4);
  REQUIRE_THROWS_AS(mm::Tensor<int>::from({1, 2, 3}, 2), mm::Error);
}

TEST_CASE("Views: blocks, strides, const conversion", "[core][cpu]") {
  mm::Tensor<float> t(4, 6);
  for (std::int64_t i = 0; i < t.size(); ++i) {
    t.data()[i] = static_cast<float>(i);
  }
  mm::View<float> v = t.view();
  auto rows = v.row_block(1, 2);
  REQUIRE(rows.shape() == mm::Shape{2, 6});
  REQUIRE(rows(0, 0) == 6.0f);
  auto cols = v.col_block(2, 3);
  REQUIRE(cols.shape() == mm::Shape{4, 3});
  REQUIRE(cols.stride == 6);
  REQUIRE(!cols.contiguous());
  REQUIRE(cols(3, 2) == 3 * 6 + 4);
  mm::View<const float> c = cols;
  REQUIRE(c(1, 0) == 8.0f);
  mm::Span<float> s = t.span();
  REQUIRE(s.subspan(5, 2)[1] == 6.0f);
  mm::Span<const float> cs = s;
  REQUIRE(cs.size == 24);
  STATIC_REQUIRE(!std::is_convertible_v<mm::View<float, mm::device_space>, mm::View<float>>);
  STATIC_REQUIRE(!std::is_convertible_v<mm::View<const float>, mm::View<float>>);
}

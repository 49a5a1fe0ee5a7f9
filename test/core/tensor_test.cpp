#include <cstddef>
#include <cstdint>
#include <utility>

#include <catch2/catch.hpp>

#include <mmsparse/core/dtype.hpp>
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

TEST_CASE("Host buffers of 2 MB and more start on a huge page, smaller ones on 256 bytes",
          "[core][cpu]") {
  const auto address = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p); };
  constexpr std::size_t huge = mm::huge_page_bytes;
  REQUIRE(huge == std::size_t{2} << 20);
  // Just under, at, and past the threshold (a size that is not a whole number of pages).
  for (const std::int64_t rows : {std::int64_t{511}, std::int64_t{512}, std::int64_t{777}}) {
    mm::Tensor<float> t(rows, 1024);  // rows * 4 KB
    const bool big = t.bytes() >= huge;
    CHECK(big == (rows >= 512));
    CHECK(address(t.data()) % (big ? huge : mm::SpaceAllocator<mm::host_space>::alignment) == 0);
    t.fill(1.0f);  // every byte is the tensor's to write, the tail past the last whole page too
    CHECK(t(rows - 1, 1023) == 1.0f);
  }
  mm::Tensor<float> small(3, 5);
  CHECK(address(small.data()) % 256 == 0);
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

TEST_CASE("Weight matrices pad rows that would alias in the caches", "[core][cpu]") {
  // A row of 1 KB (256 floats, 512 bf16, 128 doubles) or a multiple gets one 64-byte line more.
  CHECK(mm::weight_row_stride<float>(4, 256) == 256 + 16);
  CHECK(mm::weight_row_stride<float>(4, 1536) == 1536 + 16);
  CHECK(mm::weight_row_stride<double>(4, 128) == 128 + 8);
  CHECK(mm::weight_row_stride<mm::bf16>(4, 512) == 512 + 32);
  CHECK(mm::weight_row_stride<float>(4, 255) == 255);  // not a multiple of 1 KB
  CHECK(mm::weight_row_stride<float>(4, 128) == 128);  // 512 B
  CHECK(mm::weight_row_stride<float>(1, 256) == 256);  // one row has nothing to alias with
  CHECK(mm::weight_row_stride<float>(4, 0) == 0);

  auto w = mm::Tensor<float>::weight(3, 256);
  REQUIRE(w.stride() == 272);
  REQUIRE_FALSE(w.contiguous());
  REQUIRE(w.size() == 3 * 256);
  REQUIRE(w.bytes() == 3 * 272 * sizeof(float));
  REQUIRE(reinterpret_cast<std::uintptr_t>(w.data()) % 64 == 0);
  const auto v = w.view();
  REQUIRE(v.stride == 272);
  REQUIRE(v.shape() == mm::Shape{3, 256});
  for (std::int64_t i = 0; i < 3; ++i) {
    for (std::int64_t j = 0; j < 256; ++j) {
      w(i, j) = static_cast<float>(1000 * i + j + 1);
    }
  }
  REQUIRE(v(2, 5) == 2006.0f);
  REQUIRE(w.data()[2 * 272 + 5] == 2006.0f);  // operator() walks the padded rows
  // The padding starts at zero and neither fill nor element writes touch it.
  w.fill(-3.0f);
  for (std::int64_t i = 0; i < 3; ++i) {
    for (std::int64_t j = 256; j < 272; ++j) {
      REQUIRE(w.data()[i * 272 + j] == 0.0f);
    }
    REQUIRE(w(i, 255) == -3.0f);
  }
  // clone keeps the layout; span() and flat indexing need a contiguous tensor.
  const auto c = w.clone();
  REQUIRE(c.stride() == 272);
  REQUIRE(c(1, 7) == -3.0f);
  REQUIRE_THROWS_WITH(w.span(), Catch::Contains("[Tensor] span") && Catch::Contains("272"));

  // Shapes that do not alias, and single rows, stay contiguous.
  REQUIRE(mm::Tensor<float>::weight(3, 100).contiguous());
  REQUIRE(mm::Tensor<float>::weight(1, 256).contiguous());
  REQUIRE(mm::Tensor<float>(3, 256).contiguous());
  REQUIRE_THROWS_WITH((mm::Tensor<float>(2, 8, 7)),
                      Catch::Contains("[Tensor] stride") && Catch::Contains(">= cols = 8"));
}

// mmsparse/core/view.hpp
//
// Non-owning, row-major views. The memory space is part of the type, so a
// device view handed to the CPU backend is a compile error.
//   View<T, S>: a [rows, cols] matrix with a row stride (elements).
//   Span<T, S>: a contiguous vector of `size` elements.
#pragma once

#include <cstdint>
#include <ostream>
#include <type_traits>

#include <mmsparse/core/config.hpp>

namespace mmsparse {

struct host_space {};
struct device_space {};

struct Shape {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  friend bool operator==(const Shape&, const Shape&) = default;
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
    return os << '[' << s.rows << ", " << s.cols << ']';
  }
};

template <class T, class Space = host_space>
struct View {
  using value_type = T;
  using space = Space;

  T* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t stride = 0;  // elements from one row to the next

  constexpr View() = default;
  constexpr View(T* p, std::int64_t r, std::int64_t c) : data(p), rows(r), cols(c), stride(c) {}
  constexpr View(T* p, std::int64_t r, std::int64_t c, std::int64_t s)
      : data(p), rows(r), cols(c), stride(s) {}
  // View<T> converts to View<const T>.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr View(const View<U, Space>& v)  // NOLINT(google-explicit-constructor)
      : data(v.data), rows(v.rows), cols(v.cols), stride(v.stride) {}

  [[nodiscard]] constexpr Shape shape() const {
    return {rows, cols};
  }
  [[nodiscard]] constexpr std::int64_t size() const {
    return rows * cols;
  }
  [[nodiscard]] constexpr bool empty() const {
    return rows == 0 || cols == 0;
  }
  [[nodiscard]] constexpr bool contiguous() const {
    return stride == cols || rows <= 1;
  }

  MMSPARSE_HOST_DEVICE T* row(std::int64_t i) const {
    return data + i * stride;
  }
  MMSPARSE_HOST_DEVICE T& operator()(std::int64_t i, std::int64_t j) const {
    return data[i * stride + j];
  }
  // Rows [begin, begin + count).
  [[nodiscard]] constexpr View row_block(std::int64_t begin, std::int64_t count) const {
    return View(data + begin * stride, count, cols, stride);
  }
  // Columns [begin, begin + count).
  [[nodiscard]] constexpr View col_block(std::int64_t begin, std::int64_t count) const {
    return View(data + begin, rows, count, stride);
  }
};

template <class T, class Space = host_space>
struct Span {
  using value_type = T;
  using space = Space;

  T* data = nullptr;
  std::int64_t size = 0;

  constexpr Span() = default;
  constexpr Span(T* p, std::int64_t n) : data(p), size(n) {}
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr Span(const Span<U, Space>& s)  // NOLINT(google-explicit-constructor)
      : data(s.data), size(s.size) {}

  [[nodiscard]] constexpr bool empty() const {
    return size == 0;
  }
  MMSPARSE_HOST_DEVICE T& operator[](std::int64_t i) const {
    return data[i];
  }
  [[nodiscard]] constexpr Span subspan(std::int64_t begin, std::int64_t count) const {
    return Span(data + begin, count);
  }
  // The same memory as a [size, 1] column.
  [[nodiscard]] constexpr View<T, Space> as_column() const {
    return View<T, Space>(data, size, 1);
  }
  T* begin() const requires std::is_same_v<Space, host_space> {
    return data;
  }
  T* end() const requires std::is_same_v<Space, host_space> {
    return data + size;
  }
};

}  // namespace mmsparse

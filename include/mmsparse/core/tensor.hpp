// mmsparse/core/tensor.hpp
//
// Owning, row-major [rows, cols] buffer in a memory space. Move-only: a copy is
// spelled `.clone()` (host) or made by the backend (device). Host memory is
// 256-byte aligned. Device allocation is supplied by the CUDA backend through
// `SpaceAllocator<device_space>`, declared here and defined only in backend/cuda.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse {

template <class Space>
struct SpaceAllocator;

template <>
struct SpaceAllocator<host_space> {
  static constexpr std::size_t alignment = 256;  // as cudaMalloc: any workspace slice stays aligned
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) {
      return nullptr;
    }
    const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, rounded);
    if (p == nullptr) {
      throw std::bad_alloc();
    }
    return p;
  }
  static void deallocate(void* p) noexcept {
    std::free(p);
  }
};

template <class T, class Space = host_space>
class Tensor {
 public:
  using value_type = T;
  using space = Space;

  Tensor() = default;
  Tensor(std::int64_t rows, std::int64_t cols) : rows_(rows), cols_(cols) {
    MMSPARSE_CHECK(
        rows >= 0 && cols >= 0, "Tensor", "shape", "non-negative dims", (Shape{rows, cols}));
    data_ = static_cast<T*>(SpaceAllocator<Space>::allocate(bytes()));
  }
  explicit Tensor(Shape s) : Tensor(s.rows, s.cols) {}
  // A host tensor holding `values` as a [values.size(), 1] column or, with cols, [n/cols, cols].
  static Tensor from(const std::vector<T>& values,
                     std::int64_t cols = 1) requires std::is_same_v<Space, host_space> {
    const auto n = static_cast<std::int64_t>(values.size());
    MMSPARSE_CHECK(
        cols > 0 && n % cols == 0, "Tensor::from", "cols", "a divisor of the value count", cols);
    Tensor t(n / cols, cols);
    std::copy(values.begin(), values.end(), t.data());
    return t;
  }

  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  Tensor(Tensor&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        rows_(std::exchange(o.rows_, 0)),
        cols_(std::exchange(o.cols_, 0)) {}
  Tensor& operator=(Tensor&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      rows_ = std::exchange(o.rows_, 0);
      cols_ = std::exchange(o.cols_, 0);
    }
    return *this;
  }
  ~Tensor() {
    release();
  }

  [[nodiscard]] T* data() {
    return data_;
  }
  [[nodiscard]] const T* data() const {
    return data_;
  }
  [[nodiscard]] std::int64_t rows() const {
    return rows_;
  }
  [[nodiscard]] std::int64_t cols() const {
    return cols_;
  }
  [[nodiscard]] std::int64_t size() const {
    return rows_ * cols_;
  }
  [[nodiscard]] Shape shape() const {
    return {rows_, cols_};
  }
  [[nodiscard]] std::size_t bytes() const {
    return static_cast<std::size_t>(size()) * sizeof(T);
  }

  [[nodiscard]] View<T, Space> view() {
    return {data_, rows_, cols_};
  }
  [[nodiscard]] View<const T, Space> view() const {
    return {data_, rows_, cols_};
  }
  [[nodiscard]] Span<T, Space> span() {
    return {data_, size()};
  }
  [[nodiscard]] Span<const T, Space> span() const {
    return {data_, size()};
  }
  operator View<T, Space>() {
    return view();
  }  // NOLINT
  operator View<const T, Space>() const {
    return view();
  }  // NOLINT

  T& operator()(std::int64_t i, std::int64_t j) requires std::is_same_v<Space, host_space> {
    return data_[i * cols_ + j];
  }
  const T& operator()(std::int64_t i,
                      std::int64_t j) const requires std::is_same_v<Space, host_space> {
    return data_[i * cols_ + j];
  }
  T& operator[](std::int64_t i) requires std::is_same_v<Space, host_space> {
    return data_[i];
  }
  const T& operator[](std::int64_t i) const requires std::is_same_v<Space, host_space> {
    return data_[i];
  }

  [[nodiscard]] Tensor clone() const requires std::is_same_v<Space, host_space> {
    Tensor t(rows_, cols_);
    std::copy(data_, data_ + size(), t.data_);
    return t;
  }
  void fill(T value) requires std::is_same_v<Space, host_space> {
    std::fill(data_, data_ + size(), value);
  }

 private:
  void release() noexcept {
    if (data_ != nullptr) {
      SpaceAllocator<Space>::deallocate(data_);
      data_ = nullptr;
    }
  }

  T* data_ = nullptr;
  std::int64_t rows_ = 0;
  std::int64_t cols_ = 0;
};

}  // namespace mmsparse

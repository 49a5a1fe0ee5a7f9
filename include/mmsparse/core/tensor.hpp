// mmsparse/core/tensor.hpp
//
// Owning, row-major [rows, cols] buffer in a memory space. Move-only: a copy is
// spelled `.clone()` (host) or made by the backend (device). Host memory is
// 256-byte aligned, and buffers of 2 MB and more sit on huge pages. Device allocation
// is supplied by the CUDA backend through `SpaceAllocator<device_space>`, declared
// here and defined only in backend/cuda.
// Rows are contiguous, except in host weight matrices (Tensor::weight), whose rows get
// one cache line of padding where their length would make them alias in the caches.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse {

template <class Space>
struct SpaceAllocator;

// Host buffers of huge_page_bytes and more start on a huge-page boundary, and on Linux their
// whole huge pages are advised to be transparent huge pages (under THP's default "madvise" mode
// nothing else gets them; the tail past the last whole one keeps 4 KB pages, so no memory is
// spent on rounding). A kernel streaming a weight from memory then walks one page per 2 MB
// instead of per 4 KB: a TLB miss less per 4 KB, and the hardware prefetchers, which stop at a
// page's end, run on (docs/design.md, "Huge pages").
inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

template <>
struct SpaceAllocator<host_space> {
  static constexpr std::size_t alignment = 256;  // as cudaMalloc: any workspace slice stays aligned
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) {
      return nullptr;
    }
    const std::size_t align = bytes >= huge_page_bytes ? huge_page_bytes : alignment;
    const std::size_t rounded = (bytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, rounded);
    if (p == nullptr) {
      throw std::bad_alloc();
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == huge_page_bytes) {
      ::madvise(p, bytes / huge_page_bytes * huge_page_bytes, MADV_HUGEPAGE);  // advice only
    }
#endif
    return p;
  }
  static void deallocate(void* p) noexcept {
    std::free(p);
  }
};

// A row stride whose byte length is a multiple of 1 KB puts the rows of a matrix in a few L1
// sets (64-byte lines, 64 sets): a kernel walking down 16 columns keeps only a handful of rows
// in cache, and oneDNN's no-copy GEMM runs at 55-70 % of its speed (docs/design.md).
inline bool aliasing_row_stride(std::int64_t stride, std::size_t element_bytes) {
  return stride > 0 && (static_cast<std::size_t>(stride) * element_bytes) % 1024 == 0;
}
// cols rounded up to whole 64-byte lines, plus one line: never aliasing.
inline std::int64_t padded_row_stride(std::int64_t cols, std::size_t element_bytes) {
  const auto line = static_cast<std::int64_t>(64 / element_bytes);
  return (cols + line - 1) / line * line + line;
}
// The row stride of a host weight matrix [rows, cols]: cols, or padded where it would alias.
template <class T>
std::int64_t weight_row_stride(std::int64_t rows, std::int64_t cols) {
  return rows > 1 && aliasing_row_stride(cols, sizeof(T)) ? padded_row_stride(cols, sizeof(T))
                                                          : cols;
}

template <class T, class Space = host_space>
class Tensor {
 public:
  using value_type = T;
  using space = Space;

  Tensor() = default;
  Tensor(std::int64_t rows, std::int64_t cols) : rows_(rows), cols_(cols), stride_(cols) {
    MMSPARSE_CHECK(
        rows >= 0 && cols >= 0, "Tensor", "shape", "non-negative dims", (Shape{rows, cols}));
    data_ = static_cast<T*>(SpaceAllocator<Space>::allocate(bytes()));
  }
  explicit Tensor(Shape s) : Tensor(s.rows, s.cols) {}
  // [rows, cols] with rows `stride` >= cols elements apart; the padding holds zeros.
  Tensor(std::int64_t rows,
         std::int64_t cols,
         std::int64_t stride) requires std::is_same_v<Space, host_space>
      : rows_(rows), cols_(cols), stride_(stride) {
    MMSPARSE_CHECK(
        rows >= 0 && cols >= 0, "Tensor", "shape", "non-negative dims", (Shape{rows, cols}));
    MMSPARSE_CHECK(stride >= cols, "Tensor", "stride", ">= cols = " + std::to_string(cols), stride);
    data_ = static_cast<T*>(SpaceAllocator<Space>::allocate(bytes()));
    std::fill(data_, data_ + rows_ * stride_, T{});
  }
  // A weight matrix: on the host, rows padded by a cache line where they would alias
  // (weight_row_stride); elsewhere contiguous. Always read it through view().
  static Tensor weight(std::int64_t rows, std::int64_t cols) {
    if constexpr (std::is_same_v<Space, host_space>) {
      return Tensor(rows, cols, weight_row_stride<T>(rows, cols));
    } else {
      return Tensor(rows, cols);
    }
  }
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
        cols_(std::exchange(o.cols_, 0)),
        stride_(std::exchange(o.stride_, 0)) {}
  Tensor& operator=(Tensor&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      rows_ = std::exchange(o.rows_, 0);
      cols_ = std::exchange(o.cols_, 0);
      stride_ = std::exchange(o.stride_, 0);
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
  // Elements of the matrix, padding excluded.
  [[nodiscard]] std::int64_t size() const {
    return rows_ * cols_;
  }
  // Elements between rows: cols, or more in a padded weight matrix.
  [[nodiscard]] std::int64_t stride() const {
    return stride_;
  }
  [[nodiscard]] bool contiguous() const {
    return stride_ == cols_ || rows_ <= 1;
  }
  [[nodiscard]] Shape shape() const {
    return {rows_, cols_};
  }
  // Bytes allocated, padding included.
  [[nodiscard]] std::size_t bytes() const {
    return static_cast<std::size_t>(rows_ * stride_) * sizeof(T);
  }

  [[nodiscard]] View<T, Space> view() {
    return {data_, rows_, cols_, stride_};
  }
  [[nodiscard]] View<const T, Space> view() const {
    return {data_, rows_, cols_, stride_};
  }
  // The elements as one run (a contiguous tensor only).
  [[nodiscard]] Span<T, Space> span() {
    check_contiguous("span");
    return {data_, size()};
  }
  [[nodiscard]] Span<const T, Space> span() const {
    check_contiguous("span");
    return {data_, size()};
  }
  operator View<T, Space>() {
    return view();
  }  // NOLINT
  operator View<const T, Space>() const {
    return view();
  }  // NOLINT

  T& operator()(std::int64_t i, std::int64_t j) requires std::is_same_v<Space, host_space> {
    return data_[i * stride_ + j];
  }
  const T& operator()(std::int64_t i,
                      std::int64_t j) const requires std::is_same_v<Space, host_space> {
    return data_[i * stride_ + j];
  }
  // Element i of the elements in row-major order (a contiguous tensor only).
  T& operator[](std::int64_t i) requires std::is_same_v<Space, host_space> {
    MMSPARSE_ASSERT(contiguous());
    return data_[i];
  }
  const T& operator[](std::int64_t i) const requires std::is_same_v<Space, host_space> {
    MMSPARSE_ASSERT(contiguous());
    return data_[i];
  }

  // A copy with the same layout.
  [[nodiscard]] Tensor clone() const requires std::is_same_v<Space, host_space> {
    Tensor t(rows_, cols_, stride_);
    std::copy(data_, data_ + rows_ * stride_, t.data_);
    return t;
  }
  // Every element (not the padding) = value.
  void fill(T value) requires std::is_same_v<Space, host_space> {
    for (std::int64_t i = 0; i < rows_; ++i) {
      std::fill(data_ + i * stride_, data_ + i * stride_ + cols_, value);
    }
  }

 private:
  void release() noexcept {
    if (data_ != nullptr) {
      SpaceAllocator<Space>::deallocate(data_);
      data_ = nullptr;
    }
  }

  void check_contiguous(const char* what) const {
    MMSPARSE_CHECK(contiguous(),
                   "Tensor",
                   what,
                   "a contiguous tensor (stride = cols = " + std::to_string(cols_) + ")",
                   stride_);
  }

  T* data_ = nullptr;
  std::int64_t rows_ = 0;
  std::int64_t cols_ = 0;
  std::int64_t stride_ = 0;
};

}  // namespace mmsparse

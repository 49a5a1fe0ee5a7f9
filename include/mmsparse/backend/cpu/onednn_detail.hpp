// mmsparse/backend/cpu/onednn_detail.hpp
//
// Internals of the oneDNN GEMM provider (onednn_gemm.hpp): memory descriptors of strided views,
// matmul attributes, aligned scratch, f32/bf16 conversion, cache keys and
// argument checks. Every oneDNN call of mmsparse lives in backend/cpu/onednn_*.hpp.
#pragma once

#if !__has_include(<oneapi/dnnl/dnnl.hpp>)
#error \
    "mmsparse/backend/cpu/onednn_detail.hpp needs oneDNN 2.x (libdnnl-dev); without it the CPU backend uses Eigen"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <type_traits>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu::onednn_detail {

using dims = dnnl::memory::dims;
using dtype = dnnl::memory::data_type;
inline constexpr std::int64_t runtime_dim = DNNL_RUNTIME_DIM_VAL;
inline constexpr std::int64_t convert_parallel_min = 1 << 15;

template <class T>
constexpr dtype data_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "oneDNN runs float and bf16 matmuls; double goes to Eigen");
  return std::is_same_v<T, float> ? dtype::f32 : dtype::bf16;
}

// op(v) as a [rows, cols] matrix with element strides. The stride of a single row is
// meaningless; it is set to the row length so that the descriptor is valid.
struct Operand {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;
  std::int64_t col_stride = 0;
};

template <class T>
Operand operand(View<T> v, Trans t) {
  const std::int64_t ld = v.rows <= 1 ? std::max<std::int64_t>(v.cols, 1) : v.stride;
  return t == Trans::no ? Operand{v.rows, v.cols, ld, 1} : Operand{v.cols, v.rows, 1, ld};
}

inline dnnl::memory::desc memory_desc(const Operand& o, dtype type) {
  return dnnl::memory::desc({o.rows, o.cols}, type, dims{o.row_stride, o.col_stride});
}

// [runtime, runtime] with runtime strides, row-major (no) or column-major (yes).
inline dnnl::memory::desc runtime_desc(Trans t, dtype type) {
  return dnnl::memory::desc({runtime_dim, runtime_dim},
                            type,
                            t == Trans::no ? dims{runtime_dim, 1} : dims{1, runtime_dim});
}

// alpha: output scale; beta: a sum post-op (oneDNN's gemm turns both into its own alpha, beta).
inline dnnl::primitive_attr matmul_attr(double alpha, double beta) {
  dnnl::primitive_attr attr;
  if (alpha != 1.0) {
    attr.set_output_scales(0, {static_cast<float>(alpha)});
  }
  if (beta != 0.0) {
    dnnl::post_ops ops;
    ops.append_sum(static_cast<float>(beta));
    attr.set_post_ops(ops);
  }
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

inline bool is_plain(const dnnl::memory::desc& d) {
  return d.data.format_kind == dnnl_blocked && d.data.format_desc.blocking.inner_nblks == 0;
}

struct AlignedFree {
  void operator()(std::byte* p) const noexcept {
    SpaceAllocator<host_space>::deallocate(p);
  }
};
using Buffer = std::unique_ptr<std::byte, AlignedFree>;

inline Buffer allocate(std::size_t bytes) {
  return Buffer(static_cast<std::byte*>(SpaceAllocator<host_space>::allocate(bytes)));
}

// A buffer that only grows: once the largest request has been seen it never allocates again.
class Scratch {
 public:
  void reserve(std::size_t bytes) {
    if (bytes > bytes_) {
      data_ = allocate(bytes);
      bytes_ = bytes;
    }
  }
  template <class U>
  [[nodiscard]] U* take(std::int64_t count) {
    reserve(static_cast<std::size_t>(count) * sizeof(U));
    return reinterpret_cast<U*>(data_.get());
  }

 private:
  Buffer data_;
  std::size_t bytes_ = 0;
};

// oneDNN 2.6's AVX2 sgemm reads B in place (its no-copy kernel) whenever 1/m + 1/n is large,
// e.g. 512 x 1536 x 512, and then runs at 55-70 % of its speed when B's rows alias (a stride
// that is a multiple of 1 KB, core/tensor.hpp): copies of such weights get padded rows. The
// library's own weights are padded already (Tensor::weight); a caller's may not be.
using mmsparse::aliasing_row_stride;
using mmsparse::padded_row_stride;

// Rows of a product from which a padded copy of its weight pays for itself within the call
// (copying k n elements against m k n multiply-adds run a third faster: 128 x 512 x 512 from a
// cold cache took 512 us in place and 397 us with the copy; at 64 rows the two are within 10 %).
inline constexpr std::int64_t copy_pays_rows = 128;

// Whether a plain product C [m, n] = A op(B) should multiply a padded-stride copy of B made for
// this call: B's rows alias (above), oneDNN would take its no-copy kernel (1/m + 1/n >= 0.0038,
// its AVX2 threshold) and m >= copy_pays_rows.
inline bool copy_b_pays(std::int64_t m, std::int64_t n, std::int64_t b_stride, std::size_t bytes) {
  return m >= copy_pays_rows && n > 1 && aliasing_row_stride(b_stride, bytes) &&
         1.0 / static_cast<double>(m) + 1.0 / static_cast<double>(n) >= 0.0038;
}

// Product rows from which a transposed A with aliasing rows is copied (below): at 256 rows the
// copy was as often slower as faster.
inline constexpr std::int64_t copy_a_pays_rows = 512;

// Whether a plain product C [m, n] = A^T op(B), A stored [k, m], should multiply a padded-stride
// copy of A made for this call: the no-copy kernel walks A^T down A's columns, whose elements a
// multiple of 1 KB apart share a few L1 sets (the weight gradient of a projection, x^T dy with x
// [tokens, 512]: 512 x 512 x 128 ran at 113-122 GFLOP/s in place, 156-173 with the copy; 1024 x
// 256 at 73-76 against 160-163).
inline bool copy_a_pays(std::int64_t m, std::int64_t n, std::int64_t a_stride, std::size_t bytes) {
  return m >= copy_a_pays_rows && aliasing_row_stride(a_stride, bytes) &&
         1.0 / static_cast<double>(m) + 1.0 / static_cast<double>(n) >= 0.0038;
}

// dst = src, row by row (dst may have another stride).
template <class T>
void copy_rows(View<T> dst, View<const T> src) {
#pragma omp parallel for schedule(static) if (dst.size() > convert_parallel_min)
  for (std::int64_t i = 0; i < dst.rows; ++i) {
    std::copy(src.row(i), src.row(i) + dst.cols, dst.row(i));
  }
}

// dst = src as float (same shape).
template <class T>
void widen(View<float> dst, View<const T> src) {
#pragma omp parallel for schedule(static) if (dst.size() > convert_parallel_min)
  for (std::int64_t i = 0; i < dst.rows; ++i) {
    const T* in = src.row(i);
    float* out = dst.row(i);
    for (std::int64_t j = 0; j < dst.cols; ++j) {
      out[j] = scalar_cast<float>(in[j]);
    }
  }
}

// dst = src rounded to T (round to nearest even for bf16).
template <class T>
void narrow(View<T> dst, View<const float> src) {
#pragma omp parallel for schedule(static) if (dst.size() > convert_parallel_min)
  for (std::int64_t i = 0; i < dst.rows; ++i) {
    const float* in = src.row(i);
    T* out = dst.row(i);
    for (std::int64_t j = 0; j < dst.cols; ++j) {
      out[j] = scalar_cast<T>(in[j]);
    }
  }
}

// c = beta * c (c = 0 for beta = 0, whatever c held): a product with an empty inner dimension.
template <class T>
void scale(View<T> c, double beta) {
  if (beta == 1.0) {
    return;
  }
  for (std::int64_t i = 0; i < c.rows; ++i) {
    T* row = c.row(i);
    for (std::int64_t j = 0; j < c.cols; ++j) {
      row[j] = beta == 0.0 ? T{} : scalar_cast<T>(beta * scalar_cast<double>(row[j]));
    }
  }
}

inline std::uint64_t mix(std::initializer_list<std::uint64_t> values) {
  std::uint64_t h = 0x6d6d7370u;
  for (const std::uint64_t v : values) {
    h = hash64(h, v);
  }
  return h;
}

inline std::uint64_t bits_of(double v) {
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

// ---- cache keys of OnednnGemm -----------------------------------------------

struct PackKey {
  const void* data;
  std::int64_t rows;
  std::int64_t cols;
  std::int64_t stride;
  Trans trans;
  dtype type;
  friend bool operator==(const PackKey&, const PackKey&) = default;
};
struct PackKeyHash {
  std::size_t operator()(const PackKey& k) const {
    return static_cast<std::size_t>(mix({reinterpret_cast<std::uintptr_t>(k.data),
                                         static_cast<std::uint64_t>(k.rows),
                                         static_cast<std::uint64_t>(k.cols),
                                         static_cast<std::uint64_t>(k.stride),
                                         static_cast<std::uint64_t>(k.trans),
                                         static_cast<std::uint64_t>(k.type)}));
  }
};

struct FixedKey {
  std::size_t layout;
  std::int64_t m;
  std::int64_t lda;
  std::int64_t ldc;
  double alpha;
  double beta;
  friend bool operator==(const FixedKey&, const FixedKey&) = default;
};
struct FixedKeyHash {
  std::size_t operator()(const FixedKey& k) const {
    return static_cast<std::size_t>(mix({static_cast<std::uint64_t>(k.layout),
                                         static_cast<std::uint64_t>(k.m),
                                         static_cast<std::uint64_t>(k.lda),
                                         static_cast<std::uint64_t>(k.ldc),
                                         bits_of(k.alpha),
                                         bits_of(k.beta)}));
  }
};

// ---- argument checks of OnednnGemm ------------------------------------------

template <class T>
void check_gemm(View<T> c, View<const T> a, Trans ta, View<const T> b, Trans tb) {
  const char* op = "OnednnGemm::gemm";
  const auto oa = operand(a, ta);
  const auto ob = operand(b, tb);
  MMSPARSE_CHECK(ob.rows == oa.cols,
                 op,
                 "b",
                 "op(b) with " + std::to_string(oa.cols) + " rows (the inner dimension of op(a))",
                 ob.rows);
  MMSPARSE_CHECK(
      c.rows == oa.rows && c.cols == ob.cols, op, "c", (Shape{oa.rows, ob.cols}), c.shape());
  MMSPARSE_CHECK(a.rows <= 1 || a.stride >= a.cols, op, "a.stride", ">= a.cols", a.stride);
  MMSPARSE_CHECK(b.rows <= 1 || b.stride >= b.cols, op, "b.stride", ">= b.cols", b.stride);
  MMSPARSE_CHECK(c.rows <= 1 || c.stride >= c.cols, op, "c.stride", ">= c.cols", c.stride);
}

}  // namespace mmsparse::cpu::onednn_detail

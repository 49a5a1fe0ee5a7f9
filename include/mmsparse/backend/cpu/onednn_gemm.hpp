// mmsparse/backend/cpu/onednn_gemm.hpp
//
// GEMM provider on oneDNN 2.x matmul: C = alpha op(A) op(B) + beta C on strided row-major views.
// f32 on oneDNN; bf16 on oneDNN (fp32 accumulation) where the CPU has it, else widened to f32;
// f64 on Eigen. grouped_gemm packs each weight block once and reuses it until weights_updated().
// Every oneDNN call of mmsparse lives in this header (docs/design.md, "CPU GEMM provider").
#pragma once

#if !__has_include(<oneapi/dnnl/dnnl.hpp>)
#error \
    "mmsparse/backend/cpu/onednn_gemm.hpp needs oneDNN 2.x (libdnnl-dev); without it the CPU backend uses Eigen"
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
#include <unordered_map>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

// What grouped_gemm does with its weight operand.
enum class PackMode {
  automatic,  // pack where oneDNN prefers a blocked layout (AVX-512, AMX) or bf16 must be widened
  always,     // always multiply a provider-owned copy (also in the plain layout)
  never,      // always multiply the caller's weights as they are
};

struct OnednnOptions {
  PackMode pack = PackMode::automatic;
  // Packed weights need fixed-M primitives (oneDNN 2.x runs runtime dims only in its plain
  // gemm): rows go in chunks of a multiple of row_tile, at most max_rows, then the remainder.
  std::int64_t row_tile = 64;
  std::int64_t max_rows = 2048;
};

struct OnednnStats {
  std::int64_t primitives = 0;  // matmul primitives created
  std::int64_t packs = 0;       // weight blocks written into a packed copy
  std::int64_t pack_hits = 0;   // uses of a packed copy that was still current
};

namespace onednn_detail {

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

// A few bit patterns spread over the block: a cheap guard against a packed copy of weights
// that changed without weights_updated() (an optimizer step changes nearly every element).
template <class T>
std::uint64_t fingerprint(View<const T> w) {
  constexpr std::int64_t samples = 16;
  std::uint64_t h = hash64(static_cast<std::uint64_t>(w.rows), static_cast<std::uint64_t>(w.cols));
  if (w.rows == 0 || w.cols == 0) {
    return h;
  }
  for (std::int64_t s = 0; s < samples; ++s) {
    const std::int64_t i = (w.rows - 1) * s / (samples - 1);
    const std::int64_t j = (s * 2654435761LL + i) % w.cols;
    std::uint64_t bits = 0;
    std::memcpy(&bits, &w(i, j), sizeof(T));
    h = hash64(h, bits);
  }
  return h;
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

}  // namespace onednn_detail

// One instance per backend (and so per thread that drives it): its caches are not locked.
class OnednnGemm {
 public:
  static constexpr const char* name = "onednn";

  OnednnGemm() : OnednnGemm(OnednnOptions{}) {}
  explicit OnednnGemm(OnednnOptions options)
      : options_(options), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    MMSPARSE_CHECK(
        options.row_tile >= 1, "OnednnGemm", "options.row_tile", "at least 1", options.row_tile);
    MMSPARSE_CHECK(options.max_rows >= options.row_tile,
                   "OnednnGemm",
                   "options.max_rows",
                   "at least row_tile = " + std::to_string(options.row_tile),
                   options.max_rows);
    options_.max_rows = options.max_rows / options.row_tile * options.row_tile;
  }
  OnednnGemm(const OnednnGemm&) = delete;
  OnednnGemm& operator=(const OnednnGemm&) = delete;
  OnednnGemm(OnednnGemm&&) noexcept = default;
  OnednnGemm& operator=(OnednnGemm&&) noexcept = default;

  // C = alpha * op(A) op(B) + beta * C. M, N, K and the strides are runtime values of one
  // primitive per (dtype, transposes, alpha, beta): a new batch creates nothing.
  template <class T>
  void gemm(
      View<T> c, View<const T> a, Trans ta, View<const T> b, Trans tb, double alpha, double beta) {
    check_gemm(c, a, ta, b, tb);
    if constexpr (std::is_same_v<T, double>) {
      eigen_.gemm(c, a, ta, b, tb, alpha, beta);
    } else {
      plain_gemm(c, a, ta, b, tb, alpha, beta);
    }
  }

  // For each expert e: C_e = alpha * A_e op(W_e) + beta * C_e, where A_e, C_e are rows
  // [offsets[e], offsets[e+1]) and W_e is block e of the stacked weight w [E * wr, wc].
  // W_e is packed once (PackMode) and reused until weights_updated().
  template <class T>
  void grouped_gemm(View<T> c,
                    View<const T> a,
                    View<const T> w,
                    Trans tw,
                    SegmentOffsets offsets,
                    double alpha,
                    double beta) {
    const std::int64_t block = check_grouped(c, a, w, tw, offsets);
    for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
      const std::int64_t begin = offsets[e];
      const std::int64_t count = offsets[e + 1] - begin;
      if (count == 0) {
        continue;
      }
      auto ce = c.row_block(begin, count);
      auto ae = a.row_block(begin, count);
      auto we = w.row_block(static_cast<std::int64_t>(e) * block, block);
      if constexpr (std::is_same_v<T, double>) {
        eigen_.gemm(ce, ae, Trans::no, we, tw, alpha, beta);
      } else {
        packed_gemm(ce, ae, we, tw, alpha, beta);
      }
    }
  }

  // For each expert e: W_e = alpha * A_e^T B_e + beta * W_e (the weight gradient of
  // grouped_gemm). An expert with no rows gets W_e = beta * W_e.
  template <class T>
  void grouped_gemm_weight_grad(View<T> w,
                                View<const T> a,
                                View<const T> b,
                                SegmentOffsets offsets,
                                double alpha,
                                double beta) {
    const char* op = "OnednnGemm::grouped_gemm_weight_grad";
    const std::int64_t experts = check_offsets(op, offsets, a.rows);
    MMSPARSE_CHECK(w.rows % experts == 0,
                   op,
                   "w",
                   "rows divisible by the " + std::to_string(experts) + " experts",
                   w.shape());
    const std::int64_t block = w.rows / experts;
    MMSPARSE_CHECK(a.cols == block, op, "a", "cols = " + std::to_string(block), a.shape());
    MMSPARSE_CHECK(
        b.rows == a.rows && b.cols == w.cols, op, "b", (Shape{a.rows, w.cols}), b.shape());
    for (std::int64_t e = 0; e < experts; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      gemm(w.row_block(e * block, block),
           a.row_block(begin, count),
           Trans::yes,
           b.row_block(begin, count),
           Trans::no,
           alpha,
           beta);
    }
  }

  // Packs the `blocks` blocks of w (the weight operand of grouped_gemm) ahead of the first
  // product. Optional: grouped_gemm packs on first use.
  template <class T>
  void pack_weights(View<const T> w, Trans tw = Trans::no, std::int64_t blocks = 1) {
    MMSPARSE_CHECK(blocks >= 1 && w.rows % blocks == 0,
                   "OnednnGemm::pack_weights",
                   "blocks",
                   "a divisor of w.rows = " + std::to_string(w.rows),
                   blocks);
    if constexpr (!std::is_same_v<T, double>) {
      if (options_.pack == PackMode::never) {
        return;
      }
      const std::int64_t block = w.rows / blocks;
      for (std::int64_t e = 0; e < blocks && !w.empty(); ++e) {
        (void)pack_for(w.row_block(e * block, block), tw);
      }
    }
  }

  // The weights changed in place (optimizer step, load): every packed copy is rewritten on its
  // next use, and copies not used since the previous call are freed.
  void weights_updated() {
    std::erase_if(packs_, [&](const auto& kv) { return kv.second.last_used < epoch_; });
    ++epoch_;
  }

  // Whether oneDNN runs bf16 matmuls on this CPU (AVX512-BF16/AMX, or AVX-512 emulation).
  [[nodiscard]] bool native_bf16() {
    if (bf16_state_ == 0) {
      try {
        (void)plain_entry(onednn_detail::dtype::bf16, Trans::no, Trans::no, 1.0, 0.0);
        bf16_state_ = 1;
      } catch (const dnnl::error&) {
        bf16_state_ = -1;
      }
    }
    return bf16_state_ > 0;
  }

  [[nodiscard]] const OnednnStats& stats() const {
    return stats_;
  }
  [[nodiscard]] const OnednnOptions& options() const {
    return options_;
  }

 private:
  using dtype = onednn_detail::dtype;
  using Operand = onednn_detail::Operand;

  enum class PackKind { identity, reordered, widened };

  struct PlainEntry {
    dtype type;
    Trans ta;
    Trans tb;
    double alpha;
    double beta;
    dnnl::matmul prim;
    dnnl::memory::desc scratch;
  };

  // The weight layout oneDNN prefers for a [k, n] operand of `type`.
  struct Layout {
    std::int64_t k;
    std::int64_t n;
    dtype type;
    dnnl::memory::desc md;
    bool blocked;
    bool ok;
  };

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
      using onednn_detail::mix;
      return static_cast<std::size_t>(mix({reinterpret_cast<std::uintptr_t>(k.data),
                                           static_cast<std::uint64_t>(k.rows),
                                           static_cast<std::uint64_t>(k.cols),
                                           static_cast<std::uint64_t>(k.stride),
                                           static_cast<std::uint64_t>(k.trans),
                                           static_cast<std::uint64_t>(k.type)}));
    }
  };
  struct Pack {
    PackKind kind = PackKind::identity;
    std::size_t layout = 0;  // index into layouts_ (reordered)
    onednn_detail::Buffer data;
    std::uint64_t epoch = 0;
    std::uint64_t last_used = 0;
    std::uint64_t fingerprint = 0;
    bool valid = false;
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
      using onednn_detail::bits_of;
      using onednn_detail::mix;
      return static_cast<std::size_t>(mix({static_cast<std::uint64_t>(k.layout),
                                           static_cast<std::uint64_t>(k.m),
                                           static_cast<std::uint64_t>(k.lda),
                                           static_cast<std::uint64_t>(k.ldc),
                                           bits_of(k.alpha),
                                           bits_of(k.beta)}));
    }
  };
  struct FixedEntry {
    bool ok = false;
    dnnl::matmul prim;
    dnnl::memory::desc scratch;
  };

  // ---- validation ---------------------------------------------------------

  template <class T>
  static void check_gemm(View<T> c, View<const T> a, Trans ta, View<const T> b, Trans tb) {
    const char* op = "OnednnGemm::gemm";
    const auto oa = onednn_detail::operand(a, ta);
    const auto ob = onednn_detail::operand(b, tb);
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

  static std::int64_t check_offsets(const char* op, SegmentOffsets offsets, std::int64_t rows) {
    MMSPARSE_CHECK(offsets.size() >= 2, op, "offsets", "E + 1 >= 2 entries", offsets.size());
    MMSPARSE_CHECK(offsets.front() >= 0, op, "offsets[0]", ">= 0", offsets.front());
    for (std::size_t e = 1; e < offsets.size(); ++e) {
      MMSPARSE_CHECK(offsets[e] >= offsets[e - 1],
                     op,
                     "offsets",
                     "non-decreasing values",
                     "offsets[" + std::to_string(e) + "] = " + std::to_string(offsets[e]) + " < " +
                         std::to_string(offsets[e - 1]));
    }
    MMSPARSE_CHECK(offsets.back() <= rows,
                   op,
                   "offsets",
                   "a last value <= " + std::to_string(rows) + " rows",
                   offsets.back());
    return static_cast<std::int64_t>(offsets.size()) - 1;
  }

  template <class T>
  static std::int64_t check_grouped(
      View<T> c, View<const T> a, View<const T> w, Trans tw, SegmentOffsets offsets) {
    const char* op = "OnednnGemm::grouped_gemm";
    const std::int64_t experts = check_offsets(op, offsets, a.rows);
    MMSPARSE_CHECK(w.rows % experts == 0,
                   op,
                   "w",
                   "rows divisible by the " + std::to_string(experts) + " experts",
                   w.shape());
    const std::int64_t block = w.rows / experts;
    const std::int64_t k = tw == Trans::no ? block : w.cols;
    const std::int64_t n = tw == Trans::no ? w.cols : block;
    MMSPARSE_CHECK(a.cols == k, op, "a", "cols = " + std::to_string(k), a.shape());
    MMSPARSE_CHECK(c.rows == a.rows && c.cols == n, op, "c", (Shape{a.rows, n}), c.shape());
    MMSPARSE_CHECK(a.rows <= 1 || a.stride >= a.cols, op, "a.stride", ">= a.cols", a.stride);
    MMSPARSE_CHECK(w.rows <= 1 || w.stride >= w.cols, op, "w.stride", ">= w.cols", w.stride);
    MMSPARSE_CHECK(c.rows <= 1 || c.stride >= c.cols, op, "c.stride", ">= c.cols", c.stride);
    return block;
  }

  // ---- plain products (runtime dims) --------------------------------------

  PlainEntry& plain_entry(dtype type, Trans ta, Trans tb, double alpha, double beta) {
    for (auto& p : plain_) {
      if (p.type == type && p.ta == ta && p.tb == tb && p.alpha == alpha && p.beta == beta) {
        return p;
      }
    }
    using onednn_detail::runtime_desc;
    const dnnl::matmul::primitive_desc pd(
        dnnl::matmul::desc(
            runtime_desc(ta, type), runtime_desc(tb, type), runtime_desc(Trans::no, type)),
        onednn_detail::matmul_attr(alpha, beta),
        engine_);
    scratchpad_.reserve(pd.scratchpad_desc().get_size());
    ++stats_.primitives;
    plain_.push_back({type, ta, tb, alpha, beta, dnnl::matmul(pd), pd.scratchpad_desc()});
    return plain_.back();
  }

  void execute(const dnnl::matmul& prim,
               const dnnl::memory::desc& scratch,
               const dnnl::memory& src,
               const dnnl::memory& weights,
               const dnnl::memory& dst) {
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}};
    const std::size_t bytes = scratch.get_size();
    if (bytes > 0) {
      args.emplace(
          DNNL_ARG_SCRATCHPAD,
          dnnl::memory(
              scratch, engine_, scratchpad_.take<std::byte>(static_cast<std::int64_t>(bytes))));
    }
    prim.execute(stream_, args);
    stream_.wait();
  }

  // c = alpha op(a) op(b) + beta c with T's own matmul (float, or bf16 where supported).
  template <class T>
  void run_plain(View<T> c,
                 const void* a,
                 const Operand& oa,
                 Trans ta,
                 const void* b,
                 const Operand& ob,
                 Trans tb,
                 double alpha,
                 double beta) {
    constexpr dtype type = onednn_detail::data_type<T>();
    const PlainEntry& p = plain_entry(type, ta, tb, alpha, beta);
    using onednn_detail::memory_desc;
    execute(p.prim,
            p.scratch,
            dnnl::memory(memory_desc(oa, type), engine_, const_cast<void*>(a)),
            dnnl::memory(memory_desc(ob, type), engine_, const_cast<void*>(b)),
            dnnl::memory(memory_desc(onednn_detail::operand(c, Trans::no), type), engine_, c.data));
  }

  template <class T>
  void plain_gemm(
      View<T> c, View<const T> a, Trans ta, View<const T> b, Trans tb, double alpha, double beta) {
    if (c.rows == 0 || c.cols == 0) {
      return;
    }
    const auto oa = onednn_detail::operand(a, ta);
    if (oa.cols == 0) {
      onednn_detail::scale(c, beta);
      return;
    }
    if constexpr (std::is_same_v<T, bf16>) {
      if (!native_bf16()) {
        widened_gemm(c, a, ta, b, tb, alpha, beta);
        return;
      }
    }
    run_plain(c, a.data, oa, ta, b.data, onednn_detail::operand(b, tb), tb, alpha, beta);
  }

  // bf16 without oneDNN support: widen into cached scratch, f32 product, round once.
  void widened_gemm(View<bf16> c,
                    View<const bf16> a,
                    Trans ta,
                    View<const bf16> b,
                    Trans tb,
                    double alpha,
                    double beta) {
    View<float> fa(widen_a_.take<float>(a.size()), a.rows, a.cols);
    View<float> fb(widen_b_.take<float>(b.size()), b.rows, b.cols);
    View<float> fc(widen_c_.take<float>(c.size()), c.rows, c.cols);
    onednn_detail::widen(fa, a);
    onednn_detail::widen(fb, b);
    if (beta != 0.0) {
      onednn_detail::widen(fc, View<const bf16>(c));
    }
    run_plain(fc,
              fa.data,
              onednn_detail::operand(fa, ta),
              ta,
              fb.data,
              onednn_detail::operand(fb, tb),
              tb,
              alpha,
              beta);
    onednn_detail::narrow(c, View<const float>(fc));
  }

  // ---- packed weights -------------------------------------------------------

  std::size_t layout_for(std::int64_t k, std::int64_t n, dtype type) {
    for (std::size_t i = 0; i < layouts_.size(); ++i) {
      if (layouts_[i].k == k && layouts_[i].n == n && layouts_[i].type == type) {
        return i;
      }
    }
    Layout l{k, n, type, {}, false, false};
    try {
      // Weights in `any` layout with a fixed, typical M: the layout the blocked kernels want.
      const std::int64_t m = std::min<std::int64_t>(options_.max_rows, 4 * options_.row_tile);
      const dnnl::matmul::primitive_desc pd(
          dnnl::matmul::desc(dnnl::memory::desc({m, k}, type, dnnl::memory::format_tag::ab),
                             dnnl::memory::desc({k, n}, type, dnnl::memory::format_tag::any),
                             dnnl::memory::desc({m, n}, type, dnnl::memory::format_tag::ab)),
          engine_);
      l.md = pd.weights_desc();
      l.blocked = !onednn_detail::is_plain(l.md);
      l.ok = true;
    } catch (const dnnl::error&) {
      l.ok = false;
    }
    layouts_.push_back(l);
    return layouts_.size() - 1;
  }

  // The packed copy of weight block w (op(w) is [k, n]), rewritten if stale.
  template <class T>
  Pack& pack_for(View<const T> w, Trans tw) {
    constexpr dtype type = onednn_detail::data_type<T>();
    const auto ow = onednn_detail::operand(w, tw);
    const PackKey key{w.data, w.rows, w.cols, w.stride, tw, type};
    auto [it, inserted] = packs_.try_emplace(key);
    Pack& p = it->second;
    p.last_used = epoch_;
    if (inserted) {
      if (std::is_same_v<T, bf16> && !native_bf16()) {
        p.kind = PackKind::widened;  // w as it is (dense): transposing here would be slower
        p.data = onednn_detail::allocate(static_cast<std::size_t>(w.rows * w.cols) * sizeof(float));
      } else {
        p.layout = layout_for(ow.rows, ow.cols, type);
        const Layout& l = layouts_[p.layout];
        const bool copy = l.ok && (l.blocked || options_.pack == PackMode::always);
        p.kind = copy ? PackKind::reordered : PackKind::identity;
        if (copy) {
          p.data = onednn_detail::allocate(l.md.get_size());
        }
      }
    }
    if (p.kind == PackKind::identity) {
      return p;
    }
    const std::uint64_t fp = onednn_detail::fingerprint(w);
    if (p.valid && p.epoch == epoch_ && p.fingerprint == fp) {
      ++stats_.pack_hits;
      return p;
    }
    if (p.kind == PackKind::widened) {
      onednn_detail::widen(View<float>(reinterpret_cast<float*>(p.data.get()), w.rows, w.cols), w);
    } else {
      dnnl::memory src(onednn_detail::memory_desc(ow, type), engine_, const_cast<T*>(w.data));
      dnnl::memory dst(layouts_[p.layout].md, engine_, p.data.get());
      dnnl::reorder(src, dst).execute(stream_, src, dst);
      stream_.wait();
    }
    p.epoch = epoch_;
    p.fingerprint = fp;
    p.valid = true;
    ++stats_.packs;
    return p;
  }

  template <class T>
  void packed_gemm(
      View<T> c, View<const T> a, View<const T> w, Trans tw, double alpha, double beta) {
    if (c.cols == 0 || a.cols == 0 || options_.pack == PackMode::never) {
      plain_gemm(c, a, Trans::no, w, tw, alpha, beta);
      return;
    }
    const Pack& p = pack_for(w, tw);
    if (p.kind == PackKind::identity) {
      plain_gemm(c, a, Trans::no, w, tw, alpha, beta);
    } else if (p.kind == PackKind::widened) {
      if constexpr (std::is_same_v<T, bf16>) {
        const View<const float> wf(reinterpret_cast<const float*>(p.data.get()), w.rows, w.cols);
        widened_packed_gemm(c, a, wf, tw, alpha, beta);
      }
    } else {
      fixed_gemm(c, a, p, w, tw, alpha, beta);
    }
  }

  // bf16 activations times weights widened once per weights_updated().
  void widened_packed_gemm(
      View<bf16> c, View<const bf16> a, View<const float> w, Trans tw, double alpha, double beta) {
    View<float> fa(widen_a_.take<float>(a.size()), a.rows, a.cols);
    View<float> fc(widen_c_.take<float>(c.size()), c.rows, c.cols);
    onednn_detail::widen(fa, a);
    if (beta != 0.0) {
      onednn_detail::widen(fc, View<const bf16>(c));
    }
    run_plain(fc,
              fa.data,
              onednn_detail::operand(fa, Trans::no),
              Trans::no,
              w.data,
              onednn_detail::operand(w, tw),
              tw,
              alpha,
              beta);
    onednn_detail::narrow(c, View<const float>(fc));
  }

  FixedEntry& fixed_entry(std::size_t layout,
                          std::int64_t m,
                          std::int64_t lda,
                          std::int64_t ldc,
                          double alpha,
                          double beta) {
    auto [it, inserted] = fixed_.try_emplace(FixedKey{layout, m, lda, ldc, alpha, beta});
    FixedEntry& f = it->second;
    if (inserted) {
      const Layout& l = layouts_[layout];
      try {
        const dnnl::matmul::primitive_desc pd(
            dnnl::matmul::desc(onednn_detail::memory_desc(Operand{m, l.k, lda, 1}, l.type),
                               l.md,
                               onednn_detail::memory_desc(Operand{m, l.n, ldc, 1}, l.type)),
            onednn_detail::matmul_attr(alpha, beta),
            engine_);
        scratchpad_.reserve(pd.scratchpad_desc().get_size());
        f.prim = dnnl::matmul(pd);
        f.scratch = pd.scratchpad_desc();
        f.ok = true;
        ++stats_.primitives;
      } catch (const dnnl::error&) {
        f.ok = false;
      }
    }
    return f;
  }

  // Rows in fixed-M chunks against the packed weights; a chunk shape oneDNN refuses falls back
  // to the plain product with the caller's weights.
  template <class T>
  void fixed_gemm(View<T> c,
                  View<const T> a,
                  const Pack& p,
                  View<const T> w,
                  Trans tw,
                  double alpha,
                  double beta) {
    constexpr dtype type = onednn_detail::data_type<T>();
    const Layout& l = layouts_[p.layout];
    const std::int64_t tile = options_.row_tile;
    const dnnl::memory weights(l.md, engine_, p.data.get());
    for (std::int64_t done = 0; done < a.rows;) {
      const std::int64_t left = a.rows - done;
      const std::int64_t m = left >= options_.max_rows ? options_.max_rows
                                                       : (left >= tile ? left / tile * tile : left);
      const auto ac = a.row_block(done, m);
      const auto cc = c.row_block(done, m);
      const auto oa = onednn_detail::operand(ac, Trans::no);
      const auto oc = onednn_detail::operand(cc, Trans::no);
      const FixedEntry& f = fixed_entry(p.layout, m, oa.row_stride, oc.row_stride, alpha, beta);
      if (!f.ok) {
        plain_gemm(c.row_block(done, left), a.row_block(done, left), Trans::no, w, tw, alpha, beta);
        return;
      }
      execute(f.prim,
              f.scratch,
              dnnl::memory(onednn_detail::memory_desc(oa, type), engine_, const_cast<T*>(ac.data)),
              weights,
              dnnl::memory(onednn_detail::memory_desc(oc, type), engine_, cc.data));
      done += m;
    }
  }

  OnednnOptions options_;
  dnnl::engine engine_;
  dnnl::stream stream_;
  EigenGemm eigen_;
  OnednnStats stats_;
  std::uint64_t epoch_ = 0;
  int bf16_state_ = 0;  // 0 unknown, 1 supported, -1 not
  std::vector<PlainEntry> plain_;
  std::vector<Layout> layouts_;
  std::unordered_map<PackKey, Pack, PackKeyHash> packs_;
  std::unordered_map<FixedKey, FixedEntry, FixedKeyHash> fixed_;
  onednn_detail::Scratch scratchpad_;
  onednn_detail::Scratch widen_a_;
  onednn_detail::Scratch widen_b_;
  onednn_detail::Scratch widen_c_;
};

// ---- what oneDNN is and does on this machine (benchmark context, docs) ----

[[nodiscard]] inline std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  std::string s =
      std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  s += v->cpu_runtime == DNNL_RUNTIME_OMP   ? " (OpenMP)"
       : v->cpu_runtime == DNNL_RUNTIME_SEQ ? " (sequential)"
                                            : " (other threading)";
  return s;
}

[[nodiscard]] inline std::string onednn_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41:
      return "sse41";
    case dnnl::cpu_isa::avx:
      return "avx";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic:
    case dnnl::cpu_isa::avx512_mic_4ops:
      return "avx512_mic";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "isa_all";
  }
}

// The implementation oneDNN picks for a [m, k] x [k, n] matmul of T, or "unsupported".
// runtime_dims: M, N, K decided at run time (the plain path); otherwise fixed shapes with the
// weights in the layout oneDNN prefers (the packed path).
template <class T>
[[nodiscard]] std::string onednn_matmul_impl(std::int64_t m,
                                             std::int64_t k,
                                             std::int64_t n,
                                             bool runtime_dims) {
  using onednn_detail::runtime_desc;
  constexpr auto type = onednn_detail::data_type<T>();
  using tag = dnnl::memory::format_tag;
  try {
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    const dnnl::matmul::desc d =
        runtime_dims ? dnnl::matmul::desc(runtime_desc(Trans::no, type),
                                          runtime_desc(Trans::no, type),
                                          runtime_desc(Trans::no, type))
                     : dnnl::matmul::desc(dnnl::memory::desc({m, k}, type, tag::ab),
                                          dnnl::memory::desc({k, n}, type, tag::any),
                                          dnnl::memory::desc({m, n}, type, tag::ab));
    const dnnl::matmul::primitive_desc pd(d, engine);
    std::string s = pd.impl_info_str();
    if (!runtime_dims) {
      s += onednn_detail::is_plain(pd.weights_desc()) ? " (plain weights)" : " (blocked weights)";
    }
    return s;
  } catch (const dnnl::error&) {
    return "unsupported";
  }
}

}  // namespace mmsparse::cpu

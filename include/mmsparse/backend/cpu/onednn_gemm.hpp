// mmsparse/backend/cpu/onednn_gemm.hpp
//
// GEMM provider on oneDNN 2.x matmul: C = alpha op(A) op(B) + beta C on strided row-major views.
// f32 on oneDNN; bf16 on oneDNN (fp32 accumulation) where the CPU has it, else widened to f32;
// f64 on Eigen. grouped_gemm multiplies copies of its weight blocks where they pay (PackMode),
// reused until weights_updated().
// Every oneDNN call lives in backend/cpu/onednn_*.hpp (internals: onednn_detail.hpp; machine
// report: onednn_info.hpp; docs/design.md, "CPU GEMM provider").
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
#include <mmsparse/backend/cpu/onednn_detail.hpp>
#include <mmsparse/backend/cpu/onednn_info.hpp>
#include <mmsparse/backend/cpu/weight_fingerprint.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

// What grouped_gemm does with its weight operand.
enum class PackMode {
  automatic,  // pack where oneDNN prefers a blocked layout (AVX-512, AMX: on a block's second
              // use between weights_updated() calls), bf16 must be widened, or the row stride is
              // a multiple of 1 KB (a copy with a padded stride)
  always,     // always multiply a provider-owned copy (also in the plain layout)
  never,      // keep no copy: the plain product (which may copy A or B for the call)
};

struct OnednnOptions {
  PackMode pack = PackMode::automatic;
  // Packed weights need fixed-M primitives (oneDNN 2.x runs runtime dims only in its plain
  // gemm): rows go in chunks of a multiple of row_tile, at most max_rows, then the remainder.
  std::int64_t row_tile = 64;
  std::int64_t max_rows = 2048;
  // Multiply a padded-stride copy of an operand whose rows alias where it pays (copy_a_pays,
  // copy_b_pays); false multiplies every operand in place.
  bool copy_aliasing = true;
};

struct OnednnStats {
  std::int64_t primitives = 0;      // matmul primitives created
  std::int64_t packs = 0;           // weight blocks written into a packed copy
  std::int64_t pack_hits = 0;       // uses of a packed copy that was still current
  std::int64_t operand_copies = 0;  // plain products that multiplied a padded copy of A or B
};

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
    onednn_detail::check_gemm(c, a, ta, b, tb);
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
    const std::int64_t block = check_grouped_gemm("OnednnGemm::grouped_gemm", c, a, w, tw, offsets);
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
    const std::int64_t block =
        check_grouped_weight_grad("OnednnGemm::grouped_gemm_weight_grad", w, a, b, offsets);
    const std::int64_t experts = static_cast<std::int64_t>(offsets.size()) - 1;
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
        (void)pack_for(w.row_block(e * block, block), tw, onednn_detail::copy_pays_rows, true);
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

  enum class PackKind { identity, reordered, widened, restrided };

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

  struct Pack {
    PackKind kind = PackKind::identity;
    std::size_t layout = 0;  // index into layouts_ (reordered)
    onednn_detail::Buffer data;
    std::int64_t stride = 0;  // row stride of the copy (widened, restrided)
    std::uint64_t epoch = 0;
    std::uint64_t last_used = 0;
    std::uint64_t fingerprint = 0;
    bool valid = false;
  };
  struct FixedEntry {
    bool ok = false;
    dnnl::matmul prim;
    dnnl::memory::desc scratch;
  };

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
    if (options_.copy_aliasing && ta == Trans::yes && a.rows > 1 &&
        onednn_detail::copy_a_pays(c.rows, c.cols, a.stride, sizeof(T))) {
      // A^T's elements alias in the no-copy kernel: multiply a copy with a padded stride.
      const std::int64_t stride = onednn_detail::padded_row_stride(a.cols, sizeof(T));
      const View<T> copy(restride_a_.take<T>(a.rows * stride), a.rows, a.cols, stride);
      onednn_detail::copy_rows(copy, a);
      ++stats_.operand_copies;
      plain_gemm(c, View<const T>(copy), ta, b, tb, alpha, beta);
      return;
    }
    if (options_.copy_aliasing && b.rows > 1 &&
        onednn_detail::copy_b_pays(c.rows, c.cols, b.stride, sizeof(T))) {
      // B's rows alias in the no-copy kernel: multiply a copy with a padded stride.
      const std::int64_t stride = onednn_detail::padded_row_stride(b.cols, sizeof(T));
      const View<T> copy(restride_b_.take<T>(b.rows * stride), b.rows, b.cols, stride);
      onednn_detail::copy_rows(copy, b);
      ++stats_.operand_copies;
      const View<const T> padded(copy);
      run_plain(
          c, a.data, oa, ta, padded.data, onednn_detail::operand(padded, tb), tb, alpha, beta);
      return;
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

  // The packed copy of weight block w (op(w) is [k, n]) for a product of `rows` rows, rewritten
  // if stale. A stale restrided copy is rewritten only when the product has copy_pays_rows rows
  // or the block was already used since weights_updated(), and a stale blocked one (automatic)
  // only on such a second use or `ahead` (pack_weights): a training step, which multiplies each
  // block once per orientation between updates, reads the weights in place (p.valid is then
  // false), while inference and decode, which come back to the same weights, pack them on their
  // second use. (Reordering every step cost a 4t4i block's training step 16 % on AVX-512,
  // docs/design.md.)
  template <class T>
  Pack& pack_for(View<const T> w, Trans tw, std::int64_t rows, bool ahead = false) {
    constexpr dtype type = onednn_detail::data_type<T>();
    const auto ow = onednn_detail::operand(w, tw);
    const onednn_detail::PackKey key{w.data, w.rows, w.cols, w.stride, tw, type};
    auto [it, inserted] = packs_.try_emplace(key);
    Pack& p = it->second;
    const bool used_this_epoch = !inserted && p.last_used == epoch_;
    p.last_used = epoch_;
    if (inserted) {
      using onednn_detail::aliasing_row_stride;
      using onednn_detail::padded_row_stride;
      if (std::is_same_v<T, bf16> && !native_bf16()) {
        p.kind = PackKind::widened;  // w as it is: transposing here would be slower
        p.stride = aliasing_row_stride(w.cols, sizeof(float))
                       ? padded_row_stride(w.cols, sizeof(float))
                       : w.cols;
        p.data =
            onednn_detail::allocate(static_cast<std::size_t>(w.rows * p.stride) * sizeof(float));
      } else {
        p.layout = layout_for(ow.rows, ow.cols, type);
        const Layout& l = layouts_[p.layout];
        if (l.ok && (l.blocked || options_.pack == PackMode::always)) {
          p.kind = PackKind::reordered;
          p.data = onednn_detail::allocate(l.md.get_size());
        } else if (w.rows > 1 && aliasing_row_stride(w.stride, sizeof(T))) {
          p.kind = PackKind::restrided;  // allocated when first written
          p.stride = padded_row_stride(w.cols, sizeof(T));
        }
      }
    }
    if (p.kind == PackKind::identity) {
      return p;
    }
    const std::uint64_t fp = weight_fingerprint(w);
    if (p.valid && p.epoch == epoch_ && p.fingerprint == fp) {
      ++stats_.pack_hits;
      return p;
    }
    const bool first_use = !used_this_epoch && !ahead;
    if ((p.kind == PackKind::restrided && rows < onednn_detail::copy_pays_rows && first_use) ||
        (p.kind == PackKind::reordered && options_.pack == PackMode::automatic && first_use)) {
      p.valid = false;
      return p;
    }
    if (p.kind == PackKind::widened) {
      onednn_detail::widen(
          View<float>(reinterpret_cast<float*>(p.data.get()), w.rows, w.cols, p.stride), w);
    } else if (p.kind == PackKind::restrided) {
      if (!p.data) {
        p.data = onednn_detail::allocate(static_cast<std::size_t>(w.rows * p.stride) * sizeof(T));
      }
      onednn_detail::copy_rows(
          View<T>(reinterpret_cast<T*>(p.data.get()), w.rows, w.cols, p.stride), w);
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
    const Pack& p = pack_for(w, tw, c.rows);
    if (p.kind == PackKind::identity || (p.kind != PackKind::widened && !p.valid)) {
      plain_gemm(c, a, Trans::no, w, tw, alpha, beta);
    } else if (p.kind == PackKind::widened) {
      if constexpr (std::is_same_v<T, bf16>) {
        const View<const float> wf(
            reinterpret_cast<const float*>(p.data.get()), w.rows, w.cols, p.stride);
        widened_packed_gemm(c, a, wf, tw, alpha, beta);
      }
    } else if (p.kind == PackKind::restrided) {
      const View<const T> wr(reinterpret_cast<const T*>(p.data.get()), w.rows, w.cols, p.stride);
      plain_gemm(c, a, Trans::no, wr, tw, alpha, beta);
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
    auto [it, inserted] =
        fixed_.try_emplace(onednn_detail::FixedKey{layout, m, lda, ldc, alpha, beta});
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
  std::unordered_map<onednn_detail::PackKey, Pack, onednn_detail::PackKeyHash> packs_;
  std::unordered_map<onednn_detail::FixedKey, FixedEntry, onednn_detail::FixedKeyHash> fixed_;
  onednn_detail::Scratch scratchpad_;
  onednn_detail::Scratch restride_a_;  // A of a plain product, copied with a padded stride
  onednn_detail::Scratch restride_b_;  // and B
  onednn_detail::Scratch widen_a_;
  onednn_detail::Scratch widen_b_;
  onednn_detail::Scratch widen_c_;
};

}  // namespace mmsparse::cpu

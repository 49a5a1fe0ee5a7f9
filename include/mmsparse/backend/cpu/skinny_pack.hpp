// mmsparse/backend/cpu/skinny_pack.hpp
//
// Panel copies (SkinnyPanels, skinny_gemm.hpp) of the grouped_gemm weight blocks that the skinny
// kernel multiplies: decode streams each active expert's weights once per token, about twice as
// fast from the panel layout as from the row-major one, at the price of a second copy of those
// blocks. A block is packed on its second use with unchanged weights since the last
// weights_updated() (decode reuses it every step; a training step uses it once), and a packed
// copy is used only while it is current (the same epoch and the same sampled fingerprint).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>
#include <unordered_map>

#include <mmsparse/backend/cpu/skinny_gemm.hpp>
#include <mmsparse/backend/cpu/weight_fingerprint.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

struct SkinnyPackStats {
  std::int64_t packs = 0;     // blocks written into panels
  std::int64_t hits = 0;      // products that used a current packed copy
  std::int64_t unpacked = 0;  // products that streamed the caller's row-major block
  std::size_t bytes = 0;      // memory held by the packed copies
};

// One instance per backend: not locked.
class SkinnyPacks {
 public:
  // The current panels of block w, packing it if this is its second use with the same weights
  // since weights_updated(); nullopt if w is to be multiplied as it is.
  template <class TW>
  [[nodiscard]] std::optional<SkinnyPanels<const TW>> find(View<const TW> w) {
    static_assert(skinny_supported_v<TW>, "skinny panels hold float or bf16 weights");
    const Key key{w.data, w.rows, w.cols, w.stride, std::is_same_v<TW, bf16>};
    Entry& e = entries_[key];
    e.last_used = epoch_;
    const std::uint64_t fp = weight_fingerprint(w);
    if (e.data && e.packed_epoch == epoch_ && e.packed_fingerprint == fp) {
      ++stats_.hits;
      return SkinnyPanels<const TW>{reinterpret_cast<const TW*>(e.data.get()), w.rows, w.cols};
    }
    if (e.seen_epoch != epoch_ || e.seen_fingerprint != fp) {
      e.seen_epoch = epoch_;
      e.seen_fingerprint = fp;
      ++stats_.unpacked;
      return std::nullopt;
    }
    if (!e.data) {
      e.bytes = static_cast<std::size_t>(SkinnyPanels<TW>::size(w.rows, w.cols)) * sizeof(TW);
      e.data.reset(static_cast<std::byte*>(SpaceAllocator<host_space>::allocate(e.bytes)));
      stats_.bytes += e.bytes;
    }
    const SkinnyPanels<TW> out{reinterpret_cast<TW*>(e.data.get()), w.rows, w.cols};
    pack_skinny_panels(out, w);
    e.packed_epoch = epoch_;
    e.packed_fingerprint = fp;
    ++stats_.packs;
    return out;
  }

  // The weights changed in place: every copy is stale, and copies not used since the previous
  // call are freed (their weights are likely gone).
  void weights_updated() {
    std::erase_if(entries_, [&](const auto& kv) {
      if (kv.second.last_used < epoch_) {
        stats_.bytes -= kv.second.bytes;
        return true;
      }
      return false;
    });
    ++epoch_;
  }

  [[nodiscard]] const SkinnyPackStats& stats() const {
    return stats_;
  }

 private:
  struct Key {
    const void* data;
    std::int64_t rows;
    std::int64_t cols;
    std::int64_t stride;
    bool bf16;
    friend bool operator==(const Key&, const Key&) = default;
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      std::uint64_t h = hash64(reinterpret_cast<std::uintptr_t>(k.data), k.bf16 ? 1 : 0);
      for (const std::int64_t v : {k.rows, k.cols, k.stride}) {
        h = hash64(h, static_cast<std::uint64_t>(v));
      }
      return static_cast<std::size_t>(h);
    }
  };
  struct Free {
    void operator()(std::byte* p) const {
      SpaceAllocator<host_space>::deallocate(p);
    }
  };
  static constexpr std::uint64_t never = ~std::uint64_t{0};
  struct Entry {
    std::unique_ptr<std::byte, Free> data;
    std::size_t bytes = 0;
    std::uint64_t packed_epoch = never;
    std::uint64_t packed_fingerprint = 0;
    std::uint64_t seen_epoch = never;
    std::uint64_t seen_fingerprint = 0;
    std::uint64_t last_used = 0;
  };

  std::unordered_map<Key, Entry, KeyHash> entries_;
  std::uint64_t epoch_ = 0;
  SkinnyPackStats stats_;
};

}  // namespace mmsparse::cpu

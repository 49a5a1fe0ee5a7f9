// mmsparse/backend/workspace.hpp
//
// Scratch arena of a backend (CUTLASS's workspace, ggml's pool). Layers take
// temporary buffers from it inside a `Frame`; leaving the frame returns them.
// The arena grows while it is cold; once the largest frame has been seen,
// blocks are merged into one and a steady-state forward allocates nothing.
// `reserve(bytes)` lets an engine size it up front from `workspace_bytes`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include <mmsparse/core/tensor.hpp>

namespace mmsparse {

template <class Space>
class Workspace {
 public:
  static constexpr std::size_t alignment = 256;

  // Bytes a buffer of `count` elements of U takes in the arena, padding included.
  template <class U>
  static constexpr std::size_t bytes_for(std::int64_t count) {
    return (static_cast<std::size_t>(count) * sizeof(U) + alignment - 1) / alignment * alignment;
  }

  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() {
    release_all();
  }

  // RAII mark: buffers taken after it are returned when it ends.
  class Frame {
   public:
    explicit Frame(Workspace& ws) : ws_(ws), mark_(ws.used_), blocks_(ws.blocks_.size()) {
      ++ws_.depth_;
    }
    Frame(const Frame&) = delete;
    Frame& operator=(const Frame&) = delete;
    ~Frame() {
      ws_.pop(mark_, blocks_);
    }

   private:
    Workspace& ws_;
    std::size_t mark_;
    std::size_t blocks_;
  };

  [[nodiscard]] Frame frame() {
    return Frame(*this);
  }

  template <class U>
  [[nodiscard]] View<U, Space> take(std::int64_t rows, std::int64_t cols) {
    return View<U, Space>(static_cast<U*>(take_bytes(bytes_for<U>(rows * cols))), rows, cols);
  }
  template <class U>
  [[nodiscard]] Span<U, Space> take_span(std::int64_t n) {
    return Span<U, Space>(static_cast<U*>(take_bytes(bytes_for<U>(n))), n);
  }

  void reserve(std::size_t bytes) {
    MMSPARSE_CHECK(depth_ == 0, "Workspace::reserve", "open frames", 0, depth_);
    if (capacity() < bytes) {
      release_all();
      add_block(bytes);
    }
  }
  [[nodiscard]] std::size_t capacity() const {
    std::size_t c = 0;
    for (const auto& b : blocks_) {
      c += b.size;
    }
    return c;
  }
  // Largest number of bytes in use at once so far.
  [[nodiscard]] std::size_t high_water() const {
    return high_water_;
  }
  // Number of allocations the arena has made (a steady-state forward adds none).
  [[nodiscard]] std::int64_t allocations() const {
    return allocations_;
  }

 private:
  struct Block {
    std::byte* data;
    std::size_t size;
    std::size_t used;
  };

  void* take_bytes(std::size_t bytes) {
    if (bytes == 0) {
      return nullptr;
    }
    if (blocks_.empty() || blocks_.back().size - blocks_.back().used < bytes) {
      add_block(std::max<std::size_t>(bytes, capacity()));
    }
    Block& b = blocks_.back();
    void* p = b.data + b.used;
    b.used += bytes;
    used_ += bytes;
    high_water_ = std::max(high_water_, used_);
    return p;
  }
  void add_block(std::size_t bytes) {
    auto* p = static_cast<std::byte*>(SpaceAllocator<Space>::allocate(bytes));
    blocks_.push_back({p, bytes, 0});
    ++allocations_;
  }
  void pop(std::size_t mark, std::size_t blocks) {
    --depth_;
    // Rewind: blocks added inside the frame are emptied, the frame's first block rewound.
    std::size_t remaining = used_ - mark;
    for (std::size_t i = blocks_.size(); i-- > 0 && remaining > 0;) {
      const std::size_t give = std::min(remaining, blocks_[i].used);
      blocks_[i].used -= give;
      remaining -= give;
    }
    used_ = mark;
    (void)blocks;
    if (depth_ == 0 && blocks_.size() > 1) {  // merge: the next pass fits in one block
      const std::size_t total = std::max(capacity(), high_water_);
      release_all();
      add_block(total);
    }
  }
  void release_all() {
    for (auto& b : blocks_) {
      SpaceAllocator<Space>::deallocate(b.data);
    }
    blocks_.clear();
    used_ = 0;
  }

  std::vector<Block> blocks_;
  std::size_t used_ = 0;
  std::size_t high_water_ = 0;
  std::int64_t allocations_ = 0;
  int depth_ = 0;
};

}  // namespace mmsparse

// mmsparse/backend/cpu/weight_fingerprint.hpp
//
// A hash of a few bit patterns spread over a weight block: the cheap guard of every packed
// weight copy of the CPU backend (oneDNN's blocked layouts, the skinny kernel's panels) against
// weights that changed without weights_updated(). An optimizer step changes nearly every element.
#pragma once

#include <cstdint>
#include <cstring>

#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

template <class T>
std::uint64_t weight_fingerprint(View<const T> w) {
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

}  // namespace mmsparse::cpu

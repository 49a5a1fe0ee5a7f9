// mmsparse/core/math.hpp
//
// Index math shared by every backend (host and device): capacities, widths,
// divisions. Each rule the papers leave open is decided here, once:
//   * expert-choice capacity  C = clamp(ceil(capacity_factor * N / E), 1, N)  (PAPERS.md §4.4;
//     C = 0 for a group with no tokens, which is skipped);
//   * token-choice capacity   C = max(1, ceil(capacity_factor * k * N / E))  (dropless: C = N);
//   * mixture-of-depths       C = clamp(ceil(capacity * N), 1, N);
//   * SwiGLU hidden width     f = round_up((2/3) * 4d, 256)  (PAPERS.md §4.17).
#pragma once

#include <cmath>
#include <cstdint>

#include <mmsparse/core/config.hpp>

namespace mmsparse {

MMSPARSE_HOST_DEVICE constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

MMSPARSE_HOST_DEVICE constexpr std::int64_t round_up(std::int64_t a, std::int64_t multiple) {
  return ceil_div(a, multiple) * multiple;
}

MMSPARSE_HOST_DEVICE constexpr std::int64_t clamp_i64(std::int64_t v,
                                                      std::int64_t lo,
                                                      std::int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// The tie rule of every top-k, on every backend (PAPERS.md §4.6): a higher score ranks first,
// and of equal scores (-0 == +0) the lower index does. Scores must not be NaN.
template <class W>
MMSPARSE_HOST_DEVICE constexpr bool ranks_before(W score_a,
                                                 std::int64_t a,
                                                 W score_b,
                                                 std::int64_t b) {
  return score_a > score_b || (score_a == score_b && a < b);
}

// The segment e with offsets[e] <= i < offsets[e + 1], for `segments` non-decreasing segments
// (E + 1 offsets) and offsets[0] <= i < offsets[E]: empty segments are skipped.
MMSPARSE_HOST_DEVICE constexpr std::int64_t segment_of(const std::int64_t* offsets,
                                                       std::int64_t segments,
                                                       std::int64_t i) {
  std::int64_t lo = 0;
  std::int64_t hi = segments;  // offsets[lo] <= i < offsets[hi]
  while (hi - lo > 1) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (offsets[mid] <= i) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// ceil(x) for a non-negative product computed in double, robust to x = 3.00000004
// from float inputs such as 0.1f * 30: values within 1e-6 (relative) of an integer round to it.
inline std::int64_t ceil_tolerant(double x) {
  const double r = std::round(x);
  if (std::fabs(x - r) < 1e-6 * (1.0 + std::fabs(x))) {
    return static_cast<std::int64_t>(r);
  }
  return static_cast<std::int64_t>(std::ceil(x));
}

// Tokens each expert takes under expert choice (MoMa k_e = b_M * c_e, c_e = capacity_factor / E).
inline std::int64_t expert_choice_capacity(double capacity_factor,
                                           std::int64_t tokens,
                                           std::int64_t experts) {
  if (tokens == 0) {
    return 0;
  }
  return clamp_i64(
      ceil_tolerant(capacity_factor * static_cast<double>(tokens) / static_cast<double>(experts)),
      1,
      tokens);
}

// Slots per expert under token choice with a capacity factor; dropless: every token fits.
inline std::int64_t token_choice_capacity(double capacity_factor,
                                          std::int64_t k,
                                          std::int64_t tokens,
                                          std::int64_t experts,
                                          bool dropless) {
  if (dropless) {
    return tokens;
  }
  const std::int64_t c = ceil_tolerant(capacity_factor * static_cast<double>(k * tokens) /
                                       static_cast<double>(experts));
  return clamp_i64(c, 1, tokens > 0 ? tokens : 1);
}

// Tokens a mixture-of-depths block processes (MoMa §2.3: k_d = b * c_d).
inline std::int64_t depth_capacity(double capacity, std::int64_t tokens) {
  if (tokens == 0) {
    return 0;
  }
  return clamp_i64(ceil_tolerant(capacity * static_cast<double>(tokens)), 1, tokens);
}

// SwiGLU hidden width by the LLaMA / MoT convention: (2/3) * 4d rounded up to a multiple of 256.
constexpr std::int64_t swiglu_hidden(std::int64_t d, std::int64_t multiple_of = 256) {
  return round_up((2 * 4 * d) / 3, multiple_of);
}

}  // namespace mmsparse

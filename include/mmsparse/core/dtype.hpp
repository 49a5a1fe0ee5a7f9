// mmsparse/core/dtype.hpp
//
// Scalar types: float, double and bf16 (a 16-bit brain float stored as its bit
// pattern, converted with round-to-nearest-even). `router_t<T>` is the scalar of
// router logits, scores and gates: never narrower than float (PAPERS.md §4.6:
// router math in fp32 even when activations are bf16).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include <mmsparse/core/config.hpp>

namespace mmsparse {

// bfloat16: the top 16 bits of an IEEE float.
struct bf16 {
  std::uint16_t bits = 0;

  constexpr bf16() = default;
  MMSPARSE_HOST_DEVICE explicit bf16(float f) : bits(from_float(f)) {}
  MMSPARSE_HOST_DEVICE explicit operator float() const {
    return to_float(bits);
  }

  MMSPARSE_HOST_DEVICE static std::uint16_t from_float(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
      return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    }
    const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // nearest even
    return static_cast<std::uint16_t>((u + rounding) >> 16);
  }
  MMSPARSE_HOST_DEVICE static float to_float(std::uint16_t b) {
    const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
};

template <class T>
inline constexpr bool is_scalar_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>;

// Scalar of router logits/scores/gates for activations of type T.
template <class T>
using router_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Scalar in which a kernel accumulates products of T.
template <class T>
using accum_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T>
constexpr std::string_view dtype_name() {
  if constexpr (std::is_same_v<T, float>) {
    return "f32";
  } else if constexpr (std::is_same_v<T, double>) {
    return "f64";
  } else if constexpr (std::is_same_v<T, bf16>) {
    return "bf16";
  } else if constexpr (std::is_same_v<T, std::int32_t>) {
    return "i32";
  } else {
    return "unknown";
  }
}

// Conversion between scalars, bf16 included.
template <class To, class From>
MMSPARSE_HOST_DEVICE inline To scalar_cast(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, bf16>) {
    return static_cast<To>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bf16>) {
    return bf16(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

}  // namespace mmsparse

// mmsparse/core/rng.hpp
//
// Deterministic, counter-based random numbers: the value drawn for (seed, i)
// does not depend on thread count, order of draws or backend, so the CPU and
// CUDA backends draw the same Gumbel noise. `Rng` is a small sequential
// wrapper for filling host tensors in tests, examples and initialisation.
#pragma once

#include <cmath>
#include <cstdint>

#include <mmsparse/core/config.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mmsparse {

// SplitMix64 finaliser of (seed, counter): a well-mixed 64-bit value.
MMSPARSE_HOST_DEVICE constexpr std::uint64_t hash64(std::uint64_t seed, std::uint64_t counter) {
  std::uint64_t z = seed * 0x9e3779b97f4a7c15ull + counter + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in the open interval (0, 1): never exactly 0 or 1, so log(u) and
// log(1 - u) are finite (the Gumbel NaN trap of PAPERS.md §4.15).
MMSPARSE_HOST_DEVICE constexpr double uniform_open(std::uint64_t seed, std::uint64_t counter) {
  return (static_cast<double>(hash64(seed, counter) >> 11) + 0.5) * 0x1.0p-53;
}

// Logistic(0, 1) sample = G' - G'' for two independent Gumbels (MoMa §2.5):
// log(u) - log(1 - u).
MMSPARSE_HOST_DEVICE inline double logistic_noise(std::uint64_t seed, std::uint64_t counter) {
  const double u = uniform_open(seed, counter);
  return std::log(u) - std::log1p(-u);
}

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : seed_(seed) {}

  double uniform() {
    return uniform_open(seed_, counter_++);
  }
  double uniform(double lo, double hi) {
    return lo + (hi - lo) * uniform();
  }
  double normal() {  // Box-Muller
    const double u1 = uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  std::int64_t integer(std::int64_t lo, std::int64_t hi_exclusive) {
    const auto span = static_cast<std::uint64_t>(hi_exclusive - lo);
    return lo + static_cast<std::int64_t>(hash64(seed_, counter_++) % span);
  }

  template <class T>
  void fill_normal(View<T> v, double stddev = 1.0) {
    for (std::int64_t i = 0; i < v.rows; ++i) {
      for (std::int64_t j = 0; j < v.cols; ++j) {
        v(i, j) = static_cast<T>(stddev * normal());
      }
    }
  }
  template <class T>
  void fill_uniform(View<T> v, double lo, double hi) {
    for (std::int64_t i = 0; i < v.rows; ++i) {
      for (std::int64_t j = 0; j < v.cols; ++j) {
        v(i, j) = static_cast<T>(uniform(lo, hi));
      }
    }
  }
  template <class T>
  [[nodiscard]] Tensor<T> normal_tensor(std::int64_t rows, std::int64_t cols, double stddev = 1.0) {
    Tensor<T> t(rows, cols);
    fill_normal(t.view(), stddev);
    return t;
  }

 private:
  std::uint64_t seed_;
  std::uint64_t counter_ = 0;
};

}  // namespace mmsparse

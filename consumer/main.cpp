// consumer/main.cpp
//
// A program outside the project that links mmsparse::mmsparse: multiplies two small matrices with
// the CPU backend's GEMM (C = A B^T) and checks every entry against a plain loop in double.
// Exits 1 on a mismatch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <utility>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mm = mmsparse;

int main() {
  constexpr std::int64_t m = 7;
  constexpr std::int64_t k = 13;
  constexpr std::int64_t n = 5;
  mm::CpuBackend<float> cpu;

  mm::Tensor<float> a(m, k);  // [m, k]
  mm::Tensor<float> b(n, k);  // [n, k], used transposed
  mm::Tensor<float> c(m, n);  // [m, n]
  for (std::int64_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<float>((i * 37 % 23) - 11) / 8.0f;
  }
  for (std::int64_t i = 0; i < b.size(); ++i) {
    b[i] = static_cast<float>((i * 29 % 19) - 9) / 4.0f;
  }
  c.fill(0.0f);

  cpu.gemm(
      c.view(), std::as_const(a).view(), mm::Trans::no, std::as_const(b).view(), mm::Trans::yes);

  int wrong = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double want = 0.0;
      for (std::int64_t p = 0; p < k; ++p) {
        want += static_cast<double>(a(i, p)) * static_cast<double>(b(j, p));
      }
      if (std::abs(static_cast<double>(c(i, j)) - want) > 1e-4 * (1.0 + std::abs(want))) {
        std::fprintf(stderr,
                     "consumer: C(%lld, %lld) = %g, expected %g\n",
                     static_cast<long long>(i),
                     static_cast<long long>(j),
                     static_cast<double>(c(i, j)),
                     want);
        ++wrong;
      }
    }
  }
  if (wrong != 0) {
    std::fprintf(
        stderr, "consumer: %d of %lld entries wrong\n", wrong, static_cast<long long>(m * n));
    return 1;
  }
  std::printf("consumer: mmsparse gemm [%lld x %lld] * [%lld x %lld]^T matches the loop (%s)\n",
              static_cast<long long>(m),
              static_cast<long long>(k),
              static_cast<long long>(n),
              static_cast<long long>(k),
              mm::CpuBackend<float>::name);
  return 0;
}

// mmsparse/backend/cpu/simd_math.hpp
//
// exp of eight floats in AVX2/FMA registers, for the element-wise kernels (SwiGLU's sigmoid):
// libm's scalar expf made SwiGLU about a tenth of a dense FFN forward. x = n ln 2 + r with
// |r| <= ln 2 / 2, e^r by its degree-6 Taylor polynomial (truncation below 1.3e-7 relative, about
// one float ulp), 2^n put into the exponent bits. Inputs are clamped to [-87, 88], where 2^n stays
// a normal float: e^x is then exact to about 2 ulp, and beyond the clamp it saturates at
// e^-87 ~ 1.6e-38 and e^88 ~ 1.7e38 (finite), which is what a sigmoid needs. NaN stays NaN.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace mmsparse::cpu::simd {

inline constexpr bool has_exp8 = true;

inline __m256 exp8(__m256 x) {
  const __m256 clamped =
      _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  // max/min return their second operand for NaN: put NaN lanes back at the end.
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(clamped, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln 2, with ln 2 split in two so that n * hi is exact.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), clamped);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  return _mm256_blendv_ps(_mm256_mul_ps(p, scale), x, nan);
}

}  // namespace mmsparse::cpu::simd

#else

namespace mmsparse::cpu::simd {
inline constexpr bool has_exp8 = false;
}  // namespace mmsparse::cpu::simd

#endif

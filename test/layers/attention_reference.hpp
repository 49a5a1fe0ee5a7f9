// test/layers/attention_reference.hpp
//
// The naive double-precision oracle of the attention tests: explicit loops over tokens, heads
// and keys; the mask by its definition; RoPE by its rotation matrix; QK-norm by its formula.
// Shared by attention_core_test.cpp and attention_test.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention_core.hpp>

namespace attention_reference {

namespace mm = mmsparse;

// The weights one token uses (a MoT block picks them by modality).
struct RefWeights {
  mm::View<const double> wq, wk, wv, wo, q_norm, q_norm_bias, k_norm, k_norm_bias;
};

// Token i sees token j: same sequence, and j <= i, or both in one image run (all of i..j images).
inline bool visible(const mm::AttentionMask& mask, std::int64_t i, std::int64_t j) {
  if (i / mask.seq_len != j / mask.seq_len) {
    return false;
  }
  if (j <= i) {
    return true;
  }
  if (mask.kind != mm::MaskKind::image_bidirectional) {
    return false;
  }
  for (std::int64_t t = i; t <= j; ++t) {
    if (mask.modality[static_cast<std::size_t>(t)] != mask.image) {
      return false;
    }
  }
  return true;
}

// Normalises v[0..dh) in place: RMSNorm or LayerNorm with weight w (and bias).
inline void ref_norm(double* v,
                     const mm::AttentionConfig& cfg,
                     mm::View<const double> w,
                     mm::View<const double> bias) {
  const std::int64_t dh = cfg.head_dim;
  if (cfg.qk_norm == mm::QkNorm::rms_norm) {
    double ss = 0;
    for (std::int64_t j = 0; j < dh; ++j) {
      ss += v[j] * v[j];
    }
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(dh) + cfg.norm_eps);
    for (std::int64_t j = 0; j < dh; ++j) {
      v[j] = v[j] * r * w(0, j);
    }
  } else if (cfg.qk_norm == mm::QkNorm::layer_norm) {
    double m = 0;
    for (std::int64_t j = 0; j < dh; ++j) {
      m += v[j];
    }
    m /= static_cast<double>(dh);
    double var = 0;
    for (std::int64_t j = 0; j < dh; ++j) {
      var += (v[j] - m) * (v[j] - m);
    }
    const double r = 1.0 / std::sqrt(var / static_cast<double>(dh) + cfg.norm_eps);
    for (std::int64_t j = 0; j < dh; ++j) {
      v[j] = (v[j] - m) * r * w(0, j) + bias(0, j);
    }
  }
}

// Multiplies v[0..dh) by the block-diagonal rotation matrix R(pos): block i is
// [[cos a, -sin a], [sin a, cos a]], a = pos * theta^(-2i/dh).
inline void ref_rope(double* v, std::int64_t dh, double theta, std::int32_t pos) {
  std::vector<double> out(static_cast<std::size_t>(dh), 0.0);
  for (std::int64_t r = 0; r < dh; ++r) {
    for (std::int64_t c = 0; c < dh; ++c) {
      double m = 0;
      if (r / 2 == c / 2) {
        const double a =
            pos * std::pow(theta, -2.0 * static_cast<double>(r / 2) / static_cast<double>(dh));
        if (r == c) {
          m = std::cos(a);
        } else if (r % 2 == 0) {
          m = -std::sin(a);
        } else {
          m = std::sin(a);
        }
      }
      out[static_cast<std::size_t>(r)] += m * v[c];
    }
  }
  std::copy(out.begin(), out.end(), v);
}

// The core: a [N, H·dh] from q [N, H·dh], k, v [N, Hkv·dh] (not rotated yet).
inline mm::Tensor<double> reference_core(const mm::AttentionConfig& cfg,
                                         mm::Tensor<double> q,
                                         mm::Tensor<double> k,
                                         const mm::Tensor<double>& v,
                                         const std::vector<std::int32_t>& positions,
                                         const mm::AttentionMask& mask) {
  const std::int64_t n = q.rows();
  const std::int64_t dh = cfg.head_dim;
  const std::int64_t H = cfg.heads;
  const std::int64_t Hkv = cfg.kv_heads;
  if (cfg.rope_theta > 0) {
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t h = 0; h < H; ++h) {
        ref_rope(&q(i, h * dh), dh, cfg.rope_theta, positions[static_cast<std::size_t>(i)]);
      }
      for (std::int64_t h = 0; h < Hkv; ++h) {
        ref_rope(&k(i, h * dh), dh, cfg.rope_theta, positions[static_cast<std::size_t>(i)]);
      }
    }
  }
  mm::Tensor<double> a(n, H * dh);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t g = h / (H / Hkv);  // GQA: query heads share kv head g
      std::vector<double> score(static_cast<std::size_t>(n), 0.0);
      double mx = -1e300;
      for (std::int64_t j = 0; j < n; ++j) {
        if (!visible(mask, i, j)) {
          continue;
        }
        double s = 0;
        for (std::int64_t c = 0; c < dh; ++c) {
          s += q(i, h * dh + c) * k(j, g * dh + c);
        }
        score[static_cast<std::size_t>(j)] = s / std::sqrt(static_cast<double>(dh));
        mx = std::max(mx, score[static_cast<std::size_t>(j)]);
      }
      double z = 0;
      for (std::int64_t j = 0; j < n; ++j) {
        if (visible(mask, i, j)) {
          z += std::exp(score[static_cast<std::size_t>(j)] - mx);
        }
      }
      for (std::int64_t c = 0; c < dh; ++c) {
        double s = 0;
        for (std::int64_t j = 0; j < n; ++j) {
          if (visible(mask, i, j)) {
            s += std::exp(score[static_cast<std::size_t>(j)] - mx) / z * v(j, g * dh + c);
          }
        }
        a(i, h * dh + c) = s;
      }
    }
  }
  return a;
}

// The whole layer: y [N, d] for x [N, d]; token i uses weights[set[i]].
inline mm::Tensor<double> reference(const mm::AttentionConfig& cfg,
                                    const mm::Tensor<double>& x,
                                    const std::vector<std::int32_t>& positions,
                                    const mm::AttentionMask& mask,
                                    const std::vector<RefWeights>& weights,
                                    const std::vector<int>& set) {
  const std::int64_t n = x.rows();
  const std::int64_t d = cfg.d;
  const std::int64_t dh = cfg.head_dim;
  const std::int64_t qw = cfg.heads * dh;
  const std::int64_t kw = cfg.kv_heads * dh;
  auto weights_of = [&](std::int64_t i) -> const RefWeights& {
    return weights[static_cast<std::size_t>(set[static_cast<std::size_t>(i)])];
  };
  mm::Tensor<double> q(n, qw), k(n, kw), v(n, kw), y(n, d);
  for (std::int64_t i = 0; i < n; ++i) {
    const RefWeights& w = weights_of(i);
    for (std::int64_t c = 0; c < qw; ++c) {
      double s = 0;
      for (std::int64_t j = 0; j < d; ++j) {
        s += x(i, j) * w.wq(j, c);
      }
      q(i, c) = s;
    }
    for (std::int64_t c = 0; c < kw; ++c) {
      double sk = 0;
      double sv = 0;
      for (std::int64_t j = 0; j < d; ++j) {
        sk += x(i, j) * w.wk(j, c);
        sv += x(i, j) * w.wv(j, c);
      }
      k(i, c) = sk;
      v(i, c) = sv;
    }
    for (std::int64_t h = 0; h < cfg.heads; ++h) {
      ref_norm(&q(i, h * dh), cfg, w.q_norm, w.q_norm_bias);
    }
    for (std::int64_t h = 0; h < cfg.kv_heads; ++h) {
      ref_norm(&k(i, h * dh), cfg, w.k_norm, w.k_norm_bias);
    }
  }
  const auto a = reference_core(cfg, std::move(q), std::move(k), v, positions, mask);
  for (std::int64_t i = 0; i < n; ++i) {
    const RefWeights& w = weights_of(i);
    for (std::int64_t c = 0; c < d; ++c) {
      double s = 0;
      for (std::int64_t j = 0; j < qw; ++j) {
        s += a(i, j) * w.wo(j, c);
      }
      y(i, c) = s;
    }
  }
  return y;
}

// ---- helpers ------------------------------------------------------------------

// ||a - b|| / ||b|| (Frobenius).
template <class T>
double rel_error(mm::View<const T> a, mm::View<const T> b) {
  double num = 0;
  double den = 0;
  for (std::int64_t i = 0; i < a.rows; ++i) {
    for (std::int64_t j = 0; j < a.cols; ++j) {
      const double d = static_cast<double>(a(i, j)) - static_cast<double>(b(i, j));
      num += d * d;
      den += static_cast<double>(b(i, j)) * static_cast<double>(b(i, j));
    }
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Positions start + (i mod seq).
inline std::vector<std::int32_t> make_positions(std::int64_t n,
                                                std::int64_t seq,
                                                std::int32_t start) {
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    p[static_cast<std::size_t>(i)] = start + static_cast<std::int32_t>(i % seq);
  }
  return p;
}

inline mm::Span<const std::int32_t> span_of(const std::vector<std::int32_t>& v) {
  return {v.data(), static_cast<std::int64_t>(v.size())};
}

// Central differences of L(v) at every element of v, against the analytic gradient g:
// ||g - numeric|| / ||numeric||.
inline double grad_rel_error(mm::View<double> v,
                             mm::View<const double> g,
                             const std::function<double()>& loss,
                             double h = 1e-5) {
  mm::Tensor<double> num(v.rows, v.cols);
  for (std::int64_t i = 0; i < v.rows; ++i) {
    for (std::int64_t j = 0; j < v.cols; ++j) {
      const double orig = v(i, j);
      v(i, j) = orig + h;
      const double lp = loss();
      v(i, j) = orig - h;
      const double lm = loss();
      v(i, j) = orig;
      num(i, j) = (lp - lm) / (2 * h);
    }
  }
  return rel_error<double>(g, num.view());
}

}  // namespace attention_reference

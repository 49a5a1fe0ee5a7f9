// test/layers/block_checks.hpp
//
// Shared by the block tests: a naive double-precision oracle of a transformer block (explicit
// loops over tokens, heads and keys; RMSNorm, QK-norm, RoPE and SwiGLU by their formulas; weights
// picked per token by modality, so it covers dense and MoT blocks), random weights, and helpers.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/block.hpp>
#include <mmsparse/testing/gradcheck.hpp>

namespace block_checks {

namespace mm = mmsparse;
using Row = std::vector<double>;
using Mat = std::vector<Row>;

// Weights by name (parameters() order), read-only views.
using Named = std::map<std::string, mm::View<const double>>;

template <class V>
Named named(const std::vector<mm::ParamInfo>& params, const std::vector<V>& views) {
  REQUIRE(params.size() == views.size());
  Named out;
  for (std::size_t i = 0; i < params.size(); ++i) {
    out[params[i].name] = views[i];
  }
  return out;
}
inline mm::View<const double> at(const Named& w, const std::string& name) {
  const auto it = w.find(name);
  INFO("weight " << name);
  REQUIRE(it != w.end());
  return it->second;
}

// Fills every weight: norm weights in [0.6, 1.4] (never the trivial 1), the rest N(0, scale^2).
template <class V>
void randomize(const std::vector<mm::ParamInfo>& params,
               const std::vector<V>& views,
               std::uint64_t seed,
               double scale = 0.4) {
  mm::Rng rng(seed);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& name = params[i].name;
    const bool norm = name.find("norm") != std::string::npos;
    if (norm) {
      rng.fill_uniform(views[i], 0.6, 1.4);
    } else {
      rng.fill_normal(views[i], name.find("router") != std::string::npos ? 1.0 : scale);
    }
  }
}

inline Mat to_mat(mm::View<const double> v) {
  Mat m(static_cast<std::size_t>(v.rows), Row(static_cast<std::size_t>(v.cols)));
  for (std::int64_t i = 0; i < v.rows; ++i) {
    for (std::int64_t j = 0; j < v.cols; ++j) {
      m[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] = v(i, j);
    }
  }
  return m;
}

inline Row matvec(const Row& x, mm::View<const double> w) {  // x [in] w [in, out]
  Row y(static_cast<std::size_t>(w.cols), 0.0);
  for (std::int64_t i = 0; i < w.rows; ++i) {
    for (std::int64_t j = 0; j < w.cols; ++j) {
      y[static_cast<std::size_t>(j)] += x[static_cast<std::size_t>(i)] * w(i, j);
    }
  }
  return y;
}

// x * w / sqrt(mean(x^2) + eps) over [begin, begin + w.cols).
inline void rms(Row& x, mm::View<const double> w, double eps, std::size_t begin = 0) {
  const auto n = static_cast<std::size_t>(w.cols);
  double ss = 0.0;
  for (std::size_t j = 0; j < n; ++j) {
    ss += x[begin + j] * x[begin + j];
  }
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (std::size_t j = 0; j < n; ++j) {
    x[begin + j] *= r * w(0, static_cast<std::int64_t>(j));
  }
}

// Interleaved RoPE of one head's dh values at `pos`.
inline void rope(Row& x, std::size_t begin, std::int64_t dh, double pos, double theta) {
  for (std::int64_t i = 0; i < dh / 2; ++i) {
    const double angle =
        pos * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dh));
    const double a = x[begin + 2 * i];
    const double c = x[begin + 2 * i + 1];
    x[begin + 2 * i] = std::cos(angle) * a - std::sin(angle) * c;
    x[begin + 2 * i + 1] = std::sin(angle) * a + std::cos(angle) * c;
  }
}

inline Row swiglu(const Row& x,
                  mm::View<const double> w1,
                  mm::View<const double> w3,
                  mm::View<const double> w2) {
  Row a = matvec(x, w1);
  const Row g = matvec(x, w3);
  for (std::size_t j = 0; j < a.size(); ++j) {
    a[j] = a[j] / (1.0 + std::exp(-a[j])) * g[j];
  }
  return matvec(a, w2);
}

// The weights of one modality of a block (dense: the same for every modality).
struct ModalityWeights {
  mm::View<const double> wq, wk, wv, wo, q_norm, k_norm, attn_norm, w1, w3, w2, ffn_norm;
};

inline ModalityWeights modality_weights(const Named& w,
                                        const std::string& attn,
                                        const std::string& ffn,
                                        bool qk_norm) {
  ModalityWeights m;
  m.wq = at(w, attn + "wq");
  m.wk = at(w, attn + "wk");
  m.wv = at(w, attn + "wv");
  m.wo = at(w, attn + "wo");
  if (qk_norm) {
    m.q_norm = at(w, attn + "q_norm");
    m.k_norm = at(w, attn + "k_norm");
  }
  m.attn_norm = at(w, attn + "norm");
  m.w1 = at(w, ffn + "w1");
  m.w3 = at(w, ffn + "w3");
  m.w2 = at(w, ffn + "w2");
  m.ffn_norm = at(w, ffn + "norm");
  return m;
}

// Causal attention of rows `in` (inputs of the projections) over each sequence, token t using the
// projections of its modality; returns the output projections (before any post-norm).
inline Mat attention(const Mat& in,
                     const std::vector<ModalityWeights>& w,
                     const std::vector<std::int32_t>& modality,
                     const std::vector<std::int32_t>& positions,
                     const std::vector<std::int64_t>& sequences,
                     const mm::BlockConfig& bc) {
  const std::int64_t h = bc.heads;
  const std::int64_t dh = bc.d / h;
  const std::size_t n = in.size();
  Mat q(n), k(n), v(n), out(n);
  for (std::size_t t = 0; t < n; ++t) {
    const auto& m = w[static_cast<std::size_t>(modality[t])];
    q[t] = matvec(in[t], m.wq);
    k[t] = matvec(in[t], m.wk);
    v[t] = matvec(in[t], m.wv);
    for (std::int64_t hh = 0; hh < h; ++hh) {
      const auto b = static_cast<std::size_t>(hh * dh);
      if (bc.qk_norm == mm::QkNorm::rms_norm) {
        rms(q[t], m.q_norm, bc.norm_eps, b);
        rms(k[t], m.k_norm, bc.norm_eps, b);
      }
      rope(q[t], b, dh, positions[t], bc.rope_theta);
      rope(k[t], b, dh, positions[t], bc.rope_theta);
    }
  }
  for (std::size_t s = 0; s + 1 < sequences.size(); ++s) {
    const auto r0 = static_cast<std::size_t>(sequences[s]);
    const auto r1 = static_cast<std::size_t>(sequences[s + 1]);
    for (std::size_t t = r0; t < r1; ++t) {
      Row a(static_cast<std::size_t>(h * dh), 0.0);
      for (std::int64_t hh = 0; hh < h; ++hh) {
        const auto b = static_cast<std::size_t>(hh * dh);
        std::vector<double> score;
        double mx = -1e300;
        for (std::size_t j = r0; j <= t; ++j) {
          double sc = 0.0;
          for (std::size_t c = 0; c < static_cast<std::size_t>(dh); ++c) {
            sc += q[t][b + c] * k[j][b + c];
          }
          sc /= std::sqrt(static_cast<double>(dh));
          score.push_back(sc);
          mx = std::max(mx, sc);
        }
        double sum = 0.0;
        for (auto& sc : score) {
          sc = std::exp(sc - mx);
          sum += sc;
        }
        for (std::size_t j = r0; j <= t; ++j) {
          for (std::size_t c = 0; c < static_cast<std::size_t>(dh); ++c) {
            a[b + c] += score[j - r0] / sum * v[j][b + c];
          }
        }
      }
      out[t] = matvec(a, w[static_cast<std::size_t>(modality[t])].wo);
    }
  }
  return out;
}

// The whole block, pre- or post-norm, weights by modality.
inline Mat block(const Mat& x,
                 const std::vector<ModalityWeights>& w,
                 const std::vector<std::int32_t>& modality,
                 const std::vector<std::int32_t>& positions,
                 const std::vector<std::int64_t>& sequences,
                 const mm::BlockConfig& bc) {
  const bool post = bc.norm_order == mm::NormOrder::post;
  const std::size_t n = x.size();
  Mat in = x;
  if (!post) {
    for (std::size_t t = 0; t < n; ++t) {
      rms(in[t], w[static_cast<std::size_t>(modality[t])].attn_norm, bc.norm_eps);
    }
  }
  Mat a = attention(in, w, modality, positions, sequences, bc);
  Mat h = x;
  for (std::size_t t = 0; t < n; ++t) {
    const auto& m = w[static_cast<std::size_t>(modality[t])];
    if (post) {
      rms(a[t], m.attn_norm, bc.norm_eps);
    }
    for (std::size_t j = 0; j < h[t].size(); ++j) {
      h[t][j] += a[t][j];
    }
  }
  Mat out = h;
  for (std::size_t t = 0; t < n; ++t) {
    const auto& m = w[static_cast<std::size_t>(modality[t])];
    Row f = h[t];
    if (!post) {
      rms(f, m.ffn_norm, bc.norm_eps);
    }
    f = swiglu(f, m.w1, m.w3, m.w2);
    if (post) {
      rms(f, m.ffn_norm, bc.norm_eps);
    }
    for (std::size_t j = 0; j < f.size(); ++j) {
      out[t][j] += f[j];
    }
  }
  return out;
}

// Max |a - b| / max(1, max |b|).
inline double rel_error(const Mat& a, const Mat& b) {
  double err = 0.0;
  double scale = 1.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (std::size_t j = 0; j < a[i].size(); ++j) {
      err = std::max(err, std::fabs(a[i][j] - b[i][j]));
      scale = std::max(scale, std::fabs(b[i][j]));
    }
  }
  return err / scale;
}

inline double dot(mm::View<const double> a, mm::View<const double> b) {
  double s = 0.0;
  for (std::int64_t i = 0; i < a.rows; ++i) {
    for (std::int64_t j = 0; j < a.cols; ++j) {
      s += a(i, j) * b(i, j);
    }
  }
  return s;
}

// A plan signature from the stats' routing traces (for gradcheck's plan-identity assertion).
inline mm::PlanSignature signature(const std::vector<mm::RoutingTrace>& traces) {
  mm::PlanSignature s;
  for (const auto& t : traces) {
    const auto base = static_cast<std::int64_t>(s.tokens.size());
    for (const auto o : t.offsets) {
      s.offsets.push_back(base + o);
    }
    s.tokens.insert(s.tokens.end(), t.tokens.begin(), t.tokens.end());
    s.dropped.push_back(0);
  }
  return s;
}

// B sequences of L tokens: positions 0..L-1 each, offsets {0, L, 2L, ...}.
struct Layout {
  std::vector<std::int32_t> positions;
  std::vector<std::int64_t> sequences;
};
inline Layout layout(std::int64_t b, std::int64_t l) {
  Layout out;
  for (std::int64_t s = 0; s < b; ++s) {
    out.sequences.push_back(s * l);
    for (std::int64_t t = 0; t < l; ++t) {
      out.positions.push_back(static_cast<std::int32_t>(t));
    }
  }
  out.sequences.push_back(b * l);
  return out;
}

}  // namespace block_checks

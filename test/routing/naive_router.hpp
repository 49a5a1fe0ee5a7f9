// test/routing/naive_router.hpp
//
// Independent oracles for the routing tests: plain loops over std::vector in double precision
// (logits, scores, stable sorts with the documented tie rules, capacities, GShard priority),
// random inputs from fixed seeds, plan comparison, and central finite differences.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/plan.hpp>

namespace naive {

using mmsparse::ModalityId;
using mmsparse::Tensor;
using Matrix = std::vector<std::vector<double>>;  // [rows][cols]

inline constexpr double inf = std::numeric_limits<double>::infinity();

// ---- inputs ---------------------------------------------------------------------------------

template <class T>
struct Inputs {
  Tensor<T> x;                      // [N, d]
  Tensor<mmsparse::router_t<T>> w;  // [d, columns]
  Tensor<ModalityId> modality;      // [N, 1]
};

// x ~ N(0, 1), w ~ N(0, w_scale^2), modality uniform over [0, num_modalities) (or all `only`).
template <class T>
Inputs<T> random_inputs(std::int64_t n,
                        std::int64_t d,
                        std::int64_t columns,
                        std::int64_t num_modalities,
                        std::uint64_t seed,
                        double w_scale = 1.0,
                        int only = -1) {
  mmsparse::Rng rng(seed);
  Inputs<T> in{
      Tensor<T>(n, d), Tensor<mmsparse::router_t<T>>(d, columns), Tensor<ModalityId>(n, 1)};
  for (std::int64_t i = 0; i < n * d; ++i) {
    in.x.data()[i] = mmsparse::scalar_cast<T>(rng.normal());
  }
  for (std::int64_t i = 0; i < d * columns; ++i) {
    in.w.data()[i] = static_cast<mmsparse::router_t<T>>(w_scale * rng.normal());
  }
  for (std::int64_t i = 0; i < n; ++i) {
    in.modality[i] = only >= 0 ? only : static_cast<ModalityId>(rng.integer(0, num_modalities));
  }
  return in;
}

// ---- scores ---------------------------------------------------------------------------------

// logits[r][c] = sum_j x(token_r, j) w(j, col0 + c) (+ logistic noise of (token_r, col0 + c)).
template <class T, class W>
Matrix logits(const Tensor<T>& x,
              const Tensor<W>& w,
              const std::vector<std::int32_t>& tokens,
              std::int64_t col0,
              std::int64_t cols,
              bool noise = false,
              std::uint64_t seed = 0) {
  Matrix z(tokens.size(), std::vector<double>(static_cast<std::size_t>(cols), 0.0));
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      double s = 0.0;
      for (std::int64_t j = 0; j < x.cols(); ++j) {
        s += mmsparse::scalar_cast<double>(x(tokens[r], j)) * static_cast<double>(w(j, col0 + c));
      }
      if (noise) {
        s += mmsparse::logistic_noise(seed,
                                      static_cast<std::uint64_t>(tokens[r] * w.cols() + col0 + c));
      }
      z[r][static_cast<std::size_t>(c)] = s;
    }
  }
  return z;
}

inline std::vector<std::int32_t> all_tokens(std::int64_t n) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  std::iota(t.begin(), t.end(), 0);
  return t;
}

inline std::vector<std::int32_t> tokens_of_modality(const Tensor<ModalityId>& modality,
                                                    ModalityId m) {
  std::vector<std::int32_t> t;
  for (std::int64_t i = 0; i < modality.rows(); ++i) {
    if (modality[i] == m) {
      t.push_back(static_cast<std::int32_t>(i));
    }
  }
  return t;
}

inline Matrix sigmoid(Matrix z) {
  for (auto& row : z) {
    for (auto& v : row) {
      v = 1.0 / (1.0 + std::exp(-v));
    }
  }
  return z;
}

inline Matrix softmax(Matrix z) {
  for (auto& row : z) {
    const double m = *std::max_element(row.begin(), row.end());
    double s = 0.0;
    for (auto& v : row) {
      v = std::exp(v - m);
      s += v;
    }
    for (auto& v : row) {
      v /= s;
    }
  }
  return z;
}

inline double logsumexp(const std::vector<double>& row) {
  const double m = *std::max_element(row.begin(), row.end());
  double s = 0.0;
  for (double v : row) {
    s += std::exp(v - m);
  }
  return m + std::log(s);
}

// ---- plans ----------------------------------------------------------------------------------

struct Plan {
  std::vector<std::vector<std::int32_t>> token;  // per expert, ascending
  std::vector<std::vector<double>> gate;         // per expert, per slot
  std::int64_t dropped = 0;
  double balance = 0.0;
  double z = 0.0;
  double margin = inf;  // smallest score gap deciding a selection (near-tie guard)
};

// Row offsets of routing groups: {0, n} or one per sequence.
inline std::vector<std::int64_t> groups_of(std::int64_t n, std::int64_t len) {
  std::vector<std::int64_t> g{0};
  if (len > 0) {
    for (std::int64_t r = len; r <= n; r += len) {
      g.push_back(r);
    }
  } else {
    g.push_back(n);
  }
  return g;
}

// Every expert (column of s) takes capacity(n_q) best rows of each group: higher score first,
// lower row on ties; slots ascending within each group, groups in order.
inline Plan top_tokens(const Matrix& s,
                       std::int64_t experts,
                       const std::vector<std::int64_t>& groups,
                       const std::function<std::int64_t(std::int64_t)>& capacity) {
  Plan p;
  p.token.resize(static_cast<std::size_t>(experts));
  p.gate.resize(static_cast<std::size_t>(experts));
  for (std::size_t q = 0; q + 1 < groups.size(); ++q) {
    const std::int64_t r0 = groups[q];
    const std::int64_t n_q = groups[q + 1] - r0;
    if (n_q == 0) {
      continue;
    }
    const std::int64_t c = capacity(n_q);
    for (std::int64_t e = 0; e < experts; ++e) {
      const auto ue = static_cast<std::size_t>(e);
      std::vector<std::int32_t> rows(static_cast<std::size_t>(n_q));
      std::iota(rows.begin(), rows.end(), static_cast<std::int32_t>(r0));
      std::stable_sort(rows.begin(), rows.end(), [&](std::int32_t a, std::int32_t b) {
        return s[static_cast<std::size_t>(a)][ue] > s[static_cast<std::size_t>(b)][ue];
      });
      if (c < n_q) {
        p.margin = std::min(p.margin,
                            s[static_cast<std::size_t>(rows[c - 1])][ue] -
                                s[static_cast<std::size_t>(rows[c])][ue]);
      }
      rows.resize(static_cast<std::size_t>(c));
      std::sort(rows.begin(), rows.end());
      for (auto r : rows) {
        p.token[ue].push_back(r);
        p.gate[ue].push_back(s[static_cast<std::size_t>(r)][ue]);
      }
    }
  }
  return p;
}

struct TokenChoiceOptions {
  std::int64_t k = 2;
  double capacity_factor = 1.25;
  bool dropless = false;
  bool renormalize = false;
  double balance_coef = 1e-2;
  double z_coef = 1e-3;
};

// GShard top-k with capacity per group (priority: choice-major, then token), balance loss with
// f_i = choices of i before drops / (n k), z-loss = coef * mean lse^2.
inline Plan token_choice(const Matrix& z,
                         const std::vector<std::int64_t>& groups,
                         const TokenChoiceOptions& o) {
  const auto n = static_cast<std::int64_t>(z.size());
  const std::int64_t e = n > 0 ? static_cast<std::int64_t>(z[0].size()) : 0;
  const std::int64_t k = o.k;
  const Matrix p = softmax(z);
  Plan plan;
  plan.token.resize(static_cast<std::size_t>(e));
  plan.gate.resize(static_cast<std::size_t>(e));
  std::vector<std::vector<std::int32_t>> choice(static_cast<std::size_t>(n));
  std::vector<std::vector<double>> gate(static_cast<std::size_t>(n));
  std::vector<double> count(static_cast<std::size_t>(e), 0.0);
  for (std::int64_t t = 0; t < n; ++t) {
    const auto& row = p[static_cast<std::size_t>(t)];
    std::vector<std::int32_t> idx(static_cast<std::size_t>(e));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t b) {
      return row[static_cast<std::size_t>(a)] > row[static_cast<std::size_t>(b)];
    });
    for (std::int64_t c = 0; c + 1 < e && c < k; ++c) {  // the order of the k+1 best matters
      plan.margin = std::min(
          plan.margin,
          row[static_cast<std::size_t>(idx[c])] - row[static_cast<std::size_t>(idx[c + 1])]);
    }
    idx.resize(static_cast<std::size_t>(k));
    double s = 0.0;
    for (auto i : idx) {
      s += row[static_cast<std::size_t>(i)];
      count[static_cast<std::size_t>(i)] += 1.0;
    }
    for (auto i : idx) {
      gate[static_cast<std::size_t>(t)].push_back(
          o.renormalize ? row[static_cast<std::size_t>(i)] / s : row[static_cast<std::size_t>(i)]);
    }
    choice[static_cast<std::size_t>(t)] = idx;
  }
  // kept[t][c]
  std::vector<std::vector<bool>> kept(static_cast<std::size_t>(n),
                                      std::vector<bool>(static_cast<std::size_t>(k), true));
  for (std::size_t q = 0; q + 1 < groups.size(); ++q) {
    const std::int64_t r0 = groups[q];
    const std::int64_t n_q = groups[q + 1] - r0;
    if (n_q == 0 || o.dropless) {
      continue;
    }
    const std::int64_t cap = mmsparse::token_choice_capacity(o.capacity_factor, k, n_q, e, false);
    std::vector<std::int64_t> load(static_cast<std::size_t>(e), 0);
    for (std::int64_t c = 0; c < k; ++c) {
      for (std::int64_t t = r0; t < r0 + n_q; ++t) {
        const auto x = static_cast<std::size_t>(
            choice[static_cast<std::size_t>(t)][static_cast<std::size_t>(c)]);
        if (load[x] < cap) {
          ++load[x];
        } else {
          kept[static_cast<std::size_t>(t)][static_cast<std::size_t>(c)] = false;
          ++plan.dropped;
        }
      }
    }
  }
  for (std::int64_t t = 0; t < n; ++t) {
    for (std::int64_t c = 0; c < k; ++c) {
      const auto ut = static_cast<std::size_t>(t);
      const auto uc = static_cast<std::size_t>(c);
      if (kept[ut][uc]) {
        const auto x = static_cast<std::size_t>(choice[ut][uc]);
        plan.token[x].push_back(static_cast<std::int32_t>(t));
        plan.gate[x].push_back(gate[ut][uc]);
      }
    }
  }
  if (n > 0) {
    double bal = 0.0;
    for (std::int64_t i = 0; i < e; ++i) {
      double mean = 0.0;
      for (std::int64_t t = 0; t < n; ++t) {
        mean +=
            p[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)] / static_cast<double>(n);
      }
      bal += count[static_cast<std::size_t>(i)] / static_cast<double>(n * k) * mean;
    }
    plan.balance = o.balance_coef * static_cast<double>(e) * bal;
    double zz = 0.0;
    for (const auto& row : z) {
      const double l = logsumexp(row);
      zz += l * l / static_cast<double>(n);
    }
    plan.z = o.z_coef * zz;
  }
  return plan;
}

// Maps a group plan's rows to global tokens (ascending `tokens`).
inline Plan to_global(Plan p, const std::vector<std::int32_t>& tokens) {
  for (auto& seg : p.token) {
    for (auto& t : seg) {
      t = tokens[static_cast<std::size_t>(t)];
    }
  }
  return p;
}

// Concatenates group plans (experts numbered group after group).
inline Plan concat(const std::vector<Plan>& parts) {
  Plan p;
  for (const auto& q : parts) {
    p.token.insert(p.token.end(), q.token.begin(), q.token.end());
    p.gate.insert(p.gate.end(), q.gate.begin(), q.gate.end());
    p.dropped += q.dropped;
    p.balance += q.balance;
    p.z += q.z;
    p.margin = std::min(p.margin, q.margin);
  }
  return p;
}

// Routing groups of the tokens `tokens` (ascending) when sequences have length len.
inline std::vector<std::int64_t> sequence_groups(const std::vector<std::int32_t>& tokens,
                                                 std::int64_t n,
                                                 std::int64_t len) {
  if (len == 0) {
    return {0, static_cast<std::int64_t>(tokens.size())};
  }
  std::vector<std::int64_t> g{0};
  std::size_t i = 0;
  for (std::int64_t s = 1; s * len <= n; ++s) {
    while (i < tokens.size() && tokens[i] < s * len) {
      ++i;
    }
    g.push_back(static_cast<std::int64_t>(i));
  }
  return g;
}

// ---- comparison -----------------------------------------------------------------------------

template <class W>
void require_plan(const mmsparse::RoutingPlan<W>& plan, const Plan& ref, double gate_tol) {
  REQUIRE(plan.num_experts == static_cast<std::int64_t>(ref.token.size()));
  REQUIRE(plan.offsets.size() == ref.token.size() + 1);
  REQUIRE(plan.offsets.front() == 0);
  REQUIRE(plan.token.rows() == plan.slots());
  REQUIRE(plan.gate.rows() == plan.slots());
  for (std::size_t e = 0; e < ref.token.size(); ++e) {
    INFO("expert " << e);
    REQUIRE(plan.tokens_of(static_cast<std::int64_t>(e)) ==
            static_cast<std::int64_t>(ref.token[e].size()));
    const std::int64_t o = plan.offsets[e];
    for (std::size_t j = 0; j < ref.token[e].size(); ++j) {
      INFO("slot " << j);
      REQUIRE(plan.token[o + static_cast<std::int64_t>(j)] == ref.token[e][j]);
      REQUIRE(static_cast<double>(plan.gate[o + static_cast<std::int64_t>(j)]) ==
              Approx(ref.gate[e][j]).margin(gate_tol).epsilon(gate_tol));
    }
  }
  REQUIRE(plan.dropped == ref.dropped);
}

// Offsets and tokens of a plan, for "same plan" checks.
template <class W>
std::vector<std::int64_t> signature(const mmsparse::RoutingPlan<W>& plan) {
  std::vector<std::int64_t> s(plan.offsets.begin(), plan.offsets.end());
  for (std::int64_t i = 0; i < plan.slots(); ++i) {
    s.push_back(plan.token[i]);
  }
  return s;
}

template <class W>
std::vector<double> gates(const mmsparse::RoutingPlan<W>& plan) {
  std::vector<double> g;
  for (std::int64_t i = 0; i < plan.slots(); ++i) {
    g.push_back(static_cast<double>(plan.gate[i]));
  }
  return g;
}

// ---- finite differences ---------------------------------------------------------------------

struct Eval {
  std::vector<std::int64_t> signature;
  double loss = 0.0;
};

// Central differences of f() with respect to every entry of `t` (perturbed in place); requires
// the plan signature to stay that of the unperturbed point.
template <class F>
Tensor<double> central_differences(Tensor<double>& t, F&& f, double h = 1e-6) {
  const Eval base = f();
  Tensor<double> g(t.rows(), t.cols());
  for (std::int64_t i = 0; i < t.size(); ++i) {
    const double v = t.data()[i];
    t.data()[i] = v + h;
    const Eval plus = f();
    t.data()[i] = v - h;
    const Eval minus = f();
    t.data()[i] = v;
    INFO("entry " << i);
    REQUIRE(plus.signature == base.signature);
    REQUIRE(minus.signature == base.signature);
    g.data()[i] = (plus.loss - minus.loss) / (2.0 * h);
  }
  return g;
}

// ||a - b|| / max(||b||, 1e-12)
inline double relative_error(const Tensor<double>& a, const Tensor<double>& b) {
  double num = 0.0;
  double den = 0.0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    num += (a.data()[i] - b.data()[i]) * (a.data()[i] - b.data()[i]);
    den += b.data()[i] * b.data()[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

inline double max_abs(const Tensor<double>& a) {
  double m = 0.0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::fabs(a.data()[i]));
  }
  return m;
}

// Random fixed weights c_s for L = sum_s c_s gate_s.
inline std::vector<double> loss_weights(std::int64_t slots, std::uint64_t seed) {
  mmsparse::Rng rng(seed);
  std::vector<double> c(static_cast<std::size_t>(slots));
  for (auto& v : c) {
    v = rng.normal();
  }
  return c;
}

template <class W>
double weighted_gates(const mmsparse::RoutingPlan<W>& plan, const std::vector<double>& c) {
  double l = 0.0;
  for (std::int64_t s = 0; s < plan.slots(); ++s) {
    l += c[static_cast<std::size_t>(s)] * static_cast<double>(plan.gate[s]);
  }
  return l;
}

}  // namespace naive

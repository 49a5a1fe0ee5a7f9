// test/dispatch/dispatch_checks.hpp
//
// Checks every dispatch scheme must pass, against plain loops over the plan: the layout holds every
// plan slot exactly once inside its expert's segment, with the slot's token and gate; gather,
// gate-weighted combine and both backward steps agree with the naive sums.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/dispatch/layout.hpp>
#include <mmsparse/routing/plan.hpp>

namespace mmsparse::test {

// A host plan over `tokens` tokens and `experts` experts: expert e takes each token with
// probability `density` (ascending), gates uniform in [0.1, 1]; expert `empty_expert` (if in
// range) takes none.
template <class W>
[[nodiscard]] RoutingPlan<W> random_plan(std::int64_t tokens,
                                         std::int64_t experts,
                                         double density,
                                         std::uint64_t seed,
                                         std::int64_t empty_expert = -1) {
  Rng rng(seed);
  std::vector<std::int32_t> token;
  std::vector<W> gate;
  RoutingPlan<W> plan;
  plan.num_tokens = tokens;
  plan.num_experts = experts;
  plan.offsets.push_back(0);
  for (std::int64_t e = 0; e < experts; ++e) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      const bool take = rng.uniform() < density;
      if (take && e != empty_expert) {
        token.push_back(static_cast<std::int32_t>(t));
        gate.push_back(static_cast<W>(rng.uniform(0.1, 1.0)));
      }
    }
    plan.offsets.push_back(static_cast<std::int64_t>(token.size()));
  }
  const auto s = static_cast<std::int64_t>(token.size());
  plan.token = Tensor<std::int32_t>(s, 1);
  plan.gate = Tensor<W>(s, 1);
  std::copy(token.begin(), token.end(), plan.token.data());
  std::copy(gate.begin(), gate.end(), plan.gate.data());
  return plan;
}

// Host storage of a layout (the arrays a layer keeps in its Saved context).
template <class W>
struct LayoutStorage {
  Tensor<std::int32_t> token, slot;
  Tensor<W> gate;
  DispatchLayout<W> layout;
  explicit LayoutStorage(std::int64_t rows) : token(rows, 1), slot(rows, 1), gate(rows, 1) {
    token.fill(-7);
    slot.fill(-7);
    gate.fill(W{-7});
    layout.token = token.span();
    layout.slot = slot.span();
    layout.gate = gate.span();
  }
};

// Expert of each plan slot.
template <class W>
std::vector<std::int64_t> slot_experts(const RoutingPlan<W>& plan) {
  std::vector<std::int64_t> e_of(static_cast<std::size_t>(plan.slots()));
  for (std::int64_t e = 0; e < plan.num_experts; ++e) {
    for (std::int64_t s = plan.offsets[e]; s < plan.offsets[e + 1]; ++s) {
      e_of[static_cast<std::size_t>(s)] = e;
    }
  }
  return e_of;
}

// The layout invariants shared by every scheme. `unselected_token(r)`: the token a row without a
// slot must read (-1 for padding, r mod N for the dense mask).
template <class W, class F>
void check_layout(const DispatchLayout<W>& layout, const RoutingPlan<W>& plan, F unselected_token) {
  REQUIRE(layout.experts() == plan.num_experts);
  REQUIRE(layout.offsets.front() == 0);
  REQUIRE(layout.offsets.back() == layout.rows());
  const auto e_of = slot_experts(plan);
  std::vector<int> seen(static_cast<std::size_t>(plan.slots()), 0);
  for (std::int64_t e = 0; e < layout.experts(); ++e) {
    REQUIRE(layout.offsets[e] <= layout.offsets[e + 1]);
    for (std::int64_t r = layout.offsets[e]; r < layout.offsets[e + 1]; ++r) {
      const std::int32_t s = layout.slot[r];
      if (s >= 0) {
        REQUIRE(s < plan.slots());
        ++seen[static_cast<std::size_t>(s)];
        REQUIRE(e_of[static_cast<std::size_t>(s)] == e);
        REQUIRE(layout.token[r] == plan.token[s]);
        REQUIRE(layout.gate[r] == plan.gate[s]);
      } else {
        REQUIRE(s == -1);
        REQUIRE(layout.gate[r] == W{0});
        REQUIRE(layout.token[r] == unselected_token(r));
      }
    }
  }
  for (int count : seen) {
    REQUIRE(count == 1);
  }
}

inline double max_abs_diff(const double* a, const double* b, std::int64_t n) {
  double m = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    m = std::max(m, std::abs(a[i] - b[i]));
  }
  return m;
}

// Gather -> per-expert scale (1 + e) as a stand-in expert -> combine, and the two backward steps,
// against naive loops over the plan's slots.
template <class T, class D>
void check_round_trip(const D& scheme,
                      const RoutingPlan<router_t<T>>& plan,
                      std::int64_t d,
                      std::uint64_t seed) {
  using W = router_t<T>;
  CpuBackend<T> b;
  const std::int64_t n = plan.num_tokens;
  const double tol = std::is_same_v<T, double> ? 1e-13 : 1e-5;
  Rng rng(seed);
  auto x = rng.normal_tensor<T>(n, d);
  auto dy = rng.normal_tensor<T>(n, d);
  const std::int64_t rows = scheme.rows(plan);
  LayoutStorage<W> storage(rows);
  make_layout(b, storage.layout, scheme, plan);
  const auto& layout = storage.layout;

  Tensor<T> xg(rows, d);
  dispatch_gather(b, xg.view(), View<const T>(x.view()), layout);
  Tensor<T> o(rows, d);  // stand-in expert e: o = (1 + e) * x
  for (std::int64_t e = 0; e < layout.experts(); ++e) {
    for (std::int64_t r = layout.offsets[e]; r < layout.offsets[e + 1]; ++r) {
      for (std::int64_t j = 0; j < d; ++j) {
        const T want = layout.token[r] >= 0 ? x(layout.token[r], j) : T{0};
        REQUIRE(xg(r, j) == want);
        o(r, j) = static_cast<T>(static_cast<double>(e + 1) * xg(r, j));
      }
    }
  }
  Tensor<T> y(n, d);
  y.fill(T{123});  // overwritten
  dispatch_combine(b, y.view(), View<const T>(o.view()), layout);

  // Naive: y_t = sum over slots (e, t, g) of g (1 + e) x_t; dgate_s = (1 + e) <x_t, dy_t>.
  const auto e_of = slot_experts(plan);
  Tensor<double> y_ref(n, d);
  y_ref.fill(0.0);
  std::vector<double> dgate_ref(static_cast<std::size_t>(plan.slots()));
  for (std::int64_t s = 0; s < plan.slots(); ++s) {
    const std::int64_t t = plan.token[s];
    const double scale = static_cast<double>(e_of[static_cast<std::size_t>(s)] + 1);
    double dot = 0;
    for (std::int64_t j = 0; j < d; ++j) {
      y_ref(t, j) += static_cast<double>(plan.gate[s]) * scale * static_cast<double>(x(t, j));
      dot += scale * static_cast<double>(x(t, j)) * static_cast<double>(dy(t, j));
    }
    dgate_ref[static_cast<std::size_t>(s)] = dot;
  }
  for (std::int64_t t = 0; t < n; ++t) {
    for (std::int64_t j = 0; j < d; ++j) {
      REQUIRE(std::abs(static_cast<double>(y(t, j)) - y_ref(t, j)) <=
              tol * (1 + std::abs(y_ref(t, j))));
    }
  }

  Tensor<W> dgate(plan.slots(), 1);
  dgate.fill(W{-5});
  Tensor<T> dout(rows, d);
  dispatch_combine_backward(
      b, dgate.span(), dout.view(), View<const T>(dy.view()), View<const T>(o.view()), layout);
  for (std::int64_t s = 0; s < plan.slots(); ++s) {
    const double want = dgate_ref[static_cast<std::size_t>(s)];
    REQUIRE(std::abs(static_cast<double>(dgate[s]) - want) <= tol * (1 + std::abs(want)) * d);
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < d; ++j) {
      const double want = layout.token[r] >= 0 ? static_cast<double>(layout.gate[r]) *
                                                     static_cast<double>(dy(layout.token[r], j))
                                               : 0.0;
      REQUIRE(std::abs(static_cast<double>(dout(r, j)) - want) <= tol * (1 + std::abs(want)));
    }
  }

  // dx[t] += sum of the rows of t (here dxg = o).
  Tensor<T> dx(n, d);
  dx.fill(T{1});
  dispatch_gather_backward(b, dx.view(), View<const T>(o.view()), layout);
  Tensor<double> dx_ref(n, d);
  dx_ref.fill(1.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    if (layout.token[r] >= 0) {
      for (std::int64_t j = 0; j < d; ++j) {
        dx_ref(layout.token[r], j) += static_cast<double>(o(r, j));
      }
    }
  }
  for (std::int64_t t = 0; t < n; ++t) {
    for (std::int64_t j = 0; j < d; ++j) {
      REQUIRE(std::abs(static_cast<double>(dx(t, j)) - dx_ref(t, j)) <=
              tol * (1 + std::abs(dx_ref(t, j))) * 4);
    }
  }
}

}  // namespace mmsparse::test

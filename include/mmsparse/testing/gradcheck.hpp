// mmsparse/testing/gradcheck.hpp
//
// A public gradient checker (dlib's test_layer): central differences in double precision,
//   numeric_i = (L(v + eps e_i) - L(v - eps e_i)) / (2 eps),
// over every element (or a fixed random subset) of chosen tensors, compared with the analytic
// gradient. Given a plan getter, it asserts that the routing decisions are identical after every
// perturbation: a flipped decision throws, naming the element, instead of passing as noise.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/view.hpp>
#include <mmsparse/routing/plan.hpp>

namespace mmsparse {

// The discrete part of one or more routing plans: which token sits in which expert slot.
struct PlanSignature {
  std::vector<std::int64_t> offsets;
  std::vector<std::int32_t> tokens;
  std::vector<std::int64_t> dropped;

  // Appends a host plan (call once per plan for layers with several routers).
  template <class W>
  void append(const RoutingPlan<W, host_space>& plan) {
    const std::int64_t base = tokens.empty() ? 0 : static_cast<std::int64_t>(tokens.size());
    for (const std::int64_t o : plan.offsets) {
      offsets.push_back(base + o);
    }
    const auto t = plan.tokens();
    tokens.insert(tokens.end(), t.begin(), t.end());
    dropped.push_back(plan.dropped);
  }
  friend bool operator==(const PlanSignature&, const PlanSignature&) = default;

  // A short description of the first difference from `o`.
  [[nodiscard]] std::string difference(const PlanSignature& o) const {
    std::ostringstream os;
    if (offsets != o.offsets) {
      os << "segment offsets differ";
    } else if (dropped != o.dropped) {
      os << "dropped counts differ";
    } else {
      for (std::size_t s = 0; s < tokens.size(); ++s) {
        if (tokens[s] != o.tokens[s]) {
          os << "slot " << s << " holds token " << o.tokens[s] << " instead of " << tokens[s];
          break;
        }
      }
    }
    return os.str();
  }
};

template <class W>
[[nodiscard]] PlanSignature plan_signature(const RoutingPlan<W, host_space>& plan) {
  PlanSignature s;
  s.append(plan);
  return s;
}

// One tensor to check: its values (perturbed in place, restored after) and its analytic gradient.
struct GradcheckInput {
  std::string name;
  View<double> value;
  View<const double> grad;
};

struct GradcheckOptions {
  double eps = 1e-6;                           // central-difference step
  std::int64_t max_elements = 0;               // per input; 0 = every element, else a random subset
  std::uint64_t seed = 0x9e3779b97f4a7c15ull;  // picks the subset
};

struct GradcheckResult {
  std::string name;
  std::int64_t checked = 0;     // elements compared
  double max_abs_error = 0.0;   // max_i |analytic_i - numeric_i|
  double scale = 0.0;           // max_i max(|analytic_i|, |numeric_i|)
  double rel_error = 0.0;       // max_abs_error / scale (0 when both gradients vanish)
  std::int64_t worst_row = -1;  // element of the largest error
  std::int64_t worst_col = -1;
  double worst_analytic = 0.0;
  double worst_numeric = 0.0;
};

struct GradcheckReport {
  std::vector<GradcheckResult> results;

  [[nodiscard]] double max_rel_error() const {
    double m = 0.0;
    for (const auto& r : results) {
      m = std::max(m, r.rel_error);
    }
    return m;
  }
  [[nodiscard]] bool ok(double tolerance) const {
    return max_rel_error() < tolerance;
  }
  [[nodiscard]] std::string str() const {
    std::ostringstream os;
    os.precision(3);
    for (const auto& r : results) {
      os << r.name << ": rel_error " << std::scientific << r.rel_error << " (" << r.checked
         << " elements, scale " << r.scale << "; worst (" << r.worst_row << ", " << r.worst_col
         << ") analytic " << r.worst_analytic << " numeric " << r.worst_numeric << ")\n";
    }
    return os.str();
  }
};

// `loss()` evaluates the scalar loss at the current values (a forward pass, e.g. under NoGrad).
// `plan()` (optional) returns the routing decisions of the last loss() call.
template <class Loss>
[[nodiscard]] GradcheckReport gradcheck(Loss&& loss,
                                        std::span<const GradcheckInput> inputs,
                                        const GradcheckOptions& options = {},
                                        const std::function<PlanSignature()>& plan = {}) {
  MMSPARSE_CHECK(options.eps > 0.0, "gradcheck", "eps", "> 0", options.eps);
  for (const auto& in : inputs) {
    MMSPARSE_CHECK(in.grad.shape() == in.value.shape(),
                   "gradcheck",
                   in.name + ".grad",
                   in.value.shape(),
                   in.grad.shape());
  }
  PlanSignature reference;
  if (plan) {
    (void)loss();
    reference = plan();
  }
  auto eval = [&](const GradcheckInput& in, std::int64_t i, std::int64_t j, double delta) {
    const double saved = in.value(i, j);
    in.value(i, j) = saved + delta;
    const double l = static_cast<double>(loss());
    in.value(i, j) = saved;
    if (plan) {
      const PlanSignature now = plan();
      if (!(now == reference)) {
        std::ostringstream os;
        os << "a different plan after " << (delta > 0 ? "+" : "") << delta << " on " << in.name
           << "(" << i << ", " << j << "): " << reference.difference(now)
           << " (a decision lies within eps of a tie: change the seed or the inputs)";
        throw Error(
            detail::format_error("gradcheck", "plan", "the unperturbed routing plan", os.str()));
      }
    }
    return l;
  };

  GradcheckReport report;
  Rng rng(options.seed);
  for (const auto& in : inputs) {
    GradcheckResult r;
    r.name = in.name;
    const std::int64_t n = in.value.size();
    std::vector<std::int64_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::int64_t count = n;
    if (options.max_elements > 0 && options.max_elements < n) {
      count = options.max_elements;
      for (std::int64_t k = 0; k < count; ++k) {  // partial Fisher-Yates: a subset without repeats
        std::swap(order[static_cast<std::size_t>(k)],
                  order[static_cast<std::size_t>(rng.integer(k, n))]);
      }
      std::sort(order.begin(), order.begin() + count);
    }
    for (std::int64_t k = 0; k < count; ++k) {
      const std::int64_t i = order[static_cast<std::size_t>(k)] / in.value.cols;
      const std::int64_t j = order[static_cast<std::size_t>(k)] % in.value.cols;
      const double numeric =
          (eval(in, i, j, options.eps) - eval(in, i, j, -options.eps)) / (2.0 * options.eps);
      const double analytic = in.grad(i, j);
      const double err = std::fabs(analytic - numeric);
      r.scale = std::max({r.scale, std::fabs(analytic), std::fabs(numeric)});
      if (err > r.max_abs_error || r.worst_row < 0) {
        r.max_abs_error = std::max(r.max_abs_error, err);
        r.worst_row = i;
        r.worst_col = j;
        r.worst_analytic = analytic;
        r.worst_numeric = numeric;
      }
    }
    r.checked = count;
    r.rel_error = r.scale > 0.0 ? r.max_abs_error / r.scale : 0.0;
    report.results.push_back(std::move(r));
  }
  return report;
}

}  // namespace mmsparse

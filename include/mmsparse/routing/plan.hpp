// mmsparse/routing/plan.hpp
//
// The one data structure every router produces and every dispatch scheme reads
// (DESIGN.md "the routing plan"): for each expert e, a contiguous segment of
// slots [offsets[e], offsets[e+1]) holding (token index, gate weight) pairs.
// Within a segment tokens are in ascending order. Gates are router scalars
// (router_t<T>: fp32 for bf16/fp32 activations, fp64 for the double oracle).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mmsparse {

// Auxiliary losses a router returns (already multiplied by their coefficients).
template <class W>
struct AuxLosses {
  W balance{};  // Switch load balance: coef * E * sum_i f_i P_i   (token choice only)
  W z{};        // router z-loss: coef * mean_t logsumexp(logits_t)^2   (token choice only)
  [[nodiscard]] W total() const {
    return balance + z;
  }
};

template <class W, class Space = host_space>
struct RoutingPlan {
  using gate_type = W;
  using space = Space;

  std::int64_t num_tokens = 0;
  std::int64_t num_experts = 0;
  std::vector<std::int64_t> offsets;  // [E + 1] on the host
  Tensor<std::int32_t, Space> token;  // [S, 1] token of each slot
  Tensor<W, Space> gate;              // [S, 1] gate weight of each slot
  std::int64_t dropped = 0;           // (token, choice) pairs dropped by a capacity
  AuxLosses<W> aux;

  [[nodiscard]] std::int64_t slots() const {
    return offsets.empty() ? 0 : offsets.back();
  }
  [[nodiscard]] std::int64_t tokens_of(std::int64_t e) const {
    return offsets[static_cast<std::size_t>(e + 1)] - offsets[static_cast<std::size_t>(e)];
  }
  [[nodiscard]] std::vector<std::int64_t> tokens_per_expert() const {
    std::vector<std::int64_t> n(static_cast<std::size_t>(num_experts));
    for (std::int64_t e = 0; e < num_experts; ++e) {
      n[static_cast<std::size_t>(e)] = tokens_of(e);
    }
    return n;
  }
  [[nodiscard]] std::span<const std::int64_t> segments() const {
    return offsets;
  }
  [[nodiscard]] Span<const std::int32_t, Space> tokens() const {
    return token.span();
  }
  [[nodiscard]] Span<const W, Space> gates() const {
    return gate.span();
  }
};

}  // namespace mmsparse

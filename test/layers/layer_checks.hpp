// test/layers/layer_checks.hpp
//
// Shared by the layer tests: the router variant x dispatch scheme x scalar type lists, relative
// errors, and random inputs of a case.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>

#include "cases/sparse_ffn_cases.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/dispatch/dense_mask.hpp>
#include <mmsparse/dispatch/padded_capacity.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>

namespace mmsparse::test {

// One test instantiation: a router variant (cases/sparse_ffn_cases.hpp), a dispatch scheme, a
// scalar.
template <class V, class D, class T>
struct Combo {
  using variant = V;
  using dispatch = D;
  using scalar = T;
  using layer = SparseFfn<T, typename V::router, D, CpuBackend<T>>;
};

using Variants = std::tuple<cases::HardVariant,
                            cases::TokenChoiceCapacityVariant,
                            cases::TokenChoiceDroplessVariant,
                            cases::ExpertChoiceSigmoidVariant,
                            cases::ExpertChoiceSoftmaxVariant,
                            cases::DepthVariant,
                            cases::MomaExpertChoiceVariant,
                            cases::MomaTokenChoiceVariant>;
using Dispatches = std::tuple<SortedGather, PaddedCapacity, DenseMask>;
using Scalars = std::tuple<float, double>;

template <class... Ts>
using cat_t = decltype(std::tuple_cat(std::declval<Ts>()...));

template <class V, class D, class Ss>
struct combos_of;
template <class V, class D, class... S>
struct combos_of<V, D, std::tuple<S...>> {
  using type = std::tuple<Combo<V, D, S>...>;
};
template <class V, class Ds, class Ss>
struct combos_over_dispatch;
template <class V, class... D, class Ss>
struct combos_over_dispatch<V, std::tuple<D...>, Ss> {
  using type = cat_t<typename combos_of<V, D, Ss>::type...>;
};
template <class Vs, class Ds, class Ss>
struct product;
template <class... V, class Ds, class Ss>
struct product<std::tuple<V...>, Ds, Ss> {
  using type = cat_t<typename combos_over_dispatch<V, Ds, Ss>::type...>;
};

// Every router variant x dispatch scheme x scalar.
using AllCombos = typename product<Variants, Dispatches, Scalars>::type;

// ||a - b|| / ||b|| (Frobenius); 0 when both are empty or zero.
template <class A, class B>
double rel_error(const A& a, const B& b, std::int64_t n) {
  double num = 0;
  double den = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double x = static_cast<double>(a[i]);
    const double y = static_cast<double>(b[i]);
    num += (x - y) * (x - y);
    den += y * y;
  }
  if (num == 0) {
    return 0;
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

template <class T, class U>
double rel_error(const Tensor<T>& a, const Tensor<U>& b) {
  REQUIRE(a.shape() == b.shape());
  return rel_error(a.data(), b.data(), a.size());
}

// x [N, d] of a case (standard normal, fixed seed).
template <class T>
Tensor<T> input_of(const cases::SparseFfnCase& c) {
  Rng rng(c.seed * 31 + 5);
  return rng.normal_tensor<T>(c.tokens, c.d);
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace mmsparse::test

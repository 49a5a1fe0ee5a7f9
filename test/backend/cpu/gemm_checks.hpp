// test/backend/cpu/gemm_checks.hpp
//
// Shared by the GEMM tests (eigen_gemm, onednn_gemm, skinny_gemm): random strided operands, so
// every product is checked on views whose row stride exceeds their width.
#pragma once

#include <algorithm>
#include <cstdint>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gemm_checks {

// A [rows, cols] matrix in a buffer with `pad` extra columns per row; padding is random too.
template <class T>
struct Padded {
  Tensor<T> storage;
  View<T> view;
  [[nodiscard]] View<const T> cview() const {
    return view;
  }
};

template <class T>
Padded<T> random_padded(std::int64_t rows,
                        std::int64_t cols,
                        std::int64_t pad,
                        std::uint64_t seed) {
  Padded<T> p;
  p.storage = Tensor<T>(std::max<std::int64_t>(rows, 1), cols + pad);
  Rng rng(seed);
  for (std::int64_t i = 0; i < p.storage.size(); ++i) {
    p.storage.data()[i] = scalar_cast<T>(rng.normal());
  }
  p.view = View<T>(p.storage.data(), rows, cols, cols + pad);
  return p;
}

}  // namespace mmsparse::gemm_checks

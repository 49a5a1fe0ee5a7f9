// mmsparse/backend/cpu/eigen_gemm.hpp
//
// GEMM provider on Eigen 3.4: C = alpha * op(A) * op(B) + beta * C on strided
// row-major views. The fallback provider of the CPU backend (oneDNN is faster
// where installed, see onednn_gemm.hpp); Eigen parallelises with OpenMP.
// bf16 operands are widened to float, multiplied, and rounded back.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::cpu {

template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
auto eigen_map(View<T> v) {
  using M =
      std::conditional_t<std::is_const_v<T>, const RowMajor<std::remove_const_t<T>>, RowMajor<T>>;
  return Eigen::Map<M, Eigen::Unaligned, Eigen::OuterStride<>>(
      v.data, v.rows, v.cols, Eigen::OuterStride<>(v.stride));
}

struct EigenGemm {
  static constexpr const char* name = "eigen";

  template <class T>
  void gemm(View<T> c,
            View<const T> a,
            Trans ta,
            View<const T> b,
            Trans tb,
            double alpha,
            double beta) const {
    if constexpr (std::is_same_v<T, bf16>) {
      gemm_widened(c, a, ta, b, tb, alpha, beta);
    } else {
      if (c.rows == 0 || c.cols == 0) {
        return;
      }
      auto C = eigen_map(c);
      const auto k = ta == Trans::no ? a.cols : a.rows;
      if (k == 0) {
        if (beta == 0.0) {
          C.setZero();
        } else {
          C *= static_cast<T>(beta);
        }
        return;
      }
      auto A = eigen_map(a);
      auto B = eigen_map(b);
      const T al = static_cast<T>(alpha);
      if (beta == 0.0) {
        if (ta == Trans::no && tb == Trans::no) {
          C.noalias() = al * (A * B);
        } else if (ta == Trans::no) {
          C.noalias() = al * (A * B.transpose());
        } else if (tb == Trans::no) {
          C.noalias() = al * (A.transpose() * B);
        } else {
          C.noalias() = al * (A.transpose() * B.transpose());
        }
      } else {
        if (beta != 1.0) {
          C *= static_cast<T>(beta);
        }
        if (ta == Trans::no && tb == Trans::no) {
          C.noalias() += al * (A * B);
        } else if (ta == Trans::no) {
          C.noalias() += al * (A * B.transpose());
        } else if (tb == Trans::no) {
          C.noalias() += al * (A.transpose() * B);
        } else {
          C.noalias() += al * (A.transpose() * B.transpose());
        }
      }
    }
  }

 private:
  static RowMajor<float> widen(View<const bf16> v) {
    RowMajor<float> m(v.rows, v.cols);
    for (std::int64_t i = 0; i < v.rows; ++i) {
      for (std::int64_t j = 0; j < v.cols; ++j) {
        m(i, j) = static_cast<float>(v(i, j));
      }
    }
    return m;
  }
  void gemm_widened(View<bf16> c,
                    View<const bf16> a,
                    Trans ta,
                    View<const bf16> b,
                    Trans tb,
                    double alpha,
                    double beta) const {
    RowMajor<float> A = widen(a);
    RowMajor<float> B = widen(b);
    RowMajor<float> C = widen(View<const bf16>(c));
    View<float> cv(C.data(), C.rows(), C.cols());
    gemm<float>(cv,
                View<const float>(A.data(), A.rows(), A.cols()),
                ta,
                View<const float>(B.data(), B.rows(), B.cols()),
                tb,
                alpha,
                beta);
    for (std::int64_t i = 0; i < c.rows; ++i) {
      for (std::int64_t j = 0; j < c.cols; ++j) {
        c(i, j) = bf16(C(i, j));
      }
    }
  }
};

}  // namespace mmsparse::cpu

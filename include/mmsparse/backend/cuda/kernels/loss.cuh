// mmsparse/backend/cuda/kernels/loss.cuh
//
// Softmax cross-entropy over a vocabulary, per row (as backend/cpu/loss.hpp):
//   cross_entropy           loss[i] = lse[i] - logits[i, target[i]]   (one block per row)
//   cross_entropy_backward  dlogits[i, :] += scale * (softmax(logits[i, :]) - onehot(target[i]))
// A target outside [0, V) gives a NaN loss (kernels do not throw) and no one-hot term.
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cstdint>

#include <mmsparse/backend/cuda/check.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

template <class T>
__global__ void cross_entropy_kernel(accum_t<T>* __restrict__ loss,
                                     accum_t<T>* __restrict__ lse,
                                     View<const T, device_space> logits,
                                     const std::int32_t* __restrict__ target) {
  using A = accum_t<T>;
  __shared__ BlockScratch scratch;
  const std::int64_t v = logits.cols;
  for (std::int64_t i = blockIdx.x; i < logits.rows; i += gridDim.x) {
    const T* l = logits.row(i);
    A m = to_acc(l[0]);
    for (std::int64_t j = threadIdx.x; j < v; j += blockDim.x) {
      m = fmax(m, to_acc(l[j]));
    }
    m = block_max(m, scratch);
    A s{};
    for (std::int64_t j = threadIdx.x; j < v; j += blockDim.x) {
      s += exp_acc(to_acc(l[j]) - m);
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
      const A z = m + log_acc(s);
      const std::int32_t t = target[i];
      lse[i] = z;
      loss[i] = (t >= 0 && t < v) ? z - to_acc(l[t]) : static_cast<A>(NAN);
    }
  }
}

template <class T>
struct CrossEntropyBackwardOp {
  View<T, device_space> dlogits;
  View<const T, device_space> logits;
  const accum_t<T>* lse;
  const std::int32_t* target;
  accum_t<T> scale;
  MMSPARSE_DEVICE void operator()(std::int64_t i, std::int64_t j) const {
    using A = accum_t<T>;
    const A p = exp_acc(to_acc(logits(i, j)) - lse[i]) - (j == target[i] ? A{1} : A{0});
    dlogits(i, j) = from_acc<T>(to_acc(dlogits(i, j)) + scale * p);
  }
};

}  // namespace detail

template <class T>
void cross_entropy(const Context& ctx,
                   Span<accum_t<T>, device_space> loss,
                   Span<accum_t<T>, device_space> lse,
                   View<const T, device_space> logits,
                   Span<const std::int32_t, device_space> target) {
  if (logits.rows == 0 || logits.cols == 0) {
    return;
  }
  detail::cross_entropy_kernel<<<row_blocks(ctx, logits.rows),
                                 row_threads(logits.cols),
                                 0,
                                 ctx.stream>>>(loss.data, lse.data, logits, target.data);
  MMSPARSE_CUDA_CHECK_LAUNCH(cross_entropy_kernel);
}

template <class T>
void cross_entropy_backward(const Context& ctx,
                            View<T, device_space> dlogits,
                            View<const T, device_space> logits,
                            Span<const accum_t<T>, device_space> lse,
                            Span<const std::int32_t, device_space> target,
                            double scale) {
  for_each_2d(ctx,
              logits.rows,
              logits.cols,
              detail::CrossEntropyBackwardOp<T>{
                  dlogits, logits, lse.data, target.data, static_cast<accum_t<T>>(scale)});
}

}  // namespace mmsparse::gpu

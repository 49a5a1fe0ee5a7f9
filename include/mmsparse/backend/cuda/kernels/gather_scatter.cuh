// mmsparse/backend/cuda/kernels/gather_scatter.cuh
//
// Dispersion kernels of the CUDA backend (as backend/cpu/gather_scatter.hpp):
//   gather_rows       dst[r] = src[index[r]]          (index outside [0, src.rows): a zero row)
//   scatter_add_rows  dst[index[r]] += w[r] * src[r]   (index outside [0, dst.rows): skipped)
//   gathered_row_dot  out[r] = <a[r], b[index[r]]>     (fp32 / fp64 accumulation)
// Deterministic without float atomics (PAPERS.md §4.7): scatter_add_rows sorts the slots by
// destination (stable), then one block owns each destination row and adds its slots in
// ascending slot order, the order the CPU backend uses.
#pragma once

#if !defined(__CUDACC__)
#error "mmsparse/backend/cuda needs nvcc: include it from a .cu file"
#endif

#include <cstddef>
#include <cstdint>

#include <mmsparse/backend/cuda/cub_ops.cuh>
#include <mmsparse/backend/cuda/kernels/common.cuh>
#include <mmsparse/backend/workspace.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse::gpu {

namespace detail {

// One block per destination row (grid-stride); N elements per unit (a 16-byte pack or 1).
template <class T, int N>
__global__ void gather_rows_kernel(View<T, device_space> dst,
                                   View<const T, device_space> src,
                                   const std::int32_t* __restrict__ index) {
  const std::int64_t units = dst.cols / N;
  for (std::int64_t r = blockIdx.x; r < dst.rows; r += gridDim.x) {
    const std::int32_t t = index[r];
    const bool valid = t >= 0 && t < src.rows;
    if constexpr (N == 1) {
      for (std::int64_t j = threadIdx.x; j < units; j += blockDim.x) {
        dst(r, j) = valid ? src(t, j) : T{};
      }
    } else {
      auto* out = reinterpret_cast<Pack<T>*>(dst.row(r));
      const auto* in = reinterpret_cast<const Pack<T>*>(valid ? src.row(t) : nullptr);
      for (std::int64_t j = threadIdx.x; j < units; j += blockDim.x) {
        out[j] = valid ? in[j] : Pack<T>{};
      }
    }
  }
}

// One block per destination row t: dst[t] += sum over its slots p (ascending) of
// w[order[p]] * src[order[p]], accumulated in accum_t<T> and rounded once.
template <class T, class W, int N>
__global__ void scatter_add_rows_kernel(View<T, device_space> dst,
                                        View<const T, device_space> src,
                                        const std::int32_t* __restrict__ order,
                                        const std::int32_t* __restrict__ offsets,
                                        const W* __restrict__ weight) {
  using A = accum_t<T>;
  const std::int64_t units = dst.cols / N;
  for (std::int64_t t = blockIdx.x; t < dst.rows; t += gridDim.x) {
    const std::int32_t begin = offsets[t];
    const std::int32_t end = offsets[t + 1];
    if (begin == end) {
      continue;
    }
    for (std::int64_t j = threadIdx.x; j < units; j += blockDim.x) {
      if constexpr (N == 1) {
        A acc = to_acc(dst(t, j));
        for (std::int32_t p = begin; p < end; ++p) {
          const std::int32_t r = order[p];
          const A w = weight != nullptr ? static_cast<A>(weight[r]) : A{1};
          acc += w * to_acc(src(r, j));
        }
        dst(t, j) = from_acc<T>(acc);
      } else {
        auto* out = reinterpret_cast<Pack<T>*>(dst.row(t)) + j;
        const Pack<T> old = *out;
        A acc[N];
#pragma unroll
        for (int k = 0; k < N; ++k) {
          acc[k] = to_acc(old.v[k]);
        }
        for (std::int32_t p = begin; p < end; ++p) {
          const std::int32_t r = order[p];
          const A w = weight != nullptr ? static_cast<A>(weight[r]) : A{1};
          const Pack<T> in = reinterpret_cast<const Pack<T>*>(src.row(r))[j];
#pragma unroll
          for (int k = 0; k < N; ++k) {
            acc[k] += w * to_acc(in.v[k]);
          }
        }
        Pack<T> res;
#pragma unroll
        for (int k = 0; k < N; ++k) {
          res.v[k] = from_acc<T>(acc[k]);
        }
        *out = res;
      }
    }
  }
}

// One warp per row r: out[r] = <a[r], b[index[r]]>, lanes stride the columns, then a
// fixed-order butterfly sum.
template <class W, class T>
__global__ void gathered_row_dot_kernel(W* __restrict__ out,
                                        View<const T, device_space> a,
                                        View<const T, device_space> b,
                                        const std::int32_t* __restrict__ index) {
  using A = accum_t<T>;
  const int lane = lane_index();
  for (std::int64_t r = warp_index(); r < a.rows; r += warp_count()) {
    const std::int32_t t = index[r];
    A s{};
    if (t >= 0 && t < b.rows) {
      const T* x = a.row(r);
      const T* y = b.row(t);
      for (std::int64_t j = lane; j < a.cols; j += 32) {
        s += to_acc(x[j]) * to_acc(y[j]);
      }
    }
    s = warp_sum(s);
    if (lane == 0) {
      out[r] = static_cast<W>(s);
    }
  }
}

}  // namespace detail

template <class T>
void gather_rows(const Context& ctx,
                 View<T, device_space> dst,
                 View<const T, device_space> src,
                 Span<const std::int32_t, device_space> index) {
  if (dst.rows == 0 || dst.cols == 0) {
    return;
  }
  constexpr int n = Pack<T>::size;
  const unsigned blocks = row_blocks(ctx, dst.rows);
  if (packable(dst) && packable(src)) {
    detail::gather_rows_kernel<T, n>
        <<<blocks, row_threads(dst.cols / n), 0, ctx.stream>>>(dst, src, index.data);
  } else {
    detail::gather_rows_kernel<T, 1>
        <<<blocks, row_threads(dst.cols), 0, ctx.stream>>>(dst, src, index.data);
  }
  MMSPARSE_CUDA_CHECK_LAUNCH(gather_rows_kernel);
}

// Workspace bytes scatter_add_rows takes for `slots` source rows into `rows` destinations.
[[nodiscard]] inline std::size_t scatter_add_rows_workspace_bytes(std::int64_t slots,
                                                                  std::int64_t rows) {
  using WS = Workspace<device_space>;
  return WS::bytes_for<std::int32_t>(slots) + WS::bytes_for<std::int32_t>(rows + 1) +
         bucket_sort_workspace_bytes(slots, rows);
}

template <class T, class W>
void scatter_add_rows(const Context& ctx,
                      View<T, device_space> dst,
                      View<const T, device_space> src,
                      Span<const std::int32_t, device_space> index,
                      Span<const W, device_space> weight) {
  if (src.rows == 0 || dst.rows == 0 || dst.cols == 0) {
    return;
  }
  auto& ws = *ctx.workspace;
  auto frame = ws.frame();
  auto order = ws.take_span<std::int32_t>(src.rows);        // [slots] grouped by destination
  auto offsets = ws.take_span<std::int32_t>(dst.rows + 1);  // [rows + 1] CSR bounds
  bucket_sort_device(ctx, order, offsets, index, dst.rows);

  constexpr int n = Pack<T>::size;
  const unsigned blocks = row_blocks(ctx, dst.rows);
  const W* w = weight.empty() ? nullptr : weight.data;
  if (packable(dst) && packable(src)) {
    detail::scatter_add_rows_kernel<T, W, n><<<blocks, row_threads(dst.cols / n), 0, ctx.stream>>>(
        dst, src, order.data, offsets.data, w);
  } else {
    detail::scatter_add_rows_kernel<T, W, 1>
        <<<blocks, row_threads(dst.cols), 0, ctx.stream>>>(dst, src, order.data, offsets.data, w);
  }
  MMSPARSE_CUDA_CHECK_LAUNCH(scatter_add_rows_kernel);
}

template <class W, class T>
void gathered_row_dot(const Context& ctx,
                      Span<W, device_space> out,
                      View<const T, device_space> a,
                      View<const T, device_space> b,
                      Span<const std::int32_t, device_space> index) {
  if (a.rows == 0) {
    return;
  }
  detail::gathered_row_dot_kernel<<<warp_row_blocks(ctx, a.rows), block_threads, 0, ctx.stream>>>(
      out.data, a, b, index.data);
  MMSPARSE_CUDA_CHECK_LAUNCH(gathered_row_dot_kernel);
}

}  // namespace mmsparse::gpu

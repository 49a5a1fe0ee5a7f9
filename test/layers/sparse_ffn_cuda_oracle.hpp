// test/layers/sparse_ffn_cuda_oracle.hpp
//
// The bridge between test/layers/sparse_ffn_cuda_test.cu (nvcc) and its companion
// sparse_ffn_cuda_oracle.cpp (the host compiler): one SparseFfn forward + backward on
// CpuBackend<double>, named by router variant and dispatch scheme, over plain host data.
// Neither Eigen nor CUDA crosses this header.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "cases/sparse_ffn_cases.hpp"
#include <mmsparse/core/modality.hpp>

namespace mmsparse::test {

// Inputs of one run, as float values (exact in double): x, dy [N, d]; router [d, E_r];
// w1, w3 [E d, f]; w2 [E f, d] (row-major).
struct SparseFfnRun {
  std::vector<float> x, dy, router, w1, w3, w2;
  std::vector<ModalityId> modality;
  bool training = false;
  bool gumbel = false;  // the router's Gumbel noise (routers that have it), seeded by `seed`
  std::uint64_t seed = 0;
};

// Outputs: y [N, d], dx [N, d] and the weight gradients (accumulated from zero), the routing
// decisions' summary.
struct SparseFfnResult {
  std::vector<double> y, dx, drouter, dw1, dw3, dw2;
  std::vector<std::int64_t> tokens_per_expert;
  std::int64_t dropped = 0;
  double aux = 0.0;
};

// SparseFfn<double, V::router, D, CpuBackend<double>> for the variant and dispatch of these
// names (cases/sparse_ffn_cases.hpp, dispatch/); throws mmsparse::Error for an unknown pair.
[[nodiscard]] SparseFfnResult sparse_ffn_cpu_oracle(std::string_view variant,
                                                    std::string_view dispatch,
                                                    const cases::SparseFfnCase& c,
                                                    const SparseFfnRun& run);

}  // namespace mmsparse::test

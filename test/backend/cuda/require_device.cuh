// test/backend/cuda/require_device.cuh
//
// Included by every CUDA test: without a CUDA device the executable prints
// "no CUDA device: skipping" and exits with 77 (ctest SKIP_RETURN_CODE) while static
// objects are initialised, before the shared Catch2 main (test/main.cpp) runs.
#pragma once

#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

namespace mmsparse::test {

[[nodiscard]] inline bool exit_unless_cuda_device() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipping\n");
    std::fflush(stdout);
    std::exit(77);
  }
  return true;
}

namespace {
[[maybe_unused]] const bool cuda_device_present = exit_unless_cuda_device();
}  // namespace

}  // namespace mmsparse::test

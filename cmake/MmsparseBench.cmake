# Benchmarks: one executable per bench/*_bench.cpp (Google Benchmark 1.7); each
# source has its own BENCHMARK_MAIN() or main. With CUDA: bench/*_cuda_bench.cu.
# Sources may include bench/ headers and the shared case tables under test/.

find_package(benchmark REQUIRED)

set(MMSPARSE_BENCH_DIR "${PROJECT_SOURCE_DIR}/bench")

function(mmsparse_add_bench file library)
  mmsparse_name_from_path(name "${file}" "${MMSPARSE_BENCH_DIR}")
  add_executable(${name} "${file}")
  target_link_libraries(${name} PRIVATE ${library} benchmark::benchmark)
  target_include_directories(${name} PRIVATE "${MMSPARSE_BENCH_DIR}" "${PROJECT_SOURCE_DIR}/test")
  mmsparse_target_warnings(${name})
  mmsparse_target_native(${name} BENCH)
endfunction()

file(GLOB mmsparse_benches CONFIGURE_DEPENDS "${MMSPARSE_BENCH_DIR}/*_bench.cpp")
list(SORT mmsparse_benches)
foreach(bench_file IN LISTS mmsparse_benches)
  mmsparse_add_bench("${bench_file}" mmsparse)
endforeach()

if(MMSPARSE_ENABLE_CUDA)
  file(GLOB mmsparse_cuda_benches CONFIGURE_DEPENDS "${MMSPARSE_BENCH_DIR}/*_cuda_bench.cu")
  list(SORT mmsparse_cuda_benches)
  foreach(bench_file IN LISTS mmsparse_cuda_benches)
    mmsparse_add_bench("${bench_file}" mmsparse_cuda)
    mmsparse_name_from_path(bench_name "${bench_file}" "${MMSPARSE_BENCH_DIR}")
    add_dependencies(mmsparse_cuda_all ${bench_name})
  endforeach()
endif()

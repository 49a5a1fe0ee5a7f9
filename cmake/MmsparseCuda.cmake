# MMSPARSE_ENABLE_CUDA: the CUDA language, the toolkit, and the INTERFACE target
# mmsparse::cuda for .cu translation units. It carries only the include dir and
# the CUDA libraries: no Eigen in .cu files (DESIGN.md, dependencies).

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  # sm_90 machine code (H100/H200) + compute_80 PTX that the driver JITs elsewhere.
  set(CMAKE_CUDA_ARCHITECTURES "90-real;80-virtual")
endif()
enable_language(CUDA)

find_package(CUDAToolkit REQUIRED)

add_library(mmsparse_cuda INTERFACE)
add_library(mmsparse::cuda ALIAS mmsparse_cuda)
set_target_properties(mmsparse_cuda PROPERTIES EXPORT_NAME cuda)
target_include_directories(mmsparse_cuda INTERFACE
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
  target_compile_features(mmsparse_cuda INTERFACE cuda_std_20)
else()
  # CMake 3.25 (Debian 12) does not know nvcc's C++20 mode: ask for it directly.
  target_compile_options(mmsparse_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
endif()
target_compile_options(mmsparse_cuda INTERFACE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>)
target_link_libraries(mmsparse_cuda INTERFACE CUDA::cudart CUDA::cublasLt CUDA::cublas)

# Every CUDA test, benchmark and header TU hangs off this target, so CI can build
# them without rebuilding the CPU suite: cmake --build <dir> --target mmsparse_cuda_all
add_custom_target(mmsparse_cuda_all)

message(STATUS "mmsparse: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")

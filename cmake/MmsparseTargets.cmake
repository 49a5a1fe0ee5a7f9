# Helpers for the project's own test, bench and example targets. Warnings and
# -march=native go on these targets only, never on the INTERFACE targets that
# consumers link.

# Every own target: C++20 without GNU extensions (-std=c++20). Set per target, not
# through CMAKE_CXX_STANDARD/EXTENSIONS, because CMake 3.25 carries those over to
# CUDA targets and then adds its own -std=c++17 to nvcc (it knows no CUDA 20 flag
# for nvcc; MmsparseCuda.cmake passes -std=c++20 itself).
function(mmsparse_target_standard target)
  get_target_property(sources ${target} SOURCES)
  if(NOT sources MATCHES "\\.cu(;|$)")
    target_compile_features(${target} PRIVATE cxx_std_20)
    set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  endif()
endfunction()

# -Wall -Wextra -Wpedantic -Wshadow as errors, plus the C++20 standard above.
# COMPILE_WARNING_AS_ERROR maps to -Werror for g++ and to "-Werror all-warnings"
# for nvcc; host code compiled by nvcc gets the g++ warnings through -Xcompiler
# (no -Wpedantic there: nvcc's generated host code trips it). Configure with
# --compile-no-warning-as-error to turn the errors off locally.
function(mmsparse_target_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall;-Wextra;-Wpedantic;-Wshadow>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wshadow,-Werror>)
  # g++ 12 false positives that depend on the day's ISA and -O level: Eigen 3.4's
  # AVX-512 GEMM kernels trip -Wmaybe-uninitialized under -march=native on AVX-512
  # machines, and "literal" + std::string trips -Wrestrict at -O3 (GCC PR 105329).
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized;-Wno-restrict>)
  endif()
  set_target_properties(${target} PROPERTIES COMPILE_WARNING_AS_ERROR ON)
  mmsparse_target_standard(${target})
endfunction()

# g++ with AVX-512 enabled builds some vector constants wrong: g++ 12.2 at -O2 and
# above turns std::vector<std::int64_t>{8, 8, 8, 0} into a broadcast of 8, four
# eights (SLP vectorizer; test/core/codegen_test.cpp). Where -march=native turns
# AVX-512 on, g++ gets -fno-tree-slp-vectorize with it (later g++ versions were
# not checked, so they get it too). MMSPARSE_NATIVE_FLAGS: the flags for CXX.
set(MMSPARSE_NATIVE_FLAGS -march=native)
if(MMSPARSE_NATIVE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_FLAGS -march=native)
  check_cxx_source_compiles(
    "#if !defined(__AVX512F__)\n#error no AVX-512\n#endif\nint main() { return 0; }"
    MMSPARSE_NATIVE_HAS_AVX512)
  unset(CMAKE_REQUIRED_FLAGS)
  if(MMSPARSE_NATIVE_HAS_AVX512)
    list(APPEND MMSPARSE_NATIVE_FLAGS -fno-tree-slp-vectorize)
  endif()
endif()

# MMSPARSE_NATIVE: bench and examples get -O3 -march=native (Eigen vectorises
# only for the ISA it is compiled for); tests get -march=native in Release so
# they exercise the same code paths. Kind: BENCH, EXAMPLE or TEST.
function(mmsparse_target_native target kind)
  if(NOT MMSPARSE_NATIVE)
    return()
  endif()
  string(REPLACE ";" "," cuda_host "${MMSPARSE_NATIVE_FLAGS}")
  if(kind STREQUAL "TEST")
    target_compile_options(${target} PRIVATE
      "$<$<AND:$<CONFIG:Release>,$<COMPILE_LANGUAGE:CXX>>:${MMSPARSE_NATIVE_FLAGS}>"
      $<$<AND:$<CONFIG:Release>,$<COMPILE_LANGUAGE:CUDA>>:-Xcompiler=${cuda_host}>)
  else()
    target_compile_options(${target} PRIVATE
      $<$<AND:$<NOT:$<CONFIG:Debug>>,$<COMPILE_LANGUAGE:CXX>>:-O3>
      "$<$<COMPILE_LANGUAGE:CXX>:${MMSPARSE_NATIVE_FLAGS}>"
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=${cuda_host}>)
  endif()
endfunction()

# Target name from a source path relative to `base`:
# test/routing/expert_choice_test.cpp -> routing_expert_choice_test.
function(mmsparse_name_from_path out file base)
  file(RELATIVE_PATH rel "${base}" "${file}")
  string(REGEX REPLACE "\\.(cpp|cu)$" "" rel "${rel}")
  string(REPLACE "/" "_" rel "${rel}")
  set(${out} "${rel}" PARENT_SCOPE)
endfunction()

# The Catch2 tags of every TEST_CASE-like macro in `file` (TEST_CASE, SCENARIO,
# TEMPLATE_*TEST_CASE*, TEST_CASE_METHOD...): the tags literal must be written in
# the macro call, e.g. TEST_CASE("name", "[routing][cpu]"). Hidden and special
# tags ([.], [.foo], [!mayfail], [!throws]) are not labels.
function(mmsparse_catch_tags out file)
  file(READ "${file}" text)
  set(tag "\\[[A-Za-z0-9_.!#+-]+\\]")
  # From the macro name to the last tags literal before the test body's "{".
  string(REGEX MATCHALL "(TEST_CASE|SCENARIO)[A-Z_]*[ \t\r\n]*\\([^{]*\"(${tag})+\"" heads
    "${text}")
  set(tags "")
  foreach(head IN LISTS heads)
    string(REGEX MATCH "\"(${tag})+\"$" literal "${head}")
    string(REGEX MATCHALL "${tag}" found "${literal}")
    foreach(t IN LISTS found)
      string(REGEX REPLACE "^\\[(.*)\\]$" "\\1" t "${t}")
      if(NOT t MATCHES "^[.!]")
        list(APPEND tags "${t}")
      endif()
    endforeach()
  endforeach()
  list(REMOVE_DUPLICATES tags)
  set(${out} "${tags}" PARENT_SCOPE)
endfunction()

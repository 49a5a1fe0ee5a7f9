# Tests: one executable per test/**/*_test.cpp (and, with CUDA, *_test.cu), all
# linked to one Catch2 main compiled once. ctest labels = the test's folders
# plus every Catch2 tag in its source, so `ctest -L cpu -LE slow` works.
# A file with some [slow] cases is registered twice: <name> runs "~[slow]" (no
# `slow` label) and <name>_slow runs "[slow]", so the fast cases of a file still
# run in CI. Header self-containment: one generated TU per public header.

find_package(Catch2 2 REQUIRED)

set(MMSPARSE_TEST_DIR "${PROJECT_SOURCE_DIR}/test")

add_library(mmsparse_test_main STATIC "${MMSPARSE_TEST_DIR}/main.cpp")
target_link_libraries(mmsparse_test_main PUBLIC Catch2::Catch2)
mmsparse_target_warnings(mmsparse_test_main)
mmsparse_target_native(mmsparse_test_main TEST)

# Registers one test source. LIBRARY: mmsparse or mmsparse_cuda.
function(mmsparse_add_test file library)
  mmsparse_name_from_path(name "${file}" "${MMSPARSE_TEST_DIR}")
  file(RELATIVE_PATH rel "${MMSPARSE_TEST_DIR}" "${file}")
  get_filename_component(dir "${rel}" DIRECTORY)
  string(REPLACE "/" ";" labels "${dir}")
  mmsparse_catch_tags(tags "${file}")
  list(APPEND labels ${tags})
  if(file MATCHES "\\.cu$")
    list(APPEND labels cuda)
  endif()
  list(REMOVE_DUPLICATES labels)
  if(NOT "cpu" IN_LIST labels AND NOT "cuda" IN_LIST labels)
    message(WARNING "${rel}: no [cpu] or [cuda] tag in its TEST_CASEs (labels: ${labels}); "
                    "CI runs `ctest -L cpu` and will skip it")
  endif()
  # Labels come from the source: configure again when it changes.
  set_property(DIRECTORY "${PROJECT_SOURCE_DIR}" APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${file}")

  add_executable(${name} "${file}")
  target_link_libraries(${name} PRIVATE mmsparse_test_main ${library} Catch2::Catch2)
  target_include_directories(${name} PRIVATE "${MMSPARSE_TEST_DIR}")
  target_compile_definitions(${name} PRIVATE
    MMSPARSE_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    MMSPARSE_ENABLE_ASSERTS=1)
  mmsparse_target_warnings(${name})
  mmsparse_target_native(${name} TEST)

  # Tests run two at a time on small machines: idle OpenMP threads sleep instead of spinning.
  set(properties TIMEOUT 600 ENVIRONMENT OMP_WAIT_POLICY=passive)
  if(file MATCHES "\\.cu$")
    add_dependencies(mmsparse_cuda_all ${name})
    # No GPU: the test exits 77 and ctest reports it as skipped.
    list(APPEND properties SKIP_RETURN_CODE 77)
  endif()
  if("slow" IN_LIST labels)
    set(fast_labels ${labels})
    list(REMOVE_ITEM fast_labels slow)
    add_test(NAME ${name} COMMAND ${name} "~[slow]")
    set_tests_properties(${name} PROPERTIES LABELS "${fast_labels}" ${properties})
    add_test(NAME ${name}_slow COMMAND ${name} "[slow]")
    set_tests_properties(${name}_slow PROPERTIES LABELS "${labels}" ${properties})
  else()
    add_test(NAME ${name} COMMAND ${name})
    set_tests_properties(${name} PROPERTIES LABELS "${labels}" ${properties})
  endif()
endfunction()

file(GLOB_RECURSE mmsparse_cpu_tests CONFIGURE_DEPENDS "${MMSPARSE_TEST_DIR}/*_test.cpp")
list(SORT mmsparse_cpu_tests)
foreach(test_file IN LISTS mmsparse_cpu_tests)
  mmsparse_add_test("${test_file}" mmsparse)
endforeach()

if(MMSPARSE_ENABLE_CUDA)
  file(GLOB_RECURSE mmsparse_cuda_tests CONFIGURE_DEPENDS "${MMSPARSE_TEST_DIR}/*_test.cu")
  list(SORT mmsparse_cuda_tests)
  foreach(test_file IN LISTS mmsparse_cuda_tests)
    mmsparse_add_test("${test_file}" mmsparse_cuda)
    # A CUDA test may compare with the CPU backend through a companion <name>_oracle.cpp beside
    # it (e.g. layers/sparse_ffn_cuda_oracle.cpp), built by the host compiler: Eigen stays out
    # of nvcc.
    string(REGEX REPLACE "_test\\.cu$" "_oracle.cpp" oracle_file "${test_file}")
    if(EXISTS "${oracle_file}")
      mmsparse_name_from_path(test_name "${test_file}" "${MMSPARSE_TEST_DIR}")
      target_sources(${test_name} PRIVATE "${oracle_file}")
      target_link_libraries(${test_name} PRIVATE mmsparse)
      set_property(DIRECTORY "${PROJECT_SOURCE_DIR}" APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
                   "${oracle_file}")
    endif()
  endforeach()
endif()

# ---- header self-containment ------------------------------------------------
# One TU per public header, including it twice (#pragma once). detail/ headers
# refuse direct inclusion and backend/cuda/ needs nvcc (checked below with CUDA).
# A header that includes an optional dependency that was not found is skipped.

set(MMSPARSE_INCLUDE_DIR "${PROJECT_SOURCE_DIR}/include")
set(header_check_dir "${CMAKE_CURRENT_BINARY_DIR}/header_check")

function(mmsparse_header_sources out pattern extension)
  file(GLOB_RECURSE headers CONFIGURE_DEPENDS RELATIVE "${MMSPARSE_INCLUDE_DIR}"
    "${MMSPARSE_INCLUDE_DIR}/mmsparse/${pattern}")
  list(SORT headers)
  set(sources "")
  foreach(header IN LISTS headers)
    if(header MATCHES "(^|/)detail/")
      continue()
    endif()
    file(READ "${MMSPARSE_INCLUDE_DIR}/${header}" text)
    if((NOT MMSPARSE_WITH_ONEDNN AND text MATCHES "#include <(oneapi/)?dnnl")
       OR (NOT MMSPARSE_WITH_JSON AND text MATCHES "#include <nlohmann/"))
      message(STATUS "mmsparse: header check skips ${header} (optional dependency not found)")
      continue()
    endif()
    set(MMSPARSE_HEADER "${header}")
    set(source "${header_check_dir}/${header}.${extension}")
    configure_file("${MMSPARSE_TEST_DIR}/headers/header_check.cpp.in" "${source}" @ONLY)
    list(APPEND sources "${source}")
  endforeach()
  set(${out} "${sources}" PARENT_SCOPE)
endfunction()

mmsparse_header_sources(header_tus "*.hpp" cpp)
list(FILTER header_tus EXCLUDE REGEX "/mmsparse/backend/cuda/")
add_library(mmsparse_header_check OBJECT ${header_tus})
target_link_libraries(mmsparse_header_check PRIVATE mmsparse)
mmsparse_target_warnings(mmsparse_header_check)

if(MMSPARSE_ENABLE_CUDA)
  mmsparse_header_sources(cuda_header_tus "backend/cuda/*.cuh" cu)
  mmsparse_header_sources(cuda_host_header_tus "backend/cuda/*.hpp" cu)
  list(APPEND cuda_header_tus ${cuda_host_header_tus})
  if(cuda_header_tus)
    add_library(mmsparse_cuda_header_check OBJECT ${cuda_header_tus})
    target_link_libraries(mmsparse_cuda_header_check PRIVATE mmsparse_cuda)
    mmsparse_target_warnings(mmsparse_cuda_header_check)
    add_dependencies(mmsparse_cuda_all mmsparse_cuda_header_check)
  endif()
endif()

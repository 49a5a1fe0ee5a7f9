# Examples: one executable per examples/*.cpp, named after the file
# (examples/01_moma_layer.cpp -> 01_moma_layer). CLI11 gives them --help.

find_package(CLI11 CONFIG QUIET)

file(GLOB mmsparse_examples CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/examples/*.cpp")
list(SORT mmsparse_examples)
foreach(example_file IN LISTS mmsparse_examples)
  get_filename_component(name "${example_file}" NAME_WE)
  add_executable(${name} "${example_file}")
  target_link_libraries(${name} PRIVATE mmsparse)
  if(TARGET CLI11::CLI11)
    target_link_libraries(${name} PRIVATE CLI11::CLI11)
  endif()
  mmsparse_target_warnings(${name})
  mmsparse_target_native(${name} EXAMPLE)
endforeach()

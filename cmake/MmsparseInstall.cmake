# Install the headers and a relocatable CMake package:
#   find_package(mmsparse CONFIG REQUIRED)  ->  mmsparse::mmsparse (and mmsparse::cuda)
# The config file finds the same dependencies this build used.

set(MMSPARSE_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/mmsparse")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/mmsparse"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  FILES_MATCHING PATTERN "*.hpp" PATTERN "*.cuh")

set(mmsparse_install_targets mmsparse)
if(MMSPARSE_ENABLE_CUDA)
  list(APPEND mmsparse_install_targets mmsparse_cuda)
endif()
install(TARGETS ${mmsparse_install_targets} EXPORT mmsparseTargets)
install(EXPORT mmsparseTargets
  NAMESPACE mmsparse::
  DESTINATION "${MMSPARSE_CMAKE_DIR}")

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/mmsparseConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/mmsparseConfig.cmake"
  INSTALL_DESTINATION "${MMSPARSE_CMAKE_DIR}")
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/mmsparseConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMajorVersion
  ARCH_INDEPENDENT)
install(FILES
  "${PROJECT_BINARY_DIR}/mmsparseConfig.cmake"
  "${PROJECT_BINARY_DIR}/mmsparseConfigVersion.cmake"
  DESTINATION "${MMSPARSE_CMAKE_DIR}")

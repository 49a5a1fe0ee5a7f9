// mmsparse/core/error.hpp
//
// The one exception type of the library and the checking macros.
// Message format (MLX style): "[op] arg: expected X, got Y".
// MMSPARSE_CHECK validates arguments at public entry points (always on);
// MMSPARSE_ASSERT checks internal invariants (on unless NDEBUG, or forced by
// MMSPARSE_ENABLE_ASSERTS).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace mmsparse {

// Thrown for every invalid argument, shape, index or file content.
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Thrown by the CUDA backend for a failed CUDA, CUB or cuBLASLt call.
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class Expected, class Actual>
[[nodiscard]] std::string format_error(std::string_view op,
                                       std::string_view arg,
                                       const Expected& expected,
                                       const Actual& actual) {
  std::ostringstream os;
  os << '[' << op << "] " << arg << ": expected " << expected << ", got " << actual;
  return os.str();
}

[[noreturn]] inline void throw_assert(const char* cond, const char* file, int line) {
  std::ostringstream os;
  os << "[internal] assertion failed: " << cond << " at " << file << ':' << line;
  throw std::logic_error(os.str());
}

}  // namespace detail
}  // namespace mmsparse

// Throws mmsparse::Error("[op] arg: expected <expected>, got <actual>") unless cond holds.
// The message parts are evaluated only on failure.
#define MMSPARSE_CHECK(cond, op, arg, expected, actual)                                     \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      throw ::mmsparse::Error(::mmsparse::detail::format_error(op, arg, expected, actual)); \
    }                                                                                       \
  } while (0)

#if !defined(NDEBUG) || defined(MMSPARSE_ENABLE_ASSERTS)
#define MMSPARSE_ASSERT(cond)                                      \
  do {                                                             \
    if (!(cond)) {                                                 \
      ::mmsparse::detail::throw_assert(#cond, __FILE__, __LINE__); \
    }                                                              \
  } while (0)
#else
#define MMSPARSE_ASSERT(cond) \
  do {                        \
  } while (0)
#endif

#!/usr/bin/env bash
# Builds mmsparse's tests in build/ (Release) and runs the fast CPU suite:
#   ctest --output-on-failure -L cpu -LE slow -j2
# Works from any directory. Extra arguments go to the CMake configure step.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"

bash "$root/scripts/install_deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMMSPARSE_BUILD_TESTS=ON "$@"
cmake --build "$build" -j2
cd "$build"
ctest --output-on-failure -L cpu -LE slow -j2

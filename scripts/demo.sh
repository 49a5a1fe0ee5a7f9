#!/usr/bin/env bash
# Builds and runs the first example (examples/01_moma_layer.cpp): one MoMa layer,
# 4 text + 4 image experts with expert-choice routing, on the CPU.
# Works from any directory. Arguments go to the example (try --help).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"

if [ ! -f "$root/examples/01_moma_layer.cpp" ]; then
  echo "demo: $root/examples/01_moma_layer.cpp is missing" >&2
  exit 1
fi

bash "$root/scripts/install_deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMMSPARSE_BUILD_EXAMPLES=ON
cmake --build "$build" --target 01_moma_layer -j2
"$build/01_moma_layer" "$@"

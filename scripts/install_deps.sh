#!/usr/bin/env bash
# Installs what mmsparse needs on Debian 12 (bookworm), only what is missing:
# the compiler and tools (g++, cmake, make, clang-format-14) and the libraries
# (Eigen 3.4, Catch2 2.13, Google Benchmark, oneDNN, nlohmann/json, CLI11).
# Idempotent: with everything present it changes nothing and needs no network.
# Runs as root, or through sudo when it is available.
set -euo pipefail

# command -> Debian package, for tools that may also come from elsewhere
declare -A tools=([g++]=g++ [cmake]=cmake [make]=make [clang-format-14]=clang-format-14)
# libraries (ocl-icd-opencl-dev: Debian's oneDNN CMake config requires OpenCL)
libraries=(libeigen3-dev catch2 libbenchmark-dev libdnnl-dev ocl-icd-opencl-dev
           nlohmann-json3-dev libcli11-dev)

missing=()
for cmd in "${!tools[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
for pkg in "${libraries[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_deps: all dependencies present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install_deps: missing ${missing[*]}; run as root or install sudo" >&2
  exit 1
fi

echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"

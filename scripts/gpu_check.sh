#!/usr/bin/env bash
# The GPU machine's check, one command: configure and build the CUDA targets (Release, -j16),
# ctest -L cuda, compute-sanitizer memcheck over every CUDA test executable, the CUDA benchmarks
# as JSON. Logs and results go to $OUT (default ./out); exit status 1 if any step failed.
#
#   scripts/gpu_check.sh [all|build|test|sanitize|bench]   steps (default all; each may run alone
#                                                          once the build dir exists)
#   scripts/gpu_check.sh pack-deps [DIR]                   on a machine with the Debian packages:
#                                                          copy Eigen, Catch2 and Google Benchmark
#                                                          (headers, CMake configs, libbenchmark)
#                                                          into DIR (default build-gpu-deps/) for a
#                                                          machine that cannot install them
# Environment: OUT, BUILD (default build-cuda/), DEPS (default build-gpu-deps/ when present),
# CUDA_ARCH (default 90), JOBS (default 16), BENCH_MIN_TIME (seconds, default 0.5),
# SANITIZE_TIMEOUT (seconds per executable, default 1800), NO_WERROR=1 (a host compiler newer
# than the project's warns differently: keep building).
# A GPU machine without the Debian packages: run `scripts/gpu_check.sh pack-deps` here, carry
# build-gpu-deps/ (about 13 MB) and run `scripts/gpu_check.sh` there.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
step="${1:-all}"

pack_deps() {
  local dest="${1:-$root/build-gpu-deps}"
  local lib=/usr/lib/x86_64-linux-gnu
  mkdir -p "$dest/usr/include" "$dest/usr/share" "$dest/usr/lib/cmake" "$dest$lib/cmake"
  cp -a /usr/include/eigen3 /usr/include/catch2 /usr/include/benchmark "$dest/usr/include/"
  cp -a /usr/share/eigen3 "$dest/usr/share/"
  cp -a /usr/lib/cmake/Catch2 "$dest/usr/lib/cmake/"
  cp -a /usr/lib/libCatch2WithMain.a "$dest/usr/lib/"
  cp -a "$lib"/cmake/benchmark "$dest$lib/cmake/"
  cp -a "$lib"/libbenchmark.so* "$lib"/libbenchmark_main.a "$dest$lib/"
  du -sh "$dest"
}

if [ "$step" = "pack-deps" ]; then
  pack_deps "${2:-}"
  exit $?
fi

OUT="${OUT:-$PWD/out}"
BUILD="${BUILD:-$root/build-cuda}"
JOBS="${JOBS:-16}"
CUDA_ARCH="${CUDA_ARCH:-90}"
BENCH_MIN_TIME="${BENCH_MIN_TIME:-0.5}"
SANITIZE_TIMEOUT="${SANITIZE_TIMEOUT:-1800}"
if [ -z "${DEPS:-}" ] && [ -d "$root/build-gpu-deps/usr" ]; then
  DEPS="$root/build-gpu-deps"
fi
mkdir -p "$OUT"
summary="$OUT/summary.txt"
status=0

note() {
  echo "$*" | tee -a "$summary"
}

# run NAME LOG COMMAND...: runs a step, logs its output, records ok / FAILED.
run() {
  local name="$1" log="$2"
  shift 2
  local start=$SECONDS
  if "$@" >>"$log" 2>&1; then
    note "$(printf '%-10s ok      %4ds  %s' "$name" $((SECONDS - start)) "${log#"$OUT"/}")"
  else
    note "$(printf '%-10s FAILED  %4ds  %s' "$name" $((SECONDS - start)) "${log#"$OUT"/}")"
    status=1
  fi
}

prefix_args=()
if [ "${NO_WERROR:-0}" = "1" ]; then
  prefix_args+=(--compile-no-warning-as-error)
fi
if [ -n "${DEPS:-}" ]; then
  prefix_args+=(-DCMAKE_PREFIX_PATH="$DEPS/usr")
  export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# Executables of the CUDA tests: test/a/b_test.cu -> a_b_test (cmake/MmsparseTargets.cmake).
cuda_test_executables() {
  (cd "$root/test" && find . -name '*_test.cu' | sort) | while read -r f; do
    f="${f#./}"
    f="${f%.cu}"
    echo "$BUILD/${f//\//_}"
  done
}
cuda_bench_executables() {
  (cd "$root/bench" && find . -maxdepth 1 -name '*_cuda_bench.cu' | sort) | while read -r f; do
    f="${f#./}"
    echo "$BUILD/${f%.cu}"
  done
}

do_build() {
  {
    date -u
    nvidia-smi -L || true
    nvcc --version | tail -2 || true
    command -v compute-sanitizer || echo "compute-sanitizer: not found"
  } >>"$summary" 2>&1
  run configure "$OUT/configure.log" cmake -S "$root" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release -DMMSPARSE_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DMMSPARSE_BUILD_EXAMPLES=OFF "${prefix_args[@]}"
  run build "$OUT/build.log" cmake --build "$BUILD" --target mmsparse_cuda_all -j "$JOBS"
}

do_test() {
  run ctest "$OUT/ctest.log" ctest --test-dir "$BUILD" -L cuda --output-on-failure \
    --timeout 1800
}

do_sanitize() {
  if ! command -v compute-sanitizer >/dev/null; then
    note "sanitize   FAILED  compute-sanitizer is not on the PATH"
    status=1
    return
  fi
  local exe
  while read -r exe; do
    run "memcheck" "$OUT/sanitizer.log" bash -c \
      "echo '== $exe'; timeout $SANITIZE_TIMEOUT compute-sanitizer --tool memcheck \
       --leak-check full --error-exitcode 1 '$exe'"
  done < <(cuda_test_executables)
}

do_bench() {
  local exe name
  while read -r exe; do
    name="$(basename "$exe")"
    run "bench" "$OUT/bench.log" "$exe" --benchmark_out="$OUT/$name.json" \
      --benchmark_out_format=json --benchmark_min_time="$BENCH_MIN_TIME"
  done < <(cuda_bench_executables)
}

case "$step" in
  all)
    do_build
    do_test
    do_sanitize
    do_bench
    ;;
  build) do_build ;;
  test) do_test ;;
  sanitize) do_sanitize ;;
  bench) do_bench ;;
  *)
    echo "usage: scripts/gpu_check.sh [all|build|test|sanitize|bench|pack-deps [DIR]]" >&2
    exit 2
    ;;
esac
note "gpu_check $step: $([ $status -eq 0 ] && echo passed || echo FAILED) (results in $OUT)"
exit $status

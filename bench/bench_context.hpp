// bench/bench_context.hpp
//
// What every benchmark reports about its machine (Google Benchmark context): CPU model, ISA
// flags, oneDNN's ISA, threads, the measured fp32 and bf16 peaks (a register-resident FMA probe)
// and the STREAM triad bandwidth, so each figure reads as a fraction of this machine's limits.
// Call mmsparse::bench::add_context() in main before RunSpecifiedBenchmarks().
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <immintrin.h>
#include <map>
#include <memory>
#include <omp.h>
#include <sstream>
#include <string>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <benchmark/benchmark.h>

#if defined(MMSPARSE_WITH_ONEDNN)
#include <mmsparse/backend/cpu/onednn_gemm.hpp>
#endif

namespace mmsparse::bench {

// Peak rates of the probes per thread count (the benchmarks run at 1 and at all threads), per
// CPU-second of each thread: what the machine gives a thread while it runs.
struct Limits {
  double f32_gflops = 0;   // FMA probe, widest vector ISA
  double bf16_gflops = 0;  // bf16 dot-product probe; the f32 peak where bf16 is widened
  double triad_gbs = 0;    // STREAM triad a = b + s c, 3 arrays counted
};

namespace detail {

// Flags of the first CPU in /proc/cpuinfo, and its model name.
inline std::string cpuinfo_field(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? std::string() : line.substr(colon + 2);
    }
  }
  return {};
}

// (Strings are built with append: g++ 12 -O3 warns falsely on "literal" + std::string.)
inline bool has_flag(const std::string& flag) {
  static const std::string flags = std::string(" ").append(cpuinfo_field("flags")).append(" ");
  return flags.find(std::string(" ").append(flag).append(" ")) != std::string::npos;
}

// One FMA probe kernel: `iters` rounds over independent accumulator chains (enough to cover
// the FMA latency times the FMA ports), returning FLOPs done and a value that keeps them alive.
struct ProbeResult {
  double flops = 0;
  float sink = 0;
};

__attribute__((target("avx2,fma"))) inline ProbeResult fma_avx2(std::int64_t iters) {
  constexpr int chains = 12;  // 16 ymm registers: 12 accumulators + 2 operands
  __m256 acc[chains];
  for (int c = 0; c < chains; ++c) {
    acc[c] = _mm256_set1_ps(0.001f * static_cast<float>(c));
  }
  const __m256 a = _mm256_set1_ps(0.999f);
  const __m256 b = _mm256_set1_ps(0.001f);
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 32  // keeps every chain in a register at any optimization level above -O0
    for (int c = 0; c < chains; ++c) {
      acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    }
  }
  __m256 s = acc[0];
  for (int c = 1; c < chains; ++c) {
    s = _mm256_add_ps(s, acc[c]);
  }
  float out[8];
  _mm256_storeu_ps(out, s);
  return {static_cast<double>(iters) * chains * 8 * 2, out[0]};
}

// 16 copies of v (_mm512_set1_ps trips g++ 12's -Wuninitialized inside target functions).
struct Lanes {
  alignas(64) float v[16];
  explicit Lanes(float x) {
    for (float& e : v) {
      e = x;
    }
  }
};

__attribute__((target("avx512f"))) inline float sum_lanes(__m512 s) {
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  float total = 0;
  for (const float e : out) {
    total += e;
  }
  return total;
}

__attribute__((target("avx512f"))) inline ProbeResult fma_avx512(std::int64_t iters) {
  constexpr int chains = 24;  // 32 zmm registers
  __m512 acc[chains];
  for (int c = 0; c < chains; ++c) {
    acc[c] = _mm512_load_ps(Lanes(0.001f * static_cast<float>(c)).v);
  }
  const __m512 a = _mm512_load_ps(Lanes(0.999f).v);
  const __m512 b = _mm512_load_ps(Lanes(0.001f).v);
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 32  // keeps every chain in a register at any optimization level above -O0
    for (int c = 0; c < chains; ++c) {
      acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    }
  }
  __m512 s = acc[0];
  for (int c = 1; c < chains; ++c) {
    s = _mm512_add_ps(s, acc[c]);
  }
  return {static_cast<double>(iters) * chains * 16 * 2, sum_lanes(s)};
}

// vdpbf16ps: 16 lanes x 2 bf16 products (4 FLOPs per lane) per instruction.
__attribute__((target("avx512bf16,avx512f"))) inline ProbeResult dot_bf16_avx512(
    std::int64_t iters) {
  constexpr int chains = 24;
  __m512 acc[chains];
  for (int c = 0; c < chains; ++c) {
    acc[c] = _mm512_load_ps(Lanes(0.001f * static_cast<float>(c)).v);
  }
  const __m512bh a =
      _mm512_cvtne2ps_pbh(_mm512_load_ps(Lanes(0.001f).v), _mm512_load_ps(Lanes(0.002f).v));
  const __m512bh b =
      _mm512_cvtne2ps_pbh(_mm512_load_ps(Lanes(0.5f).v), _mm512_load_ps(Lanes(0.25f).v));
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 32  // keeps every chain in a register at any optimization level above -O0
    for (int c = 0; c < chains; ++c) {
      acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
    }
  }
  __m512 s = acc[0];
  for (int c = 1; c < chains; ++c) {
    s = _mm512_add_ps(s, acc[c]);
  }
  return {static_cast<double>(iters) * chains * 16 * 4, sum_lanes(s)};
}

// AMX: 4 accumulator tiles of 16x16 fp32, each tdpbf16ps is 16 x 16 x 32 MACs.
struct alignas(64) TileConfig {
  std::uint8_t palette_id = 1;
  std::uint8_t start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-bf16"))) inline ProbeResult dot_bf16_amx(std::int64_t iters) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  alignas(64) static std::uint16_t operand[16 * 32] = {};
  alignas(64) float out[16 * 16];
  _tile_loadconfig(&cfg);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, operand, 64);
  _tile_loadd(5, operand, 64);
  _tile_loadd(6, operand, 64);
  _tile_loadd(7, operand, 64);
  for (std::int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  return {static_cast<double>(iters) * 4 * 16 * 16 * 32 * 2, out[0]};
}

// Runs `kernel` on `threads` threads for about `budget` seconds in all; returns GFLOP/s.
// CPU seconds of the calling thread: rates per CPU-second are immune to time-sharing with other
// processes on a busy machine (each thread's own rate, summed over the threads).
inline double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Runs `kernel` on `threads` threads for about `budget` seconds in all; returns GFLOP/s.
template <class Kernel>
double probe_rate(Kernel kernel, int threads, double budget) {
  std::int64_t iters = 1 << 12;
  for (;;) {  // calibrate on one thread: three timed runs of ~1/4 of the budget each
    const double t0 = thread_seconds();
    benchmark::DoNotOptimize(kernel(iters).sink);
    const double t = thread_seconds() - t0;
    if (t > budget / 20 || iters > (std::int64_t{1} << 40)) {
      iters =
          static_cast<std::int64_t>(static_cast<double>(iters) * (budget / 4) / std::max(t, 1e-9));
      break;
    }
    iters *= 4;
  }
  auto one = [&] {
    const double t0 = thread_seconds();
    const ProbeResult r = kernel(iters);
    benchmark::DoNotOptimize(r.sink);
    return r.flops / (thread_seconds() - t0) * 1e-9;
  };
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double rate = 0;
    if (threads == 1) {  // no OpenMP team: also safe in a forked child
      rate = one();
    } else {
#pragma omp parallel num_threads(threads) reduction(+ : rate)
      rate += one();
    }
    best = std::max(best, rate);
  }
  return best;
}

// Linux lends AMX tile state only on request; false where it refuses.
inline bool request_amx() {
  constexpr long arch_req_xcomp_perm = 0x1023;
  constexpr long xfeature_xtiledata = 18;
  return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
}

// The AMX probe runs in a child process (one core, times the threads): if the kernel or the OS
// refuses tiles, the benchmark still runs and the context says so. 0 on failure.
inline double amx_rate(int threads) {
  int fds[2];
  if (pipe(fds) != 0) {
    return 0;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    double rate = 0;
    if (request_amx()) {
      rate = probe_rate(dot_bf16_amx, 1, 0.05);
    }
    const ssize_t written = write(fds[1], &rate, sizeof rate);
    _exit(written == sizeof rate ? 0 : 1);
  }
  close(fds[1]);
  double rate = 0;
  if (pid < 0 || read(fds[0], &rate, sizeof rate) != sizeof rate) {
    rate = 0;
  }
  close(fds[0]);
  int status = 0;
  if (pid > 0) {
    waitpid(pid, &status, 0);
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? rate * threads : 0;
}

// STREAM triad a[i] = b[i] + s c[i] over arrays far larger than the last-level cache.
inline double triad_rate(int threads) {
  const std::int64_t n = std::int64_t{32} << 20;  // 128 MiB per float array
  std::unique_ptr<float[]> a(new float[static_cast<std::size_t>(n)]);
  std::unique_ptr<float[]> b(new float[static_cast<std::size_t>(n)]);
  std::unique_ptr<float[]> c(new float[static_cast<std::size_t>(n)]);
#pragma omp parallel num_threads(threads)
  {  // first touch by the threads that use the pages, with the split of the timed loop
    const std::int64_t t = omp_get_thread_num();
    const std::int64_t nt = omp_get_num_threads();
    for (std::int64_t i = n * t / nt; i < n * (t + 1) / nt; ++i) {
      a[i] = 0.0f;
      b[i] = 1.0f;
      c[i] = 2.0f;
    }
  }
  const float s = 0.5f;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double rate = 0;
#pragma omp parallel num_threads(threads) reduction(+ : rate)
    {
      const std::int64_t t = omp_get_thread_num();
      const std::int64_t nt = omp_get_num_threads();
      const std::int64_t begin = n * t / nt;
      const std::int64_t end = n * (t + 1) / nt;
      const double t0 = thread_seconds();
      for (std::int64_t i = begin; i < end; ++i) {
        a[i] = b[i] + s * c[i];
      }
      benchmark::DoNotOptimize(a[static_cast<std::size_t>(begin)]);
      rate +=
          3.0 * static_cast<double>(end - begin) * sizeof(float) / (thread_seconds() - t0) * 1e-9;
    }
    best = std::max(best, rate);
  }
  return best;
}

inline std::string fixed(double v, int digits = 1) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(digits);
  os << v;
  return os.str();
}

}  // namespace detail

// Vector ISA the probes use: "avx512", "avx2" or "none".
inline std::string vector_isa() {
  if (__builtin_cpu_supports("avx512f")) {
    return "avx512";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return "avx2";
  }
  return "none";
}

// How the bf16 peak is measured on this CPU.
inline std::string bf16_isa() {
  if (detail::has_flag("amx_bf16") && detail::has_flag("amx_tile")) {
    return "amx";
  }
  if (__builtin_cpu_supports("avx512bf16")) {
    return "avx512_bf16";
  }
  return "none";
}

// The machine's limits at `threads` threads, measured once per thread count (~0.3 s).
inline const Limits& limits(int threads) {
  static std::map<int, Limits> cache;
  auto it = cache.find(threads);
  if (it != cache.end()) {
    return it->second;
  }
  Limits l;
  const std::string isa = vector_isa();
  if (isa == "avx512") {
    l.f32_gflops = detail::probe_rate(detail::fma_avx512, threads, 0.05);
  } else if (isa == "avx2") {
    l.f32_gflops = detail::probe_rate(detail::fma_avx2, threads, 0.05);
  }
  const std::string bf = bf16_isa();
  if (bf == "amx") {
    l.bf16_gflops = detail::amx_rate(threads);
  }
  if (l.bf16_gflops == 0 && __builtin_cpu_supports("avx512bf16")) {
    l.bf16_gflops = detail::probe_rate(detail::dot_bf16_avx512, threads, 0.05);
  }
  if (l.bf16_gflops == 0) {
    l.bf16_gflops = l.f32_gflops;  // bf16 is widened and multiplied at the f32 rate
  }
  l.triad_gbs = detail::triad_rate(threads);
  return cache.emplace(threads, l).first->second;
}

// Adds the machine description and its measured limits (1 thread and all threads) to the
// benchmark context.
inline void add_context() {
  const int all = omp_get_max_threads();
  benchmark::AddCustomContext("cpu_model", detail::cpuinfo_field("model name"));
  std::string flags;
  for (const char* f : {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}) {
    if (detail::has_flag(f)) {
      flags.append(flags.empty() ? "" : " ").append(f);
    }
  }
  benchmark::AddCustomContext("isa_flags", flags);
  benchmark::AddCustomContext("probe_isa", vector_isa().append(", bf16: ").append(bf16_isa()));
#if defined(MMSPARSE_WITH_ONEDNN)
  benchmark::AddCustomContext("onednn", cpu::onednn_version() + " isa " + cpu::onednn_isa());
#else
  benchmark::AddCustomContext("onednn", "not built (MMSPARSE_WITH_ONEDNN off)");
#endif
  benchmark::AddCustomContext("threads", std::to_string(all));
  for (const int t : {1, all}) {
    const Limits& l = limits(t);
    const std::string suffix = std::string("_").append(std::to_string(t)).append("t");
    benchmark::AddCustomContext("f32_peak_gflops" + suffix, detail::fixed(l.f32_gflops));
    benchmark::AddCustomContext(
        "bf16_peak_gflops" + suffix,
        detail::fixed(l.bf16_gflops) + (bf16_isa() == "none" ? " (no bf16 FMA: f32 peak)" : ""));
    benchmark::AddCustomContext("triad_gbs" + suffix, detail::fixed(l.triad_gbs));
    if (all == 1) {
      break;
    }
  }
}

}  // namespace mmsparse::bench

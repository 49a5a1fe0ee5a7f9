// bench/gemm_bench.cpp
//
// GEMM throughput of the CPU providers at the layer shapes: Eigen f32, oneDNN f32 (plain and
// with packed weights), oneDNN bf16, and at decode the backend's skinny kernel (row-major and
// panel-packed weights); 1 and all threads;
// GFLOP/s and the fraction of the measured peak (bench_context.hpp); decode also as weight
// bytes/s against the triad bandwidth. A training step (x W, dy W^T, x^T dy with weights changing
// every step) compares packed and plain weights; short segments (8 experts of 8 to 128 tokens)
// compare the backend's skinny kernels with the provider alone, product by product; weight
// gradients whose operands' rows alias compare oneDNN on a padded copy with oneDNN in place.
#include <chrono>
#include <cstdint>
#include <ctime>
#include <omp.h>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/tensor.hpp>
#if defined(MMSPARSE_WITH_ONEDNN)
#include <mmsparse/backend/cpu/onednn_gemm.hpp>
#endif

#include "bench_context.hpp"

namespace mm = mmsparse;
using mm::Trans;

namespace {

struct GemmShape {
  const char* label;
  std::int64_t m, k, n;
  bool decode;  // weight-streaming bound: report bytes/s of weights
};

constexpr GemmShape shapes[] = {
    {"ffn_4096x512x1536", 4096, 512, 1536, false},
    {"ffn_512x512x1536", 512, 512, 1536, false},
    {"ffn_128x512x1536", 128, 512, 1536, false},
    {"ffn_4096x1024x2816", 4096, 1024, 2816, false},
    {"square_2048", 2048, 2048, 2048, false},
    {"decode_16x4096x14336", 16, 4096, 14336, true},
    {"decode_4x4096x14336", 4, 4096, 14336, true},
    {"router_4096x512x8", 4096, 512, 8, false},
};

// Cheap deterministic fill in [-0.5, 0.5) (the values do not change the speed).
template <class T>
void fill(mm::Tensor<T>& t, std::uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < t.size(); ++i) {
    const auto h = static_cast<float>(mm::hash64(seed, static_cast<std::uint64_t>(i)) >> 40);
    t.data()[i] = mm::scalar_cast<T>(h * 0x1.0p-24f - 0.5f);
  }
}

template <class T>
mm::View<const T> cv(const mm::Tensor<T>& t) {
  return t.view();
}

void set_threads(int threads) {
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
}

// How a provider is driven: plain gemm, or grouped_gemm over one expert (packed weights).
enum class Path { plain, packed };

// Times `body` over the benchmark loop. GFLOP/s counts the process's CPU seconds divided by the
// threads (what the threads achieve while they run: robust on a shared machine, and slightly low
// where OpenMP threads spin while waiting); wall_GFLOP/s counts real time. peak_frac is the
// former over the measured peak; for weight-streaming shapes also weight GB/s and its fraction
// of the triad bandwidth.
struct Rates {
  int threads = 1;
  double flops = 0;         // per iteration
  double peak_gflops = 0;   // of this dtype at this thread count
  double weight_bytes = 0;  // per iteration, reported when > 0
  double triad_gbs = 0;
};

inline double process_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

template <class Body>
void timed_loop(benchmark::State& state, const Rates& r, Body body) {
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = process_seconds();
  for (auto _ : state) {
    body();
    benchmark::ClobberMemory();
  }
  const double cpu = (process_seconds() - c0) / r.threads;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto iters = static_cast<double>(state.iterations());
  const double gflops = r.flops * iters / cpu * 1e-9;
  state.counters["GFLOP/s"] = gflops;
  state.counters["wall_GFLOP/s"] = r.flops * iters / wall * 1e-9;
  state.counters["peak_frac"] = gflops / r.peak_gflops;
  if (r.weight_bytes > 0) {
    const double gbs = r.weight_bytes * iters / cpu * 1e-9;
    state.counters["weight_GB/s"] = gbs;
    state.counters["bw_frac"] = gbs / r.triad_gbs;
  }
}

template <class T, class Provider>
void bm_gemm(benchmark::State& state, GemmShape s, int threads, Path path, Provider& provider) {
  set_threads(threads);
  mm::Tensor<T> a(s.m, s.k);
  mm::Tensor<T> w(s.k, s.n);
  mm::Tensor<T> c(s.m, s.n);
  fill(a, 1);
  fill(w, 2);
  fill(c, 3);
  const std::vector<std::int64_t> offsets = {0, s.m};
  auto run = [&] {
    if constexpr (requires { provider.grouped_gemm(c.view(), cv(a), cv(w), Trans::no, offsets); }) {
      if (path == Path::packed) {
        provider.grouped_gemm(c.view(), cv(a), cv(w), Trans::no, offsets, 1.0, 0.0);
        return;
      }
    }
    provider.gemm(c.view(), cv(a), Trans::no, cv(w), Trans::no, 1.0, 0.0);
  };
  const auto& lim = mm::bench::limits(threads);
  const Rates rates{threads,
                    2.0 * static_cast<double>(s.m * s.k * s.n),
                    std::is_same_v<T, mm::bf16> ? lim.bf16_gflops : lim.f32_gflops,
                    s.decode ? static_cast<double>(w.bytes()) : 0.0,
                    lim.triad_gbs};
  run();  // primitives created, weights packed (panels on their second use): the steady state
  run();  // is what is timed
  timed_loop(state, rates, run);
}

// One training step of a grouped FFN projection: h = x W (forward), dx = dh W^T (input
// gradient), dW = x^T dh (weight gradient), with weights_updated() before it as after an
// optimizer step: packed layouts pay their packing once per step.
template <class T, class Provider>
void bm_train_step(benchmark::State& state, int threads, Provider& provider) {
  set_threads(threads);
  constexpr std::int64_t experts = 8;
  constexpr std::int64_t rows = 512;  // per expert
  constexpr std::int64_t d = 512;
  constexpr std::int64_t f = 1536;
  constexpr std::int64_t n = experts * rows;
  mm::Tensor<T> x(n, d);
  mm::Tensor<T> w(experts * d, f);
  mm::Tensor<T> h(n, f);
  mm::Tensor<T> dh(n, f);
  mm::Tensor<T> dx(n, d);
  mm::Tensor<T> dw(experts * d, f);
  fill(x, 4);
  fill(w, 5);
  fill(dh, 6);
  std::vector<std::int64_t> offsets;
  for (std::int64_t e = 0; e <= experts; ++e) {
    offsets.push_back(e * rows);
  }
  auto step = [&] {
    provider.weights_updated();
    provider.grouped_gemm(h.view(), cv(x), cv(w), Trans::no, offsets, 1.0, 0.0);
    provider.grouped_gemm(dx.view(), cv(dh), cv(w), Trans::yes, offsets, 1.0, 0.0);
    provider.grouped_gemm_weight_grad(dw.view(), cv(x), cv(dh), offsets, 1.0, 0.0);
  };
  const auto& lim = mm::bench::limits(threads);
  const Rates rates{threads,
                    3 * 2.0 * static_cast<double>(n * d * f),
                    std::is_same_v<T, mm::bf16> ? lim.bf16_gflops : lim.f32_gflops};
  step();
  timed_loop(state, rates, step);
}

// The three products of 8 experts' gate projection (d = 512, f = 1536) when each expert took
// `rows` tokens, as in a training step (weights_updated() first): forward x W, input gradient
// dh W^T or weight gradient x^T dh. `Provider` is the CPU backend (short segments on the skinny
// kernels) or a GEMM provider alone, which multiplies every segment itself.
enum class Product { forward, input_grad, weight_grad };

// 8 experts' [512, 1536] products over `rows` rows each. With `copies` > 1 the steps take turns
// over that many sets of weights (and weight gradients), 25 MB each: with 4, a step's weights were
// last touched 75 MB ago and come from memory, as in a network whose layers' experts outgrow the
// last-level cache; with 1 they stay in it.
template <class Provider>
void bm_short_segments(benchmark::State& state,
                       std::int64_t rows,
                       Product product,
                       int threads,
                       int copies,
                       Provider& provider) {
  set_threads(threads);
  constexpr std::int64_t experts = 8;
  constexpr std::int64_t d = 512;
  constexpr std::int64_t f = 1536;
  const std::int64_t n = experts * rows;
  mm::Tensor<float> x(n, d);
  mm::Tensor<float> h(n, f);
  std::vector<mm::Tensor<float>> weights;
  std::vector<mm::Tensor<float>> grads;
  fill(x, 7);
  fill(h, 9);
  for (int i = 0; i < copies; ++i) {
    weights.emplace_back(experts * d, f);
    grads.emplace_back(experts * d, f);
    fill(weights.back(), 8 + 2 * static_cast<std::uint64_t>(i));
    fill(grads.back(), 9 + 2 * static_cast<std::uint64_t>(i));
  }
  std::vector<std::int64_t> offsets;
  for (std::int64_t e = 0; e <= experts; ++e) {
    offsets.push_back(e * rows);
  }
  std::size_t turn = 0;
  auto step = [&] {
    if constexpr (requires { provider.weights_updated(); }) {
      provider.weights_updated();
    }
    const mm::Tensor<float>& w = weights[turn % weights.size()];
    mm::Tensor<float>& dw = grads[turn % grads.size()];
    ++turn;
    switch (product) {
      case Product::forward:
        provider.grouped_gemm(h.view(), cv(x), cv(w), Trans::no, offsets, 1.0, 0.0);
        break;
      case Product::input_grad:
        provider.grouped_gemm(x.view(), cv(h), cv(w), Trans::yes, offsets, 1.0, 0.0);
        break;
      case Product::weight_grad:
        provider.grouped_gemm_weight_grad(dw.view(), cv(x), cv(h), offsets, 1.0, 1.0);
        break;
    }
  };
  const auto& lim = mm::bench::limits(threads);
  const Rates rates{threads, 2.0 * static_cast<double>(n * d * f), lim.f32_gflops};
  step();
  timed_loop(state, rates, step);
}

// A weight gradient C [m, n] = A^T B with A [k, m] and B [k, n] row-major, m and n multiples of
// 256 floats (1 KB): the rows of both alias in L1. The layers' shapes: a projection's x^T dy over
// k tokens, and attention's P^T dO for one head and block of queries.
struct AliasedShape {
  const char* label;
  std::int64_t m, n, k;
};

constexpr AliasedShape aliased_shapes[] = {
    {"projection_512x512_tokens128", 512, 512, 128},
    {"projection_512x512_tokens1024", 512, 512, 1024},
    {"attention_dv_1024x64_queries128", 1024, 64, 128},
};

template <class Provider>
void bm_aliased(benchmark::State& state, AliasedShape s, int threads, Provider& provider) {
  set_threads(threads);
  mm::Tensor<float> a(s.k, s.m);
  mm::Tensor<float> b(s.k, s.n);
  mm::Tensor<float> c(s.m, s.n);
  fill(a, 7);
  fill(b, 8);
  fill(c, 9);
  auto run = [&] { provider.gemm(c.view(), cv(a), Trans::yes, cv(b), Trans::no, 1.0, 1.0); };
  const auto& lim = mm::bench::limits(threads);
  run();
  timed_loop(
      state, Rates{threads, 2.0 * static_cast<double>(s.m * s.n * s.k), lim.f32_gflops}, run);
}

// CpuBackend<T, EigenGemm> exposes the same calls (weights_updated is a no-op there).
using EigenF32 = mm::CpuBackend<float, mm::cpu::EigenGemm>;

template <class Fn>
void add(const std::string& name, Fn fn) {
  benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMillisecond);
}

void register_all() {
  const int all = omp_get_max_threads();
  std::vector<int> thread_counts = {1};
  if (all > 1) {
    thread_counts.push_back(all);
  }
  for (const int t : thread_counts) {
    const std::string th = "/threads:" + std::to_string(t);
    for (const GemmShape& s : shapes) {
      const std::string shape = std::string("/") + s.label;
      add("gemm/eigen_f32" + shape + th, [=](benchmark::State& st) {
        mm::cpu::EigenGemm g;  // the provider itself: the backend sends M <= 16 to skinny_gemm
        bm_gemm<float>(st, s, t, Path::plain, g);
      });
      if (s.decode) {  // what layers get: CpuBackend::gemm, M <= 16 on the skinny kernel
        add("gemm/backend_f32" + shape + th, [=](benchmark::State& st) {
          mm::CpuBackend<float> b;
          bm_gemm<float>(st, s, t, Path::plain, b);
        });
        add("gemm/backend_bf16" + shape + th, [=](benchmark::State& st) {
          mm::CpuBackend<mm::bf16> b;
          bm_gemm<mm::bf16>(st, s, t, Path::plain, b);
        });
        // CpuBackend::grouped_gemm: the weight block in panels (skinny_pack.hpp).
        add("gemm/backend_f32_panels" + shape + th, [=](benchmark::State& st) {
          mm::CpuBackend<float> b;
          bm_gemm<float>(st, s, t, Path::packed, b);
        });
        add("gemm/backend_bf16_panels" + shape + th, [=](benchmark::State& st) {
          mm::CpuBackend<mm::bf16> b;
          bm_gemm<mm::bf16>(st, s, t, Path::packed, b);
        });
      }
#if defined(MMSPARSE_WITH_ONEDNN)
      using mm::cpu::OnednnGemm;
      using mm::cpu::PackMode;
      add("gemm/onednn_f32_plain" + shape + th, [=](benchmark::State& st) {
        OnednnGemm g({.pack = PackMode::never});
        bm_gemm<float>(st, s, t, Path::plain, g);
      });
      add("gemm/onednn_f32_packed" + shape + th, [=](benchmark::State& st) {
        OnednnGemm g({.pack = PackMode::automatic});
        bm_gemm<float>(st, s, t, Path::packed, g);
      });
      add("gemm/onednn_f32_copied" + shape + th, [=](benchmark::State& st) {
        OnednnGemm g({.pack = PackMode::always});
        bm_gemm<float>(st, s, t, Path::packed, g);
      });
      add("gemm/onednn_bf16_plain" + shape + th, [=](benchmark::State& st) {
        OnednnGemm g({.pack = PackMode::never});
        bm_gemm<mm::bf16>(st, s, t, Path::plain, g);
      });
      add("gemm/onednn_bf16_packed" + shape + th, [=](benchmark::State& st) {
        OnednnGemm g({.pack = PackMode::automatic});
        bm_gemm<mm::bf16>(st, s, t, Path::packed, g);
      });
#endif
    }
    for (const std::int64_t rows : {8, 16, 17, 32, 35, 40, 48, 64, 96, 128}) {
      for (const auto& [label, product] : {std::pair{"forward", Product::forward},
                                           std::pair{"input_grad", Product::input_grad},
                                           std::pair{"weight_grad", Product::weight_grad}}) {
        const std::string tail = std::string("/") + label + "/rows:" + std::to_string(rows) + th;
        // "_cold": the weights come from memory (4 sets in turn); only for the rows a
        // mixture-of-depths layer's inner experts see at S = 1024.
        const bool cold_too = rows == 16 || rows == 17 || rows == 32 || rows == 35 || rows == 40;
        for (const int copies : {1, 4}) {
          if (copies > 1 && !cold_too) {
            continue;
          }
          const std::string name = copies > 1 ? "short_segments_cold/" : "short_segments/";
          add(name + "backend" + tail, [=](benchmark::State& st) {
            mm::CpuBackend<float> b;
            bm_short_segments(st, rows, product, t, copies, b);
          });
#if defined(MMSPARSE_WITH_ONEDNN)
          add(name + "onednn" + tail, [=](benchmark::State& st) {
            mm::cpu::OnednnGemm g;
            bm_short_segments(st, rows, product, t, copies, g);
          });
#endif
        }
      }
    }
#if defined(MMSPARSE_WITH_ONEDNN)
    // The oneDNN provider with its padded copy of aliasing operands (the default) and without.
    for (const AliasedShape& s : aliased_shapes) {
      for (const bool copy : {true, false}) {
        add(std::string("aliased/onednn_") + (copy ? "copied/" : "in_place/") + s.label + th,
            [=](benchmark::State& st) {
              mm::cpu::OnednnGemm g({.copy_aliasing = copy});
              bm_aliased(st, s, t, g);
            });
      }
    }
#endif
    add("train_step/eigen_f32" + th, [=](benchmark::State& st) {
      EigenF32 b;
      bm_train_step<float>(st, t, b);
    });
#if defined(MMSPARSE_WITH_ONEDNN)
    using mm::cpu::OnednnGemm;
    using mm::cpu::PackMode;
    using OnednnF32 = mm::CpuBackend<float, OnednnGemm>;
    using OnednnBf16 = mm::CpuBackend<mm::bf16, OnednnGemm>;
    for (const auto& [label, mode] : {std::pair{"plain", PackMode::never},
                                      std::pair{"packed", PackMode::automatic},
                                      std::pair{"copied", PackMode::always}}) {
      add(std::string("train_step/onednn_f32_") + label + th, [=](benchmark::State& st) {
        OnednnF32 b;
        b.gemm_provider_instance() = OnednnGemm({.pack = mode});
        bm_train_step<float>(st, t, b);
      });
      add(std::string("train_step/onednn_bf16_") + label + th, [=](benchmark::State& st) {
        OnednnBf16 b;
        b.gemm_provider_instance() = OnednnGemm({.pack = mode});
        bm_train_step<mm::bf16>(st, t, b);
      });
    }
#endif
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  mm::bench::add_context();
#if defined(MMSPARSE_WITH_ONEDNN)
  benchmark::AddCustomContext("onednn_f32_impl",
                              mm::cpu::onednn_matmul_impl<float>(512, 512, 1536, true) +
                                  "; packed path " +
                                  mm::cpu::onednn_matmul_impl<float>(512, 512, 1536, false));
  benchmark::AddCustomContext("onednn_bf16_impl",
                              mm::cpu::onednn_matmul_impl<mm::bf16>(512, 512, 1536, false));
#endif
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

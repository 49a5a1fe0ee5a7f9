// bench/sparse_ffn_bench.cpp
//
// Sparse FFN forward, each router x dispatch at MoMa-like shapes (test/cases/sparse_ffn_cases.hpp),
// against the dense SwiGLU FFN of equal active FLOPs (ratio_to_dense: vs its best run;
// ratio_interleaved: best of 5 alternating calls), routing + dispersion alone, a large GEMM, and
// decode (16 tokens, top-2 of 8, d = 4096, f = 14336) as weight bytes/s against the triad.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench_context.hpp"
#include "cases/sparse_ffn_cases.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/dispatch/dense_mask.hpp>
#include <mmsparse/dispatch/layout.hpp>
#include <mmsparse/dispatch/padded_capacity.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>
#include <mmsparse/layers/swiglu_ffn.hpp>
#include <mmsparse/routing/token_choice.hpp>

namespace mm = mmsparse;
namespace cases = mmsparse::cases;

namespace {

using Backend = mm::CpuBackend<float>;

Backend& backend() {
  static Backend b;  // threads: OMP_NUM_THREADS (OpenMP's default otherwise)
  return b;
}

// Best (over repetitions) mean wall seconds per iteration of the benchmarks run so far, by name.
std::map<std::string, double>& seconds() {
  static std::map<std::string, double> s;
  return s;
}

struct Input {
  mm::Tensor<float> x;  // [N, d]
  std::vector<mm::ModalityId> ids;
};

const Input& input_of(const cases::SparseFfnCase& c) {
  static std::map<std::string, std::unique_ptr<Input>> inputs;
  auto& in = inputs[c.name];
  if (!in) {
    mm::Rng rng(c.seed * 31 + 5);
    in = std::make_unique<Input>(
        Input{rng.normal_tensor<float>(c.tokens, c.d), cases::modalities_of(c)});
  }
  return *in;
}

// Layer construction draws ~20M normals: keep the last one of each type for the repeated calls
// Google Benchmark makes of one benchmark.
template <class L>
L& layer_for(const std::string& name, const typename L::Config& cfg) {
  static std::string current;
  static std::unique_ptr<L> layer;
  if (!layer || current != name) {
    layer.reset();
    layer = std::make_unique<L>(cfg);
    current = name;
  }
  return *layer;
}

// Runs `body` once per iteration, timing each; keeps the best mean of `name` over the calls
// (repetitions) and returns this call's mean.
template <class F>
double timed_loop(benchmark::State& state, const std::string& name, F&& body) {
  double total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double mean = total / static_cast<double>(state.iterations());
  auto [it, inserted] = seconds().try_emplace(name, mean);
  if (!inserted) {
    it->second = std::min(it->second, mean);
  }
  return mean;
}

// FLOP/s of what ran (Eigen's benchmark convention: per-iteration FLOPs as an invariant rate).
void flops_counter(benchmark::State& state, double flops) {
  state.counters["FLOPS"] = benchmark::Counter(
      flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// C [m, n] = A [m, k] B [k, n] through the backend's GEMM provider, or Eigen directly.
template <class Gemm>
void bm_gemm(benchmark::State& state,
             const std::string& name,
             std::int64_t m,
             std::int64_t k,
             std::int64_t n) {
  mm::Rng rng(1);
  auto a = rng.normal_tensor<float>(m, k);
  auto b = rng.normal_tensor<float>(k, n);
  mm::Tensor<float> c(m, n);
  Gemm gemm;
  timed_loop(state, name, [&] {
    gemm.gemm(c.view(),
              mm::View<const float>(a.view()),
              mm::Trans::no,
              mm::View<const float>(b.view()),
              mm::Trans::no,
              1.0,
              0.0);
    benchmark::DoNotOptimize(c.data());
  });
  flops_counter(state, 2.0 * m * k * n);
}

void bm_dense(benchmark::State& state,
              const std::string& name,
              const cases::SparseFfnCase& c,
              std::int64_t hidden) {
  mm::SwiGluFfn<float, Backend> ffn({.d = c.d, .hidden = hidden, .seed = c.seed});
  const Input& in = input_of(c);
  mm::Tensor<float> y(c.tokens, c.d);
  Backend& b = backend();
  ffn.forward(b, in.x.view(), y.view());  // warm-up
  timed_loop(state, name, [&] {
    ffn.forward(b, in.x.view(), y.view());
    benchmark::DoNotOptimize(y.data());
  });
  flops_counter(state, ffn.flops(c.tokens));
  state.counters["hidden"] = static_cast<double>(hidden);
}

// Best of `rounds` alternating calls of f and g (seconds each): on a shared machine, load that
// drifts between two benchmarks hits both sides of an alternation alike.
template <class F, class G>
std::pair<double, double> interleaved_best(int rounds, F&& f, G&& g) {
  auto time = [](auto&& h) {
    const auto t0 = std::chrono::steady_clock::now();
    h();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double best_f = 1e300;
  double best_g = 1e300;
  for (int r = 0; r < rounds; ++r) {
    best_f = std::min(best_f, time(f));
    best_g = std::min(best_g, time(g));
  }
  return {best_f, best_g};
}

template <class V, class D>
void bm_layer(benchmark::State& state,
              const std::string& name,
              const cases::SparseFfnCase& c,
              const std::string& dense,
              std::int64_t dense_hidden) {
  using L = mm::SparseFfn<float, typename V::router, D, Backend>;
  L& layer = layer_for<L>(name, cases::layer_config<L, V>(c));
  const Input& in = input_of(c);
  const mm::Span<const mm::ModalityId> modality(in.ids.data(), c.tokens);
  mm::Tensor<float> y(c.tokens, c.d);
  Backend& b = backend();
  auto stats = layer.forward(b, in.x.view(), modality, y.view());  // warm-up
  const double t = timed_loop(state, name, [&] {
    stats = layer.forward(b, in.x.view(), modality, y.view());
    benchmark::DoNotOptimize(y.data());
  });
  flops_counter(state, stats.flops);
  const auto it = seconds().find(dense);
  if (it != seconds().end()) {
    state.counters["ratio_to_dense"] = t / it->second;
  }
  // The same ratio from best-of-5 alternating calls of the dense FFN and the layer.
  mm::SwiGluFfn<float, Backend> ffn({.d = c.d, .hidden = dense_hidden, .seed = c.seed});
  mm::Tensor<float> y_dense(c.tokens, c.d);
  ffn.forward(b, in.x.view(), y_dense.view());
  const auto [t_dense, t_layer] = interleaved_best(
      5,
      [&] { ffn.forward(b, in.x.view(), y_dense.view()); },
      [&] { (void)layer.forward(b, in.x.view(), modality, y.view()); });
  state.counters["ratio_interleaved"] = t_layer / t_dense;
  std::int64_t slots = 0;
  for (auto n : stats.tokens_per_expert) {
    slots += n;
  }
  state.counters["slots_per_token"] = static_cast<double>(slots) / static_cast<double>(c.tokens);
  if (stats.dropped > 0) {
    state.counters["dropped"] = static_cast<double>(stats.dropped);
  }
}

// Routing + layout + gather + gate-weighted scatter-add alone (no expert math), with the
// sorted-gather layout; share_of_layer against the full sorted-gather layer.
template <class V>
void bm_dispersion(benchmark::State& state,
                   const std::string& name,
                   const cases::SparseFfnCase& c,
                   const std::string& layer_name) {
  using L = mm::SparseFfn<float, typename V::router, mm::SortedGather, Backend>;
  L& layer = layer_for<L>(layer_name, cases::layer_config<L, V>(c));
  const Input& in = input_of(c);
  Backend& b = backend();
  mm::Tensor<float> y(c.tokens, c.d);
  const auto w = layer.weights();
  mm::RouteArgs<Backend> args;
  args.x = in.x.view();
  args.modality = mm::Span<const mm::ModalityId>(in.ids.data(), c.tokens);
  args.router_weight = w.router;
  args.num_modalities = layer.config().modalities;
  args.experts_per_group = layer.config().experts;
  typename V::router::template Saved<Backend> saved;
  const mm::SortedGather scheme{};
  auto body = [&] {
    auto frame = b.workspace().frame();
    const auto plan = layer.router().route(b, args, saved);
    auto layout = mm::take_layout(b, scheme.rows(plan));
    mm::make_layout(b, layout, scheme, plan);
    auto xg = b.workspace().template take<float>(layout.rows(), c.d);  // [R, d]
    mm::dispatch_gather(b, xg, in.x.view(), layout);
    mm::dispatch_combine(b, y.view(), mm::View<const float>(xg), layout);
    benchmark::DoNotOptimize(y.data());
  };
  body();  // warm-up
  const double t = timed_loop(state, name, body);
  const auto it = seconds().find(layer_name);
  if (it != seconds().end()) {
    state.counters["share_of_layer"] = t / it->second;
  }
}

// ---- decode: a Mixtral-like layer at 16 tokens ------------------------------------------

// Token choice top-2 of 8 experts (dropless), d = 4096, f = 14336: 5.6 GB of f32 expert
// weights, of which each expert sees ~4 rows per forward. The bound is streaming the weights of
// the experts that got a row.
constexpr std::int64_t decode_tokens = 16;
constexpr std::int64_t decode_d = 4096;
constexpr std::int64_t decode_f = 14336;
constexpr std::int64_t decode_experts = 8;

// The decode layers hold GBs of weights: only one lives at a time.
struct HeldLayer {
  std::string name;
  std::shared_ptr<void> layer;
};

template <class L>
L& decode_layer(const std::string& name, const typename L::Config& cfg) {
  static HeldLayer held;
  if (held.name != name) {
    held.layer.reset();  // free the previous weights before drawing the next
    held.layer = std::make_shared<L>(cfg);
    held.name = name;
  }
  return *static_cast<L*>(held.layer.get());
}

inline double process_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Inference forward of 16 tokens. GFLOP/s over wall time (the FLOPS counter, as above);
// weight_GB/s: bytes of the active experts' w1, w3, w2 per CPU-second of the threads (as
// gemm_bench; robust on a shared machine), bw_frac its fraction of the measured triad bandwidth
// (bench_context.hpp, also per CPU-second); wall_weight_GB/s over wall time.
template <class T>
void bm_decode(benchmark::State& state, const std::string& name) {
  using B = mm::CpuBackend<T>;
  using L = mm::SparseFfn<T, mm::TokenChoice, mm::SortedGather, B>;
  typename L::Config cfg;
  cfg.d = decode_d;
  cfg.hidden = decode_f;
  cfg.experts = {decode_experts};
  cfg.router.k = 2;
  cfg.router.dropless = true;
  cfg.seed = 17;
  const L& layer = decode_layer<L>(name, cfg);
  B b;  // threads: OMP_NUM_THREADS; its panel copies of the weights go with it
  mm::Rng rng(23);
  const auto x32 = rng.normal_tensor<float>(decode_tokens, decode_d);
  mm::Tensor<T> x(decode_tokens, decode_d);
  b.copy(x.view(), mm::View<const float>(x32));
  const std::vector<mm::ModalityId> ids(static_cast<std::size_t>(decode_tokens), 0);
  const mm::Span<const mm::ModalityId> modality(ids.data(), decode_tokens);
  mm::Tensor<T> y(decode_tokens, decode_d);
  // Warm-up: the second call packs the experts' weights into panels (skinny_pack.hpp).
  auto stats = layer.forward(b, mm::View<const T>(x), modality, y.view());
  stats = layer.forward(b, mm::View<const T>(x), modality, y.view());
  const double c0 = process_seconds();
  const double t = timed_loop(state, name, [&] {
    stats = layer.forward(b, mm::View<const T>(x), modality, y.view());
    benchmark::DoNotOptimize(y.data());
  });
  const int threads = B::threads();
  const double cpu = (process_seconds() - c0) / threads / static_cast<double>(state.iterations());
  std::int64_t active = 0;
  for (const auto rows : stats.tokens_per_expert) {
    active += rows > 0 ? 1 : 0;
  }
  const double bytes = static_cast<double>(active) * 3.0 * decode_d * decode_f * sizeof(T);
  flops_counter(state, stats.flops);
  state.counters["active_experts"] = static_cast<double>(active);
  state.counters["weight_GB/s"] = bytes / cpu * 1e-9;
  state.counters["wall_weight_GB/s"] = bytes / t * 1e-9;
  state.counters["bw_frac"] = bytes / cpu * 1e-9 / mm::bench::limits(threads).triad_gbs;
  state.counters["threads"] = threads;
}

const cases::SparseFfnCase& bench_case(const std::string& name) {
  for (const auto& c : cases::bench_cases()) {
    if (c.name == name) {
      return c;
    }
  }
  throw mm::Error("[sparse_ffn_bench] no bench case " + name);
}

std::set<std::string>& registered() {
  static std::set<std::string> r;
  return r;
}

// Registers, in run order: the equal-FLOPs dense FFN (once per shape), the layer under each
// dispatch scheme, and the routing + dispersion time of the sorted-gather layer.
template <class V, class... D>
void register_layer(const std::string& case_id) {
  const cases::SparseFfnCase& c = bench_case(case_id);
  const std::int64_t hidden = mm::equal_flops_dense_hidden(c.hidden, V::planned_slots(c), c.tokens);
  const std::string dense = "BM_dense_ffn/" + c.name + "/hidden:" + std::to_string(hidden);
  if (registered().insert(dense).second) {
    benchmark::RegisterBenchmark(
        dense.c_str(), [&c, dense, hidden](benchmark::State& s) { bm_dense(s, dense, c, hidden); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  const std::string sorted = std::string("BM_sparse_ffn_") + V::name + "_sorted_gather/" + c.name;
  (
      [&] {
        const std::string name =
            std::string("BM_sparse_ffn_") + V::name + "_" + std::string(D::name) + "/" + c.name;
        benchmark::RegisterBenchmark(name.c_str(),
                                     [&c, name, dense, hidden](benchmark::State& s) {
                                       bm_layer<V, D>(s, name, c, dense, hidden);
                                     })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }(),
      ...);
  const std::string disp = std::string("BM_dispersion_") + V::name + "/" + c.name;
  benchmark::RegisterBenchmark(
      disp.c_str(),
      [&c, disp, sorted](benchmark::State& s) { bm_dispersion<V>(s, disp, c, sorted); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  mm::bench::add_context();
  benchmark::AddCustomContext("gemm_provider", Backend::gemm_provider::name);

  benchmark::RegisterBenchmark("BM_gemm_provider/4096x512x1536",
                               [](benchmark::State& s) {
                                 bm_gemm<Backend::gemm_provider>(
                                     s, "BM_gemm_provider/4096x512x1536", 4096, 512, 1536);
                               })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("BM_gemm_eigen/4096x512x1536",
                               [](benchmark::State& s) {
                                 bm_gemm<mm::cpu::EigenGemm>(
                                     s, "BM_gemm_eigen/4096x512x1536", 4096, 512, 1536);
                               })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);

  using mm::DenseMask;
  using mm::PaddedCapacity;
  using mm::SortedGather;
  // MoT / MoMa 1t1i: hard modality routing.
  register_layer<cases::HardVariant, SortedGather, PaddedCapacity, DenseMask>("1t1i_50_50");
  register_layer<cases::HardVariant, SortedGather, PaddedCapacity>("1t1i_20_80");
  // MoMa: modality-aware expert choice, 1t1i and 4t4i.
  register_layer<cases::MomaExpertChoiceVariant, SortedGather, PaddedCapacity>("1t1i_50_50");
  register_layer<cases::MomaExpertChoiceVariant, SortedGather, PaddedCapacity, DenseMask>(
      "4t4i_50_50");
  register_layer<cases::MomaExpertChoiceVariant, SortedGather, PaddedCapacity>("4t4i_20_80");
  register_layer<cases::MomaExpertChoiceVariant, SortedGather>("4t4i_50_50_n1024");
  // Flat expert choice over 8 experts (sigmoid, Zhou's softmax with capacity factor 2).
  register_layer<cases::ExpertChoiceSigmoidVariant, SortedGather, PaddedCapacity>("4t4i_50_50");
  register_layer<cases::ExpertChoiceSoftmaxVariant, SortedGather>("4t4i_50_50");
  // Token choice top-2 of 8: dropless, and with capacity factor 1.
  register_layer<cases::TokenChoiceDroplessVariant, SortedGather, PaddedCapacity, DenseMask>(
      "4t4i_50_50");
  register_layer<cases::TokenChoiceCapacityVariant, SortedGather, PaddedCapacity>("4t4i_50_50");
  // Modality-aware token choice (top-2 in each 4-expert group).
  register_layer<cases::MomaTokenChoiceVariant, SortedGather, PaddedCapacity>("4t4i_20_80");
  // Mixture-of-depths: one block, half the tokens.
  register_layer<cases::DepthVariant, SortedGather, PaddedCapacity>("1t1i_50_50");

  // Decode, last: its layer holds 5.6 GB (f32) or 2.8 GB (bf16) of expert weights, one at a time.
  benchmark::RegisterBenchmark(
      "BM_decode_token_choice_top2of8/f32/16x4096x14336",
      [](benchmark::State& s) { bm_decode<float>(s, "BM_decode_token_choice_top2of8/f32"); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(
      "BM_decode_token_choice_top2of8/bf16/16x4096x14336",
      [](benchmark::State& s) { bm_decode<mm::bf16>(s, "BM_decode_token_choice_top2of8/bf16"); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// bench/sparse_ffn_cuda_bench.cu
//
// The CUDA backend at LLM scale, bf16 (d = 4096, SwiGLU hidden 14336), timed with CUDA events:
//   1. expert GEMMs (8 experts; 256, 2048 and 4096 rows each = 16k tokens top-2) under each
//      grouped-GEMM mode, equal and skewed segments, against one dense GEMM of equal FLOPs;
//   2. the MoMa 4t4i layer (16k tokens), forward and forward + backward, against the dense
//      SwiGLU FFN of equal active FLOPs, and its routing + gather + scatter share.
// Every rate is also a fraction of the bf16 GEMM peak measured at start (8192^3).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include "cases/sparse_ffn_cases.hpp"
#include <mmsparse/backend/cuda/backend.cuh>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/layout.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/experts.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>

namespace mm = mmsparse;
namespace cases = mmsparse::cases;

namespace {

using T = mm::bf16;
using Backend = mm::CudaBackend<T>;
template <class U>
using DTensor = mm::Tensor<U, mm::device_space>;

constexpr std::int64_t model_d = 4096;
constexpr std::int64_t model_f = 14336;
constexpr std::int64_t experts = 8;

std::unique_ptr<Backend>& backend_slot() {
  static std::unique_ptr<Backend> b;
  return b;
}
Backend& backend() {
  return *backend_slot();
}

// Mean seconds per iteration of the benchmarks run so far, by name (ratio_to_dense, shares).
std::map<std::string, double>& seconds() {
  static std::map<std::string, double> s;
  return s;
}

double& peak_flops() {
  static double peak = 0.0;
  return peak;
}

// Times `body` on the backend's stream with CUDA events (host syncs inside `body` included).
class EventTimer {
 public:
  EventTimer() {
    MMSPARSE_CUDA_CHECK(cudaEventCreate(&start_));
    MMSPARSE_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  ~EventTimer() {
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
  }
  template <class F>
  double seconds(cudaStream_t stream, F&& body) {
    MMSPARSE_CUDA_CHECK(cudaEventRecord(start_, stream));
    body();
    MMSPARSE_CUDA_CHECK(cudaEventRecord(stop_, stream));
    MMSPARSE_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    MMSPARSE_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return static_cast<double>(ms) * 1e-3;
  }

 private:
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

// Warm-up, then one manually timed iteration per benchmark iteration; records the mean.
template <class F>
double timed_loop(benchmark::State& state, const std::string& name, F&& body) {
  Backend& b = backend();
  EventTimer timer;
  body();
  b.synchronize();
  double total = 0.0;
  std::int64_t n = 0;
  for (auto _ : state) {
    const double s = timer.seconds(b.stream(), body);
    state.SetIterationTime(s);
    total += s;
    ++n;
  }
  const double mean = n > 0 ? total / static_cast<double>(n) : 0.0;
  seconds()[name] = mean;
  return mean;
}

void rate_counters(benchmark::State& state, double flops, double mean_seconds) {
  state.counters["FLOPS"] = benchmark::Counter(
      flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  if (peak_flops() > 0.0 && mean_seconds > 0.0) {
    state.counters["peak_fraction"] = flops / mean_seconds / peak_flops();
  }
}

void ratio_counter(benchmark::State& state,
                   const char* key,
                   double mean_seconds,
                   const std::string& baseline) {
  const auto it = seconds().find(baseline);
  if (it != seconds().end() && it->second > 0.0) {
    state.counters[key] = mean_seconds / it->second;
  }
}

// Fills a device view with N(0, scale^2) draws: a 1M-value host pool, tiled on the device
// (the values feed GEMM timings and routing, not a model).
template <class U>
void fill_random(Backend& b, mm::View<U, mm::device_space> v, std::uint64_t seed, double scale) {
  constexpr std::int64_t pool_size = std::int64_t{1} << 20;
  const std::int64_t total = v.rows * v.cols;
  mm::Rng rng(seed);
  mm::Tensor<U> pool(std::min(pool_size, std::max<std::int64_t>(total, 1)), 1);
  for (std::int64_t i = 0; i < pool.size(); ++i) {
    pool.data()[i] = mm::scalar_cast<U>(scale * rng.normal());
  }
  MMSPARSE_CHECK(v.contiguous(), "fill_random", "v", "a contiguous view", "strided");
  const auto dpool = b.to_device(pool);
  for (std::int64_t at = 0; at < total; at += pool.size()) {
    const std::int64_t n = std::min(pool.size(), total - at);
    MMSPARSE_CUDA_CHECK(cudaMemcpyAsync(v.data + at,
                                        dpool.data(),
                                        static_cast<std::size_t>(n) * sizeof(U),
                                        cudaMemcpyDeviceToDevice,
                                        b.stream()));
  }
  b.synchronize();
}

template <class U>
DTensor<U> random_device(std::int64_t rows, std::int64_t cols, std::uint64_t seed, double scale) {
  DTensor<U> t(rows, cols);
  fill_random(backend(), t.view(), seed, scale);
  return t;
}

template <class U>
mm::View<const U, mm::device_space> cv(const DTensor<U>& t) {
  return t.view();
}

// ---- 0. the yardstick -------------------------------------------------------------------

constexpr std::int64_t peak_n = 8192;

double measure_peak() {
  Backend& b = backend();
  auto a = random_device<T>(peak_n, peak_n, 1, 0.01);
  auto w = random_device<T>(peak_n, peak_n, 2, 0.01);
  DTensor<T> c(peak_n, peak_n);
  EventTimer timer;
  const auto body = [&] { b.gemm(c.view(), cv(a), mm::Trans::no, cv(w), mm::Trans::no); };
  body();
  double best = 1e30;
  for (int i = 0; i < 10; ++i) {
    best = std::min(best, timer.seconds(b.stream(), body));
  }
  return 2.0 * static_cast<double>(peak_n) * peak_n * peak_n / best;
}

void bm_gemm_peak(benchmark::State& state) {
  Backend& b = backend();
  auto a = random_device<T>(peak_n, peak_n, 1, 0.01);
  auto w = random_device<T>(peak_n, peak_n, 2, 0.01);
  DTensor<T> c(peak_n, peak_n);
  const double t = timed_loop(state, "BM_gemm_peak_bf16", [&] {
    b.gemm(c.view(), cv(a), mm::Trans::no, cv(w), mm::Trans::no);
  });
  rate_counters(state, 2.0 * static_cast<double>(peak_n) * peak_n * peak_n, t);
}

// ---- 1. expert GEMMs ---------------------------------------------------------------------

const char* mode_name(mm::GroupedGemm mode) {
  switch (mode) {
    case mm::GroupedGemm::per_segment:
      return "per_segment";
    case mm::GroupedGemm::strided_batched:
      return "strided_batched";
    case mm::GroupedGemm::cublas_grouped:
      return "cublas_grouped";
  }
  return "unknown";
}

// Segment sizes summing to `experts * rows`: equal, or skewed as token choice leaves them.
std::vector<std::int64_t> segment_offsets(std::int64_t rows, bool skewed) {
  static constexpr double share[experts] = {0.22, 0.18, 0.15, 0.13, 0.11, 0.09, 0.07, 0.05};
  const std::int64_t total = experts * rows;
  std::vector<std::int64_t> offsets(experts + 1, 0);
  for (std::int64_t e = 0; e < experts; ++e) {
    const std::int64_t n =
        skewed ? (e + 1 < experts ? static_cast<std::int64_t>(share[e] * static_cast<double>(total))
                                  : total - offsets[static_cast<std::size_t>(e)])
               : rows;
    offsets[static_cast<std::size_t>(e + 1)] = offsets[static_cast<std::size_t>(e)] + n;
  }
  return offsets;
}

std::string dense_gemm_name(std::int64_t rows) {
  return "BM_dense_gemm_bf16/rows:" + std::to_string(experts * rows);
}

// One [E r, d] x [d, f] GEMM: the FLOPs of the 8 expert GEMMs below.
void bm_dense_gemm(benchmark::State& state, std::int64_t rows) {
  Backend& b = backend();
  const std::int64_t total = experts * rows;
  auto x = random_device<T>(total, model_d, 3, 1.0);
  auto w = random_device<T>(model_d, model_f, 4, 0.02);
  DTensor<T> y(total, model_f);
  const double t = timed_loop(state, dense_gemm_name(rows), [&] {
    b.gemm(y.view(), cv(x), mm::Trans::no, cv(w), mm::Trans::no);
  });
  rate_counters(state, 2.0 * static_cast<double>(total) * model_d * model_f, t);
}

// x [E r, d] -> y [E r, f] through expert e's w1 block for rows [offsets[e], offsets[e+1]).
void bm_expert_gemm(benchmark::State& state,
                    const std::string& name,
                    std::int64_t rows,
                    bool skewed,
                    mm::GroupedGemm mode) {
  Backend& b = backend();
  const auto offsets = segment_offsets(rows, skewed);
  const std::int64_t total = offsets.back();
  auto x = random_device<T>(total, model_d, 5, 1.0);
  auto w = random_device<T>(experts * model_d, model_f, 6, 0.02);
  DTensor<T> y(total, model_f);
  b.set_grouped_gemm_mode(mode);
  const double t = timed_loop(
      state, name, [&] { b.grouped_gemm(y.view(), cv(x), cv(w), mm::Trans::no, offsets); });
  b.set_grouped_gemm_mode(mm::GroupedGemm::per_segment);
  rate_counters(state, 2.0 * static_cast<double>(total) * model_d * model_f, t);
  ratio_counter(state, "ratio_to_dense", t, dense_gemm_name(rows));
}

void register_gemms() {
  for (const std::int64_t rows : {256, 2048, 4096}) {  // 4096 = 16k tokens x top-2 / 8
    const std::string dense = dense_gemm_name(rows);
    benchmark::RegisterBenchmark(dense.c_str(),
                                 [rows](benchmark::State& s) { bm_dense_gemm(s, rows); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    for (const bool skewed : {false, true}) {
      for (const auto mode : {mm::GroupedGemm::per_segment,
                              mm::GroupedGemm::strided_batched,
                              mm::GroupedGemm::cublas_grouped}) {
        if (skewed && mode == mm::GroupedGemm::strided_batched) {
          continue;  // unequal segments: strided_batched runs per_segment
        }
        const std::string name = std::string("BM_expert_gemm_bf16/rows_per_expert:") +
                                 std::to_string(rows) + (skewed ? "/skewed/" : "/equal/") +
                                 mode_name(mode);
        benchmark::RegisterBenchmark(name.c_str(),
                                     [name, rows, skewed, mode](benchmark::State& s) {
                                       bm_expert_gemm(s, name, rows, skewed, mode);
                                     })
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
}

// ---- 2. the MoMa 4t4i layer ----------------------------------------------------------------

using Variant = cases::MomaExpertChoiceVariant;
using Layer = mm::SparseFfn<T, Variant::router, mm::SortedGather, Backend>;

// 16k tokens, text/image 50/50 in runs of 1024 (whole images and long text spans).
const cases::SparseFfnCase& moma_case() {
  static const cases::SparseFfnCase c{
      "4t4i_16k", 16384, model_d, model_f, {4, 4}, {0.5, 0.5}, 1024, 301};
  return c;
}

// Device weights, inputs and the bound layer, built once (a few GiB).
struct MomaSetup {
  DTensor<float> router;
  DTensor<T> w1, w3, w2;                    // [E d, f], [E d, f], [E f, d]
  DTensor<T> dense_w1, dense_w3, dense_w2;  // the equal-FLOPs dense FFN: [d, f_dense] ...
  DTensor<T> x, dy;                         // [N, d]
  DTensor<mm::ModalityId> modality;
  std::int64_t dense_hidden = 0;
  std::unique_ptr<Layer> layer;
};

std::unique_ptr<MomaSetup>& moma_slot() {
  static std::unique_ptr<MomaSetup> setup;
  return setup;
}

// Hidden width of the dense FFN whose FLOPs equal the layer's active expert FLOPs.
std::int64_t dense_hidden() {
  const auto& c = moma_case();
  return mm::equal_flops_dense_hidden(c.hidden, Variant::planned_slots(c), c.tokens);
}

MomaSetup& moma() {
  auto& setup = moma_slot();
  if (!setup) {
    const auto& c = moma_case();
    setup = std::make_unique<MomaSetup>();
    auto& s = *setup;
    const auto cfg = cases::layer_config<Layer, Variant>(c);
    s.layer = std::make_unique<Layer>(cfg);
    const auto shapes = Layer::parameter_shapes(s.layer->config());
    const double d = static_cast<double>(c.d);
    const double f = static_cast<double>(c.hidden);
    s.router =
        random_device<float>(shapes[0].second.rows, shapes[0].second.cols, 11, 1.0 / std::sqrt(d));
    s.w1 = random_device<T>(shapes[1].second.rows, shapes[1].second.cols, 12, 1.0 / std::sqrt(d));
    s.w3 = random_device<T>(shapes[2].second.rows, shapes[2].second.cols, 13, 1.0 / std::sqrt(d));
    s.w2 = random_device<T>(shapes[3].second.rows, shapes[3].second.cols, 14, 1.0 / std::sqrt(f));
    s.layer->bind({s.router.view(), s.w1.view(), s.w3.view(), s.w2.view()});
    s.dense_hidden = dense_hidden();
    s.dense_w1 = random_device<T>(c.d, s.dense_hidden, 15, 1.0 / std::sqrt(d));
    s.dense_w3 = random_device<T>(c.d, s.dense_hidden, 16, 1.0 / std::sqrt(d));
    s.dense_w2 = random_device<T>(s.dense_hidden, c.d, 17, 1.0 / std::sqrt(f));
    s.x = random_device<T>(c.tokens, c.d, 18, 1.0);
    s.dy = random_device<T>(c.tokens, c.d, 19, 1.0);
    s.modality = backend().to_device(cases::modalities_of(c));
  }
  return *setup;
}

std::string dense_ffn_name(bool backward) {
  return std::string("BM_dense_ffn_bf16/") + (backward ? "forward_backward" : "forward") +
         "/N:16384/hidden:" + std::to_string(dense_hidden());
}

// The dense SwiGLU FFN of equal active FLOPs: the experts code path with one expert.
void bm_dense_ffn(benchmark::State& state, bool backward) {
  Backend& b = backend();
  auto& s = moma();
  const auto& c = moma_case();
  const std::int64_t h = s.dense_hidden;
  const std::vector<std::int64_t> offsets = {0, c.tokens};
  DTensor<T> a(c.tokens, h), g(c.tokens, h), hh(c.tokens, h), o(c.tokens, c.d), dx(c.tokens, c.d);
  DTensor<T> dw1(c.d, h), dw3(c.d, h), dw2(h, c.d);
  const mm::ExpertWeights<T, mm::device_space> w{cv(s.dense_w1), cv(s.dense_w3), cv(s.dense_w2)};
  const mm::ExpertGrads<T, mm::device_space> grads{dw1.view(), dw3.view(), dw2.view()};
  const double t = timed_loop(state, dense_ffn_name(backward), [&] {
    mm::experts_forward(b, o.view(), a.view(), g.view(), hh.view(), cv(s.x), w, offsets);
    if (backward) {
      mm::experts_backward(b,
                           dx.view(),
                           grads,
                           cv(s.dy),
                           cv(s.x),
                           cv(a),
                           cv(g),
                           w,
                           offsets,
                           /*accumulate_dx=*/false);
    }
  });
  const double flops = mm::expert_flops(c.tokens, c.d, h) * (backward ? 3.0 : 1.0);
  rate_counters(state, flops, t);
}

const std::string& moma_forward_name() {
  static const std::string name = "BM_moma_4t4i_bf16/forward/N:16384";
  return name;
}

void bm_moma(benchmark::State& state, bool backward) {
  Backend& b = backend();
  auto& s = moma();
  const auto& c = moma_case();
  DTensor<T> y(c.tokens, c.d), dx(c.tokens, c.d);
  DTensor<float> drouter(s.router.shape());
  DTensor<T> dw1(s.w1.shape()), dw3(s.w3.shape()), dw2(s.w2.shape());
  Layer::Saved saved;
  Layer::Stats stats;
  const mm::Span<const mm::ModalityId, mm::device_space> modality = s.modality.span();
  const std::string name =
      backward ? "BM_moma_4t4i_bf16/forward_backward/N:16384" : moma_forward_name();
  const double t = timed_loop(state, name, [&] {
    if (backward) {
      stats = s.layer->forward(b, cv(s.x), modality, y.view(), saved);
      s.layer->backward(
          b, saved, cv(s.dy), dx.view(), {drouter.view(), dw1.view(), dw3.view(), dw2.view()});
    } else {
      stats = s.layer->forward(b, cv(s.x), modality, y.view());
    }
  });
  // Backward: twice the forward's GEMM FLOPs (activation and weight gradients).
  rate_counters(state, stats.flops * (backward ? 3.0 : 1.0), t);
  ratio_counter(state, "ratio_to_dense", t, dense_ffn_name(backward));
  std::int64_t slots = 0;
  for (const auto n : stats.tokens_per_expert) {
    slots += n;
  }
  state.counters["slots_per_token"] = static_cast<double>(slots) / static_cast<double>(c.tokens);
  state.counters["arena_MiB"] = static_cast<double>(b.workspace().capacity()) / (1 << 20);
}

// Routing + layout + gather + gate-weighted scatter-add of the layer, without expert math.
void bm_moma_dispersion(benchmark::State& state) {
  Backend& b = backend();
  auto& s = moma();
  const auto& c = moma_case();
  DTensor<T> y(c.tokens, c.d);
  mm::RouteArgs<Backend> args;
  args.x = cv(s.x);
  args.modality = s.modality.span();
  args.router_weight = cv(s.router);
  args.num_modalities = s.layer->config().modalities;
  args.experts_per_group = s.layer->config().experts;
  Variant::router::Saved<Backend> saved;
  const mm::SortedGather scheme{};
  const double t = timed_loop(state, "BM_moma_4t4i_bf16/dispersion/N:16384", [&] {
    auto frame = b.workspace().frame();
    const auto plan = s.layer->router().route(b, args, saved);
    auto layout = mm::take_layout(b, scheme.rows(plan));
    mm::make_layout(b, layout, scheme, plan);
    auto xg = b.workspace().take<T>(layout.rows(), c.d);  // [R, d]
    mm::dispatch_gather(b, xg, cv(s.x), layout);
    mm::dispatch_combine(b, y.view(), mm::View<const T, mm::device_space>(xg), layout);
  });
  ratio_counter(state, "share_of_forward", t, moma_forward_name());
}

void register_layers() {
  for (const bool backward : {false, true}) {
    benchmark::RegisterBenchmark(dense_ffn_name(backward).c_str(),
                                 [backward](benchmark::State& s) { bm_dense_ffn(s, backward); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    const char* name = backward ? "BM_moma_4t4i_bf16/forward_backward/N:16384"
                                : "BM_moma_4t4i_bf16/forward/N:16384";
    benchmark::RegisterBenchmark(name, [backward](benchmark::State& s) { bm_moma(s, backward); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("BM_moma_4t4i_bf16/dispersion/N:16384", bm_moma_dispersion)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
}

void add_device_context() {
  int device = 0;
  MMSPARSE_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  MMSPARSE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int runtime = 0;
  MMSPARSE_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  benchmark::AddCustomContext("gpu", prop.name);
  benchmark::AddCustomContext("gpu_sms", std::to_string(prop.multiProcessorCount));
  benchmark::AddCustomContext("cuda_runtime", std::to_string(runtime));
  benchmark::AddCustomContext("bf16_gemm_peak_tflops_measured",
                              std::to_string(peak_flops() * 1e-12));
}

}  // namespace

int main(int argc, char** argv) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipping\n");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  backend_slot() = std::make_unique<Backend>();
  peak_flops() = measure_peak();
  add_device_context();

  benchmark::RegisterBenchmark("BM_gemm_peak_bf16/8192", bm_gemm_peak)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  register_gemms();
  register_layers();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  moma_slot().reset();
  backend_slot().reset();
  return 0;
}

// bench/train_bench.cpp
//
// Forward + backward through the tape (autograd/ops.hpp) of the sparse FFN layers against the
// dense SwiGLU FFN of equal active FLOPs, at d = 512, f = 1536, N = 4096 tokens (half text, half
// image). Counters: GFLOP/s (3x the forward FLOPs), ratio_to_dense (time / the equal-FLOPs dense
// time, run alternately in the same loop), act_MiB (heap bytes held from the end of the forward
// until the backward: saved contexts and outputs, plus the workspace high-water), act_ratio.
#include <chrono>
#include <cstdint>
#include <malloc.h>
#include <map>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench_context.hpp"
#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/modality_hard.hpp>
#include <mmsparse/routing/token_choice.hpp>

namespace mm = mmsparse;

namespace {

using T = float;
using B = mm::CpuBackend<T>;
constexpr std::int64_t tokens = 4096, d = 512, hidden = 1536;
constexpr int threads = 0;  // 0: OMP_NUM_THREADS (the reported runs set 2)

// Heap bytes in use (main arena + mmapped chunks), for the activation-memory counter.
std::int64_t heap_bytes() {
  const struct mallinfo2 mi = mallinfo2();
  return static_cast<std::int64_t>(mi.uordblks + mi.hblkhd);
}

// Inputs shared by every benchmark: x [N, d], dL/dy [N, d], modality [N] (sequences of 1024
// tokens: 512 text, then 512 image).
struct Inputs {
  mm::Tensor<T> x, dy;
  std::vector<mm::ModalityId> modality;
  Inputs() {
    mm::Rng rng(1);
    x = rng.normal_tensor<T>(tokens, d);
    dy = rng.normal_tensor<T>(tokens, d, 1e-2);
    for (std::int64_t i = 0; i < tokens; ++i) {
      modality.push_back(i % 1024 < 512 ? 0 : 1);
    }
  }
  mm::Span<const mm::ModalityId> mod() const {
    return {modality.data(), tokens};
  }
};
const Inputs& inputs() {
  static const Inputs in;
  return in;
}

// One layer in its own parameter arena, run forward + backward through a tape.
template <class Layer>
struct Runner {
  B b{mm::CpuOptions{.threads = threads}};
  Layer layer;
  mm::ParamArena<T, B> arena;
  typename Layer::Weights grads;
  mm::Var<T, B> x;

  explicit Runner(typename Layer::Config cfg) : layer(cfg) {
    const auto ids = mm::declare_layer<Layer>(arena, "ffn", cfg);
    arena.allocate(b);
    const auto own = layer.weights();
    const auto dst = mm::layer_weights<Layer>(arena, ids, false);
    copy_into(dst, own);
    layer.bind(dst);
    grads = mm::layer_weights<Layer>(arena, ids, true);
    x = mm::Var<T, B>(b, inputs().x.clone(), true);  // dx is computed, as inside a network
  }
  void copy_into(const typename Layer::Weights& dst, const typename Layer::Weights& src) {
    if constexpr (requires { src.router; }) {
      b.copy(dst.router, mm::View<const T>(src.router));
    }
    b.copy(dst.w1, mm::View<const T>(src.w1));
    b.copy(dst.w3, mm::View<const T>(src.w3));
    b.copy(dst.w2, mm::View<const T>(src.w2));
  }

  // One forward + backward; returns the forward FLOPs. With `held`, the heap bytes held between
  // the forward and the backward.
  double step(mm::Tape& tape, std::int64_t* held = nullptr) {
    const std::int64_t before = heap_bytes();
    double flops = 0.0;
    mm::Var<T, B> y;
    if constexpr (requires { typename Layer::router_type; }) {
      typename Layer::ForwardOptions opt;
      opt.training = true;
      auto out = mm::sparse_ffn(tape, b, layer, grads, x, inputs().mod(), opt);
      flops = out.stats.flops;
      y = out.y;
    } else {
      y = mm::swiglu_ffn(tape, b, layer, grads, x);
      flops = layer.flops(tokens);
    }
    if (held != nullptr) {
      *held = heap_bytes() - before;
    }
    tape.backward(y, mm::View<const T>(inputs().dy.view()));
    return flops;
  }
};

using Dense = mm::SwiGluFfn<T, B>;

// Runs `r` under the benchmark loop, each iteration paired with one forward + backward of the
// dense FFN of hidden width `dense_f` (0: the equal-FLOPs width, f * slots / N, from the first
// forward), so the ratio compares runs made under the same machine load. The reported time is
// the layer's alone (manual time).
template <class Layer>
void run(benchmark::State& state, Runner<Layer>& r, std::int64_t dense_f) {
  mm::Tape tape;
  std::int64_t held = 0;
  (void)r.step(tape);                        // warm-up: workspace growth, GEMM weight packing
  const double flops = r.step(tape, &held);  // steady state: the activation bytes
  const double act = static_cast<double>(held) + static_cast<double>(r.b.workspace().high_water());
  if (dense_f == 0) {
    const double dense_flops = Dense(Dense::Config{.d = d, .hidden = hidden}).flops(tokens);
    dense_f =
        std::max<std::int64_t>(1, std::llround(static_cast<double>(hidden) * flops / dense_flops));
  }
  Runner<Dense> dense(Dense::Config{.d = d, .hidden = dense_f});
  mm::Tape dense_tape;
  std::int64_t dense_held = 0;
  dense.step(dense_tape);
  dense.step(dense_tape, &dense_held);
  const double dense_act =
      static_cast<double>(dense_held) + static_cast<double>(dense.b.workspace().high_water());

  double seconds = 0.0;
  double dense_seconds = 0.0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    r.step(tape);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(t);
    seconds += t;
    t0 = std::chrono::steady_clock::now();
    dense.step(dense_tape);
    dense_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      3.0 * flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["ratio_to_dense"] = seconds / dense_seconds;
  state.counters["dense_f"] = static_cast<double>(dense_f);
  state.counters["act_MiB"] = act / (1024.0 * 1024.0);
  state.counters["act_ratio"] = act / dense_act;
}

void BM_train_dense_swiglu(benchmark::State& state) {
  const auto f = state.range(0);
  Runner<Dense> r(Dense::Config{.d = d, .hidden = f});
  run(state, r, f);
}

void BM_train_sparse_ffn_modality_hard_1t1i_sorted_gather(benchmark::State& state) {
  using L = mm::SparseFfn<T, mm::ModalityHard, mm::SortedGather, B>;
  L::Config c;
  c.d = d;
  c.hidden = hidden;
  c.experts = {1, 1};
  Runner<L> r(c);
  run(state, r, hidden);
}

void BM_train_sparse_ffn_modality_aware_expert_choice_4t4i_sorted_gather(benchmark::State& state) {
  using L = mm::SparseFfn<T, mm::ModalityAware<mm::ExpertChoice>, mm::SortedGather, B>;
  L::Config c;
  c.d = d;
  c.hidden = hidden;
  c.experts = {4, 4};
  c.router.capacity_factor = 1.0;
  Runner<L> r(c);
  run(state, r, 0);
}

void BM_train_sparse_ffn_token_choice_top2_of_8_sorted_gather(benchmark::State& state) {
  using L = mm::SparseFfn<T, mm::TokenChoice, mm::SortedGather, B>;
  L::Config c;
  c.d = d;
  c.hidden = hidden;
  c.experts = {8};
  c.modalities = 2;
  c.router.k = 2;
  c.router.capacity_factor = 1.25;
  Runner<L> r(c);
  run(state, r, 0);
}

}  // namespace

BENCHMARK(BM_train_dense_swiglu)->Arg(hidden)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK(BM_train_sparse_ffn_modality_hard_1t1i_sorted_gather)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime();
BENCHMARK(BM_train_sparse_ffn_modality_aware_expert_choice_4t4i_sorted_gather)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime();
BENCHMARK(BM_train_sparse_ffn_token_choice_top2_of_8_sorted_gather)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime();

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  mm::bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// bench/attention_bench.cpp
//
// Causal self-attention on the CPU backend at d = 512, 8 heads (dh = 64), RMS QK-norm, RoPE:
// forward and forward + backward tokens/s and GFLOP/s for one sequence of S = 1024 .. 4096.
// FLOPs count the visible (query, key) pairs only (S(S+1)/2 under the causal mask): forward =
// projections + 4·dh·H·pairs; backward = 2 × projections + 2.5 × the attention forward (scores are
// recomputed, then dP, dV, dQ, dK), as FlashAttention counts. BM_core_attention_* time the core
// alone (no projections); the image-span mask runs the Transfusion setting with half the tokens
// in 256-token images. BM_core_attention_heads runs the core's forward + backward with the heads
// side by side where CpuBackend::for_each_head shares them out, paired with the same step on a
// backend that runs them in order (each head's products over every thread): ratio_wall is the
// first's time over the second's in the same iterations.
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench_context.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention.hpp>

namespace mm = mmsparse;

namespace {

using Cpu = mm::CpuBackend<float>;
using Attn = mm::Attention<float, Cpu>;

// The CPU backend with attention's heads in order (the generic path of detail::for_each_head).
struct InOrderCpu : Cpu {
  template <class U, class F>
  void for_each_head(std::int64_t, std::int64_t, F&&) = delete;
};

mm::AttentionConfig config() {
  return {.d = 512, .heads = 8, .qk_norm = mm::QkNorm::rms_norm, .seed = 1};
}

template <class T>
void fill(mm::Tensor<T>& t, std::uint64_t seed) {
  mm::Rng rng(seed);
  rng.fill_normal(t.view());
}

struct Inputs {
  std::int64_t n;
  mm::Tensor<float> x, y, dy, dx;
  std::vector<std::int32_t> positions;
  std::vector<mm::ModalityId> modality;

  explicit Inputs(std::int64_t seq) : n(seq), x(seq, 512), y(seq, 512), dy(seq, 512), dx(seq, 512) {
    fill(x, 2);
    fill(dy, 3);
    dx.fill(0.0f);
    for (std::int64_t i = 0; i < seq; ++i) {
      positions.push_back(static_cast<std::int32_t>(i));
      // Text and 256-token images alternating: half the tokens in image spans.
      modality.push_back((i / 256) % 2 == 1 ? 1 : 0);
    }
  }
  [[nodiscard]] mm::Span<const std::int32_t> pos() const {
    return {positions.data(), static_cast<std::int64_t>(positions.size())};
  }
  [[nodiscard]] mm::AttentionMask mask(bool images) const {
    return images ? mm::AttentionMask::image_bidirectional(n, modality)
                  : mm::AttentionMask::causal(n);
  }
};

void set_counters(benchmark::State& state, std::int64_t tokens, double flops) {
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(
      flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void BM_attention_forward(benchmark::State& state, bool images) {
  Cpu b;
  const Attn layer(config());
  Inputs in(state.range(0));
  const auto mask = in.mask(images);
  for (auto _ : state) {
    layer.forward(b, in.x.view(), in.pos(), mask, in.y.view());
    benchmark::DoNotOptimize(in.y.data());
  }
  set_counters(state, in.n, layer.flops(mask, in.n));
}

void BM_attention_forward_backward(benchmark::State& state, bool images) {
  Cpu b;
  Attn layer(config());
  Inputs in(state.range(0));
  const auto mask = in.mask(images);
  std::vector<mm::Tensor<float>> grad_store;
  Attn::Weights grads{};
  const auto w = layer.weights();
  for (auto [slot, v] : {std::pair{&grads.wq, w.wq},
                         std::pair{&grads.wk, w.wk},
                         std::pair{&grads.wv, w.wv},
                         std::pair{&grads.wo, w.wo},
                         std::pair{&grads.q_norm, w.q_norm},
                         std::pair{&grads.k_norm, w.k_norm}}) {
    grad_store.emplace_back(v.rows, v.cols);
    grad_store.back().fill(0.0f);
    *slot = grad_store.back().view();
  }
  Attn::Saved saved;
  for (auto _ : state) {
    layer.forward(b, in.x.view(), in.pos(), mask, in.y.view(), saved);
    layer.backward(b, saved, in.dy.view(), in.dx.view(), grads);
    benchmark::DoNotOptimize(in.dx.data());
  }
  const double proj = layer.qkv().flops(in.n) + layer.out().flops(in.n);
  const double core = layer.core().flops(mask, in.n);
  set_counters(state, in.n, 3.0 * proj + 3.5 * core);
}

void BM_core_attention_forward(benchmark::State& state) {
  Cpu b;
  const mm::CoreAttention<float, Cpu> core(config());
  Inputs in(state.range(0));
  mm::Tensor<float> q(in.n, 512), k(in.n, 512), v(in.n, 512), out(in.n, 512);
  fill(q, 4);
  fill(k, 5);
  fill(v, 6);
  const auto mask = in.mask(false);
  for (auto _ : state) {
    core.forward(b, q.view(), k.view(), v.view(), in.pos(), mask, out.view());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, in.n, core.flops(mask, in.n));
}

// One forward + backward of the core on backend B; returns its wall time in seconds.
template <class B>
class CoreStep {
 public:
  CoreStep(const Inputs& in, const mm::Tensor<float>& q) : core_(config()), in_(in), q_(q) {}
  double operator()() {
    const auto t0 = std::chrono::steady_clock::now();
    const auto mask = in_.mask(false);
    core_.forward(b_, q_.view(), q_.view(), q_.view(), in_.pos(), mask, out_.view(), saved_);
    core_.backward(b_, saved_, q_.view(), dq_.view(), dk_.view(), dv_.view());
    benchmark::DoNotOptimize(dq_.data());
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

 private:
  B b_;
  mm::CoreAttention<float, B> core_;
  const Inputs& in_;
  const mm::Tensor<float>& q_;
  mm::Tensor<float> out_{in_.n, 512}, dq_{in_.n, 512}, dk_{in_.n, 512}, dv_{in_.n, 512};
  typename mm::CoreAttention<float, B>::Saved saved_;
};

void BM_core_attention_heads(benchmark::State& state) {
  Inputs in(state.range(0));
  mm::Tensor<float> q(in.n, 512);
  fill(q, 7);
  CoreStep<Cpu> side(in, q);
  CoreStep<InOrderCpu> in_order(in, q);
  side();
  in_order();
  double mine = 0;
  double theirs = 0;
  for (auto _ : state) {
    const double t = side();
    state.SetIterationTime(t);
    mine += t;
    theirs += in_order();
  }
  const mm::CoreAttention<float, Cpu> core(config());
  set_counters(state, in.n, 3.5 * core.flops(in.mask(false), in.n));
  state.counters["ratio_wall"] = mine / theirs;
}

void register_all() {
  for (const bool images : {false, true}) {
    const std::string suffix = images ? "_image_spans" : "";
    auto* f = benchmark::RegisterBenchmark(
        ("BM_attention_forward" + suffix).c_str(), BM_attention_forward, images);
    auto* fb = benchmark::RegisterBenchmark(
        ("BM_attention_forward_backward" + suffix).c_str(), BM_attention_forward_backward, images);
    for (auto* bm : {f, fb}) {
      bm->Unit(benchmark::kMillisecond)->UseRealTime();
      if (images) {
        bm->Arg(2048);
      } else {
        bm->Arg(1024)->Arg(2048)->Arg(4096);
      }
    }
  }
  benchmark::RegisterBenchmark("BM_core_attention_forward", BM_core_attention_forward)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Arg(1024)
      ->Arg(2048)
      ->Arg(4096);
  benchmark::RegisterBenchmark("BM_core_attention_heads", BM_core_attention_heads)
      ->Unit(benchmark::kMillisecond)
      ->UseManualTime()
      ->Arg(128)
      ->Arg(256)
      ->Arg(512)
      ->Arg(1024)
      ->Arg(2048);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  mm::bench::add_context();
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

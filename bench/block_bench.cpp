// bench/block_bench.cpp
//
// One transformer block per configuration (dense, MoT, MoMa 1t1i, MoMa 4t4i, MoD + MoMa 4t4i at
// c = 0.25 and 0.125, token-choice top-2) at d = 512, 8 heads, S tokens of one sequence (half
// text, half image in runs): forward and forward + backward tokens/s, each against the dense
// block of equal active FLOPs run alternately with it in the same iterations (ratio_cpu,
// ratio_wall), and decode tokens/s with the KV cache (aux routing); for MoD, the dense and the MoMa
// 4t4i block on just the c S tokens it keeps show what its routing costs. Post-norm (Chameleon),
// QK-norm, SwiGLU f = 1536, float.
#include <chrono>
#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench_context.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/block.hpp>
#include <mmsparse/layers/kv_cache.hpp>
#include <mmsparse/layers/mod_block.hpp>
#include <mmsparse/layers/moma_block.hpp>
#include <mmsparse/layers/mot_block.hpp>
#include <mmsparse/routing/token_choice.hpp>

namespace mm = mmsparse;

namespace {

using Backend = mm::CpuBackend<float>;
using S = mm::host_space;
using Dense = mm::DenseBlock<float, Backend>;
using Mot = mm::MotBlock<float, Backend>;
using Moma1t1i = mm::Moma1t1iBlock<float, mm::SortedGather, Backend>;
using Moma4t4i = mm::MomaBlock<float, mm::ExpertChoice, mm::SortedGather, Backend>;
using ModMoma = mm::ModBlock<Moma4t4i>;
using Top2 = mm::MoeBlock<float, mm::TokenChoice, mm::SortedGather, Backend>;
constexpr std::int64_t d = 512, heads = 8;

Backend& backend() {
  static Backend b;  // threads: OMP_NUM_THREADS
  return b;
}

// Seconds of one run: wall and process CPU time.
struct Times {
  double wall = 0;
  double cpu = 0;
  Times& operator+=(const Times& o) {
    wall += o.wall;
    cpu += o.cpu;
    return *this;
  }
};

double cpu_now() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

mm::BlockConfig block_config(std::int64_t hidden = 0) {
  mm::BlockConfig bc;
  bc.d = d;
  bc.heads = heads;
  bc.hidden = hidden;
  bc.modalities = 2;
  bc.norm_order = mm::NormOrder::post;
  bc.seed = 1;
  return bc;
}

// One sequence of n tokens: text, an image run of half the tokens, text.
struct Input {
  mm::Tensor<float> x, dy;
  std::vector<mm::ModalityId> modality;
  std::vector<std::int32_t> positions;
  std::vector<std::int64_t> sequences;
  mm::BlockInput<S> input() const {
    mm::BlockInput<S> in;
    in.modality = {modality.data(), x.rows()};
    in.positions = {positions.data(), x.rows()};
    in.sequences = sequences;
    return in;
  }
};

const Input& input_of(std::int64_t n) {
  static std::map<std::int64_t, std::unique_ptr<Input>> inputs;
  auto& in = inputs[n];
  if (!in) {
    mm::Rng rng(static_cast<std::uint64_t>(n));
    in = std::make_unique<Input>();
    in->x = rng.normal_tensor<float>(n, d);
    in->dy = rng.normal_tensor<float>(n, d, 1e-2);
    for (std::int64_t t = 0; t < n; ++t) {
      in->modality.push_back(t >= n / 4 && t < 3 * n / 4 ? 1 : 0);
      in->positions.push_back(static_cast<std::int32_t>(t));
    }
    in->sequences = {0, n};
  }
  return *in;
}

// Gradient buffers of a block's parameters.
struct Grads {
  std::vector<mm::Tensor<float>> own;
  std::vector<mm::View<float>> views;
};
template <class L>
Grads grads_of(const L& layer) {
  Grads g;
  for (const auto& p : L::parameters(layer.config())) {
    g.own.emplace_back(p.shape);
    g.own.back().fill(0.0f);
    g.views.push_back(g.own.back().view());
  }
  return g;
}

template <class F>
Times timed(F&& body) {
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = cpu_now();
  body();
  return {std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
          cpu_now() - c0};
}

// One step of a block over n tokens, ready to run: forward (backward = false: inference, the
// backend may keep packed copies of the weights) or forward + backward (a training step: the
// weights change before each one, so packed copies are dropped and a product pays its packing or
// runs without).
template <class L>
class Step {
 public:
  Step(const typename L::Config& cfg, std::int64_t n, bool backward)
      : layer_(cfg), in_(input_of(n)), y_(n, d), dx_(n, d), g_(grads_of(layer_)), bw_(backward) {
    // Warm-up: the workspace reaches its steady size, and an inference forward's second use of
    // a weight block packs it for the skinny kernel (skinny_pack.hpp), which a model pays once.
    (*this)();
    (*this)();
  }
  void operator()() {
    Backend& b = backend();
    if (bw_) {
      b.weights_updated();
      st_ = layer_.forward(b, in_.x.view(), in_.input(), y_.view(), &saved_);
      dx_.fill(0.0f);
      layer_.backward(b, saved_, in_.dy.view(), dx_.view(), g_.views, 1.0);
      benchmark::DoNotOptimize(dx_.data());
    } else {
      st_ = layer_.forward(b, in_.x.view(), in_.input(), y_.view());
      benchmark::DoNotOptimize(y_.data());
    }
  }
  // What ran, the backward counted as twice the forward.
  [[nodiscard]] double flops() const {
    return bw_ ? 3.0 * st_.flops : st_.flops;
  }

 private:
  L layer_;
  const Input& in_;
  mm::Tensor<float> y_, dx_;
  Grads g_;
  typename L::Saved saved_;
  mm::BlockStats st_;
  bool bw_;
};

// One block's step over n tokens; with a baseline (the dense block of equal active FLOPs), the
// baseline's step runs right after each of the block's, so that a slow spell of the shared machine
// hits both: ratio_wall and ratio_cpu are the block's time over the baseline's in the same
// iterations. The benchmark's own time is the block's alone (manual time). tokens/s on the wall
// clock, tokens/cpu_s per CPU-second of each thread (a descheduled thread stalls the wall clock,
// not the CPU clock). block_tokens > 0 runs the block over that many tokens instead of n.
template <class L>
void bm_block(benchmark::State& state,
              const typename L::Config& cfg,
              const std::optional<Dense::Config>& baseline,
              std::int64_t n,
              bool backward,
              double goal,
              std::int64_t block_tokens = 0) {
  Step<L> step(cfg, block_tokens > 0 ? block_tokens : n, backward);
  std::optional<Step<Dense>> base;
  if (baseline) {
    base.emplace(*baseline, n, backward);
  }
  Times mine;
  Times theirs;
  for (auto _ : state) {
    const Times t = timed(step);
    state.SetIterationTime(t.wall);
    mine += t;
    if (base) {
      theirs += timed(*base);
    }
  }
  const auto it = static_cast<double>(state.iterations());
  const double threads = Backend::threads();
  const auto tokens = static_cast<double>(block_tokens > 0 ? block_tokens : n);
  state.counters["tokens/s"] = tokens * it / mine.wall;
  state.counters["tokens/cpu_s"] = tokens * it / (mine.cpu / threads);
  state.counters["GFLOP/cpu_s"] = step.flops() * it / (mine.cpu / threads) * 1e-9;
  state.counters["MFLOP/token"] = step.flops() / tokens * 1e-6;
  if (base) {
    state.counters["ratio_wall"] = mine.wall / theirs.wall;
    state.counters["ratio_cpu"] = mine.cpu / theirs.cpu;
    state.counters["goal"] = goal;
  }
}

// Decode tokens/s: `context` tokens prefilled into the cache (untimed), then `steps` tokens one
// by one (timed), routers deciding per token (aux routing).
template <class L>
void bm_decode(benchmark::State& state,
               const typename L::Config& cfg,
               std::int64_t context,
               std::int64_t steps) {
  L layer(cfg);
  Backend& b = backend();
  const Input& in = input_of(context + steps);
  mm::KvCache<float, Backend> cache({"block", 1, context + steps, d});
  mm::Tensor<float> y(context + steps, d);
  auto at = [&](std::int64_t r0, std::int64_t count) {
    mm::BlockInput<S> one;
    one.modality = {in.modality.data() + r0, count};
    one.positions = {in.positions.data() + r0, count};
    static thread_local std::vector<std::int64_t> seq;
    seq = {0, count};
    one.sequences = seq;
    return one;
  };
  Times total;
  for (auto _ : state) {
    state.PauseTiming();
    cache.reset();
    layer.decode(b,
                 in.x.view().row_block(0, context),
                 at(0, context),
                 cache,
                 0,
                 y.view().row_block(0, context));
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_now();
    for (std::int64_t t = context; t < context + steps; ++t) {
      layer.decode(b, in.x.view().row_block(t, 1), at(t, 1), cache, 0, y.view().row_block(t, 1));
    }
    total.cpu += cpu_now() - c0;
    total.wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(y.data());
  }
  const double tokens = static_cast<double>(steps) * static_cast<double>(state.iterations());
  state.counters["tokens/s"] = tokens / total.wall;
  state.counters["tokens/cpu_s"] = tokens / (total.cpu / Backend::threads());
  state.counters["cached"] = static_cast<double>(cache.length(0));
}

Dense::Config dense_config(std::int64_t hidden = 0) {
  return {block_config(hidden), {}, {}};
}
Moma4t4i::Config moma_config() {
  Moma4t4i::Config c;
  c.block = block_config();
  c.ffn.experts = {4, 4};
  c.ffn.router.capacity_factor = 1.0;  // c_e = 1/4 per expert: active FLOPs of the dense FFN
  return c;
}
ModMoma::Config mod_config(double capacity) {
  ModMoma::Config c;
  c.inner = moma_config();
  c.router.capacity = capacity;
  return c;
}
Moma1t1i::Config hard_config() {
  Moma1t1i::Config c;
  c.block = block_config();
  c.ffn.experts = {1, 1};
  return c;
}
Top2::Config top2_config() {
  Top2::Config c;
  c.block = block_config();
  c.ffn.experts = {8};
  c.ffn.router.k = 2;
  c.ffn.router.dropless = true;
  return c;
}

void register_all() {
  for (const std::int64_t n : {1024, 2048}) {
    for (const bool bw : {false, true}) {
      const std::string tag = (bw ? "fwd_bwd/S:" : "fwd/S:") + std::to_string(n);
      auto reg = [&](const std::string& name, auto fn) {
        benchmark::RegisterBenchmark(("BM_block_" + name + "_" + tag).c_str(), fn)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
      };
      const std::optional<Dense::Config> none;
      const std::optional<Dense::Config> dense = dense_config();
      // The dense block with twice the FFN width: token choice top-2's active FLOPs.
      const std::optional<Dense::Config> dense2 = dense_config(2 * mm::swiglu_hidden(d));
      reg("dense", [=](benchmark::State& s) { bm_block<Dense>(s, *dense, none, n, bw, 0); });
      reg("dense_2f", [=](benchmark::State& s) { bm_block<Dense>(s, *dense2, none, n, bw, 0); });
      reg("mot", [=](benchmark::State& s) {
        bm_block<Mot>(s, Mot::Config{block_config(), {}, {}}, dense, n, bw, 1.05);
      });
      reg("moma1t1i",
          [=](benchmark::State& s) { bm_block<Moma1t1i>(s, hard_config(), dense, n, bw, 1.05); });
      reg("moma4t4i",
          [=](benchmark::State& s) { bm_block<Moma4t4i>(s, moma_config(), dense, n, bw, 1.10); });
      for (const double c : {0.25, 0.125}) {
        const std::string cap = std::to_string(c).substr(0, 5);
        reg("mod" + cap + "_moma4t4i", [=](benchmark::State& s) {
          bm_block<ModMoma>(s, mod_config(c), dense, n, bw, c * 1.05);
        });
        // The dense block over just the c S tokens a MoD layer keeps (one sequence of them):
        // what MoD would cost with free routing and an inner block as fast as the dense one.
        reg("dense_on_kept" + cap, [=](benchmark::State& s) {
          const auto kept = static_cast<std::int64_t>(c * static_cast<double>(n));
          bm_block<Dense>(s, *dense, dense, n, bw, c * 1.05, kept);
        });
        // The MoD layer's inner block alone over as many tokens (half of them image): what MoD
        // costs with free routing, its experts taking c S / 8 tokens each.
        reg("moma4t4i_on_kept" + cap, [=](benchmark::State& s) {
          const auto kept = static_cast<std::int64_t>(c * static_cast<double>(n));
          bm_block<Moma4t4i>(s, moma_config(), dense, n, bw, c * 1.05, kept);
        });
      }
      reg("top2",
          [=](benchmark::State& s) { bm_block<Top2>(s, top2_config(), dense2, n, bw, 1.10); });
    }
  }
  const std::int64_t context = 960, steps = 64;
  auto dec = [&](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(("BM_decode_" + name + "/ctx:960").c_str(), fn)
        ->Unit(benchmark::kMillisecond);
  };
  dec("dense", [=](benchmark::State& s) { bm_decode<Dense>(s, dense_config(), context, steps); });
  dec("mot", [=](benchmark::State& s) {
    bm_decode<Mot>(s, Mot::Config{block_config(), {}, {}}, context, steps);
  });
  dec("moma1t1i",
      [=](benchmark::State& s) { bm_decode<Moma1t1i>(s, hard_config(), context, steps); });
  dec("moma4t4i",
      [=](benchmark::State& s) { bm_decode<Moma4t4i>(s, moma_config(), context, steps); });
  dec("mod0.25_moma4t4i",
      [=](benchmark::State& s) { bm_decode<ModMoma>(s, mod_config(0.25), context, steps); });
  dec("top2", [=](benchmark::State& s) { bm_decode<Top2>(s, top2_config(), context, steps); });
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  mm::bench::add_context();
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

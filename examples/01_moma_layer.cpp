// examples/01_moma_layer.cpp
//
// One MoMa 4t4i layer (MoMa §2.2): 4 text + 4 image SwiGLU experts, modality-aware expert-choice
// routing, sorted gather dispatch, on the CPU. Runs a mixed text/image batch, prints the tokens
// each expert took and the aux losses (and a token-choice top-2 layer's, which are not zero),
// and times the layer against the dense SwiGLU FFN of equal active FLOPs.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#if __has_include(<CLI/CLI.hpp>)
#include <CLI/CLI.hpp>
#define MMSPARSE_EXAMPLE_HAS_CLI 1
#endif

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>
#include <mmsparse/layers/swiglu_ffn.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/token_choice.hpp>

namespace mm = mmsparse;

using Backend = mm::CpuBackend<float>;
using Moma = mm::SparseFfn<float, mm::ModalityAware<mm::ExpertChoice>, mm::SortedGather, Backend>;
using TopTwo = mm::SparseFfn<float, mm::TokenChoice, mm::SortedGather, Backend>;
using Dense = mm::SwiGluFfn<float, Backend>;

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      return line.substr(line.find(':') + 2);
    }
  }
  return "unknown";
}

// A mixed batch, half text and half image: text spans of 16..255 tokens alternating with
// 256-token images (the last run of each modality is cut to fit), fixed seed.
std::vector<mm::ModalityId> mixed_batch(std::int64_t tokens, std::uint64_t seed) {
  mm::Rng rng(seed);
  std::vector<mm::ModalityId> ids;
  std::int64_t text = tokens / 2;
  std::int64_t image = tokens - text;
  bool next_image = false;
  while (text + image > 0) {
    const bool is_image = (next_image && image > 0) || text == 0;
    std::int64_t& left = is_image ? image : text;
    const std::int64_t run = std::min(left, is_image ? std::int64_t{256} : rng.integer(16, 256));
    ids.insert(ids.end(), static_cast<std::size_t>(run), is_image ? 1 : 0);
    left -= run;
    next_image = !is_image;
  }
  return ids;
}

// Milliseconds of one call.
template <class F>
double time_ms(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t tokens = 4096;
  std::int64_t d = 512;
  std::int64_t hidden = 1536;
  int threads = 0;
  int repeats = 5;
  std::uint64_t seed = 2024;
#if defined(MMSPARSE_EXAMPLE_HAS_CLI)
  CLI::App app{"MoMa 4t4i layer: routing, aux losses, and time against the dense FFN"};
  app.add_option("--tokens", tokens, "tokens in the batch")->check(CLI::PositiveNumber);
  app.add_option("--d", d, "model width")->check(CLI::PositiveNumber);
  app.add_option("--hidden", hidden, "expert SwiGLU hidden width")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "OpenMP threads (0: all cores)");
  app.add_option("--repeats", repeats, "timed runs (the best counts)")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "batch and weight seed");
  CLI11_PARSE(app, argc, argv);
#else
  (void)argc;
  (void)argv;
#endif

  Backend cpu(mm::CpuOptions{threads});
  std::printf("cpu: %s, %d threads, GEMM: %s\n",
              cpu_model().c_str(),
              Backend::threads(),
              Backend::gemm_provider::name);

  // MoMa 4t4i: experts {4 text, 4 image}, expert choice with sigmoid gates, capacity factor 1.
  Moma moma({.d = d, .hidden = hidden, .experts = {4, 4}, .seed = seed});
  mm::Rng rng(seed + 1);
  const auto x = rng.normal_tensor<float>(tokens, d);  // [N, d]
  const auto ids = mixed_batch(tokens, seed + 2);
  const mm::Span<const mm::ModalityId> modality(ids.data(), tokens);
  mm::Tensor<float> y(tokens, d);  // [N, d]
  const auto stats = moma.forward(cpu, x.view(), modality, y.view());

  const auto counts = mm::count_modalities(modality, 2);
  std::printf("\nbatch: %lld tokens, %lld text + %lld image\n",
              static_cast<long long>(tokens),
              static_cast<long long>(counts[0]),
              static_cast<long long>(counts[1]));
  std::printf("MoMa 4t4i (modality-aware expert choice, sorted gather): tokens per expert\n");
  std::int64_t slots = 0;
  for (std::int64_t e = 0; e < 8; ++e) {
    const auto n = stats.tokens_per_expert[static_cast<std::size_t>(e)];
    slots += n;
    std::printf("  %-5s expert %lld: %5lld\n",
                e < 4 ? "text" : "image",
                static_cast<long long>(e % 4),
                static_cast<long long>(n));
  }
  std::printf("aux losses: balance %.3g, z %.3g (expert choice needs none, MoMa §2.2)\n",
              static_cast<double>(stats.aux.balance),
              static_cast<double>(stats.aux.z));

  // Token choice top-2 of 8 over all tokens: the Switch balance loss and the router z-loss.
  TopTwo top2({.d = d,
               .hidden = hidden,
               .experts = {8},
               .modalities = 2,
               .router = {.k = 2, .capacity_factor = 1.25},
               .seed = seed + 3});
  const auto tc = top2.forward(cpu, x.view(), modality, y.view());
  std::printf("token choice top-2 of 8: balance %.4g, z %.4g, dropped %lld of %lld choices\n",
              static_cast<double>(tc.aux.balance),
              static_cast<double>(tc.aux.z),
              static_cast<long long>(tc.dropped),
              static_cast<long long>(2 * tokens));

  // Timing against the dense SwiGLU FFN with the same active FLOPs per token.
  const std::int64_t dense_hidden = mm::equal_flops_dense_hidden(hidden, slots, tokens);
  Dense dense({.d = d, .hidden = dense_hidden, .seed = seed + 4});
  mm::Tensor<float> y_dense(tokens, d);
  dense.forward(cpu, x.view(), y_dense.view());  // warm-up: workspace, caches
  (void)moma.forward(cpu, x.view(), modality, y.view());
  // Alternating calls, best of each: load that drifts during the runs hits both alike.
  double t_dense = 1e300;
  double t_moma = 1e300;
  for (int r = 0; r < repeats; ++r) {
    t_dense = std::min(t_dense, time_ms([&] { dense.forward(cpu, x.view(), y_dense.view()); }));
    t_moma =
        std::min(t_moma, time_ms([&] { (void)moma.forward(cpu, x.view(), modality, y.view()); }));
  }
  std::printf("\ntime, best of %d: dense SwiGLU (hidden %lld) %.2f ms, %.1f GFLOP/s\n",
              repeats,
              static_cast<long long>(dense_hidden),
              t_dense,
              dense.flops(tokens) / t_dense * 1e-6);
  std::printf("                 MoMa 4t4i layer          %.2f ms, %.1f GFLOP/s\n",
              t_moma,
              stats.flops / t_moma * 1e-6);
  std::printf("ratio layer / dense: %.3f\n", t_moma / t_dense);
  return 0;
}

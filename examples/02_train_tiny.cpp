// examples/02_train_tiny.cpp
//
// Trains a tiny mixed-modal model (train/tiny_lm.hpp) with the reference loop: next batch ->
// forward (per-modality losses) -> tape.backward() -> clip -> AdamW(lr_at(step)) -> log.
// Change the `Ffn` alias to swap the FFN: dense, MoMa 1t1i, MoMa 4t4i, token choice, ...
// The task: each token's target is a fixed function of the token, with 10% label noise.
#include <cstdint>
#include <cstdio>
#include <vector>

#if __has_include(<CLI/CLI.hpp>)
#include <CLI/CLI.hpp>
#define MMSPARSE_EXAMPLE_HAS_CLI 1
#endif

#include <mmsparse/autograd/no_grad.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/train/adamw.hpp>
#include <mmsparse/train/clip.hpp>
#include <mmsparse/train/schedule.hpp>
#include <mmsparse/train/tiny_lm.hpp>

namespace mm = mmsparse;

using Backend = mm::CpuBackend<float>;
// MoMa 4t4i. Others: mm::SwiGluFfn<float, Backend> (dense),
// mm::SparseFfn<float, mm::ModalityHard, mm::SortedGather, Backend> (MoMa 1t1i),
// mm::SparseFfn<float, mm::TokenChoice, mm::SortedGather, Backend> (top-k over all experts).
using Ffn = mm::SparseFfn<float, mm::ModalityAware<mm::ExpertChoice>, mm::SortedGather, Backend>;
using Model = mm::TinyLm<Ffn, Backend>;

// A stream of batches: half text (ids [0, V/2)), half image (ids [V/2, V)); target = rule[token],
// replaced by a random id 10% of the time (the loss floor is then about 0.1 * ln(V) + 0.33).
struct Data {
  std::int64_t vocab, batch;
  std::vector<std::int32_t> rule;
  std::vector<std::int32_t> tokens, targets;
  std::vector<mm::ModalityId> modality;
  mm::Rng rng{2024};

  Data(std::int64_t v, std::int64_t n) : vocab(v), batch(n) {
    for (std::int64_t t = 0; t < vocab; ++t) {
      rule.push_back(static_cast<std::int32_t>(rng.integer(0, vocab)));
    }
  }
  Model::Batch next() {
    tokens.clear();
    targets.clear();
    modality.clear();
    for (std::int64_t i = 0; i < batch; ++i) {
      const bool image = i >= batch / 2;
      const auto t =
          static_cast<std::int32_t>(rng.integer(image ? vocab / 2 : 0, image ? vocab : vocab / 2));
      tokens.push_back(t);
      targets.push_back(rng.uniform() < 0.1 ? static_cast<std::int32_t>(rng.integer(0, vocab))
                                            : rule[static_cast<std::size_t>(t)]);
      modality.push_back(image ? 1 : 0);
    }
    return {{tokens.data(), batch}, {targets.data(), batch}, {modality.data(), batch}};
  }
};

int main(int argc, char** argv) {
  std::int64_t steps = 200;
  double lr = 1e-2;
  int threads = 1;  // a model this small gains nothing from more
#if defined(MMSPARSE_EXAMPLE_HAS_CLI)
  CLI::App app{"Train a tiny mixed-modal model with mmsparse"};
  app.add_option("--steps", steps, "training steps");
  app.add_option("--lr", lr, "peak learning rate");
  app.add_option("--threads", threads, "CPU threads");
  CLI11_PARSE(app, argc, argv);
#else
  (void)argc;
  (void)argv;
#endif

  Backend b({.threads = threads});
  Ffn::Config ffn;
  ffn.d = 64;
  ffn.hidden = 128;
  ffn.experts = {4, 4};              // 4 text experts + 4 image experts
  ffn.router.capacity_factor = 1.0;  // each expert takes N_modality / 4 tokens
  ffn.router.gumbel = true;          // Gumbel-sigmoid noise while training (MoMa §2.5)
  Model model(b, {.vocab = 256, .d = 64, .layers = 2, .modalities = 2, .ffn = ffn, .seed = 1});
  mm::AdamW<float, Backend> opt(model.params(),
                                {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.01});
  const mm::WarmupCosine schedule{
      .peak_lr = lr, .min_lr = lr / 10, .warmup = steps / 10, .total = steps};
  Data data(256, 512);
  mm::Tape tape;
  std::printf("%lld parameters in one arena\n", static_cast<long long>(model.params().count()));

  for (std::int64_t step = 0; step < steps; ++step) {
    const auto batch = data.next();
    model.params().zero_grad(b);
    auto out = model.forward(tape, b, batch, /*training=*/true, /*seed=*/step);
    tape.backward(out.loss);
    const double norm = mm::clip_grad_norm(model.params(), 1.0);
    opt.step(b, schedule.lr_at(step));
    if (step % 25 == 0 || step == steps - 1) {
      std::printf("step %4lld  loss %.4f  text %.4f  image %.4f  aux %.2e  |g| %.3f  lr %.2e\n",
                  static_cast<long long>(step),
                  out.report.mean,
                  out.report.per_modality[0],
                  out.report.per_modality[1],
                  out.aux,
                  norm,
                  schedule.lr_at(step));
    }
  }

  mm::NoGrad no_grad(tape);  // evaluation: nothing recorded, no activations kept, no noise
  const auto eval = model.forward(tape, b, data.next());
  std::printf("held-out batch: loss %.4f (text %.4f, image %.4f)\n",
              eval.report.mean,
              eval.report.per_modality[0],
              eval.report.per_modality[1]);
  return 0;
}

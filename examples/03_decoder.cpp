// examples/03_decoder.cpp
//
// A tiny MoMa 4t4i decoder (layers/model.hpp) over a joint vocabulary (64 text ids, 32 image
// codes): trains a few steps on synthetic interleaved documents, fits its aux routers post hoc
// with the model frozen (MoMa §2.4), then generates across a modality switch: a text prompt, then
// image tokens, decoded token by token with the KV cache and the aux routers' causal decisions.
#include <cstdint>
#include <cstdio>
#include <span>
#include <vector>

#include <mmsparse/autograd/blocks.hpp>
#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/generate.hpp>
#include <mmsparse/layers/model.hpp>
#include <mmsparse/train/adamw.hpp>
#include <mmsparse/train/clip.hpp>
#include <mmsparse/train/schedule.hpp>

namespace mm = mmsparse;

using Backend = mm::CpuBackend<float>;
// Swap the alias for another configuration: Dense, Mot, Moma1t1i, ModMoma4t4i, TokenChoiceTop2.
using Model = mm::Decoders<float, Backend>::Moma4t4i;

constexpr std::int64_t text_ids = 64, image_ids = 32, vocab = text_ids + image_ids, len = 32;

// Documents: 16 text tokens (a walk t -> 5t + 3 mod 64), then 16 image codes (c -> c + 7 mod 32),
// each step replaced by a random id 5% of the time. Targets: the next token.
struct Data {
  mm::Rng rng{7};
  std::vector<std::int32_t> tokens, targets;
  void next(std::int64_t sequences) {
    tokens.clear();
    targets.clear();
    for (std::int64_t s = 0; s < sequences; ++s) {
      std::vector<std::int32_t> doc;
      auto t = static_cast<std::int32_t>(rng.integer(0, text_ids));
      auto c = static_cast<std::int32_t>(rng.integer(0, image_ids));
      for (std::int64_t i = 0; i <= len; ++i) {
        const bool noise = rng.uniform() < 0.05;
        if (i < len / 2) {
          t = noise ? static_cast<std::int32_t>(rng.integer(0, text_ids)) : (5 * t + 3) % 64;
          doc.push_back(t);
        } else {
          c = noise ? static_cast<std::int32_t>(rng.integer(0, image_ids)) : (c + 7) % 32;
          doc.push_back(static_cast<std::int32_t>(text_ids + c));
        }
      }
      tokens.insert(tokens.end(), doc.begin(), doc.end() - 1);
      targets.insert(targets.end(), doc.begin() + 1, doc.end());
    }
  }
};

int main() {
  Backend b({.threads = 1});
  mm::DecoderShape shape;
  shape.vocab = vocab;
  shape.modality_begin = {0, text_ids};  // the image codebook follows the text ids
  shape.layers = 2;
  shape.block.d = 64;
  shape.block.heads = 4;
  shape.block.hidden = 128;
  shape.experts_per_modality = 4;  // 4 text + 4 image experts, expert choice inside each group
  shape.seed = 1;
  Model model(mm::decoder_preset<Model>(shape));
  mm::ParamArena<float, Backend> params, aux_params;
  const auto grads = mm::bind_parameters(params, b, model);
  const auto aux_grads = mm::bind_aux_parameters(aux_params, b, model);
  std::printf("MoMa 4t4i decoder: %lld parameters, %lld in the aux routers\n",
              static_cast<long long>(params.count()),
              static_cast<long long>(aux_params.count()));

  // 1. Train the model (expert choice over the batch, as in MoMa's training).
  mm::AdamW<float, Backend> opt(params,
                                {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.01});
  const std::int64_t steps = 120;
  const mm::WarmupCosine schedule{.peak_lr = 1e-2, .min_lr = 1e-3, .warmup = 10, .total = steps};
  Data data;
  std::vector<mm::ModalityId> modality;
  for (std::int64_t step = 0; step < steps; ++step) {
    data.next(8);
    const auto n = static_cast<std::int64_t>(data.tokens.size());
    modality.clear();
    for (const auto t : data.tokens) {
      modality.push_back(model.modality_of(t));
    }
    mm::Tape tape;
    params.zero_grad(b);
    auto out = mm::decoder(tape,
                           b,
                           model,
                           std::span<const mm::View<float>>(grads),
                           {data.tokens, 8},
                           {.training = true, .seed = static_cast<std::uint64_t>(step)});
    auto ce = mm::cross_entropy(tape,
                                b,
                                out.logits,
                                mm::Span<const std::int32_t>(data.targets.data(), n),
                                mm::Span<const mm::ModalityId>(modality.data(), n),
                                2);
    tape.backward(ce.loss);
    mm::clip_grad_norm(params, 1.0);
    opt.step(b, schedule.lr_at(step));
    if (step % 20 == 0 || step == steps - 1) {
      std::printf("step %3lld  loss %.3f  text %.3f  image %.3f  %.2f MFLOP/token\n",
                  static_cast<long long>(step),
                  ce.report.mean,
                  ce.report.per_modality[0],
                  ce.report.per_modality[1],
                  out.stats.flops_per_token() * 1e-6);
    }
  }

  // 2. Fit the aux routers to the frozen model's expert-choice decisions (binary cross-entropy).
  mm::AdamW<float, Backend> aux_opt(
      aux_params, {.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.0});
  for (std::int64_t step = 0; step < 80; ++step) {
    data.next(8);
    Model::Saved saved;
    mm::Tensor<float> logits(static_cast<std::int64_t>(data.tokens.size()), vocab);
    (void)model.forward(b, {data.tokens, 8}, logits.view(), &saved);
    aux_params.zero_grad(b);
    const auto fit = model.aux_fit(b, saved, std::span<const mm::View<float>>(aux_grads));
    aux_opt.step(b, 1e-2);
    if (step % 20 == 0 || step == 79) {
      std::printf("aux step %2lld  BCE %.3f  precision %.3f  recall %.3f\n",
                  static_cast<long long>(step),
                  fit.loss(),
                  fit.precision(),
                  fit.recall());
    }
  }

  // 3. Generate: a text prompt, then image codes (sampling restricted to the codebook).
  mm::DecodeSession<Model> session(model, 1, 64);
  data.next(1);
  const std::vector<std::int32_t> prompt(data.tokens.begin(), data.tokens.begin() + 8);
  const auto text = mm::generate(b, session, 0, prompt, 8, {.temperature = 0.0});
  const auto image = mm::generate(b,
                                  session,
                                  0,
                                  std::span<const std::int32_t>{},
                                  12,
                                  {.temperature = 0.7,
                                   .top_k = 8,
                                   .seed = 3,
                                   .allowed_begin = static_cast<std::int32_t>(text_ids),
                                   .allowed_end = static_cast<std::int32_t>(vocab)});
  std::printf("prompt:");
  for (const auto t : prompt) {
    std::printf(" %d", t);
  }
  std::printf("\ntext (greedy):");
  for (const auto t : text) {
    std::printf(" %d", t);
  }
  std::printf("\nimage codes (T = 0.7, top-8):");
  for (const auto t : image) {
    std::printf(" %d", t - static_cast<int>(text_ids));
  }
  std::printf("\n%lld tokens decoded; layer caches hold %lld and %lld positions\n",
              static_cast<long long>(session.length(0)),
              static_cast<long long>(session.cached(0, 0)),
              static_cast<long long>(session.cached(1, 0)));
  return 0;
}

// Overfitting check: a tiny model (embedding -> [RMSNorm -> FFN + residual] x 2 -> RMSNorm ->
// head -> cross-entropy) trained with AdamW on one fixed random batch reaches near-zero loss, for
// the dense FFN, MoMa 1t1i (ModalityHard) and MoMa 4t4i (ModalityAware<ExpertChoice>). Also: the
// whole model's gradients match finite differences in double.
#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/autograd/no_grad.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/modality_hard.hpp>
#include <mmsparse/testing/gradcheck.hpp>
#include <mmsparse/train/adamw.hpp>
#include <mmsparse/train/clip.hpp>
#include <mmsparse/train/schedule.hpp>
#include <mmsparse/train/tiny_lm.hpp>

using namespace mmsparse;

namespace {

constexpr std::int64_t vocab = 64, d = 32, hidden = 64, n = 48;

// Distinct tokens (the model has no attention: each token's prediction depends on it alone),
// random targets; ids below vocab/2 are text, the rest image.
struct FixedBatch {
  std::vector<std::int32_t> tokens, targets;
  std::vector<ModalityId> modality;
  explicit FixedBatch(std::uint64_t seed) {
    Rng rng(seed);
    std::vector<std::int32_t> ids(vocab);
    for (std::int32_t i = 0; i < vocab; ++i) {
      ids[static_cast<std::size_t>(i)] = i;
    }
    for (std::int64_t i = 0; i < n; ++i) {
      std::swap(ids[static_cast<std::size_t>(i)],
                ids[static_cast<std::size_t>(rng.integer(i, vocab))]);
      tokens.push_back(ids[static_cast<std::size_t>(i)]);
      targets.push_back(static_cast<std::int32_t>(rng.integer(0, vocab)));
      modality.push_back(tokens.back() < vocab / 2 ? 0 : 1);
    }
  }
};

template <class Ffn>
std::vector<double> overfit(typename Ffn::Config ffn, int steps) {
  using B = CpuBackend<float>;
  B b({.threads = 1});  // shapes this small gain nothing from threads (and lose much when the
                        // cores are shared with other tests)
  typename TinyLm<Ffn, B>::Config cfg;
  cfg.vocab = vocab;
  cfg.d = d;
  cfg.ffn = ffn;
  cfg.seed = 5;
  TinyLm<Ffn, B> model(b, cfg);
  AdamW<float, B> opt(model.params(),
                      {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0});
  const WarmupCosine schedule{.peak_lr = 2e-2, .min_lr = 2e-3, .warmup = 5, .total = steps};
  FixedBatch data(17);
  const typename TinyLm<Ffn, B>::Batch batch{
      {data.tokens.data(), n}, {data.targets.data(), n}, {data.modality.data(), n}};
  Tape tape;
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    model.params().zero_grad(b);
    auto out = model.forward(tape, b, batch, /*training=*/true, /*seed=*/step);
    tape.backward(out.loss);
    (void)clip_grad_norm(model.params(), 1.0);
    opt.step(b, schedule.lr_at(step));
    losses.push_back(out.report.mean);
  }
  NoGrad ng(tape);
  losses.push_back(model.forward(tape, b, batch).report.mean);  // eval: no noise
  return losses;
}

template <class Ffn>
void check_overfits(typename Ffn::Config ffn) {
  const auto losses = overfit<Ffn>(ffn, 60);
  INFO("first " << losses.front() << " last " << losses.back());
  CHECK(losses.front() > 3.0);  // ~ln(64) = 4.16 at initialisation
  CHECK(losses.back() < 0.05);
}

}  // namespace

TEST_CASE("tiny_lm: dense FFN overfits one batch", "[train][cpu]") {
  check_overfits<SwiGluFfn<float, CpuBackend<float>>>({.d = d, .hidden = hidden});
}

TEST_CASE("tiny_lm: MoMa 1t1i (ModalityHard) overfits one batch", "[train][cpu]") {
  using Ffn = SparseFfn<float, ModalityHard, SortedGather, CpuBackend<float>>;
  Ffn::Config c;
  c.d = d;
  c.hidden = hidden;
  c.experts = {1, 1};
  check_overfits<Ffn>(c);
}

TEST_CASE("tiny_lm: MoMa 4t4i (ModalityAware<ExpertChoice>) overfits one batch", "[train][cpu]") {
  using Ffn = SparseFfn<float, ModalityAware<ExpertChoice>, SortedGather, CpuBackend<float>>;
  Ffn::Config c;
  c.d = d;
  c.hidden = hidden;
  c.experts = {4, 4};
  c.router.capacity_factor = 1.0;
  c.router.gumbel = true;
  check_overfits<Ffn>(c);
}

TEST_CASE("tiny_lm: whole-model gradients match finite differences", "[train][cpu][grad]") {
  using B = CpuBackend<double>;
  using Ffn = SparseFfn<double, ModalityAware<ExpertChoice>, SortedGather, B>;
  B b;
  Ffn::Config c;
  c.d = 8;
  c.hidden = 12;
  c.experts = {2, 2};
  TinyLm<Ffn, B> model(b,
                       {.vocab = vocab, .d = 8, .layers = 2, .modalities = 2, .ffn = c, .seed = 3});
  FixedBatch data(23);
  const TinyLm<Ffn, B>::Batch batch{
      {data.tokens.data(), 16}, {data.targets.data(), 16}, {data.modality.data(), 16}};
  Tape tape;
  auto out = model.forward(tape, b, batch);
  tape.backward(out.loss);
  auto loss = [&] {
    NoGrad ng(tape);
    return static_cast<double>(model.forward(tape, b, batch).loss.value()(0, 0));
  };
  std::vector<GradcheckInput> inputs;
  auto& p = model.params();
  for (std::size_t i = 0; i < p.slices().size(); ++i) {
    const auto id = static_cast<std::int64_t>(i);
    inputs.push_back({p.slices()[i].name, p.value(id), p.grad(id)});
  }
  GradcheckOptions go;
  go.max_elements = 24;
  const auto report = gradcheck(loss, inputs, go);
  INFO(report.str());
  CHECK(report.ok(1e-6));
}

// Decoding (layers/generate.hpp): prefill + token-by-token decoding with per-layer KV caches
// reproduces the full-sequence logits (float, relative error < 1e-5) for the causal
// configurations; for expert choice and MoD, decoding with aux-router decisions equals a full
// forward with the same (aux) decisions, and a token a MoD layer skips leaves no K/V there.
// Sampling (greedy, temperature/top-k, seeded), a text -> image modality switch, and errors.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "layers/block_checks.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/generate.hpp>
#include <mmsparse/layers/model.hpp>

namespace mm = mmsparse;

namespace {

using Cpu = mm::CpuBackend<float>;
using Ds = mm::Decoders<float, Cpu>;
constexpr std::int64_t vocab = 50, text = 34, d = 32, len = 12;

mm::DecoderShape shape() {
  mm::DecoderShape s;
  s.vocab = vocab;
  s.modality_begin = {0, text};
  s.layers = 2;
  s.block.d = d;
  s.block.heads = 2;
  s.block.hidden = 32;
  s.experts_per_modality = 4;
  s.experts = 4;
  s.depth_capacity = 0.25;
  s.seed = 3;
  return s;
}

std::vector<std::int32_t> tokens(std::uint64_t seed, std::int64_t count) {
  mm::Rng rng(seed);
  std::vector<std::int32_t> t;
  for (std::int64_t i = 0; i < count; ++i) {
    const bool image = i >= 4 && i < 9;  // text, an image run, text
    t.push_back(static_cast<std::int32_t>(image ? rng.integer(text, vocab) : rng.integer(0, text)));
  }
  return t;
}

// Random aux routers (no bias term) that keep some tokens of `ids` and skip others in every
// routed layer: the first seed that does, so decoding meets both kinds of decision.
template <class Model>
void randomize_aux(Model& model, const std::vector<std::int32_t>& ids, std::uint64_t seed) {
  Cpu b;
  mm::Tensor<float> logits(static_cast<std::int64_t>(ids.size()), vocab);
  typename Model::ForwardOptions opt;
  opt.routing = mm::RoutingMode::aux;
  opt.trace = true;
  for (std::uint64_t s = seed; s < seed + 64; ++s) {
    block_checks::randomize(model.aux_parameters(), model.aux_weights(), s, 1.0);
    const auto st = model.forward(b, {ids, 1}, logits.view(), nullptr, opt);
    bool mixed = true;
    for (const auto& l : st.layers) {
      for (const auto& r : l.routing) {
        const auto slots = static_cast<std::int64_t>(r.tokens.size());
        const auto experts = static_cast<std::int64_t>(r.offsets.size()) - 1;
        mixed = mixed && slots > 0 && slots < experts * static_cast<std::int64_t>(ids.size());
      }
    }
    if (mixed) {
      return;
    }
  }
  FAIL("no aux-router seed keeps some tokens and skips others");
}

// Max |a - b| / max |b| over rows [r0, r1).
double rel(const mm::Tensor<float>& a, const mm::Tensor<float>& b, std::int64_t r0 = 0) {
  double err = 0.0, scale = 0.0;
  for (std::int64_t i = r0; i < b.rows(); ++i) {
    for (std::int64_t j = 0; j < b.cols(); ++j) {
      err = std::max(err, std::fabs(static_cast<double>(a(i - r0, j)) - b(i, j)));
      scale = std::max(scale, std::fabs(static_cast<double>(b(i, j))));
    }
  }
  return err / scale;
}

// Prefill the first `prompt` tokens, then one token at a time; the logits of every position.
template <class Model>
mm::Tensor<float> decode_all(Cpu& b,
                             mm::DecodeSession<Model>& s,
                             const std::vector<std::int32_t>& ids,
                             std::int64_t prompt) {
  const auto n = static_cast<std::int64_t>(ids.size());
  mm::Tensor<float> out(n, vocab);
  mm::Tensor<float> pre(prompt, vocab);
  s.append(b,
           0,
           std::span<const std::int32_t>(ids.data(), static_cast<std::size_t>(prompt)),
           pre.view());
  for (std::int64_t i = 0; i < prompt; ++i) {
    for (std::int64_t j = 0; j < vocab; ++j) {
      out(i, j) = pre(i, j);
    }
  }
  mm::Tensor<float> one(1, vocab);
  for (std::int64_t t = prompt; t < n; ++t) {
    s.append(b, 0, std::span<const std::int32_t>(&ids[static_cast<std::size_t>(t)], 1), one.view());
    for (std::int64_t j = 0; j < vocab; ++j) {
      out(t, j) = one(0, j);
    }
  }
  return out;
}

}  // namespace

using Causal = std::tuple<Ds::Dense, Ds::Mot, Ds::Moma1t1i, Ds::TokenChoiceTop2>;

TEMPLATE_LIST_TEST_CASE("Incremental decoding reproduces the full-sequence logits",
                        "[layers][cpu]",
                        Causal) {
  using Model = TestType;
  Cpu b;
  Model model(mm::decoder_preset<Model>(shape()));
  const auto ids = tokens(5, len);
  mm::Tensor<float> full(len, vocab);
  model.forward(b, {ids, 1}, full.view());  // batch routing: these configurations are causal
  mm::DecodeSession<Model> s(model, 1, 16);
  const auto dec = decode_all(b, s, ids, 5);
  CHECK(rel(dec, full) < 1e-5);
  for (std::int64_t l = 0; l < 2; ++l) {
    CHECK(s.cached(l, 0) == len);  // every layer caches every token
  }
}

using AuxRouted = std::tuple<Ds::Moma4t4i, Ds::ModMoma4t4i>;

TEMPLATE_LIST_TEST_CASE(
    "Expert choice and MoD decode with their aux routers, as a full forward "
    "with the same decisions",
    "[layers][cpu]",
    AuxRouted) {
  using Model = TestType;
  Cpu b;
  Model model(mm::decoder_preset<Model>(shape()));
  const auto ids = tokens(9, len);
  randomize_aux(model, ids, 7);
  mm::Tensor<float> full(len, vocab);
  typename Model::ForwardOptions opt;
  opt.routing = mm::RoutingMode::aux;
  opt.trace = true;
  const auto st = model.forward(b, {ids, 1}, full.view(), nullptr, opt);
  mm::DecodeSession<Model> s(model, 1, len);
  const auto dec = decode_all(b, s, ids, 3);
  CHECK(rel(dec, full) < 1e-5);
  if constexpr (std::is_same_v<Model, Ds::ModMoma4t4i>) {
    // Layer 0 is a MoD layer: its cache holds the kept tokens only; layer 1 holds all.
    const auto kept = static_cast<std::int64_t>(st.layers[0].routing.back().tokens.size());
    INFO("MoD kept " << kept << " of " << len);
    CHECK(kept > 0);
    CHECK(kept < len);
    CHECK(s.cached(0, 0) == kept);
    CHECK(s.cached(1, 0) == len);
  } else {
    std::int64_t slots = 0;  // the aux routers pick a variable number of experts per token
    for (const auto& l : st.layers) {
      slots += static_cast<std::int64_t>(l.routing.back().tokens.size());
    }
    CHECK(slots > 0);
    CHECK(s.cached(0, 0) == len);
  }
  // The training-time (batch top-C) routing is not what decoding reproduces (PAPERS.md §4.1).
  mm::Tensor<float> batch_logits(len, vocab);
  model.forward(b, {ids, 1}, batch_logits.view());
  CHECK(rel(dec, batch_logits) > 1e-4);
}

TEST_CASE("Decoding refuses a sequence longer than its cache and unknown ids, writing nothing",
          "[layers][cpu]") {
  Cpu b;
  Ds::ModMoma4t4i model(mm::decoder_preset<Ds::ModMoma4t4i>(shape()));
  mm::DecodeSession<Ds::ModMoma4t4i> s(model, 2, 6);
  const auto ids = tokens(3, 8);
  mm::Tensor<float> logits(4, vocab);
  s.append(b, 1, std::span<const std::int32_t>(ids.data(), 4), logits.view());
  const auto l0 = s.cached(0, 1);
  mm::Tensor<float> more(3, vocab);
  try {
    s.append(b, 1, std::span<const std::int32_t>(ids.data() + 4, 3), more.view());
    FAIL("no error");
  } catch (const mm::Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("sequence 1 length"));
    CHECK_THAT(std::string(e.what()), Catch::Contains("capacity 6"));
  }
  std::vector<std::int32_t> bad = {1, vocab + 3};
  mm::Tensor<float> two(2, vocab);
  try {
    s.append(b, 1, bad, two.view());
    FAIL("no error");
  } catch (const mm::Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("tokens[1]"));
  }
  CHECK(s.length(1) == 4);  // nothing appended by the failed calls
  CHECK(s.cached(0, 1) == l0);
  CHECK(s.cached(1, 1) == 4);
  CHECK(s.length(0) == 0);
  CHECK_THROWS_AS(s.append(b, 2, bad, two.view()), mm::Error);  // no sequence 2
}

TEST_CASE("Sampling: greedy, seeded temperature/top-k, an allowed id range", "[layers][cpu]") {
  const std::vector<double> logits = {0.1, 2.0, -1.0, 2.0, 0.5, 1.9};
  CHECK(mm::sample_token(logits, {}, 0) == 1);  // greedy; the tie goes to the lower id
  mm::SamplingConfig top1{1.0, 1, 42, 0, 0};
  CHECK(mm::sample_token(logits, top1, 7) == 1);
  mm::SamplingConfig range{0.0, 0, 0, 4, 6};
  CHECK(mm::sample_token(logits, range, 0) == 5);
  mm::SamplingConfig warm{1.0, 3, 11, 0, 0};
  std::vector<int> counts(6, 0);
  for (std::uint64_t step = 0; step < 3000; ++step) {
    const auto t = mm::sample_token(logits, warm, step);
    CHECK(t == mm::sample_token(logits, warm, step));  // reproducible
    ++counts[static_cast<std::size_t>(t)];
  }
  CHECK(counts[0] + counts[2] + counts[4] == 0);  // outside the top 3
  // Frequencies follow softmax over the top 3: e^2 : e^2 : e^1.9.
  const double z = 2 * std::exp(2.0) + std::exp(1.9);
  CHECK(counts[1] / 3000.0 == Approx(std::exp(2.0) / z).margin(0.04));
  CHECK(counts[5] / 3000.0 == Approx(std::exp(1.9) / z).margin(0.04));
  CHECK_THROWS_AS(mm::sample_token(logits, {0.0, 0, 0, 5, 9}, 0), mm::Error);
}

TEST_CASE("Generation across a modality switch: a text prompt, then image tokens",
          "[layers][cpu]") {
  using Model = Ds::ModMoma4t4i;
  Cpu b;
  Model model(mm::decoder_preset<Model>(shape()));
  const std::vector<std::int32_t> prompt = {3, 17, 8, 25, 11};  // text
  randomize_aux(model, prompt, 13);
  mm::DecodeSession<Model> s(model, 1, 16);
  const mm::SamplingConfig image{0.8, 8, 1234, static_cast<std::int32_t>(text), vocab};
  const auto generated = mm::generate(b, s, 0, prompt, 6, image);
  REQUIRE(generated.size() == 6);
  for (const auto t : generated) {
    CHECK(t >= text);
    CHECK(t < vocab);
  }
  // Back to text for two tokens (greedy), continuing the same sequence.
  const mm::SamplingConfig text_only{0.0, 0, 0, 0, static_cast<std::int32_t>(text)};
  const auto tail = mm::generate(b, s, 0, std::span<const std::int32_t>{}, 2, text_only);
  CHECK(tail[0] < text);
  CHECK(tail[1] < text);
  CHECK(s.length(0) == 13);
  // Reproducible from the seed, and what was decoded is what a full forward computes.
  mm::DecodeSession<Model> again(model, 1, 16);
  CHECK(mm::generate(b, again, 0, prompt, 6, image) == generated);
  std::vector<std::int32_t> all = prompt;
  all.insert(all.end(), generated.begin(), generated.end());
  all.insert(all.end(), tail.begin(), tail.end());  // every sampled token was fed back
  mm::Tensor<float> full(13, vocab);
  typename Model::ForwardOptions opt;
  opt.routing = mm::RoutingMode::aux;
  model.forward(b, {all, 1}, full.view(), nullptr, opt);
  const auto& last = s.last_logits(0);
  double err = 0.0, scale = 0.0;
  for (std::int64_t j = 0; j < vocab; ++j) {
    err = std::max(err, std::fabs(last[static_cast<std::size_t>(j)] - full(12, j)));
    scale = std::max(scale, std::fabs(static_cast<double>(full(12, j))));
  }
  CHECK(err / scale < 1e-5);
}

// Decoder (layers/model.hpp) in every preset configuration (dense, MoT, MoMa 1t1i, MoMa 4t4i,
// MoD + MoMa 4t4i, token-choice top-2): gradients of a 2-layer model against central differences
// (double, routing plan held fixed), causality, FLOPs per token, safetensors save/load (all or
// nothing, with truncated and lying files), and argument errors.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <type_traits>
#include <unistd.h>
#include <vector>

#include <catch2/catch.hpp>

#include "layers/block_checks.hpp"
#include <mmsparse/autograd/blocks.hpp>
#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/model.hpp>
#include <mmsparse/testing/gradcheck.hpp>

namespace mm = mmsparse;

namespace {

using Cpu = mm::CpuBackend<double>;
using Ds = mm::Decoders<double, Cpu>;
constexpr std::int64_t vocab = 50, text = 34, d = 16, seqs = 2, len = 8, n = seqs * len;

mm::DecoderShape shape() {
  mm::DecoderShape s;
  s.vocab = vocab;
  s.modality_begin = {0, text};  // text ids [0, 34), image codes [34, 50)
  s.layers = 2;
  s.block.d = d;
  s.block.heads = 2;
  s.block.hidden = 16;
  s.experts_per_modality = 4;
  s.experts = 4;
  s.depth_capacity = 0.25;
  s.seed = 1;
  return s;
}

// A text prefix, then an image run, per sequence (a Chameleon-style interleaved document).
std::vector<std::int32_t> tokens(std::uint64_t seed) {
  mm::Rng rng(seed);
  std::vector<std::int32_t> t;
  for (std::int64_t i = 0; i < n; ++i) {
    const bool image = (i % len) >= 3 && (i % len) < 7;
    t.push_back(static_cast<std::int32_t>(image ? rng.integer(text, vocab) : rng.integer(0, text)));
  }
  return t;
}

template <class Model>
void randomize_all(Model& model, std::uint64_t seed) {
  block_checks::randomize(model.parameters(), model.weights(), seed, 0.5);
  block_checks::randomize(model.aux_parameters(), model.aux_weights(), seed + 1, 1.0);
}

template <class Stats>
mm::PlanSignature signature(const Stats& st) {
  std::vector<mm::RoutingTrace> all;
  for (const auto& l : st.layers) {
    all.insert(all.end(), l.routing.begin(), l.routing.end());
  }
  return block_checks::signature(all);
}

// Mean cross-entropy of logits [N, V] against targets, by its formula.
double mean_ce(const mm::Tensor<double>& logits, const std::vector<std::int32_t>& target) {
  double sum = 0.0;
  for (std::int64_t i = 0; i < logits.rows(); ++i) {
    double mx = -1e300;
    for (std::int64_t j = 0; j < logits.cols(); ++j) {
      mx = std::max(mx, logits(i, j));
    }
    double z = 0.0;
    for (std::int64_t j = 0; j < logits.cols(); ++j) {
      z += std::exp(logits(i, j) - mx);
    }
    sum += mx + std::log(z) - logits(i, target[static_cast<std::size_t>(i)]);
  }
  return sum / static_cast<double>(logits.rows());
}

double max_diff_rows(const mm::Tensor<double>& a,
                     const mm::Tensor<double>& b,
                     std::int64_t r0,
                     std::int64_t r1) {
  double m = 0.0;
  for (std::int64_t i = r0; i < r1; ++i) {
    for (std::int64_t j = 0; j < a.cols(); ++j) {
      m = std::max(m, std::fabs(a(i, j) - b(i, j)));
    }
  }
  return m;
}

template <class Model>
constexpr bool causal_in_training() {
  return std::is_same_v<Model, Ds::Dense> || std::is_same_v<Model, Ds::Mot> ||
         std::is_same_v<Model, Ds::Moma1t1i> || std::is_same_v<Model, Ds::TokenChoiceTop2>;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("mmsparse_model_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

}  // namespace

using Models = std::
    tuple<Ds::Dense, Ds::Mot, Ds::Moma1t1i, Ds::Moma4t4i, Ds::ModMoma4t4i, Ds::TokenChoiceTop2>;

TEMPLATE_LIST_TEST_CASE("Decoder gradients match central differences (double, 2 layers)",
                        "[layers][cpu][grad]",
                        Models) {
  using Model = TestType;
  Cpu b;
  Model model(mm::decoder_preset<Model>(shape()));
  mm::ParamArena<double, Cpu> arena;
  const auto grads = mm::bind_parameters(arena, b, model);
  randomize_all(model, 5);
  const auto ids = tokens(7);
  mm::Rng rng(8);
  std::vector<std::int32_t> target;
  for (std::int64_t i = 0; i < n; ++i) {
    target.push_back(static_cast<std::int32_t>(rng.integer(0, vocab)));
  }
  const typename Model::Batch batch{ids, seqs};

  mm::Tape tape;
  auto out = mm::decoder(tape, b, model, std::span<const mm::View<double>>(grads), batch);
  auto ce = mm::cross_entropy(tape, b, out.logits, mm::Span<const std::int32_t>(target.data(), n));
  auto loss = mm::add(tape, b, ce.loss, out.aux);
  tape.backward(loss);

  mm::Tensor<double> logits(n, vocab);
  typename Model::ForwardOptions opt;
  opt.trace = true;
  mm::PlanSignature plan_now;
  auto eval = [&] {
    const auto st = model.forward(b, batch, logits.view(), nullptr, opt);
    plan_now = signature(st);
    return mean_ce(logits, target) + st.aux_loss;
  };
  CHECK(eval() == Approx(loss.value()(0, 0)).epsilon(1e-12));
  std::vector<mm::GradcheckInput> inputs;
  const auto params = model.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    inputs.push_back({params[i].name, arena.value(static_cast<std::int64_t>(i)), grads[i]});
  }
  mm::GradcheckOptions go;
  go.max_elements = 6;
  const auto report = mm::gradcheck(eval, inputs, go, [&] { return plan_now; });
  INFO(report.str());
  CHECK(report.ok(1e-6));
  std::int64_t nonzero = 0;
  for (const auto& r : report.results) {
    nonzero += r.scale > 0.0;
  }
  CHECK(nonzero > static_cast<std::int64_t>(report.results.size()) * 3 / 4);
}

TEMPLATE_LIST_TEST_CASE("Decoder is causal: a later token never changes an earlier logit",
                        "[layers][cpu]",
                        Models) {
  using Model = TestType;
  Cpu b;
  Model model(mm::decoder_preset<Model>(shape()));
  randomize_all(model, 9);
  auto ids = tokens(11);
  mm::Tensor<double> before(n, vocab), after(n, vocab);
  std::vector<typename Model::ForwardOptions> modes(1);
  modes[0].routing = mm::RoutingMode::aux;  // inference: every configuration is causal
  if constexpr (causal_in_training<Model>()) {
    modes.push_back({});  // batch routing, as in training
  }
  for (const auto& opt : modes) {
    for (const std::int64_t t : {5, 4}) {  // an image token, then the text -> image boundary
      INFO("change token " << t << (opt.routing == mm::RoutingMode::aux ? " (aux)" : " (batch)"));
      auto changed = ids;
      const auto u = static_cast<std::size_t>(t);
      changed[u] = t == 5 ? (ids[u] == text + 1 ? text + 2 : text + 1) : 2;  // 4: image -> text
      model.forward(b, {ids, seqs}, before.view(), nullptr, opt);
      model.forward(b, {changed, seqs}, after.view(), nullptr, opt);
      CHECK(max_diff_rows(before, after, 0, t) < 1e-12);
      CHECK(max_diff_rows(before, after, len, n) < 1e-12);  // the other sequence
      CHECK(max_diff_rows(before, after, t, t + 1) > 1e-6);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("Decoder FLOPs per token count what ran", "[layers][cpu]", Models) {
  using Model = TestType;
  Cpu b;
  Model model(mm::decoder_preset<Model>(shape()));
  const auto ids = tokens(3);  // per sequence 4 text, 4 image: 8 text, 8 image tokens
  mm::Tensor<double> logits(n, vocab);
  typename Model::ForwardOptions opt;
  opt.trace = true;
  const auto st = model.forward(b, {ids, seqs}, logits.view(), nullptr, opt);
  const double f = 16, v = vocab, dd = d;
  const double pairs = seqs * len * (len + 1) / 2.0;
  const double attn = n * 8 * dd * dd + 4 * dd * pairs;  // q, k, v, o and QK^T, PV
  const double ffn = 6 * n * dd * f;
  const double head = 2 * n * dd * v;
  double expect = 2 * (attn + ffn) + head;
  if constexpr (std::is_same_v<Model, Ds::Moma4t4i>) {
    expect += 2 * 2 * n * dd * 8;  // the router of each layer (8 columns); slots = N: 4 * ceil(8/4)
  } else if constexpr (std::is_same_v<Model, Ds::Moma1t1i>) {
    expect += 0.0;  // hard routing: no router
  } else if constexpr (std::is_same_v<Model, Ds::TokenChoiceTop2>) {
    expect += 2 * (ffn + 2 * n * dd * 4);  // two experts per token, a 4-column router
  } else if constexpr (std::is_same_v<Model, Ds::ModMoma4t4i>) {
    // Layer 0: MoD keeps ceil(0.25 * 16) = 4 tokens; inside, 4t4i over them: ceil(n_m / 4) per
    // expert, rounded up (at least 4 slots a group with tokens).
    const auto& kept = st.layers[0].routing.back().tokens;
    REQUIRE(kept.size() == 4);
    std::vector<std::int64_t> per_seq(2, 0), per_mod(2, 0);
    for (const auto t : kept) {
      ++per_seq[static_cast<std::size_t>(t / len)];
      ++per_mod[ids[static_cast<std::size_t>(t)] >= text ? 1 : 0];
    }
    double kept_pairs = 0.0;
    for (const auto c : per_seq) {
      kept_pairs += c * (c + 1) / 2.0;
    }
    double slots = 0.0;
    for (const auto c : per_mod) {
      slots += c > 0 ? 4.0 * std::ceil(c / 4.0) : 0.0;
    }
    const double layer0 =
        2 * n * dd + 4 * 8 * dd * dd + 4 * dd * kept_pairs + 6 * slots * dd * f + 2 * 4 * dd * 8;
    expect = layer0 + attn + ffn + 2 * n * dd * 8 + head;
  }
  CHECK(st.flops == Approx(expect));
  CHECK(st.flops_per_token() == Approx(expect / n));
}

TEMPLATE_LIST_TEST_CASE("Decoder save/load round-trips; bad files load nothing",
                        "[layers][cpu]",
                        Models) {
  using Model = TestType;
  Cpu b;
  Model model(mm::decoder_preset<Model>(shape()));
  randomize_all(model, 13);
  const auto ids = tokens(17);
  mm::Tensor<double> ref(n, vocab), got(n, vocab);
  model.forward(b, {ids, seqs}, ref.view());
  const std::string path = temp_path("model.safetensors");
  model.save(path);

  // Scramble, then load: every weight comes back.
  randomize_all(model, 99);
  model.forward(b, {ids, seqs}, got.view());
  CHECK(max_diff_rows(ref, got, 0, n) > 1e-3);
  model.load(b, path);
  model.forward(b, {ids, seqs}, got.view());
  CHECK(max_diff_rows(ref, got, 0, n) == 0.0);

  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto rejects = [&](const std::string& content, const std::string& why) {
    INFO(why);
    const std::string bad = temp_path("bad.safetensors");
    std::ofstream(bad, std::ios::binary) << content;
    randomize_all(model, 5);
    mm::Tensor<double> before(n, vocab), after(n, vocab);
    model.forward(b, {ids, seqs}, before.view());
    CHECK_THROWS_AS(model.load(b, bad), mm::Error);
    model.forward(b, {ids, seqs}, after.view());
    CHECK(max_diff_rows(before, after, 0, n) == 0.0);  // nothing loaded
    std::filesystem::remove(bad);
  };
  rejects(bytes.substr(0, bytes.size() - 40), "truncated data");
  rejects(bytes.substr(0, 30), "truncated header");
  std::string lying = bytes;
  const auto pos = lying.find("\"shape\":[50,16]");
  REQUIRE(pos != std::string::npos);
  lying.replace(pos, 15, "\"shape\":[16,50]");  // the embedding claims the head's shape
  rejects(lying, "a shape that does not match");
  std::string wrong_dtype = bytes;
  const auto dt = wrong_dtype.find("\"F64\"");
  REQUIRE(dt != std::string::npos);
  wrong_dtype.replace(dt, 5, "\"I64\"");
  rejects(wrong_dtype, "a dtype that does not match");
  std::filesystem::remove(path);

  // A file of another configuration names the first tensor it lacks.
  using Other = std::conditional_t<std::is_same_v<Model, Ds::Dense>, Ds::Mot, Ds::Dense>;
  Other other(mm::decoder_preset<Other>(shape()));
  const std::string other_path = temp_path("other.safetensors");
  other.save(other_path);
  try {
    model.load(b, other_path);
    FAIL("no error");
  } catch (const mm::Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("[Decoder::load]"));
    CHECK_THAT(std::string(e.what()), Catch::Contains("tensor 'layers.0."));
  }
  std::filesystem::remove(other_path);
}

TEST_CASE("Decoder rejects bad token ids and mismatched modality counts", "[layers][cpu]") {
  Cpu b;
  Ds::Moma4t4i model(mm::decoder_preset<Ds::Moma4t4i>(shape()));
  auto ids = tokens(1);
  ids[9] = vocab;  // one past the joint vocabulary
  mm::Tensor<double> logits(n, vocab);
  try {
    model.forward(b, {ids, seqs}, logits.view());
    FAIL("no error");
  } catch (const mm::Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("tokens[9]"));
    CHECK_THAT(std::string(e.what()), Catch::Contains("[0, 50)"));
  }
  ids[9] = -1;
  CHECK_THROWS_AS(model.forward(b, {ids, seqs}, logits.view()), mm::Error);

  auto s = shape();
  auto cfg = mm::decoder_preset<Ds::Moma4t4i>(s);
  cfg.modality_begin = {0, 20, 40};  // 3 modalities in the vocabulary, blocks built for 2
  try {
    Ds::Moma4t4i bad(cfg);
    FAIL("no error");
  } catch (const mm::Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("modalities"));
  }
  s.modality_begin = {0, 20, 40};  // a preset with 3 modalities is consistent
  Ds::Mot three(mm::decoder_preset<Ds::Mot>(s));
  CHECK(three.modalities() == 3);
  CHECK(three.modality_of(45) == 2);
}

TEST_CASE("Aux routers train jointly with the gradient stopped into the model", "[layers][cpu]") {
  using Model = Ds::ModMoma4t4i;  // aux routers for MoD and for expert choice
  Cpu b;
  Model model(mm::decoder_preset<Model>(shape()));
  mm::ParamArena<double, Cpu> params, aux;
  const auto grads = mm::bind_parameters(params, b, model);
  const auto aux_grads = mm::bind_aux_parameters(aux, b, model);
  const auto ids = tokens(21);
  mm::Rng rng(22);
  const auto dlogits = rng.normal_tensor<double>(n, vocab);
  auto step = [&](bool fit_aux) {
    params.zero_grad(b);
    aux.zero_grad(b);
    Model::Saved saved;
    mm::Tensor<double> logits(n, vocab);
    model.forward(b, {ids, seqs}, logits.view(), &saved);
    mm::AuxRouterFit fit;
    if (fit_aux) {
      fit = model.aux_fit(b, saved, std::span<const mm::View<double>>(aux_grads));
    }
    model.backward(b, saved, dlogits.view(), std::span<const mm::View<double>>(grads));
    std::vector<double> g(static_cast<std::size_t>(params.size()));
    for (std::int64_t i = 0; i < params.size(); ++i) {
      g[static_cast<std::size_t>(i)] = params.grads()(0, i);
    }
    return std::pair{g, fit};
  };
  const auto [alone, none] = step(false);
  const auto [joint, fit] = step(true);
  CHECK(joint == alone);  // the aux loss leaves every model gradient as it was
  CHECK(none.pairs == 0);
  // MoD (16 tokens, 1 output) + the 4t4i groups inside it (4 kept tokens) and in layer 1.
  CHECK(fit.pairs == 16 + 4 * 4 + 16 * 4);
  double norm = 0.0;
  for (std::int64_t i = 0; i < aux.size(); ++i) {
    norm += aux.grads()(0, i) * aux.grads()(0, i);
  }
  CHECK(norm > 0.0);
}

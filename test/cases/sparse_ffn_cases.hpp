// test/cases/sparse_ffn_cases.hpp
//
// One case table for the sparse FFN (STYLE.md §10, ggml's test-backend-ops): shapes, modality
// mixes, seeds and tolerances shared by test/dispatch, test/layers and bench/sparse_ffn_bench.cpp,
// so whatever is benchmarked has been tested. Also: the router variants (a router type plus the
// configuration it gets from a case) and the modality ids of a case.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/core/math.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/mixture_of_depths.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/modality_hard.hpp>
#include <mmsparse/routing/token_choice.hpp>

namespace mmsparse::cases {

struct SparseFfnCase {
  std::string name;
  std::int64_t tokens = 0;
  std::int64_t d = 0;
  std::int64_t hidden = 0;
  std::vector<std::int64_t> groups;  // experts per modality group: {1,1} 1t1i, {4,4} 4t4i, ...
  std::vector<double> mix;           // fraction of the tokens of each modality (sums to 1)
  std::int64_t run = 1;              // tokens per modality run (text spans, images)
  std::uint64_t seed = 0;

  [[nodiscard]] std::int64_t modalities() const {
    return static_cast<std::int64_t>(groups.size());
  }
  [[nodiscard]] std::int64_t total_experts() const {
    return std::accumulate(groups.begin(), groups.end(), std::int64_t{0});
  }
};

// Relative (Frobenius) error allowed between a layer and its double oracle or another scheme.
template <class T>
inline constexpr double output_tolerance = std::is_same_v<T, double> ? 1e-12 : 1e-5;
// Relative error allowed between analytic gradients and central differences (double).
inline constexpr double gradcheck_tolerance = 1e-6;
inline constexpr double gradcheck_step = 1e-5;

// Mixed batches at test sizes: 1t1i, 4t4i, 2t6i and three modalities.
inline const std::vector<SparseFfnCase>& layer_cases() {
  static const std::vector<SparseFfnCase> cases = {
      {"1t1i", 24, 16, 32, {1, 1}, {0.5, 0.5}, 3, 11},
      {"4t4i", 40, 24, 48, {4, 4}, {0.4, 0.6}, 5, 12},
      {"2t6i", 48, 16, 40, {2, 6}, {0.25, 0.75}, 4, 13},
      {"3mod_2t2i2s", 36, 20, 32, {2, 2, 2}, {0.3, 0.5, 0.2}, 2, 14},
  };
  return cases;
}

// Edge cases: a modality without tokens, one modality only, one token, experts left without
// tokens, and an empty batch.
inline const std::vector<SparseFfnCase>& edge_cases() {
  static const std::vector<SparseFfnCase> cases = {
      {"4t4i_text_only", 16, 16, 32, {4, 4}, {1.0, 0.0}, 4, 21},
      {"2t6i_image_only", 16, 16, 32, {2, 6}, {0.0, 1.0}, 4, 22},
      {"3mod_no_image", 18, 16, 32, {1, 2, 3}, {0.5, 0.0, 0.5}, 3, 23},
      {"one_token", 1, 16, 32, {4, 4}, {0.0, 1.0}, 1, 24},
      {"three_tokens_2t6i", 3, 16, 32, {2, 6}, {1.0 / 3, 2.0 / 3}, 1, 25},
      {"empty", 0, 16, 32, {2, 2}, {0.5, 0.5}, 1, 26},
      // d = f = 256: rows of 1 KB (float) and 2 KB (double), which Tensor::weight pads.
      {"padded_rows_2t2i", 24, 256, 256, {2, 2}, {0.5, 0.5}, 4, 27},
  };
  return cases;
}

// MoMa-like shapes for bench/: d = 512, SwiGLU hidden 1536 (= swiglu_hidden(512)), 4096 tokens
// (and 1024), text/image 50/50 and 20/80 in runs of 256 tokens.
inline const std::vector<SparseFfnCase>& bench_cases() {
  static const std::vector<SparseFfnCase> cases = {
      {"1t1i_50_50", 4096, 512, 1536, {1, 1}, {0.5, 0.5}, 256, 101},
      {"1t1i_20_80", 4096, 512, 1536, {1, 1}, {0.2, 0.8}, 256, 102},
      {"4t4i_50_50", 4096, 512, 1536, {4, 4}, {0.5, 0.5}, 256, 103},
      {"4t4i_20_80", 4096, 512, 1536, {4, 4}, {0.2, 0.8}, 256, 104},
      {"4t4i_50_50_n1024", 1024, 512, 1536, {4, 4}, {0.5, 0.5}, 256, 105},
  };
  return cases;
}

// Modality ids of a case: round(mix[m] * N) tokens of modality m (the last takes the rest), cut
// into runs of `run` tokens, the runs shuffled with the case's seed.
[[nodiscard]] inline std::vector<ModalityId> modalities_of(const SparseFfnCase& c) {
  const auto m = static_cast<std::int64_t>(c.mix.size());
  std::vector<std::vector<ModalityId>> runs;
  std::int64_t assigned = 0;
  for (std::int64_t k = 0; k < m; ++k) {
    std::int64_t count =
        k + 1 < m ? static_cast<std::int64_t>(std::llround(c.mix[static_cast<std::size_t>(k)] *
                                                           static_cast<double>(c.tokens)))
                  : c.tokens - assigned;
    count = std::clamp<std::int64_t>(count, 0, c.tokens - assigned);
    assigned += count;
    for (std::int64_t begin = 0; begin < count; begin += c.run) {
      runs.emplace_back(static_cast<std::size_t>(std::min(c.run, count - begin)),
                        static_cast<ModalityId>(k));
    }
  }
  Rng rng(c.seed ^ 0x5eedull);
  for (std::int64_t i = static_cast<std::int64_t>(runs.size()) - 1; i > 0; --i) {
    std::swap(runs[static_cast<std::size_t>(i)],
              runs[static_cast<std::size_t>(rng.integer(0, i + 1))]);
  }
  std::vector<ModalityId> ids;
  for (const auto& r : runs) {
    ids.insert(ids.end(), r.begin(), r.end());
  }
  return ids;
}

// Tokens of each modality in a case.
[[nodiscard]] inline std::vector<std::int64_t> modality_counts(const SparseFfnCase& c) {
  const auto ids = modalities_of(c);
  return count_modalities(Span<const ModalityId>(ids.data(), c.tokens), c.modalities());
}

// ---- router variants: a router type and the configuration a case gives it -------------------
// Each variant: `router`, `name`, experts(case), config(case), and planned_slots(case), the
// (token, expert) pairs its plan holds (before capacity drops), which sizes the equal-FLOPs
// dense baseline of bench/sparse_ffn_bench.cpp.

// MoT untied FFN / MoMa 1t1i: one expert per modality.
struct HardVariant {
  using router = ModalityHard;
  static constexpr const char* name = "modality_hard";
  static std::vector<std::int64_t> experts(const SparseFfnCase& c) {
    return std::vector<std::int64_t>(c.groups.size(), 1);
  }
  static router::Config config(const SparseFfnCase&) {
    return {};
  }
  // Slots of the plan: one per token.
  static std::int64_t planned_slots(const SparseFfnCase& c) {
    return c.tokens;
  }
};

// Token choice top-2 (top-1 with fewer than 2 experts) over all experts, capacity factor 1.
struct TokenChoiceCapacityVariant {
  using router = TokenChoice;
  static constexpr const char* name = "token_choice_capacity";
  static std::vector<std::int64_t> experts(const SparseFfnCase& c) {
    return {c.total_experts()};
  }
  static router::Config config(const SparseFfnCase& c) {
    router::Config cfg;
    cfg.k = std::min<std::int64_t>(2, c.total_experts());
    cfg.capacity_factor = 1.0;
    return cfg;
  }
  // Before capacity drops: k per token (the plan may hold fewer).
  static std::int64_t planned_slots(const SparseFfnCase& c) {
    return config(c).k * c.tokens;
  }
};

struct TokenChoiceDroplessVariant {
  using router = TokenChoice;
  static constexpr const char* name = "token_choice_dropless";
  static std::vector<std::int64_t> experts(const SparseFfnCase& c) {
    return {c.total_experts()};
  }
  static router::Config config(const SparseFfnCase& c) {
    router::Config cfg;
    cfg.k = std::min<std::int64_t>(2, c.total_experts());
    cfg.dropless = true;
    return cfg;
  }
  static std::int64_t planned_slots(const SparseFfnCase& c) {
    return config(c).k * c.tokens;
  }
};

// MoMa's expert choice with sigmoid gates, capacity factor 1, over all experts.
struct ExpertChoiceSigmoidVariant {
  using router = ExpertChoice;
  static constexpr const char* name = "expert_choice_sigmoid";
  static std::vector<std::int64_t> experts(const SparseFfnCase& c) {
    return {c.total_experts()};
  }
  static router::Config config(const SparseFfnCase&) {
    router::Config cfg;
    cfg.capacity_factor = 1.0;
    cfg.gate = GateFn::sigmoid;
    return cfg;
  }
  static std::int64_t planned_slots(const SparseFfnCase& c) {
    return c.total_experts() *
           expert_choice_capacity(config(c).capacity_factor, c.tokens, c.total_experts());
  }
};

// Zhou et al.'s expert choice: softmax gates, capacity factor 2.
struct ExpertChoiceSoftmaxVariant {
  using router = ExpertChoice;
  static constexpr const char* name = "expert_choice_softmax";
  static std::vector<std::int64_t> experts(const SparseFfnCase& c) {
    return {c.total_experts()};
  }
  static router::Config config(const SparseFfnCase&) {
    router::Config cfg;
    cfg.capacity_factor = 2.0;
    cfg.gate = GateFn::softmax;
    return cfg;
  }
  static std::int64_t planned_slots(const SparseFfnCase& c) {
    return c.total_experts() *
           expert_choice_capacity(config(c).capacity_factor, c.tokens, c.total_experts());
  }
};

// Mixture-of-depths: one block (expert), half of the tokens enter it.
struct DepthVariant {
  using router = MixtureOfDepths;
  static constexpr const char* name = "mixture_of_depths";
  static std::vector<std::int64_t> experts(const SparseFfnCase&) {
    return {1};
  }
  static router::Config config(const SparseFfnCase&) {
    router::Config cfg;
    cfg.capacity = 0.5;
    return cfg;
  }
  static std::int64_t planned_slots(const SparseFfnCase& c) {
    return depth_capacity(config(c).capacity, c.tokens);
  }
};

// MoMa: modality groups, expert choice (sigmoid, capacity factor 1) inside each group.
struct MomaExpertChoiceVariant {
  using router = ModalityAware<ExpertChoice>;
  static constexpr const char* name = "modality_aware_expert_choice";
  static std::vector<std::int64_t> experts(const SparseFfnCase& c) {
    return c.groups;
  }
  static router::Config config(const SparseFfnCase& c) {
    return ExpertChoiceSigmoidVariant::config(c);  // the same knobs in every group
  }
  // Each group g: E_g experts of capacity(N_g) tokens.
  static std::int64_t planned_slots(const SparseFfnCase& c) {
    const auto counts = modality_counts(c);
    std::int64_t s = 0;
    for (std::size_t g = 0; g < c.groups.size(); ++g) {
      s += c.groups[g] * expert_choice_capacity(config(c).capacity_factor, counts[g], c.groups[g]);
    }
    return s;
  }
};

// Modality groups with token choice inside each group (top-1: groups may hold one expert).
struct MomaTokenChoiceVariant {
  using router = ModalityAware<TokenChoice>;
  static constexpr const char* name = "modality_aware_token_choice";
  static std::vector<std::int64_t> experts(const SparseFfnCase& c) {
    return c.groups;
  }
  static router::Config config(const SparseFfnCase& c) {
    router::Config cfg;
    cfg.k = *std::min_element(c.groups.begin(), c.groups.end()) >= 2 ? 2 : 1;
    cfg.capacity_factor = 1.0;
    return cfg;
  }
  // Before capacity drops: k per token.
  static std::int64_t planned_slots(const SparseFfnCase& c) {
    return config(c).k * c.tokens;
  }
};

// The configuration of a SparseFfn layer L for a case and a router variant V.
template <class L, class V>
[[nodiscard]] typename L::Config layer_config(const SparseFfnCase& c) {
  typename L::Config cfg;
  cfg.d = c.d;
  cfg.hidden = c.hidden;
  cfg.experts = V::experts(c);
  cfg.modalities = c.modalities();
  cfg.router = V::config(c);
  cfg.seed = c.seed * 7919 + 1;
  return cfg;
}

}  // namespace mmsparse::cases

// mmsparse/layers/loss.hpp
//
// Softmax cross-entropy over a vocabulary, forward and backward side by side:
//   loss_i = logsumexp(logits_i) - logits_i[target_i],   L = mean_i loss_i
//   dlogits_i += dL * (softmax(logits_i) - onehot(target_i)) / N
// The forward keeps lse [N] for the backward. cross_entropy_report() reduces the per-token losses
// to the mean and, given modality ids, one mean per modality (MoMa reports text and image losses).
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/layers/embedding.hpp>

namespace mmsparse {

template <backend B>
void cross_entropy_forward(B& b,
                           Span<accum_t<typename B::scalar>, typename B::space> loss,
                           Span<accum_t<typename B::scalar>, typename B::space> lse,
                           View<const typename B::scalar, typename B::space> logits,
                           Span<const std::int32_t, typename B::space> targets) {
  MMSPARSE_CHECK(logits.cols > 0,
                 "cross_entropy_forward",
                 "logits",
                 "a vocabulary of >= 1 column",
                 logits.shape());
  MMSPARSE_CHECK(targets.size == logits.rows,
                 "cross_entropy_forward",
                 "targets",
                 "one target per row of logits",
                 targets.size);
  MMSPARSE_CHECK(loss.size == logits.rows,
                 "cross_entropy_forward",
                 "loss",
                 "one entry per row of logits",
                 loss.size);
  MMSPARSE_CHECK(lse.size == logits.rows,
                 "cross_entropy_forward",
                 "lse",
                 "one entry per row of logits",
                 lse.size);
  detail::check_token_ids("cross_entropy_forward", "targets", targets, logits.cols);
  b.cross_entropy(loss, lse, logits, targets);
}

// dlogits += scale * (softmax(logits) - onehot(targets)); scale = dL / N for the mean loss.
template <backend B>
void cross_entropy_backward(B& b,
                            View<typename B::scalar, typename B::space> dlogits,
                            View<const typename B::scalar, typename B::space> logits,
                            Span<const accum_t<typename B::scalar>, typename B::space> lse,
                            Span<const std::int32_t, typename B::space> targets,
                            double scale) {
  MMSPARSE_CHECK(dlogits.shape() == logits.shape(),
                 "cross_entropy_backward",
                 "dlogits",
                 logits.shape(),
                 dlogits.shape());
  MMSPARSE_CHECK(targets.size == logits.rows && lse.size == logits.rows,
                 "cross_entropy_backward",
                 "targets, lse",
                 "one entry per row of logits",
                 targets.size);
  b.cross_entropy_backward(dlogits, logits, lse, targets, scale);
}

struct CrossEntropyReport {
  double mean = 0.0;                 // mean over all tokens
  std::vector<double> per_modality;  // mean over the tokens of each modality (0 if none)
  std::vector<std::int64_t> tokens_per_modality;
};

// Reduces per-token losses (read on the host) to the mean and per-modality means.
// `modality` may be empty (no split) or hold one id in [0, num_modalities) per token.
template <class A, class Space>
[[nodiscard]] CrossEntropyReport cross_entropy_report(Span<const A, Space> loss,
                                                      Span<const ModalityId, Space> modality = {},
                                                      std::int64_t num_modalities = 0) {
  static_assert(std::is_same_v<Space, host_space>,
                "cross_entropy_report reads per-token losses on the host: copy them there first");
  MMSPARSE_CHECK(modality.empty() || modality.size == loss.size,
                 "cross_entropy_report",
                 "modality",
                 "one id per token (or none)",
                 modality.size);
  CrossEntropyReport r;
  r.per_modality.assign(static_cast<std::size_t>(num_modalities), 0.0);
  r.tokens_per_modality.assign(static_cast<std::size_t>(num_modalities), 0);
  if (!modality.empty()) {
    check_modality_ids("cross_entropy_report", modality, num_modalities);
  }
  double total = 0.0;
  for (std::int64_t i = 0; i < loss.size; ++i) {
    total += static_cast<double>(loss[i]);
    if (!modality.empty()) {
      const auto m = static_cast<std::size_t>(modality[i]);
      r.per_modality[m] += static_cast<double>(loss[i]);
      ++r.tokens_per_modality[m];
    }
  }
  r.mean = loss.size > 0 ? total / static_cast<double>(loss.size) : 0.0;
  for (std::size_t m = 0; m < r.per_modality.size(); ++m) {
    if (r.tokens_per_modality[m] > 0) {
      r.per_modality[m] /= static_cast<double>(r.tokens_per_modality[m]);
    }
  }
  return r;
}

}  // namespace mmsparse

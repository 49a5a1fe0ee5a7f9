// mmsparse/core/modality.hpp
//
// Modality ids: one int32 per token, 0 = text, 1 = image, 2 = speech by
// convention; any count of modalities is allowed. Validation happens once per
// call at the public boundary (PAPERS.md §4.8: ids must partition the tokens).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse {

using ModalityId = std::int32_t;

enum class Modality : ModalityId { text = 0, image = 1, speech = 2 };

// Throws unless every id of `modality` lies in [0, num_modalities).
inline void check_modality_ids(std::string_view op,
                               Span<const ModalityId> modality,
                               std::int64_t num_modalities) {
  for (std::int64_t i = 0; i < modality.size; ++i) {
    const ModalityId m = modality[i];
    if (m < 0 || m >= num_modalities) {
      std::string arg = "modality[" + std::to_string(i) + "]";
      throw Error(
          detail::format_error(op, arg, "an id in [0, " + std::to_string(num_modalities) + ")", m));
    }
  }
}

// Tokens per modality.
inline std::vector<std::int64_t> count_modalities(Span<const ModalityId> modality,
                                                  std::int64_t num_modalities) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(num_modalities), 0);
  for (std::int64_t i = 0; i < modality.size; ++i) {
    ++counts[static_cast<std::size_t>(modality[i])];
  }
  return counts;
}

}  // namespace mmsparse

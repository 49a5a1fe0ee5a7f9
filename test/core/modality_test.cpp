#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/core/modality.hpp>

namespace mm = mmsparse;

TEST_CASE("modality ids are validated and counted", "[core][cpu]") {
  std::vector<mm::ModalityId> m = {0, 1, 1, 2, 0, 1};
  mm::Span<const mm::ModalityId> s(m.data(), static_cast<std::int64_t>(m.size()));
  REQUIRE_NOTHROW(mm::check_modality_ids("op", s, 3));
  REQUIRE(mm::count_modalities(s, 3) == std::vector<std::int64_t>{2, 3, 1});
  REQUIRE_THROWS_WITH(mm::check_modality_ids("sparse_ffn::forward", s, 2),
                      "[sparse_ffn::forward] modality[3]: expected an id in [0, 2), got 2");
  m[1] = -1;
  REQUIRE_THROWS_AS(mm::check_modality_ids("op", s, 3), mm::Error);
}

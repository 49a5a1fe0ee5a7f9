// Embedding: gather forward, scatter-add backward (repeated tokens add up), token validation.
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/embedding.hpp>

using namespace mmsparse;

TEST_CASE("embedding: forward gathers rows, backward adds them back", "[layers][cpu]") {
  CpuBackend<float> b;
  Rng rng(6);
  Tensor<float> table = rng.normal_tensor<float>(5, 3);
  const std::vector<std::int32_t> tokens = {4, 0, 4, 2};
  const Span<const std::int32_t> tok(tokens.data(), 4);
  Tensor<float> y(4, 3);
  embedding_forward(b, y.view(), tok, View<const float>(table.view()));
  for (std::int64_t i = 0; i < 4; ++i) {
    for (std::int64_t j = 0; j < 3; ++j) {
      CHECK(y(i, j) == table(tokens[static_cast<std::size_t>(i)], j));
    }
  }
  Tensor<float> dy = rng.normal_tensor<float>(4, 3);
  Tensor<float> dtable(5, 3);
  dtable.fill(1.f);
  embedding_backward(b, dtable.view(), View<const float>(dy.view()), tok);
  for (std::int64_t j = 0; j < 3; ++j) {
    CHECK(dtable(4, j) == Approx(1.f + dy(0, j) + dy(2, j)));
    CHECK(dtable(0, j) == Approx(1.f + dy(1, j)));
    CHECK(dtable(1, j) == 1.f);
    CHECK(dtable(3, j) == 1.f);
  }
}

TEST_CASE("embedding: out-of-range tokens are named", "[layers][cpu]") {
  CpuBackend<float> b;
  Tensor<float> table(5, 3), y(2, 3);
  const std::vector<std::int32_t> bad = {1, 5};
  REQUIRE_THROWS_WITH(
      embedding_forward(
          b, y.view(), Span<const std::int32_t>(bad.data(), 2), View<const float>(table.view())),
      Catch::Contains("[embedding_forward] tokens[1]: expected an id in [0, 5)"));
  Tensor<float> y3(3, 3);
  REQUIRE_THROWS_WITH(
      embedding_forward(
          b, y3.view(), Span<const std::int32_t>(bad.data(), 2), View<const float>(table.view())),
      Catch::Contains("[embedding_forward] y"));
}

// Cross-entropy layer: validated entry points, and the report's overall and per-modality means.
#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/layers/loss.hpp>

using namespace mmsparse;

TEST_CASE("loss: uniform logits give ln(V) for every token and modality", "[layers][cpu]") {
  CpuBackend<float> b;
  Tensor<float> logits(6, 8);
  logits.fill(0.25f);
  const std::vector<std::int32_t> targets = {0, 1, 2, 7, 7, 3};
  const std::vector<ModalityId> modality = {1, 1, 0, 1, 0, 1};
  std::vector<float> loss(6), lse(6);
  cross_entropy_forward(b,
                        Span<float>(loss.data(), 6),
                        Span<float>(lse.data(), 6),
                        View<const float>(logits.view()),
                        Span<const std::int32_t>(targets.data(), 6));
  const auto r = cross_entropy_report(
      Span<const float>(loss.data(), 6), Span<const ModalityId>(modality.data(), 6), 3);
  CHECK(r.mean == Approx(std::log(8.0)).epsilon(1e-6));
  CHECK(r.per_modality[0] == Approx(std::log(8.0)).epsilon(1e-6));
  CHECK(r.per_modality[1] == Approx(std::log(8.0)).epsilon(1e-6));
  CHECK(r.per_modality[2] == 0.0);  // no speech tokens
  CHECK(r.tokens_per_modality == std::vector<std::int64_t>{2, 4, 0});
}

TEST_CASE("loss: report splits by modality", "[layers][cpu]") {
  const std::vector<double> loss = {1.0, 2.0, 3.0, 6.0};
  const std::vector<ModalityId> modality = {0, 1, 0, 1};
  const auto r = cross_entropy_report(
      Span<const double>(loss.data(), 4), Span<const ModalityId>(modality.data(), 4), 2);
  CHECK(r.mean == 3.0);
  CHECK(r.per_modality[0] == 2.0);
  CHECK(r.per_modality[1] == 4.0);
  const auto plain = cross_entropy_report(Span<const double>(loss.data(), 4));
  CHECK(plain.mean == 3.0);
  CHECK(plain.per_modality.empty());
  const std::vector<ModalityId> bad = {0, 2, 0, 1};
  REQUIRE_THROWS_WITH(
      cross_entropy_report(
          Span<const double>(loss.data(), 4), Span<const ModalityId>(bad.data(), 4), 2),
      Catch::Contains("modality[1]"));
}

TEST_CASE("loss: argument errors", "[layers][cpu]") {
  CpuBackend<double> b;
  Tensor<double> logits(3, 4);
  std::vector<double> loss(3), lse(3);
  const std::vector<std::int32_t> targets = {0, 4, 1};
  REQUIRE_THROWS_WITH(
      cross_entropy_forward(b,
                            Span<double>(loss.data(), 3),
                            Span<double>(lse.data(), 3),
                            View<const double>(logits.view()),
                            Span<const std::int32_t>(targets.data(), 3)),
      Catch::Contains("[cross_entropy_forward] targets[1]: expected an id in [0, 4), got 4"));
  REQUIRE_THROWS_WITH(cross_entropy_forward(b,
                                            Span<double>(loss.data(), 3),
                                            Span<double>(lse.data(), 3),
                                            View<const double>(logits.view()),
                                            Span<const std::int32_t>(targets.data(), 2)),
                      Catch::Contains("[cross_entropy_forward] targets"));
}

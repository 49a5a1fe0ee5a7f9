// Cross-entropy kernels: per-token loss and logsumexp against a naive double oracle (stable for
// large logits), and the backward (softmax - onehot, scaled, accumulated) against finite
// differences.
#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/testing/gradcheck.hpp>

using namespace mmsparse;

TEMPLATE_TEST_CASE("loss kernels: cross_entropy forward", "[backend][cpu]", float, double) {
  using T = TestType;
  using A = accum_t<T>;
  CpuBackend<T> b;
  const std::int64_t n = 5, v = 7;
  Rng rng(3);
  Tensor<double> ref = rng.normal_tensor<double>(n, v, 3.0);
  ref(2, 4) = 300.0;  // exp would overflow without the max shift
  Tensor<T> logits(n, v);
  for (std::int64_t i = 0; i < ref.size(); ++i) {
    logits[i] = static_cast<T>(ref[i]);
  }
  const std::vector<std::int32_t> target = {0, 6, 4, 3, 3};
  std::vector<A> loss(n), lse(n);
  b.cross_entropy(Span<A>(loss.data(), n),
                  Span<A>(lse.data(), n),
                  View<const T>(logits.view()),
                  Span<const std::int32_t>(target.data(), n));
  for (std::int64_t i = 0; i < n; ++i) {
    double m = -1e300, z = 0.0;
    for (std::int64_t j = 0; j < v; ++j) {
      m = std::max(m, static_cast<double>(logits(i, j)));
    }
    for (std::int64_t j = 0; j < v; ++j) {
      z += std::exp(static_cast<double>(logits(i, j)) - m);
    }
    const double l = m + std::log(z) - static_cast<double>(logits(i, target[i]));
    CHECK(std::isfinite(static_cast<double>(loss[i])));
    CHECK(static_cast<double>(loss[i]) == Approx(l).margin(1e-5));
    CHECK(static_cast<double>(lse[i]) == Approx(m + std::log(z)).epsilon(1e-6));
  }
}

TEST_CASE("loss kernels: cross_entropy backward", "[backend][cpu][grad]") {
  CpuBackend<double> b;
  const std::int64_t n = 4, v = 6;
  const double scale = 0.37;
  Rng rng(12);
  Tensor<double> logits = rng.normal_tensor<double>(n, v, 2.0);
  const std::vector<std::int32_t> target = {5, 0, 2, 2};
  const Span<const std::int32_t> tg(target.data(), n);
  std::vector<double> loss(n), lse(n);
  auto forward = [&] {
    b.cross_entropy(Span<double>(loss.data(), n),
                    Span<double>(lse.data(), n),
                    View<const double>(logits.view()),
                    tg);
    double s = 0.0;
    for (const double l : loss) {
      s += scale * l;
    }
    return s;
  };
  (void)forward();
  Tensor<double> dlogits(n, v);
  dlogits.fill(0.5);
  b.cross_entropy_backward(dlogits.view(),
                           View<const double>(logits.view()),
                           Span<const double>(lse.data(), n),
                           tg,
                           scale);
  for (std::int64_t i = 0; i < dlogits.size(); ++i) {
    dlogits[i] -= 0.5;  // it accumulated on top of 0.5
  }
  const std::vector<GradcheckInput> inputs = {{"logits", logits.view(), dlogits.view()}};
  const auto report = gradcheck(forward, inputs);
  INFO(report.str());
  CHECK(report.ok(1e-7));
  for (std::int64_t i = 0; i < n; ++i) {
    double row = 0.0;
    for (std::int64_t j = 0; j < v; ++j) {
      row += dlogits(i, j);
    }
    CHECK(row == Approx(0.0).margin(1e-14));  // softmax - onehot sums to zero
  }
}

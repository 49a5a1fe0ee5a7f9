// Tests of layers/swiglu_ffn.hpp: the dense SwiGLU FFN against the double oracle, its backward
// against central differences (every entry), the hidden-width convention, FLOPs, errors and the
// workspace.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "layers/layer_checks.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/layers/swiglu_ffn.hpp>
#include <mmsparse/testing/oracle.hpp>

namespace mm = mmsparse;

TEST_CASE("SwiGluFfn hidden width follows (2/3)·4d rounded up to 256", "[layers][cpu]") {
  CHECK(mm::SwiGluFfn<float, mm::CpuBackend<float>>({.d = 512}).hidden() == 1536);  // MoMa d=512
  CHECK(mm::SwiGluFfn<float, mm::CpuBackend<float>>({.d = 64}).hidden() == 256);
  CHECK(mm::SwiGluFfn<float, mm::CpuBackend<float>>({.d = 1024}).hidden() == 2816);
  CHECK(mm::SwiGluFfn<float, mm::CpuBackend<float>>({.d = 64, .hidden = 96}).hidden() == 96);
  const auto shapes = mm::SwiGluFfn<float, mm::CpuBackend<float>>::parameter_shapes({.d = 512});
  CHECK(shapes[0].second == mm::Shape{512, 1536});
  CHECK(shapes[2].second == mm::Shape{1536, 512});
}

TEMPLATE_TEST_CASE("SwiGluFfn forward equals the double oracle", "[layers][cpu]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, double> ? 1e-12 : 1e-5;
  mm::CpuBackend<T> b;
  for (auto [n, d, f, seed] :
       std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t, std::uint64_t>>{
           {17, 16, 40, 1}, {64, 32, 96, 2}, {1, 8, 24, 3}, {0, 8, 24, 4}}) {
    INFO("N " << n << " d " << d << " f " << f);
    mm::SwiGluFfn<T, mm::CpuBackend<T>> ffn({.d = d, .hidden = f, .seed = seed});
    mm::Rng rng(seed + 100);
    auto x = rng.normal_tensor<T>(n, d);
    mm::Tensor<T> y(n, d);
    y.fill(T{9});
    ffn.forward(b, x.view(), y.view());
    auto w = ffn.weights();
    const auto ref = mm::oracle_swiglu_ffn<T>(x.view(), w.w1, w.w3, w.w2);
    CHECK(mm::test::rel_error(y, ref) < tol);
    CHECK(ffn.flops(n) == 6.0 * n * d * f);
    // Training forward computes the same; in place (y = x) too.
    typename mm::SwiGluFfn<T, mm::CpuBackend<T>>::Saved saved;
    mm::Tensor<T> y2(n, d);
    ffn.forward(b, x.view(), y2.view(), saved);
    CHECK(mm::test::rel_error(y2, y) == 0.0);
    auto inplace = x.clone();
    ffn.forward(b, inplace.view(), inplace.view());
    CHECK(mm::test::rel_error(inplace, y) == 0.0);
  }
}

TEST_CASE("SwiGluFfn backward matches central differences", "[layers][cpu]") {
  using F = mm::SwiGluFfn<double, mm::CpuBackend<double>>;
  const std::int64_t n = 5, d = 6, f = 10;
  F ffn({.d = d, .hidden = f, .seed = 7});
  mm::CpuBackend<double> b;
  mm::Rng rng(8);
  auto x = rng.normal_tensor<double>(n, d);
  const auto c = rng.normal_tensor<double>(n, d);
  auto loss = [&] {
    mm::Tensor<double> y(n, d);
    ffn.forward(b, x.view(), y.view());
    double l = 0;
    for (std::int64_t i = 0; i < y.size(); ++i) {
      l += c.data()[i] * y.data()[i];
    }
    return l;
  };
  F::Saved saved;
  mm::Tensor<double> y(n, d), dx(n, d), g1(d, f), g3(d, f), g2(f, d);
  ffn.forward(b, x.view(), y.view(), saved);
  dx.fill(0.5);  // accumulates onto what is there
  g1.fill(0.25);
  g3.fill(0.0);
  g2.fill(-1.0);
  ffn.backward(b, saved, c.view(), dx.view(), {g1.view(), g3.view(), g2.view()});
  auto fd_check = [&](double* p,
                      std::int64_t size,
                      const mm::Tensor<double>& g,
                      double prefill,
                      const char* what) {
    INFO(what);
    std::vector<double> fd, an;
    for (std::int64_t i = 0; i < size; ++i) {
      const double keep = p[i];
      p[i] = keep + 1e-5;
      const double lp = loss();
      p[i] = keep - 1e-5;
      const double lm = loss();
      p[i] = keep;
      fd.push_back((lp - lm) / 2e-5);
      an.push_back(g.data()[i] - prefill);
    }
    CHECK(mm::test::rel_error(an.data(), fd.data(), size) < 1e-7);
  };
  auto w = ffn.weights();
  fd_check(x.data(), x.size(), dx, 0.5, "dx");
  fd_check(w.w1.data, w.w1.size(), g1, 0.25, "w1");
  fd_check(w.w3.data, w.w3.size(), g3, 0.0, "w3");
  fd_check(w.w2.data, w.w2.size(), g2, -1.0, "w2");
}

TEST_CASE("SwiGluFfn rejects invalid arguments", "[layers][cpu]") {
  using F = mm::SwiGluFfn<float, mm::CpuBackend<float>>;
  auto message = [](auto call) -> std::string {
    try {
      call();
    } catch (const mm::Error& e) {
      return e.what();
    }
    return "no exception";
  };
  CHECK(mm::test::contains(message([] { F({.d = 0}); }), "[SwiGluFfn] d: expected > 0, got 0"));
  CHECK(mm::test::contains(message([] { F({.d = 8, .hidden = -2}); }), "[SwiGluFfn] hidden"));
  F ffn({.d = 8, .hidden = 16});
  mm::CpuBackend<float> b;
  mm::Tensor<float> x(4, 8), bad_x(4, 7), y(4, 8), bad_y(3, 8), dx(4, 8);
  x.fill(1.0f);
  y.fill(3.0f);
  CHECK(mm::test::contains(message([&] { ffn.forward(b, bad_x.view(), y.view()); }),
                           "[SwiGluFfn::forward] x: expected shape [N, 8], got [4, 7]"));
  CHECK(mm::test::contains(message([&] { ffn.forward(b, x.view(), bad_y.view()); }),
                           "[SwiGluFfn::forward] y: expected [4, 8], got [3, 8]"));
  CHECK(y(0, 0) == 3.0f);
  F::Saved saved;
  mm::Tensor<float> g1(8, 16), g3(8, 16), g2(16, 8), bad_g2(8, 16);
  CHECK(mm::test::contains(
      message([&] {
        ffn.backward(b, saved, y.view(), dx.view(), {g1.view(), g3.view(), g2.view()});
      }),
      "[SwiGluFfn::backward] saved"));
  ffn.forward(b, x.view(), y.view(), saved);
  CHECK(mm::test::contains(
      message([&] {
        ffn.backward(b, saved, y.view(), dx.view(), {g1.view(), g3.view(), bad_g2.view()});
      }),
      "[SwiGluFfn::backward] grads.w2: expected [16, 8], got [8, 16]"));
  auto w = ffn.weights();
  w.w3 = g2.view();
  CHECK(mm::test::contains(message([&] { ffn.bind(w); }),
                           "[SwiGluFfn::bind] w3: expected [8, 16], got [16, 8]"));
}

TEST_CASE("SwiGluFfn steady-state forwards take nothing new from the workspace", "[layers][cpu]") {
  mm::SwiGluFfn<float, mm::CpuBackend<float>> ffn({.d = 32, .hidden = 64});
  mm::CpuBackend<float> b;
  mm::Rng rng(2);
  auto x = rng.normal_tensor<float>(50, 32);
  mm::Tensor<float> y(50, 32), dx(50, 32), g1(32, 64), g3(32, 64), g2(64, 32);
  ffn.forward(b, x.view(), y.view());
  const auto allocations = b.workspace().allocations();
  for (int i = 0; i < 3; ++i) {
    ffn.forward(b, x.view(), y.view());
  }
  CHECK(b.workspace().allocations() == allocations);
  decltype(ffn)::Saved saved;
  ffn.forward(b, x.view(), y.view(), saved);
  ffn.backward(b, saved, y.view(), dx.view(), {g1.view(), g3.view(), g2.view()});
  CHECK(b.workspace().high_water() <= ffn.workspace_bytes(50));
}

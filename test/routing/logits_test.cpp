// test/routing/logits_test.cpp
//
// Router logits against a naive double loop: flat rows, a modality's rows (gathered tokens and a
// column block of the router weight, global noise counters), bf16 activations; the non-finite
// check's message; the backward's accumulation into dx and the router weight gradient.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "routing/naive_router.hpp"
#include <mmsparse/routing/logits.hpp>

using namespace mmsparse;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEMPLATE_TEST_CASE("logits: x W_r in router precision, with and without noise",
                   "[routing][cpu]",
                   float,
                   double,
                   bf16) {
  using W = router_t<TestType>;
  const double tol = std::is_same_v<TestType, double> ? 1e-12 : 1e-5;
  const auto in = naive::random_inputs<TestType>(9, 5, 7, 1, 3);
  CpuBackend<TestType> b;
  for (bool noise : {false, true}) {
    // flat rows: all tokens, all columns
    RouteArgs<CpuBackend<TestType>> args;
    args.x = in.x.view();
    args.router_weight = in.w.view();
    args.training = true;
    args.seed = 17;
    const auto rows = flat_rows("test", args, noise);
    REQUIRE(rows.noise == noise);
    REQUIRE(rows.groups == std::vector<std::int64_t>{0, 9});
    Tensor<W> z(9, 7);
    router_logits(b, rows, z.view());
    const auto ref = naive::logits(in.x, in.w, naive::all_tokens(9), 0, 7, noise, 17);
    for (std::int64_t t = 0; t < 9; ++t) {
      for (std::int64_t c = 0; c < 7; ++c) {
        REQUIRE(static_cast<double>(z(t, c)) ==
                Approx(ref[static_cast<std::size_t>(t)][static_cast<std::size_t>(c)])
                    .epsilon(tol)
                    .margin(tol));
      }
    }
  }
  // a subset of tokens and columns [2, 5): the noise follows the global token and column
  const std::vector<std::int32_t> tokens{1, 4, 8};
  Tensor<TestType> xs(3, 5);
  for (std::int64_t r = 0; r < 3; ++r) {
    for (std::int64_t j = 0; j < 5; ++j) {
      xs(r, j) = in.x(tokens[static_cast<std::size_t>(r)], j);
    }
  }
  RouteRows<CpuBackend<TestType>> rows;
  rows.op = "test::route";
  rows.x = xs.view();
  rows.weight = View<const W>(in.w.view()).col_block(2, 3);
  rows.groups = {0, 3};
  rows.token_id = Span<const std::int32_t>(tokens.data(), 3);
  rows.column_offset = 2;
  rows.total_columns = 7;
  rows.noise = true;
  rows.seed = 5;
  Tensor<W> z(3, 3);
  router_logits(b, rows, z.view());
  const auto ref = naive::logits(in.x, in.w, tokens, 2, 3, true, 5);
  for (std::int64_t r = 0; r < 3; ++r) {
    for (std::int64_t c = 0; c < 3; ++c) {
      REQUIRE(static_cast<double>(z(r, c)) ==
              Approx(ref[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)])
                  .epsilon(tol)
                  .margin(tol));
    }
  }
}

TEST_CASE("logits: flat_rows groups per sequence; noise needs training and gumbel",
          "[routing][cpu]") {
  const auto in = naive::random_inputs<float>(12, 3, 2, 1, 1);
  RouteArgs<CpuBackend<float>> args;
  args.x = in.x.view();
  args.router_weight = in.w.view();
  args.sequence_length = 4;
  const auto rows = flat_rows("r", args, true);
  REQUIRE(rows.groups == std::vector<std::int64_t>{0, 4, 8, 12});
  REQUIRE_FALSE(rows.noise);  // evaluation
  REQUIRE(rows.op == "r::route");
  REQUIRE(rows.total_columns == 2);
  args.training = true;
  REQUIRE(flat_rows("r", args, true).noise);
  REQUIRE_FALSE(flat_rows("r", args, false).noise);
}

TEST_CASE("logits: a non-finite logit throws naming router, token and expert", "[routing][cpu]") {
  auto in = naive::random_inputs<double>(6, 3, 4, 1, 2);
  in.x(4, 0) = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::int32_t> tokens{10, 11, 12, 13, 14, 15};
  RouteRows<CpuBackend<double>> rows;
  rows.op = "my_router::route";
  rows.x = in.x.view();
  rows.weight = View<const double>(in.w.view()).col_block(1, 3);
  rows.groups = {0, 6};
  rows.token_id = Span<const std::int32_t>(tokens.data(), 6);
  rows.column_offset = 1;
  rows.total_columns = 4;
  CpuBackend<double> b;
  Tensor<double> z(6, 3);
  const auto msg = error_of([&] { router_logits(b, rows, z.view()); });
  REQUIRE_THAT(msg, Catch::Contains("[my_router::route] router logits: expected finite values"));
  REQUIRE_THAT(msg, Catch::Contains("nan at token 14, expert 1"));
}

TEMPLATE_TEST_CASE("logits: backward accumulates dlogits W^T into dx and x^T dlogits into dW",
                   "[routing][cpu]",
                   float,
                   double,
                   bf16) {
  using W = router_t<TestType>;
  const double tol =
      std::is_same_v<TestType, double> ? 1e-12 : (std::is_same_v<TestType, bf16> ? 1e-2 : 1e-5);
  const auto in = naive::random_inputs<TestType>(8, 4, 3, 1, 6);
  const auto dz = naive::random_inputs<W>(8, 3, 1, 1, 7).x;  // [8, 3]
  auto dx = naive::random_inputs<TestType>(8, 4, 1, 1, 8).x;
  auto dw = naive::random_inputs<W>(4, 3, 1, 1, 9).x;
  const auto dx0 = dx.clone();
  const auto dw0 = dw.clone();
  RouteArgs<CpuBackend<TestType>> args;
  args.x = in.x.view();
  args.router_weight = in.w.view();
  CpuBackend<TestType> b;
  router_logits_backward(
      b, flat_rows("t", args, false), View<const W>(dz.view()), dx.view(), dw.view());
  for (std::int64_t t = 0; t < 8; ++t) {
    for (std::int64_t j = 0; j < 4; ++j) {
      double s = scalar_cast<double>(dx0(t, j));
      for (std::int64_t c = 0; c < 3; ++c) {
        s += static_cast<double>(dz(t, c)) * static_cast<double>(in.w(j, c));
      }
      REQUIRE(scalar_cast<double>(dx(t, j)) == Approx(s).epsilon(tol).margin(tol));
    }
  }
  for (std::int64_t j = 0; j < 4; ++j) {
    for (std::int64_t c = 0; c < 3; ++c) {
      double s = static_cast<double>(dw0(j, c));
      for (std::int64_t t = 0; t < 8; ++t) {
        s += scalar_cast<double>(in.x(t, j)) * static_cast<double>(dz(t, c));
      }
      REQUIRE(static_cast<double>(dw(j, c)) == Approx(s).epsilon(tol).margin(tol));
    }
  }
}

TEST_CASE("logits: clone_on copies a tensor through the backend", "[routing][cpu]") {
  CpuBackend<float> b;
  const auto t = naive::random_inputs<float>(5, 2, 1, 1, 3).x;
  const auto c = clone_on(b, t);
  REQUIRE(c.shape() == t.shape());
  for (std::int64_t i = 0; i < t.size(); ++i) {
    REQUIRE(c.data()[i] == t.data()[i]);
  }
  REQUIRE(c.data() != t.data());
}

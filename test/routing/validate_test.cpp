// test/routing/validate_test.cpp
//
// The shared argument checks: each invalid argument throws mmsparse::Error naming the function
// and the argument; valid arguments pass; routing group offsets for batch and sequences.
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "routing/naive_router.hpp"
#include <mmsparse/routing/validate.hpp>

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

struct Args {
  naive::Inputs<float> in = naive::random_inputs<float>(12, 4, 5, 2, 1);
  std::vector<std::int64_t> per_group{2, 3};
  RouteArgs<CpuBackend<float>> args;
  Args() {
    args.x = in.x.view();
    args.modality = in.modality.span();
    args.router_weight = in.w.view();
    args.num_modalities = 2;
    args.experts_per_group = per_group;
  }
  std::string check(std::int64_t columns = 5) {
    CpuBackend<float> b;
    return error_of([&] { check_route_args(b, "op", args, columns); });
  }
};

}  // namespace

TEST_CASE("validate: check_route_args names the bad argument", "[routing][cpu]") {
  REQUIRE(Args().check() == "no error");
  {
    Args a;
    a.args.x = a.in.x.view().col_block(0, 0);
    REQUIRE_THAT(a.check(), Catch::StartsWith("[op] x: expected shape [N, d] with d >= 1"));
  }
  {
    Args a;
    a.args.num_modalities = 0;
    REQUIRE_THAT(a.check(), Catch::StartsWith("[op] num_modalities"));
  }
  {
    Args a;
    a.args.modality = a.in.modality.span().subspan(1, 11);
    REQUIRE_THAT(a.check(), Catch::StartsWith("[op] modality: expected size N = 12, got 11"));
  }
  {
    Args a;
    a.in.modality[9] = 2;
    REQUIRE_THAT(a.check(), Catch::StartsWith("[op] modality[9]"));
  }
  {
    Args a;
    a.per_group.clear();
    a.args.experts_per_group = a.per_group;
    REQUIRE_THAT(a.check(), Catch::StartsWith("[op] experts_per_group"));
  }
  {
    Args a;
    a.per_group[1] = 0;
    REQUIRE_THAT(a.check(), Catch::StartsWith("[op] experts_per_group[1]"));
  }
  {
    Args a;
    REQUIRE_THAT(a.check(6),
                 Catch::StartsWith("[op] router_weight: expected shape [4, 6], got [4, 5]"));
    Tensor<float> w(3, 5);
    a.args.router_weight = w.view();
    REQUIRE_THAT(a.check(), Catch::StartsWith("[op] router_weight: expected shape [4, 5]"));
  }
  {
    Args a;
    a.args.sequence_length = -2;
    REQUIRE_THAT(a.check(), Catch::StartsWith("[op] sequence_length"));
    a.args.sequence_length = 5;
    REQUIRE_THAT(a.check(),
                 Catch::StartsWith("[op] sequence_length: expected a divisor of N = 12"));
    a.args.sequence_length = 4;
    REQUIRE(a.check() == "no error");
  }
  {
    Args a;  // no router columns: the router weight is not looked at beyond its column count
    Tensor<float> w(0, 0);
    a.args.router_weight = w.view();
    REQUIRE(a.check(0) == "no error");
  }
}

TEST_CASE("validate: single group, saved tokens and gradient shapes", "[routing][cpu]") {
  const std::vector<std::int64_t> one{4};
  const std::vector<std::int64_t> two{4, 4};
  REQUIRE(error_of([&] { check_single_group("op", one); }) == "no error");
  REQUIRE_THAT(error_of([&] { check_single_group("op", two); }),
               Catch::StartsWith("[op] experts_per_group"));
  Args a;
  REQUIRE(error_of([&] { check_saved_tokens("op", a.args, 12); }) == "no error");
  REQUIRE_THAT(error_of([&] { check_saved_tokens("op", a.args, 10); }),
               Catch::StartsWith("[op] args.x"));
  Tensor<float> dgate(7, 1);
  Tensor<float> dx(12, 4);
  Tensor<float> dw(4, 5);
  Tensor<float> bad(4, 4);
  auto grads = [&](Span<const float> dg, View<float> gx, View<float> gw) {
    return error_of([&] {
      check_router_grads<CpuBackend<float>>("op", a.args, dg, 7, {gx, gw, 1.0}, 5);
    });
  };
  REQUIRE(grads(dgate.span(), dx.view(), dw.view()) == "no error");
  REQUIRE_THAT(grads(dgate.span().subspan(0, 6), dx.view(), dw.view()),
               Catch::StartsWith("[op] dgate: expected size S = 7, got 6"));
  REQUIRE_THAT(grads(dgate.span(), bad.view(), dw.view()), Catch::StartsWith("[op] grads.dx"));
  REQUIRE_THAT(grads(dgate.span(), dx.view(), bad.view()),
               Catch::StartsWith("[op] grads.drouter_weight"));
}

TEST_CASE("validate: routing groups of a batch and of sequences", "[routing][cpu]") {
  REQUIRE(routing_groups(10, 0) == std::vector<std::int64_t>{0, 10});
  REQUIRE(routing_groups(12, 4) == std::vector<std::int64_t>{0, 4, 8, 12});
  REQUIRE(routing_groups(0, 0) == std::vector<std::int64_t>{0, 0});
  REQUIRE(routing_groups(0, 3) == std::vector<std::int64_t>{0});
}

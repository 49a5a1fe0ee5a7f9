// test/backend/cpu/one_thread_ops_test.cpp
//
// The kernels attention heads run side by side (cpu::OneThreadOps) against a naive double loop,
// on one thread and several at once, and CpuBackend::for_each_head: every item once, each with
// scratch of its own, the one-thread kernels only when it shares the items out, an item's
// exception rethrown after the others.
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "backend/cpu/gemm_checks.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/backend/cpu/one_thread_ops.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mm = mmsparse;
using mm::Trans;
using mm::gemm_checks::check_gemm_cases;
using mm::gemm_checks::random_padded;
using mm::gemm_checks::reference;
using mm::gemm_checks::require_close;

TEST_CASE("OneThreadOps::gemm matches a double loop: transposes, alpha/beta, strides",
          "[backend][cpu]") {
  mm::cpu::OneThreadOps ops;
  const std::vector<mm::gemm_checks::Case> cases = {
      {1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {0, 4, 3}, {1, 9, 13}, {5, 0, 4}, {3, 8, 0}};
  check_gemm_cases<float>(ops, cases);
  check_gemm_cases<double>(ops, cases);
}

TEST_CASE("OneThreadOps::gemm gives each thread its own correct product", "[backend][cpu]") {
  // Eight products of attention-head shapes at once, one per item of a parallel loop.
  constexpr int items = 8;
  std::vector<mm::gemm_checks::Padded<float>> a, b, c;
  for (int i = 0; i < items; ++i) {
    a.push_back(random_padded<float>(40 + i, 16, 48, 10 + i));  // q rows of one head
    b.push_back(random_padded<float>(50 - i, 16, 48, 30 + i));  // k rows
    c.push_back(random_padded<float>(40 + i, 50 - i, 0, 50 + i));
  }
  std::vector<mm::Tensor<float>> before;
  for (const auto& p : c) {
    before.push_back(p.storage.clone());
  }
  const mm::cpu::OneThreadOps ops;
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < items; ++i) {
    ops.gemm(c[i].view, a[i].cview(), Trans::no, b[i].cview(), Trans::yes, 0.5, 1.0);
  }
  for (int i = 0; i < items; ++i) {
    const auto r = reference(mm::View<const float>(before[i].view()),
                             a[i].cview(),
                             Trans::no,
                             b[i].cview(),
                             Trans::yes,
                             0.5,
                             1.0);
    require_close(c[i].cview(), r, 16, "item " + std::to_string(i));
  }
}

TEST_CASE("OneThreadOps::gemm names a mismatched operand", "[backend][cpu]") {
  const mm::cpu::OneThreadOps ops;
  mm::Tensor<float> a(3, 4), b(5, 2), c(3, 2);
  a.fill(1.0f);
  b.fill(1.0f);
  REQUIRE_THROWS_WITH(ops.gemm(c.view(),
                               mm::View<const float>(a.view()),
                               Trans::no,
                               mm::View<const float>(b.view()),
                               Trans::no),
                      Catch::Contains("[OneThreadOps::gemm] b:") && Catch::Contains("4 rows"));
  mm::Tensor<float> b2(4, 2), c2(3, 3);
  b2.fill(1.0f);
  REQUIRE_THROWS_WITH(ops.gemm(c2.view(),
                               mm::View<const float>(a.view()),
                               Trans::no,
                               mm::View<const float>(b2.view()),
                               Trans::no),
                      Catch::Contains("[OneThreadOps::gemm] c:"));
}

TEST_CASE("CpuBackend::for_each_head runs every item once with scratch of its own",
          "[backend][cpu]") {
  mm::CpuBackend<float> b;
  const int threads = b.threads();
  for (const std::int64_t count : {1, 2, 3, 8, 64}) {
    for (const std::int64_t scratch : {std::int64_t{100}, std::int64_t{1} << 20}) {
      std::vector<std::atomic<int>> runs(static_cast<std::size_t>(count));
      std::atomic<int> one_thread{0}, in_order{0}, clobbered{0};
      b.for_each_head<float>(count, scratch, [&](std::int64_t i, auto& ops, float* s) {
        using Ops = std::remove_cvref_t<decltype(ops)>;
        (std::is_same_v<Ops, mm::cpu::OneThreadOps> ? one_thread : in_order)++;
        ++runs[static_cast<std::size_t>(i)];
        for (std::int64_t j = 0; j < scratch; ++j) {
          s[j] = static_cast<float>(i);
        }
        // A little work between writing the scratch and reading it back.
        mm::Tensor<float> x(32, 32), y(32, 32);
        x.fill(1.0f);
        ops.gemm(y.view(),
                 mm::View<const float>(x.view()),
                 Trans::no,
                 mm::View<const float>(x.view()),
                 Trans::no,
                 1.0,
                 0.0);
        for (std::int64_t j = 0; j < scratch; ++j) {
          if (s[j] != static_cast<float>(i) || y(31, 31) != 32.0f) {
            ++clobbered;
            break;
          }
        }
      });
      INFO("count " << count << ", scratch " << scratch << ", threads " << threads);
      for (const auto& r : runs) {
        REQUIRE(r == 1);
      }
      REQUIRE(clobbered == 0);
      // Side by side only with an item per thread and scratch within the cache budget.
      const bool shared_out =
          threads > 1 && count >= threads &&
          scratch * std::int64_t{sizeof(float)} <= mm::cpu::head_scratch_max_bytes;
      CHECK(one_thread == (shared_out ? count : 0));
      CHECK(in_order == (shared_out ? 0 : count));
    }
  }
}

TEST_CASE("CpuBackend::for_each_head rethrows an item's exception after the others ran",
          "[backend][cpu]") {
  mm::CpuBackend<float> b;
  const std::int64_t count = 4 * b.threads();
  std::atomic<int> ran{0};
  REQUIRE_THROWS_WITH(b.for_each_head<float>(count,
                                             16,
                                             [&](std::int64_t i, auto&, float*) {
                                               ++ran;
                                               if (i == 1) {
                                                 throw std::runtime_error("item 1 failed");
                                               }
                                             }),
                      "item 1 failed");
  // In order, the loop stops at the throwing item; side by side, the others still run.
  CHECK(ran >= 2);
}

// test/backend/cpu/skinny_gemm_test.cpp
//
// The small-M GEMM against a naive double loop: M up to 16 (every lane tile and row chunk) and, for
// f32 W, 17 and 18 (row-major: 16 rows in lanes, the rest beside them; panels), which round each
// row alike; N not a multiple of the vector width (and past one column block), odd K (past one K
// block), strided views, alpha/beta, f32 and bf16 weights (oracle on the bf16 values), bf16
// activations, W row-major and in panels, which round alike; through CpuBackend::gemm and
// grouped_gemm with empty, skinny and large segments in one call; the panel copies of CpuBackend
// (packed on second use, never stale); errors name the argument.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "backend/cpu/gemm_checks.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/backend/cpu/skinny_gemm.hpp>
#include <mmsparse/backend/cpu/skinny_pack.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#if defined(MMSPARSE_WITH_ONEDNN)
#include <mmsparse/backend/cpu/onednn_gemm.hpp>
#endif

namespace mm = mmsparse;
using mm::Trans;

namespace {

using mm::gemm_checks::Padded;
using mm::gemm_checks::random_padded;
using mm::gemm_checks::Reference;
using mm::gemm_checks::require_close;
using mm::gemm_checks::require_padding_kept;

// alpha a w + beta c0 in double over the stored values (bf16 weights: the rounded ones).
template <class T, class TW>
Reference reference(
    mm::View<const T> c0, mm::View<const T> a, mm::View<const TW> w, double alpha, double beta) {
  return mm::gemm_checks::reference(c0, a, Trans::no, w, Trans::no, alpha, beta);
}

// W in the panel layout (pack_skinny_panels), for the overload of skinny_gemm that streams it.
template <class TW>
struct Packed {
  std::vector<TW> storage;
  mm::cpu::SkinnyPanels<TW> panels;
};
template <class TW>
Packed<TW> pack(mm::View<const TW> w) {
  Packed<TW> p;
  p.storage.resize(static_cast<std::size_t>(mm::cpu::SkinnyPanels<TW>::size(w.rows, w.cols)),
                   TW(-3.0f));
  p.panels = {p.storage.data(), w.rows, w.cols};
  mm::cpu::pack_skinny_panels(p.panels, w);
  return p;
}

enum class Layout { row_major, panels };

template <class T, class TW>
void run_skinny(Layout layout,
                mm::View<T> c,
                mm::View<const T> a,
                mm::View<const TW> w,
                double alpha,
                double beta) {
  if (layout == Layout::row_major) {
    mm::cpu::skinny_gemm(c, a, w, alpha, beta);
  } else {
    const Packed<TW> p = pack(w);
    mm::cpu::skinny_gemm(c, a, mm::cpu::SkinnyPanels<const TW>(p.panels), alpha, beta);
  }
}

// skinny_gemm over the rows ms (by default every lane tile and row chunk up to 16), the columns
// ns, two K and two (alpha, beta), strided A, W and C, with W row-major and in panels.
template <class T, class TW>
void check_shapes(std::uint64_t seed,
                  const std::vector<std::int64_t>& ms = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16},
                  const std::vector<std::int64_t>& ns = {1, 7, 37, 300}) {
  const std::vector<std::int64_t> ks = {3, 301};  // 301: three K blocks, the last partial
  const std::vector<std::pair<double, double>> scalars = {{1.0, 0.0}, {0.75, -1.5}};
  for (const std::int64_t m : ms) {
    for (const std::int64_t n : ns) {
      for (const std::int64_t k : ks) {
        for (const auto& [alpha, beta] : scalars) {
          for (const Layout layout : {Layout::row_major, Layout::panels}) {
            auto a = random_padded<T>(m, k, 3, ++seed);
            auto w = random_padded<TW>(k, n, 5, ++seed);
            auto c = random_padded<T>(m, n, 2, ++seed);
            const auto before = c.storage.clone();
            const mm::View<const T> c0(before.data(), m, n, before.cols());
            const Reference r = reference(c0, a.cview(), w.cview(), alpha, beta);
            run_skinny(layout, c.view, a.cview(), w.cview(), alpha, beta);
            require_close(c.cview(),
                          r,
                          k,
                          "m=" + std::to_string(m) + " n=" + std::to_string(n) +
                              " k=" + std::to_string(k) + " beta=" + std::to_string(beta) +
                              (layout == Layout::panels ? " panels" : " row-major"));
            require_padding_kept(c, before);
          }
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("skinny_gemm f32 matches a double loop: every M, odd N and K, strides, alpha/beta",
          "[backend][cpu]") {
  check_shapes<float, float>(100);
}

TEST_CASE("skinny_gemm bf16 weights match a double loop over the bf16 values", "[backend][cpu]") {
  check_shapes<float, mm::bf16>(2000);
}

TEST_CASE("skinny_gemm bf16 activations and weights: one bf16 rounding of the output",
          "[backend][cpu]") {
  check_shapes<mm::bf16, mm::bf16>(4000);
}

TEST_CASE("skinny_gemm past one column block, on one and several threads", "[backend][cpu]") {
  // (5, 67, 2100): large enough for the parallel region, a 4-column edge tile; (1, 31, 4500):
  // one thread over three 2048-column blocks; (16, 600, 2100): three row chunks and, in panels,
  // ten 64-row K slices (the last partial).
  struct Case {
    std::int64_t m, k, n;
  };
  std::uint64_t seed = 7;
  for (const Case s : {Case{5, 67, 2100}, Case{1, 31, 4500}, Case{16, 600, 2100}}) {
    for (const Layout layout : {Layout::row_major, Layout::panels}) {
      auto a = random_padded<float>(s.m, s.k, 1, ++seed);
      auto w = random_padded<float>(s.k, s.n, 9, ++seed);
      auto c = random_padded<float>(s.m, s.n, 3, ++seed);
      const auto before = c.storage.clone();
      const Reference r = reference(mm::View<const float>(before.data(), s.m, s.n, before.cols()),
                                    a.cview(),
                                    w.cview(),
                                    -2.0,
                                    0.5);
      run_skinny(layout, c.view, a.cview(), w.cview(), -2.0, 0.5);
      require_close(c.cview(),
                    r,
                    s.k,
                    "wide m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
                        (layout == Layout::panels ? " panels" : " row-major"));
      require_padding_kept(c, before);
    }
  }
}

TEST_CASE("skinny_gemm f32, 17 and 18 rows: row-major (16 in lanes, the rest beside them), panels",
          "[backend][cpu]") {
  // N of one partial span (7), whole 48-column spans and a partial one with an edge tile (101,
  // 200: on two threads, each with whole spans and the second with a partial one); in panels,
  // three row chunks over five K slices (301).
  check_shapes<float, float>(6000, {17, 18}, {7, 101, 200});
  SECTION("on several threads, past one column block") {
    const std::int64_t m = 18;
    const std::int64_t k = 67;
    const std::int64_t n = 2100;
    auto a = random_padded<float>(m, k, 1, 6901);
    auto w = random_padded<float>(k, n, 9, 6902);
    auto c = random_padded<float>(m, n, 3, 6903);
    const auto before = c.storage.clone();
    const Reference r = reference(
        mm::View<const float>(before.data(), m, n, before.cols()), a.cview(), w.cview(), -2.0, 0.5);
    mm::cpu::skinny_gemm(c.view, a.cview(), w.cview(), -2.0, 0.5);
    require_close(c.cview(), r, k, "wide m=18");
    require_padding_kept(c, before);
  }
}

TEST_CASE("skinny_gemm rounds a row alike in any group of rows", "[backend][cpu]") {
  // The lane kernel, the rest's wide and micro-kernels and the one-row lane tile all sum an output
  // as one FMA chain over k from zero: each row of a 17- or 18-row product equals that row
  // multiplied alone.
  std::uint64_t seed = 7000;
  for (const auto& [m, n] : {std::pair<std::int64_t, std::int64_t>{17, 77},
                             std::pair<std::int64_t, std::int64_t>{18, 200}}) {
    const std::int64_t k = 333;
    auto a = random_padded<float>(m, k, 1, ++seed);
    auto w = random_padded<float>(k, n, 3, ++seed);
    mm::Tensor<float> all(m, n);
    mm::Tensor<float> one(1, n);
    mm::cpu::skinny_gemm(all.view(), a.cview(), w.cview(), 0.5, 0.0);
    for (std::int64_t i = 0; i < m; ++i) {
      mm::cpu::skinny_gemm(one.view(), a.cview().row_block(i, 1), w.cview(), 0.5, 0.0);
      INFO("m=" << m << " row " << i);
      for (std::int64_t j = 0; j < n; ++j) {
        REQUIRE(all(i, j) == one(0, j));
      }
    }
  }
}

TEST_CASE("skinny_gemm rounds alike row-major and in panels (the backend picks either)",
          "[backend][cpu]") {
  // The lane kernel (f32 row-major) and the panel micro-kernel sum each output as one chain over
  // k from zero, so a layer's first forward (row-major) and later ones (panels) agree bit for bit.
  std::uint64_t seed = 900;
  for (const std::int64_t m : {std::int64_t{1},
                               std::int64_t{6},
                               std::int64_t{7},
                               std::int64_t{9},
                               std::int64_t{16},
                               std::int64_t{17},
                               std::int64_t{18}}) {
    for (const std::int64_t k : {std::int64_t{5}, std::int64_t{333}}) {
      const std::int64_t n = 77;
      auto a = random_padded<float>(m, k, 1, ++seed);
      auto w = random_padded<float>(k, n, 3, ++seed);
      mm::Tensor<float> row_major(m, n);
      mm::Tensor<float> panels(m, n);
      run_skinny(Layout::row_major, row_major.view(), a.cview(), w.cview(), 0.5, 0.0);
      run_skinny(Layout::panels, panels.view(), a.cview(), w.cview(), 0.5, 0.0);
      INFO("m=" << m << " k=" << k);
      for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          REQUIRE(row_major(i, j) == panels(i, j));
        }
      }
    }
  }
}

TEST_CASE("pack_skinny_panels: panel p holds columns [16p, 16p + 16) as [K, 16], zero past N",
          "[backend][cpu]") {
  for (const std::int64_t n : {std::int64_t{16}, std::int64_t{37}}) {
    auto w = random_padded<mm::bf16>(11, n, 3, 90 + static_cast<std::uint64_t>(n));
    const Packed<mm::bf16> p = pack(w.cview());
    REQUIRE(mm::cpu::SkinnyPanels<mm::bf16>::count(n) == (n + 15) / 16);
    for (std::int64_t panel = 0; panel < mm::cpu::SkinnyPanels<mm::bf16>::count(n); ++panel) {
      for (std::int64_t k = 0; k < 11; ++k) {
        for (std::int64_t j = 0; j < 16; ++j) {
          const double got = mm::scalar_cast<double>(p.panels.panel(panel)[k * 16 + j]);
          const std::int64_t col = panel * 16 + j;
          const double want = col < n ? mm::scalar_cast<double>(w.view(k, col)) : 0.0;
          REQUIRE(got == want);
        }
      }
    }
  }
  auto w = random_padded<float>(5, 9, 0, 95);
  std::vector<float> out(static_cast<std::size_t>(mm::cpu::SkinnyPanels<float>::size(5, 9)));
  REQUIRE_THROWS_WITH(
      mm::cpu::pack_skinny_panels(mm::cpu::SkinnyPanels<float>{out.data(), 4, 9}, w.cview()),
      Catch::Contains("[pack_skinny_panels] out:"));
  auto a = random_padded<float>(2, 4, 0, 96);
  mm::Tensor<float> c(2, 9);
  const Packed<float> p = pack(w.cview());
  REQUIRE_THROWS_WITH(
      mm::cpu::skinny_gemm(
          c.view(), a.cview(), mm::cpu::SkinnyPanels<const float>(p.panels), 1.0, 0.0),
      Catch::Contains("[skinny_gemm] w:"));
}

TEST_CASE("skinny_gemm edge cases: beta = 0 ignores C, K = 0 scales C, empty outputs",
          "[backend][cpu]") {
  auto a = random_padded<float>(3, 9, 0, 21);
  auto w = random_padded<float>(9, 5, 0, 22);
  mm::Tensor<float> c(3, 5);
  c.fill(std::numeric_limits<float>::quiet_NaN());
  const mm::Tensor<float> zeros(3, 5);
  const Reference r = reference(mm::View<const float>(zeros), a.cview(), w.cview(), 1.5, 0.0);
  mm::cpu::skinny_gemm(c.view(), a.cview(), w.cview(), 1.5, 0.0);
  require_close(mm::View<const float>(c), r, 9, "beta=0 over NaN");

  mm::Tensor<float> empty_a(3, 0);
  mm::Tensor<float> empty_w(0, 5);
  mm::Tensor<float> c2(3, 5);
  c2.fill(2.0f);
  mm::cpu::skinny_gemm(
      c2.view(), mm::View<const float>(empty_a), mm::View<const float>(empty_w), 1.0, -0.5);
  REQUIRE(c2(2, 4) == -1.0f);
  mm::cpu::skinny_gemm(
      c2.view(), mm::View<const float>(empty_a), mm::View<const float>(empty_w), 1.0, 0.0);
  REQUIRE(c2(1, 3) == 0.0f);

  mm::Tensor<float> none(0, 5);
  mm::Tensor<float> a0(0, 9);
  mm::cpu::skinny_gemm(none.view(), mm::View<const float>(a0), w.cview(), 1.0, 0.0);  // no-op
}

TEST_CASE("skinny_gemm rejects bad shapes, naming the argument, before writing", "[backend][cpu]") {
  auto a = random_padded<float>(4, 6, 0, 31);
  auto w = random_padded<float>(6, 3, 0, 32);
  mm::Tensor<float> c(4, 3);
  c.fill(7.0f);
  auto tall = random_padded<float>(19, 6, 0, 33);
  mm::Tensor<float> c_tall(19, 3);
  REQUIRE_THROWS_WITH(mm::cpu::skinny_gemm(c_tall.view(), tall.cview(), w.cview(), 1.0, 0.0),
                      Catch::Contains("[skinny_gemm] a:") && Catch::Contains("at most 18 rows"));
  // Panels take at most 18 rows, bf16 weights row-major at most 16.
  const Packed<float> packed = pack(w.cview());
  REQUIRE_THROWS_WITH(
      mm::cpu::skinny_gemm(
          c_tall.view(), tall.cview(), mm::cpu::SkinnyPanels<const float>(packed.panels), 1.0, 0.0),
      Catch::Contains("[skinny_gemm] a:") && Catch::Contains("at most 18 rows"));
  const mm::Tensor<mm::bf16> w_bf16(6, 3);
  REQUIRE_THROWS_WITH(mm::cpu::skinny_gemm(c_tall.view().row_block(0, 17),
                                           tall.cview().row_block(0, 17),
                                           mm::View<const mm::bf16>(w_bf16.view()),
                                           1.0,
                                           0.0),
                      Catch::Contains("[skinny_gemm] a:") && Catch::Contains("at most 16 rows"));
  REQUIRE_THROWS_WITH(
      mm::cpu::skinny_gemm(c.view(), a.cview(), w.cview().row_block(0, 5), 1.0, 0.0),
      Catch::Contains("[skinny_gemm] w:"));
  REQUIRE_THROWS_WITH(
      mm::cpu::skinny_gemm(c.view().col_block(0, 2), a.cview(), w.cview(), 1.0, 0.0),
      Catch::Contains("[skinny_gemm] c:"));
  REQUIRE_THROWS_AS(
      mm::cpu::skinny_gemm(mm::View<float>(c.data(), 4, 3, 2), a.cview(), w.cview(), 1.0, 0.0),
      mm::Error);
  REQUIRE(c(0, 0) == 7.0f);
  REQUIRE(c(3, 2) == 7.0f);
}

namespace {

// CpuBackend::grouped_gemm (W not transposed) with empty, skinny and large segments and a row
// before the first one, against the oracle per segment.
template <class T, class B>
void check_grouped(B& b, const std::string& what) {
  const std::vector<std::int64_t> offsets = {1, 1, 4, 44, 45, 61, 78};  // 0, 3, 40, 1, 16, 17
  const std::int64_t experts = static_cast<std::int64_t>(offsets.size()) - 1;
  const std::int64_t rows = offsets.back() + 2;
  const std::int64_t k = 37;
  const std::int64_t n = 29;
  std::uint64_t seed = 500;
  for (const auto& [alpha, beta] : {std::pair{1.0, 0.0}, std::pair{0.5, 2.0}}) {
    auto a = random_padded<T>(rows, k, 3, ++seed);
    auto w = random_padded<T>(experts * k, n, 1, ++seed);
    auto c = random_padded<T>(rows, n, 2, ++seed);
    const auto before = c.storage.clone();
    b.grouped_gemm(c.view, a.cview(), w.cview(), Trans::no, offsets, alpha, beta);
    require_padding_kept(c, before);
    for (std::int64_t e = 0; e < experts; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      const mm::View<const T> c0(before.data(), rows, n, before.cols());
      const Reference r = reference(c0.row_block(begin, count),
                                    a.cview().row_block(begin, count),
                                    w.cview().row_block(e * k, k),
                                    alpha,
                                    beta);
      require_close(
          c.cview().row_block(begin, count),
          r,
          k,
          what + " expert " + std::to_string(e) + " (" + std::to_string(count) + " rows)");
    }
    // Rows outside every segment are untouched.
    for (const std::int64_t i : {std::int64_t{0}, rows - 2, rows - 1}) {
      for (std::int64_t j = 0; j < n; ++j) {
        REQUIRE(mm::scalar_cast<double>(c.view(i, j)) == mm::scalar_cast<double>(before(i, j)));
      }
    }
  }
}

}  // namespace

TEST_CASE("CpuBackend::grouped_gemm mixes skinny and provider segments in one call",
          "[backend][cpu]") {
  SECTION("default provider, f32") {
    mm::CpuBackend<float> b;
    check_grouped<float>(b, "default f32");
  }
  SECTION("Eigen provider, f32") {
    mm::CpuBackend<float, mm::cpu::EigenGemm> b;
    check_grouped<float>(b, "eigen f32");
  }
  SECTION("default provider, bf16") {
    mm::CpuBackend<mm::bf16> b;
    check_grouped<mm::bf16>(b, "default bf16");
  }
}

TEST_CASE("CpuBackend::grouped_gemm shares many skinny segments out among the threads, same bits",
          "[backend][cpu]") {
  // Nine segments of 1-18 rows (whole segments per thread where there are threads to share
  // them) and a long one (the provider): each skinny segment equals skinny_gemm on it alone,
  // bit for bit, in the first call (row-major) and the third (panels where packed).
  const std::vector<std::int64_t> counts = {16, 17, 1, 18, 5, 40, 16, 17, 9, 12};
  std::vector<std::int64_t> offsets = {0};
  for (const std::int64_t n : counts) {
    offsets.push_back(offsets.back() + n);
  }
  const auto experts = static_cast<std::int64_t>(counts.size());
  const std::int64_t rows = offsets.back();
  const std::int64_t k = 130;
  const std::int64_t n = 100;
  auto a = random_padded<float>(rows, k, 1, 8101);
  auto w = random_padded<float>(experts * k, n, 2, 8102);
  mm::CpuBackend<float> b;
  for (int call = 0; call < 3; ++call) {
    mm::Tensor<float> c(rows, n);
    b.grouped_gemm(c.view(), a.cview(), w.cview(), Trans::no, offsets, 0.5, 0.0);
    for (std::int64_t e = 0; e < experts; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = counts[static_cast<std::size_t>(e)];
      const auto ae = a.cview().row_block(begin, count);
      const auto we = w.cview().row_block(e * k, k);
      INFO("call " << call << ", expert " << e << " (" << count << " rows)");
      if (count > decltype(b)::skinny_rows<float>) {
        const mm::Tensor<float> zeros(count, n);
        require_close(mm::View<const float>(c).row_block(begin, count),
                      reference(mm::View<const float>(zeros), ae, we, 0.5, 0.0),
                      k,
                      "provider segment");
        continue;
      }
      mm::Tensor<float> alone(count, n);
      mm::cpu::skinny_gemm(alone.view(), ae, we, 0.5, 0.0);
      for (std::int64_t i = 0; i < count; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          REQUIRE(c(begin + i, j) == alone(i, j));
        }
      }
    }
  }
}

#if defined(MMSPARSE_WITH_ONEDNN)
TEST_CASE("Skinny segments multiply the caller's weights: only large ones are packed",
          "[backend][cpu]") {
  mm::CpuBackend<float, mm::cpu::OnednnGemm> b;
  b.gemm_provider_instance() = mm::cpu::OnednnGemm({.pack = mm::cpu::PackMode::always});
  check_grouped<float>(b, "onednn packed");
  // Two calls, each with new weights: the 40-row segment's block is packed, and the 17-row one's
  // where the lane groups do not take it.
  const int large = 17 > decltype(b)::skinny_rows<float> ? 2 : 1;
  REQUIRE(b.gemm_provider_instance().stats().packs == 2 * large);
}
#endif

TEST_CASE("CpuBackend packs skinny weights on their second use and never uses a stale copy",
          "[backend][cpu]") {
  // Experts of 3 and 5 rows (skinny, packed) and of 20 rows (never packed for the skinny kernel:
  // the lane groups or the provider).
  const std::vector<std::int64_t> offsets = {0, 3, 8, 28};
  const std::int64_t k = 40;
  const std::int64_t n = 70;
  auto a = random_padded<float>(28, k, 1, 301);
  auto w = random_padded<float>(3 * k, n, 2, 302);
  const mm::Tensor<float> zeros(28, n);
  auto check = [&](auto& b, const std::string& what) {
    mm::Tensor<float> c(28, n);
    c.fill(std::numeric_limits<float>::quiet_NaN());
    b.grouped_gemm(c.view(), a.cview(), w.cview(), Trans::no, offsets, 1.0, 0.0);
    for (std::int64_t e = 0; e < 3; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      const Reference r = reference(mm::View<const float>(zeros).row_block(begin, count),
                                    a.cview().row_block(begin, count),
                                    w.cview().row_block(e * k, k),
                                    1.0,
                                    0.0);
      require_close(mm::View<const float>(c).row_block(begin, count),
                    r,
                    k,
                    what + ", expert " + std::to_string(e));
    }
  };
  mm::CpuBackend<float> b;
  const auto& stats = b.skinny_pack_stats();
  check(b, "first use");
  REQUIRE((stats.unpacked == 2 && stats.packs == 0));
  check(b, "second use");
  REQUIRE((stats.packs == 2 && stats.hits == 0));
  check(b, "third use");
  REQUIRE((stats.packs == 2 && stats.hits == 2));
  REQUIRE(stats.bytes == 2 * mm::cpu::SkinnyPanels<float>::size(k, n) * sizeof(float));

  // One element of each skinny block changes and the optimizer says so: the old panels are
  // stale, so the next call streams the new weights and the one after repacks them.
  w.view(1, 2) += 1.0f;
  w.view(k + 3, 5) -= 1.0f;
  b.weights_updated();
  check(b, "first use after weights_updated");
  REQUIRE((stats.packs == 2 && stats.unpacked == 4));
  check(b, "second use after weights_updated");
  REQUIRE(stats.packs == 4);

  // Rewritten without weights_updated(): the sampled fingerprint catches it.
  for (std::int64_t i = 0; i < w.storage.size(); ++i) {
    w.storage.data()[i] = -w.storage.data()[i];
  }
  check(b, "rewrite without weights_updated");
  REQUIRE((stats.packs == 4 && stats.unpacked == 6));
  check(b, "second use after the rewrite");
  REQUIRE(stats.packs == 6);

  // Packing off: the row-major walk every time.
  mm::CpuBackend<float> plain(mm::CpuOptions{.pack_skinny_weights = false});
  for (int i = 0; i < 3; ++i) {
    check(plain, "packing off");
  }
  REQUIRE((plain.skinny_pack_stats().packs == 0 && plain.skinny_pack_stats().bytes == 0));

  // Blocks not used since the previous weights_updated() are freed by the next one.
  b.weights_updated();
  b.weights_updated();
  REQUIRE(stats.bytes == 0);
}

TEST_CASE("CpuBackend::grouped_gemm validates before writing a skinny segment", "[backend][cpu]") {
  mm::CpuBackend<float> b;
  auto a = random_padded<float>(6, 4, 0, 41);
  auto w = random_padded<float>(2 * 4, 3, 0, 42);
  mm::Tensor<float> c(6, 3);
  c.fill(7.0f);
  const std::vector<std::int64_t> decreasing = {0, 3, 2};
  REQUIRE_THROWS_WITH(
      b.grouped_gemm(c.view(), a.cview(), w.cview(), Trans::no, decreasing, 1.0, 0.0),
      Catch::Contains("[CpuBackend::grouped_gemm] offsets:"));
  const std::vector<std::int64_t> past_end = {0, 2, 7};
  REQUIRE_THROWS_WITH(b.grouped_gemm(c.view(), a.cview(), w.cview(), Trans::no, past_end, 1.0, 0.0),
                      Catch::Contains("[CpuBackend::grouped_gemm] offsets:"));
  const std::vector<std::int64_t> ok = {0, 2, 6};
  REQUIRE_THROWS_WITH(
      b.grouped_gemm(c.view().col_block(0, 2), a.cview(), w.cview(), Trans::no, ok, 1.0, 0.0),
      Catch::Contains("[CpuBackend::grouped_gemm] c:"));
  REQUIRE(c(0, 0) == 7.0f);
  REQUIRE(c(5, 2) == 7.0f);
}

TEST_CASE("CpuBackend::gemm: skinny and provider products agree with the oracle",
          "[backend][cpu]") {
  mm::CpuBackend<float> b;
  for (const std::int64_t m :
       {std::int64_t{3}, std::int64_t{16}, std::int64_t{17}, std::int64_t{18}, std::int64_t{19}}) {
    auto a = random_padded<float>(m, 45, 2, 60 + static_cast<std::uint64_t>(m));
    auto w = random_padded<float>(45, 19, 1, 70 + static_cast<std::uint64_t>(m));
    auto c = random_padded<float>(m, 19, 3, 80 + static_cast<std::uint64_t>(m));
    const auto before = c.storage.clone();
    const Reference r = reference(
        mm::View<const float>(before.data(), m, 19, before.cols()), a.cview(), w.cview(), 0.5, 1.0);
    b.gemm(c.view, a.cview(), Trans::no, w.cview(), Trans::no, 0.5, 1.0);
    require_close(c.cview(), r, 45, "gemm m=" + std::to_string(m));
    require_padding_kept(c, before);
  }
}

// test/backend/cpu/onednn_gemm_test.cpp
//
// The oneDNN GEMM provider against a naive double loop: every transpose, alpha/beta, strided and
// odd shapes, M = 0 and 1, one primitive for many M, packed grouped weights (reuse, staleness),
// and bf16 within 2x the error of a naive bf16 product. Without oneDNN only the default-provider
// case runs (the rest needs MMSPARSE_WITH_ONEDNN).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>

#include "backend/cpu/gemm_checks.hpp"
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/backend/cpu/eigen_gemm.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#if defined(MMSPARSE_WITH_ONEDNN)
#include <mmsparse/backend/cpu/onednn_gemm.hpp>
#include <mmsparse/backend/cpu/onednn_info.hpp>
#endif

namespace mm = mmsparse;
using mm::Trans;

namespace {

using mm::gemm_checks::at;
using mm::gemm_checks::Case;
using mm::gemm_checks::check_gemm_cases;
using mm::gemm_checks::Grouped;
using mm::gemm_checks::grouped_reference;
using mm::gemm_checks::Padded;
using mm::gemm_checks::random_padded;
using mm::gemm_checks::Reference;
using mm::gemm_checks::reference;
using mm::gemm_checks::require_close;
using mm::gemm_checks::require_padding_kept;

}  // namespace

TEST_CASE("the default CPU GEMM provider matches a double loop", "[backend][cpu]") {
  mm::CpuBackend<float> b;
  check_gemm_cases<float>(b, {{7, 5, 3}, {1, 16, 9}, {20, 33, 17}});
}

#if defined(MMSPARSE_WITH_ONEDNN)

TEST_CASE("OnednnGemm matches a double loop: transposes, alpha/beta, strides, odd shapes",
          "[backend][cpu]") {
  mm::cpu::OnednnGemm g;
  check_gemm_cases<float>(
      g, {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {0, 4, 3}, {1, 9, 13}, {5, 0, 4}, {3, 8, 0}});
  // one primitive per (transposes, alpha, beta): 4 x 3, whatever the shapes
  REQUIRE(g.stats().primitives == 12);
}

TEST_CASE("OnednnGemm runs many M (and K, N) with one primitive", "[backend][cpu]") {
  mm::cpu::OnednnGemm g;
  std::uint64_t seed = 7;
  for (std::int64_t m = 1; m <= 40; m += 3) {
    const std::int64_t k = 8 + m % 5;
    const std::int64_t n = 6 + m % 7;
    auto a = random_padded<float>(m, k, 0, ++seed);
    auto b = random_padded<float>(k, n, 0, ++seed);
    auto c = random_padded<float>(m, n, 0, ++seed);
    const auto before = c.storage.clone();
    const Reference r = reference(mm::View<const float>(before.data(), m, n),
                                  a.cview(),
                                  Trans::no,
                                  b.cview(),
                                  Trans::no,
                                  1.0,
                                  0.0);
    g.gemm(c.view, a.cview(), Trans::no, b.cview(), Trans::no, 1.0, 0.0);
    require_close(c.cview(), r, k, "m=" + std::to_string(m));
  }
  REQUIRE(g.stats().primitives == 1);
}

TEST_CASE("OnednnGemm grouped_gemm with packed weights matches Eigen and the oracle",
          "[backend][cpu]") {
  const std::vector<Grouped> groups = {
      {{0, 5, 5, 17, 30}, 12, 9},  // an empty expert
      {{0, 1, 2, 3}, 7, 5},        // one row per expert
      {{2, 70, 71}, 16, 24},       // rows before the first segment; chunked rows
      {{0, 3, 5}, 4, 0},           // no output columns
  };
  const std::vector<mm::cpu::OnednnOptions> options = {
      {},
      {.pack = mm::cpu::PackMode::always, .row_tile = 4, .max_rows = 16},
      {.pack = mm::cpu::PackMode::never},
  };
  const std::vector<std::pair<double, double>> scalars = {{1.0, 0.0}, {0.75, 1.0}};
  std::uint64_t seed = 300;
  for (const auto& opt : options) {
    mm::CpuBackend<float, mm::cpu::OnednnGemm> onednn;
    onednn.gemm_provider_instance() = mm::cpu::OnednnGemm(opt);
    mm::CpuBackend<float, mm::cpu::EigenGemm> eigen;
    for (const Grouped& gr : groups) {
      const auto experts = static_cast<std::int64_t>(gr.offsets.size()) - 1;
      const std::int64_t rows = gr.offsets.back() + 1;  // one row after the last segment
      for (const Trans tw : {Trans::no, Trans::yes}) {
        for (const auto& [alpha, beta] : scalars) {
          auto a = random_padded<float>(rows, gr.k, 2, ++seed);
          auto w = tw == Trans::no ? random_padded<float>(experts * gr.k, gr.n, 0, ++seed)
                                   : random_padded<float>(experts * gr.n, gr.k, 3, ++seed);
          auto c = random_padded<float>(rows, gr.n, 1, ++seed);
          auto c_eigen = c.storage.clone();
          const auto before = c.storage.clone();
          const mm::View<const float> c0(before.data(), rows, gr.n, before.cols());
          const Reference r =
              grouped_reference(c0, a.cview(), w.cview(), tw, gr.offsets, alpha, beta);
          for (int repeat = 0; repeat < 2; ++repeat) {  // the second run reuses the packs
            std::copy(before.data(), before.data() + before.size(), c.storage.data());
            // The provider itself: the backend sends segments of <= 16 rows to skinny_gemm.
            onednn.gemm_provider_instance().grouped_gemm(
                c.view, a.cview(), w.cview(), tw, gr.offsets, alpha, beta);
            require_close(c.cview(), r, gr.k, "grouped tw=" + std::to_string(tw == Trans::yes));
            require_padding_kept(c, before);
          }
          eigen.grouped_gemm(mm::View<float>(c_eigen.data(), rows, gr.n, c_eigen.cols()),
                             a.cview(),
                             w.cview(),
                             tw,
                             gr.offsets,
                             alpha,
                             beta);
          require_close(mm::View<const float>(c_eigen.data(), rows, gr.n, c_eigen.cols()),
                        r,
                        gr.k,
                        "eigen grouped");
        }
      }
    }
  }
}

TEST_CASE("OnednnGemm reuses packs until weights_updated and never multiplies stale ones",
          "[backend][cpu]") {
  // PackMode::always writes a real copy on every CPU, so staleness would show.
  mm::cpu::OnednnGemm g({.pack = mm::cpu::PackMode::always, .row_tile = 8, .max_rows = 32});
  const std::vector<std::int64_t> offsets = {0, 10, 25, 40};
  const std::int64_t k = 16;
  const std::int64_t n = 12;
  auto a = random_padded<float>(40, k, 0, 1);
  auto w = random_padded<float>(3 * k, n, 0, 2);
  mm::Tensor<float> c(40, n);
  auto run_and_check = [&](const std::string& what) {
    g.grouped_gemm(c.view(), a.cview(), w.cview(), Trans::no, offsets, 1.0, 0.0);
    const Reference r = grouped_reference(
        mm::View<const float>(c), a.cview(), w.cview(), Trans::no, offsets, 1.0, 0.0);
    require_close(mm::View<const float>(c), r, k, what);
  };

  g.pack_weights(w.cview(), Trans::no, 3);
  REQUIRE(g.stats().packs == 3);
  run_and_check("after pack_weights");
  REQUIRE(g.stats().packs == 3);  // the cache served all three blocks
  REQUIRE(g.stats().pack_hits == 3);
  run_and_check("second run");
  REQUIRE(g.stats().packs == 3);
  REQUIRE(g.stats().pack_hits == 6);

  // An optimizer step: every weight changes in place, then weights_updated().
  for (std::int64_t i = 0; i < w.storage.size(); ++i) {
    w.storage.data()[i] = 0.5f * w.storage.data()[i] - 0.25f;
  }
  g.weights_updated();
  run_and_check("after weights_updated");
  REQUIRE(g.stats().packs == 6);

  // A single changed weight is picked up after weights_updated() too.
  w.view(17, 5) += 3.0f;
  g.weights_updated();
  run_and_check("one changed weight");
  REQUIRE(g.stats().packs == 9);

  // Changed in place without weights_updated(): the sampled fingerprint still catches a
  // rewrite of every element (the guard behind the contract, not the contract itself).
  for (std::int64_t i = 0; i < w.storage.size(); ++i) {
    w.storage.data()[i] = -w.storage.data()[i];
  }
  run_and_check("rewrite without weights_updated");
  REQUIRE(g.stats().packs == 12);
}

TEST_CASE("OnednnGemm copies weights with a row stride of 1 KB and keeps the copies current",
          "[backend][cpu]") {
  // Stored rows of 256 floats or 512 bf16 (1 KB), W and W^T: under PackMode::automatic every CPU
  // multiplies a copy (a padded stride, bf16 widened into one, or oneDNN's blocked layout) by the
  // second use of the weights; segments this short make the padded copy only then (a training
  // step, one use per update, reads them in place).
  auto check = [](auto zero, Trans tw, std::int64_t k, std::int64_t n) {
    using T = decltype(zero);
    mm::cpu::OnednnGemm g;
    const std::vector<std::int64_t> offsets = {0, 7, 7, 30};
    auto a = random_padded<T>(30, k, 0, 71);
    auto w =
        tw == Trans::no ? random_padded<T>(3 * k, n, 0, 72) : random_padded<T>(3 * n, k, 0, 72);
    REQUIRE(w.view.stride * static_cast<std::int64_t>(sizeof(T)) == 1024);
    mm::Tensor<T> c(30, n);
    auto run_and_check = [&](const std::string& what) {
      g.grouped_gemm(c.view(), a.cview(), w.cview(), tw, offsets, 1.0, 0.0);
      const Reference r =
          grouped_reference(mm::View<const T>(c), a.cview(), w.cview(), tw, offsets, 1.0, 0.0);
      require_close(mm::View<const T>(c), r, k, what);
    };
    run_and_check("first use");
    REQUIRE(g.stats().packs <= 2);
    run_and_check("second use");
    REQUIRE(g.stats().packs == 2);  // the two experts with rows
    run_and_check("third use");
    REQUIRE(g.stats().packs == 2);
    for (std::int64_t i = 0; i < w.storage.size(); ++i) {
      w.storage.data()[i] = mm::scalar_cast<T>(1.5f - mm::scalar_cast<float>(w.storage.data()[i]));
    }
    g.weights_updated();
    run_and_check("first use after weights_updated");  // never the stale copy
    run_and_check("second use after weights_updated");
    REQUIRE(g.stats().packs == 4);
  };
  check(0.0f, Trans::no, 24, 256);
  check(0.0f, Trans::yes, 256, 24);
  check(mm::bf16{}, Trans::no, 24, 512);
}

TEST_CASE("OnednnGemm copies a 1 KB-strided weight on first use for a long segment",
          "[backend][cpu]") {
  // copy_pays_rows rows: the copy is a small part of the product, made at once.
  const std::int64_t rows = mm::cpu::onednn_detail::copy_pays_rows;
  // W [k, n] = [24, 256] stored as it is, or W^T with k = 256, n = 24 stored as [24, 256]: rows
  // of 256 floats either way.
  for (const auto& [tw, k, n] : {std::tuple{Trans::no, std::int64_t{24}, std::int64_t{256}},
                                 std::tuple{Trans::yes, std::int64_t{256}, std::int64_t{24}}}) {
    mm::cpu::OnednnGemm g;
    const std::vector<std::int64_t> offsets = {0, rows, rows + 5};
    auto a = random_padded<float>(rows + 5, k, 0, 81);
    auto w = random_padded<float>(2 * 24, 256, 0, 82);
    mm::Tensor<float> c(rows + 5, n);
    g.grouped_gemm(c.view(), a.cview(), w.cview(), tw, offsets, 1.0, 0.0);
    const Reference r =
        grouped_reference(mm::View<const float>(c), a.cview(), w.cview(), tw, offsets, 1.0, 0.0);
    require_close(mm::View<const float>(c), r, k, "long segment");
    // The long segment's block is copied and the 5-row one's read in place; on a CPU whose
    // preferred layout is blocked, both are reordered instead, on their second use (a training
    // step, one use per update, reads them in place). By the second use both are copies.
    const bool blocked =
        mm::cpu::onednn_matmul_impl<float>(256, k, n, false).ends_with("(blocked weights)");
    INFO("blocked layout: " << blocked);
    REQUIRE(g.stats().packs == (blocked ? 0 : 1));
    g.grouped_gemm(c.view(), a.cview(), w.cview(), tw, offsets, 1.0, 0.0);
    require_close(mm::View<const float>(c), r, k, "long segment, second use");
    REQUIRE(g.stats().packs == 2);
  }
}

TEST_CASE("OnednnGemm::gemm multiplies a padded copy of a B whose rows are 1 KB apart",
          "[backend][cpu]") {
  // 300 output rows and a narrow output: the shape where oneDNN reads B in place. B [24, 40]
  // inside rows of 256 floats, and B^T [40, 24] inside the same; alpha and beta.
  mm::cpu::OnednnGemm g;
  for (const Trans tb : {Trans::no, Trans::yes}) {
    auto a = random_padded<float>(300, 24, 3, 81);
    auto b = tb == Trans::no ? random_padded<float>(24, 40, 256 - 40, 82)
                             : random_padded<float>(40, 24, 256 - 24, 82);
    REQUIRE(b.view.stride == 256);
    auto c = random_padded<float>(300, 40, 2, 83);
    const auto before = c.storage.clone();
    const mm::View<const float> c0(before.data(), 300, 40, before.cols());
    const Reference r = reference(c0, a.cview(), Trans::no, b.cview(), tb, -0.5, 2.0);
    g.gemm(c.view, a.cview(), Trans::no, b.cview(), tb, -0.5, 2.0);
    require_close(c.cview(), r, 24, tb == Trans::no ? "B" : "B^T");
    require_padding_kept(c, before);
  }
}

TEST_CASE("OnednnGemm::gemm multiplies a padded copy of a transposed A whose rows are 1 KB apart",
          "[backend][cpu]") {
  // A weight gradient's shape: C [512, 96] = A^T B, A [37, 512] inside rows of 512 + 256 floats
  // (3 KB); B aliasing too (both copied) or not, alpha and beta. At 300 output rows A stays put;
  // with copy_aliasing off, every operand does.
  for (const bool copying : {true, false}) {
    mm::cpu::OnednnGemm g({.copy_aliasing = copying});
    for (const std::int64_t b_pad : {std::int64_t{5}, std::int64_t{256 - 96}}) {
      for (const std::int64_t m : {std::int64_t{512}, std::int64_t{300}}) {
        auto a = random_padded<float>(37, m, 768 - m, 91);
        REQUIRE(a.view.stride == 768);
        auto b = random_padded<float>(37, 96, b_pad, 92);
        auto c = random_padded<float>(m, 96, 3, 93);
        const auto before = c.storage.clone();
        const mm::View<const float> c0(before.data(), m, 96, before.cols());
        const Reference r = reference(c0, a.cview(), Trans::yes, b.cview(), Trans::no, 0.75, -1.5);
        const std::int64_t copies = g.stats().operand_copies;
        g.gemm(c.view, a.cview(), Trans::yes, b.cview(), Trans::no, 0.75, -1.5);
        const std::string what =
            "A^T, m = " + std::to_string(m) + ", B stride " + std::to_string(b.view.stride);
        require_close(c.cview(), r, 37, what);
        require_padding_kept(c, before);
        // A is copied at 512 rows; B (stride 256 floats) at 128 rows or more.
        const std::int64_t expected =
            copying ? (m == 512 ? 1 : 0) + (b.view.stride == 256 ? 1 : 0) : 0;
        INFO(what);
        CHECK(g.stats().operand_copies - copies == expected);
      }
    }
  }
}

TEST_CASE("OnednnGemm through CpuBackend: weights_updated and pack_weights forward",
          "[backend][cpu]") {
  mm::CpuBackend<float, mm::cpu::OnednnGemm> b;
  b.gemm_provider_instance() = mm::cpu::OnednnGemm({.pack = mm::cpu::PackMode::always});
  // Segments longer than the backend's own kernels take (skinny_gemm_transposed.hpp).
  const std::int64_t rows = mm::cpu::skinny_transposed_max_rows + 1;
  const std::vector<std::int64_t> offsets = {0, rows, 2 * rows};
  auto a = random_padded<float>(2 * rows, 8, 0, 11);
  auto w = random_padded<float>(2 * 5, 8, 0, 12);  // Trans::yes: W_e is [5, 8], op(W_e) [8, 5]
  mm::Tensor<float> c(2 * rows, 5);
  b.pack_weights(w.cview(), Trans::yes, 2);
  REQUIRE(b.gemm_provider_instance().stats().packs == 2);
  b.grouped_gemm(c.view(), a.cview(), w.cview(), Trans::yes, offsets);
  REQUIRE(b.gemm_provider_instance().stats().packs == 2);
  w.view(0, 0) = 100.0f;
  b.weights_updated();
  b.grouped_gemm(c.view(), a.cview(), w.cview(), Trans::yes, offsets);
  REQUIRE(b.gemm_provider_instance().stats().packs == 4);
  const Reference r = grouped_reference(
      mm::View<const float>(c), a.cview(), w.cview(), Trans::yes, offsets, 1.0, 0.0);
  require_close(mm::View<const float>(c), r, 8, "backend grouped");
}

TEST_CASE("OnednnGemm grouped_gemm_weight_grad matches the oracle, empty experts scale by beta",
          "[backend][cpu]") {
  mm::cpu::OnednnGemm g;
  const std::vector<std::int64_t> offsets = {0, 9, 9, 20};
  const std::int64_t block = 6;
  const std::int64_t n = 7;
  auto a = random_padded<float>(20, block, 1, 21);
  auto b = random_padded<float>(20, n, 2, 22);
  for (const double beta : {0.0, 1.0, 0.5}) {
    auto w = random_padded<float>(3 * block, n, 3, 23);
    const auto before = w.storage.clone();
    g.grouped_gemm_weight_grad(w.view, a.cview(), b.cview(), offsets, 2.0, beta);
    for (std::int64_t e = 0; e < 3; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      const Reference r = reference(
          mm::View<const float>(before.data() + e * block * before.cols(), block, n, before.cols()),
          a.cview().row_block(begin, count),
          Trans::yes,
          b.cview().row_block(begin, count),
          Trans::no,
          2.0,
          beta);
      require_close(mm::View<const float>(w.view.row_block(e * block, block)),
                    r,
                    count,
                    "expert " + std::to_string(e) + " beta " + std::to_string(beta));
    }
    require_padding_kept(w, before);
  }
}

TEST_CASE("OnednnGemm bf16: error within 2x of a naive bf16 product", "[backend][cpu]") {
  // bf16 inputs, products accumulated in float, the result rounded to bf16 once.
  auto naive_bf16 = [](mm::View<const mm::bf16> c0,
                       mm::View<const mm::bf16> a,
                       Trans ta,
                       mm::View<const mm::bf16> b,
                       Trans tb,
                       double alpha,
                       double beta) {
    const std::int64_t k = ta == Trans::no ? a.cols : a.rows;
    std::vector<double> out(static_cast<std::size_t>(c0.size()));
    for (std::int64_t i = 0; i < c0.rows; ++i) {
      for (std::int64_t j = 0; j < c0.cols; ++j) {
        float acc = 0.0f;
        for (std::int64_t l = 0; l < k; ++l) {
          acc += static_cast<float>(at(a, ta, i, l)) * static_cast<float>(at(b, tb, l, j));
        }
        const float c =
            beta == 0.0 ? 0.0f : static_cast<float>(beta) * static_cast<float>(c0(i, j));
        out[static_cast<std::size_t>(i * c0.cols + j)] =
            mm::scalar_cast<double>(mm::bf16(static_cast<float>(alpha) * acc + c));
      }
    }
    return out;
  };
  auto rms = [](mm::View<const mm::bf16> got, const std::vector<double>& want) {
    double s = 0.0;
    for (std::int64_t i = 0; i < got.rows; ++i) {
      for (std::int64_t j = 0; j < got.cols; ++j) {
        const double d =
            mm::scalar_cast<double>(got(i, j)) - want[static_cast<std::size_t>(i * got.cols + j)];
        s += d * d;
      }
    }
    return std::sqrt(s / static_cast<double>(std::max<std::int64_t>(got.size(), 1)));
  };
  auto rms_vec = [](const std::vector<double>& x, const std::vector<double>& y) {
    double s = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      s += (x[i] - y[i]) * (x[i] - y[i]);
    }
    return std::sqrt(s / static_cast<double>(std::max<std::size_t>(x.size(), 1)));
  };

  mm::cpu::OnednnGemm g;
  INFO("oneDNN bf16 matmul on this CPU: " << (g.native_bf16() ? "native" : "widened to f32"));
  std::uint64_t seed = 500;
  for (const Case s : {Case{9, 40, 11}, Case{1, 64, 17}, Case{32, 96, 24}}) {
    for (const Trans ta : {Trans::no, Trans::yes}) {
      for (const Trans tb : {Trans::no, Trans::yes}) {
        for (const double beta : {0.0, 1.0}) {
          auto a = ta == Trans::no ? random_padded<mm::bf16>(s.m, s.k, 1, ++seed)
                                   : random_padded<mm::bf16>(s.k, s.m, 1, ++seed);
          auto b = tb == Trans::no ? random_padded<mm::bf16>(s.k, s.n, 2, ++seed)
                                   : random_padded<mm::bf16>(s.n, s.k, 2, ++seed);
          auto c = random_padded<mm::bf16>(s.m, s.n, 1, ++seed);
          const auto before = c.storage.clone();
          const mm::View<const mm::bf16> c0(before.data(), s.m, s.n, before.cols());
          const Reference r = reference(c0, a.cview(), ta, b.cview(), tb, 1.0, beta);
          const auto naive = naive_bf16(c0, a.cview(), ta, b.cview(), tb, 1.0, beta);
          g.gemm(c.view, a.cview(), ta, b.cview(), tb, 1.0, beta);
          const double ours = rms(c.cview(), r.value);
          const double base = rms_vec(naive, r.value);
          INFO("m=" << s.m << " k=" << s.k << " n=" << s.n << " ours " << ours << " naive "
                    << base);
          REQUIRE(base > 0.0);
          REQUIRE(ours <= 2.0 * base);
          require_padding_kept(c, before);
        }
      }
    }
  }

  // The grouped path (packed bf16, or bf16 widened once into a cached f32 copy).
  const std::vector<std::int64_t> offsets = {0, 30, 31, 64};
  for (const Trans tw : {Trans::no, Trans::yes}) {
    auto a = random_padded<mm::bf16>(64, 48, 0, ++seed);
    auto w = tw == Trans::no ? random_padded<mm::bf16>(3 * 48, 20, 0, ++seed)
                             : random_padded<mm::bf16>(3 * 20, 48, 0, ++seed);
    mm::Tensor<mm::bf16> c(64, 20);
    const std::int64_t packs = g.stats().packs;
    for (int repeat = 0; repeat < 2; ++repeat) {
      g.grouped_gemm(c.view(), a.cview(), w.cview(), tw, offsets, 1.0, 0.0);
    }
    const std::int64_t written = g.stats().packs - packs;
    INFO("packed copies written: " << written);
    REQUIRE((written == 0 || written == 3));  // written once, reused on the repeat
    const Reference r =
        grouped_reference(mm::View<const mm::bf16>(c), a.cview(), w.cview(), tw, offsets, 1.0, 0.0);
    std::vector<double> naive;
    const std::int64_t block = w.view.rows / 3;
    for (std::int64_t e = 0; e < 3; ++e) {
      const std::int64_t begin = offsets[static_cast<std::size_t>(e)];
      const std::int64_t count = offsets[static_cast<std::size_t>(e + 1)] - begin;
      const auto part = naive_bf16(mm::View<const mm::bf16>(c).row_block(begin, count),
                                   a.cview().row_block(begin, count),
                                   Trans::no,
                                   w.cview().row_block(e * block, block),
                                   tw,
                                   1.0,
                                   0.0);
      naive.insert(naive.end(), part.begin(), part.end());
    }
    REQUIRE(rms(mm::View<const mm::bf16>(c), r.value) <= 2.0 * rms_vec(naive, r.value));
  }
}

TEST_CASE("OnednnGemm rejects bad shapes with a message naming the argument", "[backend][cpu]") {
  mm::cpu::OnednnGemm g;
  mm::Tensor<float> a(4, 5);
  mm::Tensor<float> b(6, 3);
  mm::Tensor<float> c(4, 3);
  a.fill(1.0f);
  b.fill(1.0f);
  c.fill(7.0f);
  REQUIRE_THROWS_WITH(g.gemm(c.view(),
                             mm::View<const float>(a),
                             Trans::no,
                             mm::View<const float>(b),
                             Trans::no,
                             1.0,
                             0.0),
                      Catch::Contains("[OnednnGemm::gemm] b:"));
  REQUIRE_THROWS_WITH(g.gemm(mm::View<float>(c.data(), 3, 3),
                             mm::View<const float>(a),
                             Trans::no,
                             mm::View<const float>(b.data(), 5, 3),
                             Trans::no,
                             1.0,
                             0.0),
                      Catch::Contains("[OnednnGemm::gemm] c:"));
  REQUIRE(c(0, 0) == 7.0f);  // nothing written on error

  mm::Tensor<float> w(2 * 5, 3);
  const std::vector<std::int64_t> decreasing = {0, 3, 2};
  REQUIRE_THROWS_WITH(g.grouped_gemm(c.view(),
                                     mm::View<const float>(a),
                                     mm::View<const float>(w),
                                     Trans::no,
                                     decreasing,
                                     1.0,
                                     0.0),
                      Catch::Contains("] offsets:"));
  const std::vector<std::int64_t> too_far = {0, 2, 5};
  REQUIRE_THROWS_WITH(g.grouped_gemm(c.view(),
                                     mm::View<const float>(a),
                                     mm::View<const float>(w),
                                     Trans::no,
                                     too_far,
                                     1.0,
                                     0.0),
                      Catch::Contains("] offsets:"));
  const std::vector<std::int64_t> three = {0, 1, 2, 4};  // 10 weight rows are not 3 blocks
  REQUIRE_THROWS_WITH(
      g.grouped_gemm(
          c.view(), mm::View<const float>(a), mm::View<const float>(w), Trans::no, three, 1.0, 0.0),
      Catch::Contains("] w:"));
  REQUIRE_THROWS_AS(mm::cpu::OnednnGemm({.row_tile = 0}), mm::Error);
  REQUIRE(c(0, 0) == 7.0f);
}

TEST_CASE("oneDNN reports its version, threading and ISA", "[backend][cpu]") {
  const std::string version = mm::cpu::onednn_version();
  INFO(version << " isa " << mm::cpu::onednn_isa() << " f32 plain "
               << mm::cpu::onednn_matmul_impl<float>(64, 64, 64, true) << " f32 packed "
               << mm::cpu::onednn_matmul_impl<float>(64, 64, 64, false) << " bf16 "
               << mm::cpu::onednn_matmul_impl<mm::bf16>(64, 64, 64, false));
  REQUIRE(version.rfind("2.", 0) == 0);
  REQUIRE(version.find("(OpenMP)") != std::string::npos);  // the runtime mmsparse uses too
  REQUIRE(mm::cpu::onednn_matmul_impl<float>(64, 64, 64, true) != "unsupported");
}

#endif  // MMSPARSE_WITH_ONEDNN

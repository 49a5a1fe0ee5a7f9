// test/backend/cuda/conformance_test.cu
//
// Every primitive of CudaBackend against a naive host reference written here (plain loops in
// double), on random inputs with fixed seeds: fp32 within 1e-5, bf16 within 1e-2 (normwise
// relative error); integer outputs and routing decisions exactly. Also determinism (scatter
// twice, bitwise equal), a warm arena that stops allocating, and the argument checks.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "backend/cuda/require_device.cuh"
#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/backend/cuda/backend.cuh>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>

namespace {

using mmsparse::bf16;
using mmsparse::CudaBackend;
using mmsparse::device_space;
using mmsparse::Shape;
using mmsparse::Span;
using mmsparse::Tensor;
using mmsparse::Trans;
using mmsparse::View;
template <class T>
using DTensor = Tensor<T, device_space>;

static_assert(mmsparse::backend<CudaBackend<float>>);
static_assert(mmsparse::backend<CudaBackend<bf16>>);

template <class T>
constexpr double tolerance = std::is_same_v<T, bf16> ? 1e-2 : 1e-5;

template <class T>
double to_d(T v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return static_cast<double>(static_cast<float>(v));
  } else {
    return static_cast<double>(v);
  }
}

template <class T>
T from_d(double v) {
  return mmsparse::scalar_cast<T>(v);
}

// A host tensor of uniform draws in [lo, hi), rounded to T.
template <class T>
Tensor<T> random_tensor(
    std::int64_t rows, std::int64_t cols, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  mmsparse::Rng rng(seed);
  Tensor<T> t(rows, cols);
  for (std::int64_t i = 0; i < t.size(); ++i) {
    t.data()[i] = from_d<T>(rng.uniform(lo, hi));
  }
  return t;
}

template <class T>
std::vector<double> values(const Tensor<T>& t) {
  std::vector<double> v(static_cast<std::size_t>(t.size()));
  for (std::int64_t i = 0; i < t.size(); ++i) {
    v[static_cast<std::size_t>(i)] = to_d(t.data()[i]);
  }
  return v;
}

// ||got - ref|| / ||ref|| (absolute when ref is 0).
double rel_error(const std::vector<double>& got, const std::vector<double>& ref) {
  REQUIRE(got.size() == ref.size());
  double num = 0.0;
  double den = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <class T>
View<const T, device_space> cv(const DTensor<T>& t) {
  return t.view();
}
template <class T>
Span<const T, device_space> cs(const DTensor<T>& t) {
  return t.span();
}

template <class B>
std::vector<std::int32_t> host_ints(B& b, const DTensor<std::int32_t>& t) {
  auto h = b.to_host(t);
  return {h.data(), h.data() + h.size()};
}

template <class T>
std::vector<double> device_values(CudaBackend<T>& b, const DTensor<T>& t) {
  return values(b.to_host(t));
}
template <class B>
std::vector<double> device_floats(B& b, const DTensor<float>& t) {
  return values(b.to_host(t));
}

// op(X)(i, j) for a row-major host matrix.
double op_at(
    const std::vector<double>& x, std::int64_t cols, Trans t, std::int64_t i, std::int64_t j) {
  return t == Trans::no ? x[static_cast<std::size_t>(i * cols + j)]
                        : x[static_cast<std::size_t>(j * cols + i)];
}

// ---- matrix products -----------------------------------------------------------------

TEMPLATE_TEST_CASE("cuda gemm matches a double loop for every transpose",
                   "[backend][cuda]",
                   float,
                   bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t m = 37, n = 29, k = 45;
  for (Trans ta : {Trans::no, Trans::yes}) {
    for (Trans tb : {Trans::no, Trans::yes}) {
      const Shape sa = ta == Trans::no ? Shape{m, k} : Shape{k, m};
      const Shape sb = tb == Trans::no ? Shape{k, n} : Shape{n, k};
      auto a = random_tensor<T>(sa.rows, sa.cols, 11);
      auto bm = random_tensor<T>(sb.rows, sb.cols, 12);
      auto c = random_tensor<T>(m, n, 13);
      const double alpha = 0.75, beta = -0.5;
      const auto av = values(a), bv = values(bm), c0 = values(c);
      std::vector<double> ref(static_cast<std::size_t>(m * n));
      for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          double s = 0.0;
          for (std::int64_t p = 0; p < k; ++p) {
            s += op_at(av, sa.cols, ta, i, p) * op_at(bv, sb.cols, tb, p, j);
          }
          ref[static_cast<std::size_t>(i * n + j)] =
              alpha * s + beta * c0[static_cast<std::size_t>(i * n + j)];
        }
      }
      auto da = b.to_device(a);
      auto db = b.to_device(bm);
      auto dc = b.to_device(c);
      b.gemm(dc.view(), cv(da), ta, cv(db), tb, alpha, beta);
      CHECK(rel_error(device_values(b, dc), ref) < tolerance<T>);
    }
  }
}

TEST_CASE("cuda gemm reads strided views and handles k = 0", "[backend][cuda]") {
  CudaBackend<float> b;
  auto big_a = random_tensor<float>(20, 30, 21);
  auto big_b = random_tensor<float>(30, 40, 22);
  auto da = b.to_device(big_a);
  auto db = b.to_device(big_b);
  DTensor<float> dc(20, 50);
  b.fill(dc.view(), 0.0f);
  // c[:, 5:17] = a[:, 3:11] (8 cols) * b[0:8, 7:19]
  auto a = cv(da).col_block(3, 8);
  auto bb = cv(db).row_block(0, 8).col_block(7, 12);
  auto c = dc.view().col_block(5, 12);
  b.gemm(c, a, Trans::no, bb, Trans::no, 1.0, 0.0);
  const auto av = values(big_a), bv = values(big_b), cv_ = device_floats(b, dc);
  std::vector<double> got, ref;
  for (std::int64_t i = 0; i < 20; ++i) {
    for (std::int64_t j = 0; j < 50; ++j) {
      double r = 0.0;
      if (j >= 5 && j < 17) {
        for (std::int64_t p = 0; p < 8; ++p) {
          r += av[static_cast<std::size_t>(i * 30 + 3 + p)] *
               bv[static_cast<std::size_t>(p * 40 + 7 + (j - 5))];
        }
      }
      got.push_back(cv_[static_cast<std::size_t>(i * 50 + j)]);
      ref.push_back(r);
    }
  }
  CHECK(rel_error(got, ref) < 1e-5);

  // k = 0: C = beta C.
  auto c2 = random_tensor<float>(4, 6, 23);
  auto dc2 = b.to_device(c2);
  DTensor<float> empty_a(4, 0), empty_b(0, 6);
  b.gemm(dc2.view(), cv(empty_a), Trans::no, cv(empty_b), Trans::no, 1.0, 0.5);
  auto want = values(c2);
  for (auto& v : want) {
    v *= 0.5;
  }
  CHECK(rel_error(device_floats(b, dc2), want) < 1e-6);
}

TEST_CASE("cuda gemm names the operand whose shape is wrong", "[backend][cuda]") {
  CudaBackend<float> b;
  DTensor<float> c(4, 5), a(4, 3), w(2, 5);
  REQUIRE_THROWS_AS(b.gemm(c.view(), cv(a), Trans::no, cv(w), Trans::no), mmsparse::Error);
  REQUIRE_THROWS_WITH(b.gemm(c.view(), cv(a), Trans::no, cv(w), Trans::no),
                      Catch::Contains("CudaBackend::gemm") && Catch::Contains("b:"));
  DTensor<float> a2(3, 3);
  REQUIRE_THROWS_WITH(b.gemm(c.view(), cv(a2), Trans::no, cv(w), Trans::no), Catch::Contains("a:"));
}

// Reference of grouped_gemm over host doubles: C_e = alpha A_e op(W_e) + beta C_e.
std::vector<double> grouped_reference(const std::vector<double>& a,
                                      const std::vector<double>& w,
                                      std::vector<double> c,
                                      std::int64_t k,
                                      std::int64_t n,
                                      Trans tw,
                                      const std::vector<std::int64_t>& offsets,
                                      double alpha,
                                      double beta) {
  const auto experts = static_cast<std::int64_t>(offsets.size()) - 1;
  const std::int64_t block = tw == Trans::no ? k : n;
  const std::int64_t wcols = tw == Trans::no ? n : k;
  for (std::int64_t e = 0; e < experts; ++e) {
    for (std::int64_t r = offsets[static_cast<std::size_t>(e)];
         r < offsets[static_cast<std::size_t>(e + 1)];
         ++r) {
      for (std::int64_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (std::int64_t p = 0; p < k; ++p) {
          const double wv = tw == Trans::no
                                ? w[static_cast<std::size_t>((e * block + p) * wcols + j)]
                                : w[static_cast<std::size_t>((e * block + j) * wcols + p)];
          s += a[static_cast<std::size_t>(r * k + p)] * wv;
        }
        auto& out = c[static_cast<std::size_t>(r * n + j)];
        out = alpha * s + beta * out;
      }
    }
  }
  return c;
}

TEMPLATE_TEST_CASE("cuda grouped_gemm matches per-expert loops in every mode",
                   "[backend][cuda]",
                   float,
                   bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t k = 24, n = 40;
  const std::vector<std::vector<std::int64_t>> layouts = {
      {0, 7, 7, 30, 41},    // uneven, one empty expert
      {0, 16, 32, 48, 64},  // equal segments: the strided-batched path
  };
  for (const auto mode : {mmsparse::GroupedGemm::per_segment,
                          mmsparse::GroupedGemm::strided_batched,
                          mmsparse::GroupedGemm::cublas_grouped}) {
    b.set_grouped_gemm_mode(mode);
    for (const auto& offsets : layouts) {
      for (Trans tw : {Trans::no, Trans::yes}) {
        const std::int64_t rows =
            offsets.back() + 3;  // rows past the last segment stay as they are
        const std::int64_t experts = static_cast<std::int64_t>(offsets.size()) - 1;
        auto a = random_tensor<T>(rows, k, 31);
        auto w = tw == Trans::no ? random_tensor<T>(experts * k, n, 32)
                                 : random_tensor<T>(experts * n, k, 32);
        auto c = random_tensor<T>(rows, n, 33);
        const double alpha = 1.25, beta = 0.5;
        const auto ref =
            grouped_reference(values(a), values(w), values(c), k, n, tw, offsets, alpha, beta);
        auto da = b.to_device(a);
        auto dw = b.to_device(w);
        auto dc = b.to_device(c);
        b.grouped_gemm(dc.view(), cv(da), cv(dw), tw, offsets, alpha, beta);
        INFO("mode " << static_cast<int>(mode) << ", tw " << static_cast<int>(tw));
        CHECK(rel_error(device_values(b, dc), ref) < tolerance<T>);
      }
    }
  }
}

TEMPLATE_TEST_CASE("cuda grouped_gemm_weight_grad matches per-expert loops",
                   "[backend][cuda]",
                   float,
                   bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t wr = 12, wc = 20;
  for (const auto mode : {mmsparse::GroupedGemm::per_segment,
                          mmsparse::GroupedGemm::strided_batched,
                          mmsparse::GroupedGemm::cublas_grouped}) {
    b.set_grouped_gemm_mode(mode);
    for (const auto& offsets :
         std::vector<std::vector<std::int64_t>>{{0, 5, 5, 19}, {0, 9, 18, 27}}) {
      const std::int64_t experts = static_cast<std::int64_t>(offsets.size()) - 1;
      const std::int64_t rows = offsets.back();
      auto a = random_tensor<T>(rows, wr, 41);
      auto bm = random_tensor<T>(rows, wc, 42);
      auto w = random_tensor<T>(experts * wr, wc, 43);
      const double alpha = 0.5, beta = 0.25;
      const auto av = values(a), bv = values(bm);
      auto ref = values(w);
      for (std::int64_t e = 0; e < experts; ++e) {
        for (std::int64_t i = 0; i < wr; ++i) {
          for (std::int64_t j = 0; j < wc; ++j) {
            double s = 0.0;
            for (std::int64_t r = offsets[static_cast<std::size_t>(e)];
                 r < offsets[static_cast<std::size_t>(e + 1)];
                 ++r) {
              s += av[static_cast<std::size_t>(r * wr + i)] *
                   bv[static_cast<std::size_t>(r * wc + j)];
            }
            auto& out = ref[static_cast<std::size_t>((e * wr + i) * wc + j)];
            out = alpha * s + beta * out;  // an empty expert: beta W_e
          }
        }
      }
      auto da = b.to_device(a);
      auto db = b.to_device(bm);
      auto dw = b.to_device(w);
      b.grouped_gemm_weight_grad(dw.view(), cv(da), cv(db), offsets, alpha, beta);
      INFO("mode " << static_cast<int>(mode));
      CHECK(rel_error(device_values(b, dw), ref) < tolerance<T>);
    }
  }
}

TEST_CASE("cuda grouped_gemm checks its offsets", "[backend][cuda]") {
  CudaBackend<float> b;
  DTensor<float> c(8, 4), a(8, 3), w(6, 4);
  const std::vector<std::int64_t> decreasing = {0, 5, 3};
  REQUIRE_THROWS_WITH(b.grouped_gemm(c.view(), cv(a), cv(w), Trans::no, decreasing),
                      Catch::Contains("grouped_gemm") && Catch::Contains("offsets"));
  const std::vector<std::int64_t> too_long = {0, 4, 9};
  REQUIRE_THROWS_WITH(b.grouped_gemm(c.view(), cv(a), cv(w), Trans::no, too_long),
                      Catch::Contains("offsets"));
  const std::vector<std::int64_t> four = {0, 2, 4, 6, 8};  // 6 weight rows are not 4 blocks
  REQUIRE_THROWS_WITH(b.grouped_gemm(c.view(), cv(a), cv(w), Trans::no, four),
                      Catch::Contains("w:") && Catch::Contains("divisible"));
  DTensor<float> w5(6, 5);  // 2 blocks [3, 5]: op(w) has 5 columns, c has 4
  const std::vector<std::int64_t> two = {0, 4, 8};
  REQUIRE_THROWS_WITH(b.grouped_gemm(c.view(), cv(a), cv(w5), Trans::no, two),
                      Catch::Contains("w:") && Catch::Contains("columns"));
}

// ---- dispersion -----------------------------------------------------------------------

TEMPLATE_TEST_CASE("cuda gather_rows copies rows and zero-fills padding",
                   "[backend][cuda]",
                   float,
                   bf16) {
  using T = TestType;
  CudaBackend<T> b;
  for (std::int64_t d : {16, 7}) {  // 16: 16-byte packs; 7: element by element
    auto src = random_tensor<T>(10, d, 51);
    const std::vector<std::int32_t> index = {3, -1, 9, 0, 3, 7, -1, 2};
    auto dsrc = b.to_device(src);
    auto didx = b.to_device(index);
    DTensor<T> dst(static_cast<std::int64_t>(index.size()), d);
    b.gather_rows(dst.view(), cv(dsrc), cs(didx));
    const auto sv = values(src);
    std::vector<double> ref;
    for (const auto t : index) {
      for (std::int64_t j = 0; j < d; ++j) {
        ref.push_back(t < 0 ? 0.0 : sv[static_cast<std::size_t>(t * d + j)]);
      }
    }
    CHECK(device_values(b, dst) == ref);  // a copy is exact
  }
}

TEMPLATE_TEST_CASE("cuda scatter_add_rows adds in slot order, deterministically",
                   "[backend][cuda]",
                   float,
                   bf16) {
  using T = TestType;
  CudaBackend<T> b;
  for (std::int64_t d : {24, 5}) {
    const std::int64_t rows = 9, slots = 40;
    mmsparse::Rng rng(61);
    std::vector<std::int32_t> index(static_cast<std::size_t>(slots));
    for (auto& i : index) {
      i = static_cast<std::int32_t>(rng.integer(-1, rows));  // repeats and -1 (dropped)
    }
    auto src = random_tensor<T>(slots, d, 62);
    auto w = random_tensor<float>(slots, 1, 63, 0.1, 1.0);
    auto dst0 = random_tensor<T>(rows, d, 64);
    for (bool weighted : {true, false}) {
      const auto sv = values(src), wv = values(w);
      auto ref = values(dst0);
      for (std::int64_t r = 0; r < slots; ++r) {
        const auto t = index[static_cast<std::size_t>(r)];
        if (t < 0) {
          continue;
        }
        for (std::int64_t j = 0; j < d; ++j) {
          ref[static_cast<std::size_t>(t * d + j)] +=
              (weighted ? wv[static_cast<std::size_t>(r)] : 1.0) *
              sv[static_cast<std::size_t>(r * d + j)];
        }
      }
      auto dsrc = b.to_device(src);
      auto didx = b.to_device(index);
      auto dw = b.to_device(w);
      const Span<const float, device_space> weight =
          weighted ? cs(dw) : Span<const float, device_space>{};
      auto first = b.to_device(dst0);
      auto second = b.to_device(dst0);
      b.scatter_add_rows(first.view(), cv(dsrc), cs(didx), weight);
      b.scatter_add_rows(second.view(), cv(dsrc), cs(didx), weight);
      const auto h1 = b.to_host(first);
      const auto h2 = b.to_host(second);
      CHECK(rel_error(values(h1), ref) < tolerance<T>);
      CHECK(std::memcmp(h1.data(), h2.data(), h1.bytes()) == 0);  // bitwise reproducible
    }
  }
}

TEST_CASE("cuda scatter_add_rows stops allocating once the arena is warm", "[backend][cuda]") {
  CudaBackend<float> b;
  auto src = random_tensor<float>(64, 32, 71);
  std::vector<std::int32_t> index(64);
  for (std::size_t i = 0; i < index.size(); ++i) {
    index[i] = static_cast<std::int32_t>((i * 7) % 20);
  }
  auto dsrc = b.to_device(src);
  auto didx = b.to_device(index);
  DTensor<float> dst(20, 32);
  b.fill(dst.view(), 0.0f);
  b.scatter_add_rows(dst.view(), cv(dsrc), cs(didx), Span<const float, device_space>{});
  const auto warm = b.workspace().allocations();
  for (int i = 0; i < 3; ++i) {
    b.scatter_add_rows(dst.view(), cv(dsrc), cs(didx), Span<const float, device_space>{});
  }
  b.synchronize();
  CHECK(b.workspace().allocations() == warm);
  CHECK(b.workspace().high_water() <= CudaBackend<float>::scatter_add_rows_workspace_bytes(64, 20));
}

TEMPLATE_TEST_CASE("cuda gathered_row_dot", "[backend][cuda]", float, bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t rows = 13, d = 70;
  auto a = random_tensor<T>(rows, d, 81);
  auto bm = random_tensor<T>(6, d, 82);
  const std::vector<std::int32_t> index = {0, 5, 2, -1, 2, 1, 3, 4, 5, 0, -1, 1, 3};
  auto da = b.to_device(a);
  auto db = b.to_device(bm);
  auto didx = b.to_device(index);
  DTensor<float> out(rows, 1);
  b.gathered_row_dot(out.span(), cv(da), cv(db), cs(didx));
  const auto av = values(a), bv = values(bm);
  std::vector<double> ref;
  for (std::int64_t r = 0; r < rows; ++r) {
    double s = 0.0;
    const auto t = index[static_cast<std::size_t>(r)];
    for (std::int64_t j = 0; t >= 0 && j < d; ++j) {
      s += av[static_cast<std::size_t>(r * d + j)] * bv[static_cast<std::size_t>(t * d + j)];
    }
    ref.push_back(s);
  }
  CHECK(rel_error(device_floats(b, out), ref) < 1e-5);  // fp32 accumulation of exact products
}

TEST_CASE("cuda gather_values and scatter_values", "[backend][cuda]") {
  CudaBackend<float> b;
  const std::vector<std::int32_t> src = {10, 11, 12, 13, 14};
  const std::vector<std::int32_t> index = {4, -1, 0, 2, -1, 1};
  auto dsrc = b.to_device(src);
  auto didx = b.to_device(index);
  DTensor<std::int32_t> dst(6, 1);
  b.gather_values(dst.span(), cs(dsrc), cs(didx), std::int32_t{-7});
  CHECK(host_ints(b, dst) == std::vector<std::int32_t>{14, -7, 10, 12, -7, 11});

  const std::vector<float> fsrc = {0.5f, 1.5f, 2.5f, 3.5f};
  const std::vector<std::int32_t> perm = {2, -1, 0, 3};
  auto dfsrc = b.to_device(fsrc);
  auto dperm = b.to_device(perm);
  DTensor<float> fdst(4, 1);
  b.fill(fdst.view(), 9.0f);
  b.scatter_values(fdst.span(), cs(dfsrc), cs(dperm));
  CHECK(device_floats(b, fdst) == std::vector<double>{2.5, 9.0, 0.5, 3.5});
}

// ---- routing -----------------------------------------------------------------------------

// Scores with many exact ties (quarters) and signed zeros.
Tensor<float> tied_scores(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  mmsparse::Rng rng(seed);
  Tensor<float> s(rows, cols);
  for (std::int64_t i = 0; i < s.size(); ++i) {
    const double q = std::round(rng.uniform(-2.0, 2.0) * 2.0) / 4.0;
    s.data()[i] = q == 0.0 && i % 2 == 1 ? -0.0f : static_cast<float>(q);
  }
  return s;
}

// (score desc, index asc): the tie rule of every backend.
bool ranks_before(double sa, std::int64_t a, double sb, std::int64_t b) {
  return sa > sb || (sa == sb && a < b);
}

TEST_CASE("cuda topk_rows picks the k best experts, ties to the lower index", "[backend][cuda]") {
  CudaBackend<float> b;
  const std::int64_t n = 50, e = 8;
  auto scores = tied_scores(n, e, 91);
  auto ds = b.to_device(scores);
  for (std::int64_t k : {1, 2, 8}) {
    DTensor<std::int32_t> index(n * k, 1);
    DTensor<float> value(n * k, 1);
    b.topk_rows(index.span(), value.span(), cv(ds), k);
    std::vector<std::int32_t> ref_index;
    std::vector<double> ref_value;
    for (std::int64_t t = 0; t < n; ++t) {
      std::vector<std::int64_t> order(static_cast<std::size_t>(e));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](std::int64_t x, std::int64_t y) {
        return ranks_before(scores(t, x), x, scores(t, y), y);
      });
      for (std::int64_t j = 0; j < k; ++j) {
        ref_index.push_back(static_cast<std::int32_t>(order[static_cast<std::size_t>(j)]));
        ref_value.push_back(scores(t, order[static_cast<std::size_t>(j)]));
      }
    }
    CHECK(host_ints(b, index) == ref_index);
    CHECK(device_floats(b, value) == ref_value);
  }
}

TEST_CASE("cuda topk_cols picks each expert's C best tokens in token order", "[backend][cuda]") {
  CudaBackend<float> b;
  const std::int64_t n = 300, e = 6;
  auto scores = tied_scores(n, e, 101);
  auto ds = b.to_device(scores);
  for (std::int64_t c : {1, 37, 300}) {
    DTensor<std::int32_t> index(e * c, 1);
    b.topk_cols(index.span(), cv(ds), c);
    std::vector<std::int32_t> ref;
    for (std::int64_t x = 0; x < e; ++x) {
      std::vector<std::int64_t> order(static_cast<std::size_t>(n));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](std::int64_t p, std::int64_t q) {
        return ranks_before(scores(p, x), p, scores(q, x), q);
      });
      order.resize(static_cast<std::size_t>(c));
      std::sort(order.begin(), order.end());
      for (auto t : order) {
        ref.push_back(static_cast<std::int32_t>(t));
      }
    }
    CHECK(host_ints(b, index) == ref);
  }
  DTensor<std::int32_t> small(5, 1);
  REQUIRE_THROWS_WITH(b.topk_cols(small.span(), cv(ds), 2), Catch::Contains("index"));
  REQUIRE_THROWS_WITH(b.topk_cols(small.span(), cv(ds), n + 1), Catch::Contains("c:"));
}

TEST_CASE("cuda bucket_sort is a stable counting sort with host offsets", "[backend][cuda]") {
  CudaBackend<float> b;
  const std::int64_t buckets = 5;
  mmsparse::Rng rng(111);
  std::vector<std::int32_t> keys(200);
  for (auto& k : keys) {
    k = static_cast<std::int32_t>(rng.integer(-1, buckets));
  }
  auto dkeys = b.to_device(keys);
  DTensor<std::int32_t> order(200, 1);
  std::vector<std::int64_t> offsets;
  b.bucket_sort(order.span(), offsets, cs(dkeys), buckets);
  std::vector<std::int64_t> ref_offsets(buckets + 1, 0);
  std::vector<std::int32_t> ref_order;
  for (std::int32_t bucket = 0; bucket < buckets; ++bucket) {
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == bucket) {
        ref_order.push_back(static_cast<std::int32_t>(i));
      }
    }
    ref_offsets[static_cast<std::size_t>(bucket + 1)] = static_cast<std::int64_t>(ref_order.size());
  }
  CHECK(offsets == ref_offsets);
  auto got = host_ints(b, order);
  got.resize(ref_order.size());
  CHECK(got == ref_order);

  DTensor<std::int32_t> tiny(3, 1);
  REQUIRE_THROWS_WITH(b.bucket_sort(tiny.span(), offsets, cs(dkeys), buckets),
                      Catch::Contains("bucket_sort") && Catch::Contains("order"));
}

TEST_CASE("cuda pad_segments, dense_slots, iota_mod and map_index", "[backend][cuda]") {
  CudaBackend<float> b;
  const std::vector<std::int64_t> src = {0, 3, 3, 5};
  const std::vector<std::int64_t> dst = {0, 4, 6, 8};
  DTensor<std::int32_t> slot(8, 1);
  b.pad_segments(slot.span(), dst, src);
  CHECK(host_ints(b, slot) == std::vector<std::int32_t>{0, 1, 2, -1, -1, -1, 3, 4});
  REQUIRE_THROWS_WITH(b.pad_segments(slot.span(), std::vector<std::int64_t>{0, 2, 4, 8}, src),
                      Catch::Contains("dst_offsets"));

  const std::vector<std::int32_t> key = {2, 0, 3, 1, 2};  // items 0-2 segment 0, 3-4 segment 1
  const std::vector<std::int64_t> seg = {0, 3, 5};
  auto dkey = b.to_device(key);
  DTensor<std::int32_t> grid(8, 1);
  b.dense_slots(grid.span(), cs(dkey), seg, 4);
  CHECK(host_ints(b, grid) == std::vector<std::int32_t>{1, -1, 0, 2, -1, 3, 4, -1});

  DTensor<std::int32_t> iota(7, 1);
  b.iota_mod(iota.span(), 3);
  CHECK(host_ints(b, iota) == std::vector<std::int32_t>{0, 1, 2, 0, 1, 2, 0});

  const std::vector<std::int32_t> flat = {7, -1, 0, 13};
  auto dflat = b.to_device(flat);
  DTensor<std::int32_t> mapped(4, 1);
  b.map_index(mapped.span(), cs(dflat), 4, 10);
  CHECK(host_ints(b, mapped) == std::vector<std::int32_t>{11, -1, 10, 13});
}

TEST_CASE("cuda transpose of int32 and float", "[backend][cuda]") {
  CudaBackend<float> b;
  auto x = random_tensor<float>(5, 9, 121);
  auto dx = b.to_device(x);
  DTensor<float> dt(9, 5);
  b.transpose(dt.view(), cv(dx));
  const auto xv = values(x), tv = device_floats(b, dt);
  for (std::int64_t i = 0; i < 5; ++i) {
    for (std::int64_t j = 0; j < 9; ++j) {
      CHECK(tv[static_cast<std::size_t>(j * 5 + i)] == xv[static_cast<std::size_t>(i * 9 + j)]);
    }
  }
  std::vector<std::int32_t> ints(12);
  std::iota(ints.begin(), ints.end(), 0);
  auto hi = Tensor<std::int32_t>::from(ints, 4);  // [3, 4]
  auto di = b.to_device(hi);
  DTensor<std::int32_t> ti(4, 3);
  b.transpose(ti.view(), cv(di));
  CHECK(host_ints(b, ti) == std::vector<std::int32_t>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
}

// ---- router math ----------------------------------------------------------------------------

TEST_CASE("cuda find_nonfinite returns the first bad entry in row-major order", "[backend][cuda]") {
  CudaBackend<float> b;
  auto x = random_tensor<float>(30, 7, 131);
  auto dx = b.to_device(x);
  CHECK(b.find_nonfinite(cv(dx)) == -1);
  x(20, 3) = std::numeric_limits<float>::infinity();
  x(11, 6) = std::numeric_limits<float>::quiet_NaN();
  x(25, 0) = -std::numeric_limits<float>::infinity();
  auto dbad = b.to_device(x);
  CHECK(b.find_nonfinite(cv(dbad)) == 11 * 7 + 6);
}

TEST_CASE("cuda add_logistic_noise draws the counter-based noise of core/rng.hpp",
          "[backend][cuda]") {
  CudaBackend<float> b;
  auto y = random_tensor<float>(12, 5, 141);
  const std::vector<std::int32_t> row_id = {4, 0, 9, 1, 3, 3, 7, 2, 8, 5, 6, 11};
  const std::uint64_t seed = 0x5eed;
  const std::int64_t stride = 16, offset = 3;
  for (bool ids : {true, false}) {
    auto dy = b.to_device(y);
    auto did = b.to_device(row_id);
    b.add_logistic_noise(
        dy.view(), ids ? cs(did) : Span<const std::int32_t, device_space>{}, seed, stride, offset);
    std::vector<double> ref;
    for (std::int64_t r = 0; r < 12; ++r) {
      const std::int64_t id = ids ? row_id[static_cast<std::size_t>(r)] : r;
      for (std::int64_t j = 0; j < 5; ++j) {
        const auto counter = static_cast<std::uint64_t>(id * stride + offset + j);
        ref.push_back(static_cast<double>(
            y(r, j) + static_cast<float>(mmsparse::logistic_noise(seed, counter))));
      }
    }
    CHECK(rel_error(device_floats(b, dy), ref) < 1e-6);
  }
}

TEST_CASE("cuda sigmoid, softmax and their backwards", "[backend][cuda]") {
  CudaBackend<float> b;
  const std::int64_t n = 33, e = 12;
  auto x = random_tensor<float>(n, e, 151, -8.0, 8.0);
  auto dy = random_tensor<float>(n, e, 152);
  auto dx_ = b.to_device(x);
  auto ddy = b.to_device(dy);
  const auto xv = values(x), gv = values(dy);

  DTensor<float> s(n, e), ds(n, e);
  b.sigmoid(s.view(), cv(dx_));
  b.sigmoid_backward(ds.view(), cv(ddy), cv(s));
  std::vector<double> ref_s, ref_ds;
  for (std::size_t i = 0; i < xv.size(); ++i) {
    const double v = 1.0 / (1.0 + std::exp(-xv[i]));
    ref_s.push_back(v);
    ref_ds.push_back(gv[i] * v * (1.0 - v));
  }
  CHECK(rel_error(device_floats(b, s), ref_s) < 1e-5);
  CHECK(rel_error(device_floats(b, ds), ref_ds) < 1e-5);

  DTensor<float> p(n, e), dp(n, e), lse(n, 1);
  b.softmax_rows(p.view(), cv(dx_));
  b.softmax_rows_backward(dp.view(), cv(ddy), cv(p));
  b.logsumexp_rows(lse.span(), cv(dx_));
  std::vector<double> ref_p, ref_dp, ref_lse;
  for (std::int64_t r = 0; r < n; ++r) {
    double m = -1e300, z = 0.0;
    for (std::int64_t j = 0; j < e; ++j) {
      m = std::max(m, xv[static_cast<std::size_t>(r * e + j)]);
    }
    for (std::int64_t j = 0; j < e; ++j) {
      z += std::exp(xv[static_cast<std::size_t>(r * e + j)] - m);
    }
    ref_lse.push_back(m + std::log(z));
    double dot = 0.0;
    std::vector<double> row;
    for (std::int64_t j = 0; j < e; ++j) {
      row.push_back(std::exp(xv[static_cast<std::size_t>(r * e + j)] - m) / z);
      dot += row.back() * gv[static_cast<std::size_t>(r * e + j)];
    }
    for (std::int64_t j = 0; j < e; ++j) {
      ref_p.push_back(row[static_cast<std::size_t>(j)]);
      ref_dp.push_back(row[static_cast<std::size_t>(j)] *
                       (gv[static_cast<std::size_t>(r * e + j)] - dot));
    }
  }
  CHECK(rel_error(device_floats(b, p), ref_p) < 1e-5);
  CHECK(rel_error(device_floats(b, dp), ref_dp) < 1e-5);
  CHECK(rel_error(device_floats(b, lse), ref_lse) < 1e-5);
}

TEST_CASE("cuda normalize_rows, its backward and scatter_add_cols", "[backend][cuda]") {
  CudaBackend<float> b;
  const std::int64_t n = 21, k = 3;
  auto x = random_tensor<float>(n, k, 161, 0.1, 1.0);
  auto dy = random_tensor<float>(n, k, 162);
  auto dxx = b.to_device(x);
  auto ddy = b.to_device(dy);
  DTensor<float> y(n, k), dx(n, k);
  b.normalize_rows(y.view(), cv(dxx));
  b.normalize_rows_backward(dx.view(), cv(ddy), cv(y), cv(dxx));
  const auto xv = values(x), gv = values(dy);
  std::vector<double> ref_y, ref_dx;
  for (std::int64_t r = 0; r < n; ++r) {
    double s = 0.0, dot = 0.0;
    for (std::int64_t j = 0; j < k; ++j) {
      s += xv[static_cast<std::size_t>(r * k + j)];
    }
    for (std::int64_t j = 0; j < k; ++j) {
      dot += gv[static_cast<std::size_t>(r * k + j)] * xv[static_cast<std::size_t>(r * k + j)] / s;
    }
    for (std::int64_t j = 0; j < k; ++j) {
      ref_y.push_back(xv[static_cast<std::size_t>(r * k + j)] / s);
      ref_dx.push_back((gv[static_cast<std::size_t>(r * k + j)] - dot) / s);
    }
  }
  CHECK(rel_error(device_floats(b, y), ref_y) < 1e-5);
  CHECK(rel_error(device_floats(b, dx), ref_dx) < 1e-5);

  // dst(r, col(r, j)) += src(r, j), repeated columns and -1.
  const std::int64_t e = 5;
  auto dst0 = random_tensor<float>(n, e, 163);
  std::vector<std::int32_t> col(static_cast<std::size_t>(n * k));
  mmsparse::Rng rng(164);
  for (auto& c : col) {
    c = static_cast<std::int32_t>(rng.integer(-1, e));
  }
  auto dcol = b.to_device(Tensor<std::int32_t>::from(col, k));
  auto ddst = b.to_device(dst0);
  b.scatter_add_cols(ddst.view(), cv(ddy), cv(dcol));
  auto ref = values(dst0);
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t j = 0; j < k; ++j) {
      const auto c = col[static_cast<std::size_t>(r * k + j)];
      if (c >= 0) {
        ref[static_cast<std::size_t>(r * e + c)] += gv[static_cast<std::size_t>(r * k + j)];
      }
    }
  }
  CHECK(rel_error(device_floats(b, ddst), ref) < 1e-6);
}

TEST_CASE("cuda copy_to_host and copy_from_host", "[backend][cuda]") {
  CudaBackend<float> b;
  const std::vector<float> src = {1.5f, -2.0f, 3.25f};
  DTensor<float> d(3, 1);
  b.copy_from_host(d.span(), std::span<const float>(src));
  std::vector<float> back(3);
  b.copy_to_host(std::span<float>(back), cs(d));
  CHECK(back == src);
  std::vector<float> small(2);
  REQUIRE_THROWS_WITH(b.copy_to_host(std::span<float>(small), cs(d)), Catch::Contains("dst"));
}

// ---- element-wise ------------------------------------------------------------------------

TEMPLATE_TEST_CASE("cuda fill, copy, axpy and scale_rows", "[backend][cuda]", float, bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t n = 17, d = 40;
  auto x = random_tensor<T>(n, d, 171);
  auto y = random_tensor<T>(n, d, 172);
  auto w = random_tensor<float>(n, 1, 173);
  auto dx = b.to_device(x);
  auto dy = b.to_device(y);
  auto dw = b.to_device(w);
  const auto xv = values(x), yv = values(y), wv = values(w);

  DTensor<T> f(n, d);
  b.fill(f.view(), from_d<T>(0.375));
  CHECK(device_values(b, f) == std::vector<double>(static_cast<std::size_t>(n * d), 0.375));

  b.axpy(dy.view(), cv(dx), -1.5);
  std::vector<double> ref;
  for (std::size_t i = 0; i < xv.size(); ++i) {
    ref.push_back(yv[i] - 1.5 * xv[i]);
  }
  CHECK(rel_error(device_values(b, dy), ref) < tolerance<T>);

  auto ds = b.to_device(x);
  b.scale_rows(ds.view(), cs(dw));
  ref.clear();
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      ref.push_back(xv[static_cast<std::size_t>(i * d + j)] * wv[static_cast<std::size_t>(i)]);
    }
  }
  CHECK(rel_error(device_values(b, ds), ref) < tolerance<T>);

  // copy with conversion: T -> float is exact; float -> bf16 rounds to nearest even.
  DTensor<float> xf(n, d);
  b.copy(xf.view(), cv(dx));
  CHECK(device_floats(b, xf) == xv);
  DTensor<bf16> xb(n, d);
  b.copy(xb.view(), cv(xf));
  const auto hb = b.to_host(xb);
  for (std::int64_t i = 0; i < n * d; ++i) {
    CHECK(hb.data()[i].bits == bf16(static_cast<float>(xv[static_cast<std::size_t>(i)])).bits);
  }
}

TEMPLATE_TEST_CASE("cuda swiglu and swiglu_backward", "[backend][cuda]", float, bf16) {
  using T = TestType;
  CudaBackend<T> b;
  for (std::int64_t f : {64, 13}) {
    const std::int64_t n = 9;
    auto a = random_tensor<T>(n, f, 181, -4.0, 4.0);
    auto g = random_tensor<T>(n, f, 182);
    auto dh = random_tensor<T>(n, f, 183);
    auto da_ = b.to_device(a);
    auto dg_ = b.to_device(g);
    auto ddh = b.to_device(dh);
    DTensor<T> h(n, f), da(n, f), dg(n, f);
    b.swiglu(h.view(), cv(da_), cv(dg_));
    b.swiglu_backward(da.view(), dg.view(), cv(ddh), cv(da_), cv(dg_));
    const auto av = values(a), gv = values(g), dv = values(dh);
    std::vector<double> ref_h, ref_da, ref_dg;
    for (std::size_t i = 0; i < av.size(); ++i) {
      const double s = 1.0 / (1.0 + std::exp(-av[i]));
      ref_h.push_back(av[i] * s * gv[i]);
      ref_da.push_back(dv[i] * gv[i] * s * (1.0 + av[i] * (1.0 - s)));
      ref_dg.push_back(dv[i] * av[i] * s);
    }
    CHECK(rel_error(device_values(b, h), ref_h) < tolerance<T>);
    CHECK(rel_error(device_values(b, da), ref_da) < tolerance<T>);
    CHECK(rel_error(device_values(b, dg), ref_dg) < tolerance<T>);
  }
}

// ---- norms and loss ----------------------------------------------------------------------

TEMPLATE_TEST_CASE("cuda rms_norm and its backward", "[backend][cuda]", float, bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t n = 150, d = 96;  // 150 rows: three column-sum chunks
  const double eps = 1e-5;
  auto x = random_tensor<T>(n, d, 191);
  auto w = random_tensor<T>(1, d, 192, 0.5, 1.5);
  auto dy = random_tensor<T>(n, d, 193);
  auto dx0 = random_tensor<T>(n, d, 194);
  auto dw0 = random_tensor<T>(1, d, 195);
  auto dxx = b.to_device(x);
  auto dww = b.to_device(w);
  auto ddy = b.to_device(dy);
  auto ddx = b.to_device(dx0);
  auto ddw = b.to_device(dw0);
  DTensor<T> y(n, d);
  DTensor<float> rstd(n, 1);
  b.rms_norm(y.view(), rstd.span(), cv(dxx), cv(dww), eps);
  b.rms_norm_backward(ddx.view(), ddw.view(), cv(ddy), cv(dxx), cv(dww), cs(rstd));
  const auto xv = values(x), wv = values(w), gv = values(dy);
  std::vector<double> ref_y, ref_r, ref_dx = values(dx0), ref_dw = values(dw0);
  for (std::int64_t i = 0; i < n; ++i) {
    double ss = 0.0, dot = 0.0;
    for (std::int64_t j = 0; j < d; ++j) {
      const auto at = static_cast<std::size_t>(i * d + j);
      ss += xv[at] * xv[at];
      dot += wv[static_cast<std::size_t>(j)] * gv[at] * xv[at];
    }
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    ref_r.push_back(r);
    for (std::int64_t j = 0; j < d; ++j) {
      const auto at = static_cast<std::size_t>(i * d + j);
      ref_y.push_back(xv[at] * r * wv[static_cast<std::size_t>(j)]);
      ref_dx[at] += r * wv[static_cast<std::size_t>(j)] * gv[at] -
                    dot * r * r * r / static_cast<double>(d) * xv[at];
      ref_dw[static_cast<std::size_t>(j)] += gv[at] * xv[at] * r;
    }
  }
  CHECK(rel_error(device_values(b, y), ref_y) < tolerance<T>);
  CHECK(rel_error(device_floats(b, rstd), ref_r) < 1e-5);
  CHECK(rel_error(device_values(b, ddx), ref_dx) < tolerance<T>);
  CHECK(rel_error(device_values(b, ddw), ref_dw) < tolerance<T>);
}

TEMPLATE_TEST_CASE("cuda layer_norm and its backward, with and without bias",
                   "[backend][cuda]",
                   float,
                   bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t n = 70, d = 48;
  const double eps = 1e-5;
  for (bool with_bias : {true, false}) {
    auto x = random_tensor<T>(n, d, 201, -2.0, 3.0);
    auto w = random_tensor<T>(1, d, 202, 0.5, 1.5);
    auto bias = random_tensor<T>(1, d, 203);
    auto dy = random_tensor<T>(n, d, 204);
    auto dx0 = random_tensor<T>(n, d, 205);
    auto dw0 = random_tensor<T>(1, d, 206);
    auto db0 = random_tensor<T>(1, d, 207);
    auto dxx = b.to_device(x);
    auto dww = b.to_device(w);
    auto dbias = b.to_device(bias);
    auto ddy = b.to_device(dy);
    auto ddx = b.to_device(dx0);
    auto ddw = b.to_device(dw0);
    auto ddb = b.to_device(db0);
    const View<const T, device_space> bias_view =
        with_bias ? cv(dbias) : View<const T, device_space>{};
    const View<T, device_space> dbias_view = with_bias ? ddb.view() : View<T, device_space>{};
    DTensor<T> y(n, d);
    DTensor<float> mean(n, 1), rstd(n, 1);
    b.layer_norm(y.view(), mean.span(), rstd.span(), cv(dxx), cv(dww), bias_view, eps);
    b.layer_norm_backward(
        ddx.view(), ddw.view(), dbias_view, cv(ddy), cv(dxx), cv(dww), cs(mean), cs(rstd));
    const auto xv = values(x), wv = values(w), bv = values(bias), gv = values(dy);
    std::vector<double> ref_y, ref_dx = values(dx0), ref_dw = values(dw0), ref_db = values(db0);
    for (std::int64_t i = 0; i < n; ++i) {
      double m = 0.0, v = 0.0, mg = 0.0, mgx = 0.0;
      for (std::int64_t j = 0; j < d; ++j) {
        m += xv[static_cast<std::size_t>(i * d + j)];
      }
      m /= static_cast<double>(d);
      for (std::int64_t j = 0; j < d; ++j) {
        const double c = xv[static_cast<std::size_t>(i * d + j)] - m;
        v += c * c;
      }
      const double r = 1.0 / std::sqrt(v / static_cast<double>(d) + eps);
      for (std::int64_t j = 0; j < d; ++j) {
        const auto at = static_cast<std::size_t>(i * d + j);
        const double g = wv[static_cast<std::size_t>(j)] * gv[at];
        mg += g;
        mgx += g * (xv[at] - m) * r;
      }
      mg /= static_cast<double>(d);
      mgx /= static_cast<double>(d);
      for (std::int64_t j = 0; j < d; ++j) {
        const auto at = static_cast<std::size_t>(i * d + j);
        const double xh = (xv[at] - m) * r;
        ref_y.push_back(xh * wv[static_cast<std::size_t>(j)] +
                        (with_bias ? bv[static_cast<std::size_t>(j)] : 0.0));
        ref_dx[at] += r * (wv[static_cast<std::size_t>(j)] * gv[at] - mg - xh * mgx);
        ref_dw[static_cast<std::size_t>(j)] += gv[at] * xh;
        ref_db[static_cast<std::size_t>(j)] += gv[at];
      }
    }
    CHECK(rel_error(device_values(b, y), ref_y) < tolerance<T>);
    CHECK(rel_error(device_values(b, ddx), ref_dx) < tolerance<T>);
    CHECK(rel_error(device_values(b, ddw), ref_dw) < tolerance<T>);
    CHECK(rel_error(device_values(b, ddb), with_bias ? ref_db : values(db0)) < tolerance<T>);
  }
}

TEMPLATE_TEST_CASE("cuda cross_entropy and its backward", "[backend][cuda]", float, bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t n = 11, v = 700;
  auto logits = random_tensor<T>(n, v, 211, -3.0, 3.0);
  mmsparse::Rng rng(212);
  std::vector<std::int32_t> target(static_cast<std::size_t>(n));
  for (auto& t : target) {
    t = static_cast<std::int32_t>(rng.integer(0, v));
  }
  auto dd0 = random_tensor<T>(n, v, 213, -0.01, 0.01);
  auto dl = b.to_device(logits);
  auto dt = b.to_device(target);
  auto dd = b.to_device(dd0);
  DTensor<float> loss(n, 1), lse(n, 1);
  b.cross_entropy(loss.span(), lse.span(), cv(dl), cs(dt));
  b.cross_entropy_backward(dd.view(), cv(dl), cs(lse), cs(dt), 0.5);
  const auto lv = values(logits);
  std::vector<double> ref_loss, ref_lse, ref_d = values(dd0);
  for (std::int64_t i = 0; i < n; ++i) {
    double m = -1e300, s = 0.0;
    for (std::int64_t j = 0; j < v; ++j) {
      m = std::max(m, lv[static_cast<std::size_t>(i * v + j)]);
    }
    for (std::int64_t j = 0; j < v; ++j) {
      s += std::exp(lv[static_cast<std::size_t>(i * v + j)] - m);
    }
    const double z = m + std::log(s);
    const auto t = target[static_cast<std::size_t>(i)];
    ref_lse.push_back(z);
    ref_loss.push_back(z - lv[static_cast<std::size_t>(i * v + t)]);
    for (std::int64_t j = 0; j < v; ++j) {
      const auto at = static_cast<std::size_t>(i * v + j);
      ref_d[at] += 0.5 * (std::exp(lv[at] - z) - (j == t ? 1.0 : 0.0));
    }
  }
  CHECK(rel_error(device_floats(b, loss), ref_loss) < 1e-5);
  CHECK(rel_error(device_floats(b, lse), ref_lse) < 1e-5);
  CHECK(rel_error(device_values(b, dd), ref_d) < tolerance<T>);
}

// ---- attention ---------------------------------------------------------------------------

TEMPLATE_TEST_CASE("cuda rope and rope_backward, in place too", "[backend][cuda]", float, bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t n = 10, head_dim = 8, heads = 3, d = heads * head_dim;
  const double theta = 10000.0;
  auto x = random_tensor<T>(n, d, 221);
  const std::vector<std::int32_t> pos = {0, 1, 2, 5, 9, 100, 1000, 4095, 7, 3};
  auto dxx = b.to_device(x);
  auto dpos = b.to_device(pos);
  DTensor<T> y(n, d);
  b.rope(y.view(), cv(dxx), cs(dpos), head_dim, theta);
  const auto xv = values(x);
  std::vector<double> ref(xv.size());
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t i = 0; i < head_dim / 2; ++i) {
        const double angle = pos[static_cast<std::size_t>(r)] *
                             std::pow(theta, -2.0 * static_cast<double>(i) / head_dim);
        const auto j = static_cast<std::size_t>(r * d + h * head_dim + 2 * i);
        ref[j] = std::cos(angle) * xv[j] - std::sin(angle) * xv[j + 1];
        ref[j + 1] = std::sin(angle) * xv[j] + std::cos(angle) * xv[j + 1];
      }
    }
  }
  CHECK(rel_error(device_values(b, y), ref) < tolerance<T>);
  // The backward rotates back: rope_backward(rope(x)) = x, here in place.
  b.rope_backward(y.view(), cv(y), cs(dpos), head_dim, theta);
  CHECK(rel_error(device_values(b, y), xv) < 2 * tolerance<T>);
}

TEMPLATE_TEST_CASE("cuda masked_softmax_rows and its backward", "[backend][cuda]", float, bf16) {
  using T = TestType;
  CudaBackend<T> b;
  const std::int64_t n = 9, cols = 300;
  const double scale = 0.125;
  auto x = random_tensor<T>(n, cols, 231, -10.0, 10.0);
  auto dy = random_tensor<T>(n, cols, 232);
  const std::vector<std::int32_t> limit = {1, 300, 0, 17, 299, -3, 500, 64, 150};
  auto dxx = b.to_device(x);
  auto ddy = b.to_device(dy);
  auto dlim = b.to_device(limit);
  DTensor<T> y(n, cols), dx(n, cols);
  b.masked_softmax_rows(y.view(), cv(dxx), cs(dlim), scale);
  b.masked_softmax_rows_backward(dx.view(), cv(y), cv(ddy), cs(dlim), scale);
  const auto xv = values(x), gv = values(dy);
  const auto yv = device_values(b, y);
  std::vector<double> ref_y, ref_dx;
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t lim = std::clamp<std::int64_t>(limit[static_cast<std::size_t>(r)], 0, cols);
    double m = -1e300, s = 0.0, dot = 0.0;
    for (std::int64_t j = 0; j < lim; ++j) {
      m = std::max(m, scale * xv[static_cast<std::size_t>(r * cols + j)]);
    }
    for (std::int64_t j = 0; j < lim; ++j) {
      s += std::exp(scale * xv[static_cast<std::size_t>(r * cols + j)] - m);
    }
    for (std::int64_t j = 0; j < lim; ++j) {  // the backward of the device's y
      dot +=
          yv[static_cast<std::size_t>(r * cols + j)] * gv[static_cast<std::size_t>(r * cols + j)];
    }
    for (std::int64_t j = 0; j < cols; ++j) {
      const auto at = static_cast<std::size_t>(r * cols + j);
      ref_y.push_back(j < lim ? std::exp(scale * xv[at] - m) / s : 0.0);
      ref_dx.push_back(j < lim ? scale * yv[at] * (gv[at] - dot) : 0.0);
    }
  }
  CHECK(rel_error(yv, ref_y) < tolerance<T>);
  CHECK(rel_error(device_values(b, dx), ref_dx) < tolerance<T>);
}

// ---- argument checks and construction -----------------------------------------------------

TEST_CASE("cuda primitives name the argument whose shape is wrong", "[backend][cuda]") {
  CudaBackend<float> b;
  DTensor<float> x(4, 6), y(4, 5), w(3, 1);
  DTensor<std::int32_t> idx(3, 1);
  REQUIRE_THROWS_WITH(b.gather_rows(y.view(), cv(x), cs(idx)),
                      Catch::Contains("CudaBackend::gather_rows") && Catch::Contains("src.cols"));
  REQUIRE_THROWS_WITH(b.scatter_add_rows(x.view(), cv(x), cs(idx), cs(w)),
                      Catch::Contains("index"));
  REQUIRE_THROWS_WITH(b.swiglu(y.view(), cv(x), cv(x)), Catch::Contains("CudaBackend::swiglu"));
  REQUIRE_THROWS_WITH(b.scale_rows(x.view(), cs(w)), Catch::Contains("w:"));
  DTensor<float> rstd(4, 1), nw(1, 5);
  REQUIRE_THROWS_WITH(b.rms_norm(x.view(), rstd.span(), cv(x), cv(nw), 1e-5),
                      Catch::Contains("rms_norm") && Catch::Contains("w:"));
  REQUIRE_THROWS_AS(b.topk_rows(idx.span(), w.span(), cv(x), 7), mmsparse::Error);
}

TEST_CASE("CudaBackend rejects a device that does not exist", "[backend][cuda]") {
  mmsparse::CudaOptions options;
  options.device = 1 << 20;
  REQUIRE_THROWS_WITH(CudaBackend<float>(options), Catch::Contains("options.device"));
}

}  // namespace

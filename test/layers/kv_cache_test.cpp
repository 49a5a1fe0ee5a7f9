#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/layers/attention.hpp>
#include <mmsparse/layers/kv_cache.hpp>

namespace mm = mmsparse;

namespace {

using Cpu = mm::CpuBackend<float>;
using Attn = mm::Attention<float, Cpu>;
using Cache = mm::KvCache<float, Cpu>;

mm::Span<const std::int32_t> span_of(const std::vector<std::int32_t>& v) {
  return {v.data(), static_cast<std::int64_t>(v.size())};
}

// Largest |a - b| / max|b| over the rows [begin, begin + count) of both.
double rel_error(mm::View<const float> a, mm::View<const float> b) {
  double num = 0;
  double den = 0;
  for (std::int64_t i = 0; i < a.rows; ++i) {
    for (std::int64_t j = 0; j < a.cols; ++j) {
      num = std::max(num, std::fabs(static_cast<double>(a(i, j)) - b(i, j)));
      den = std::max(den, std::fabs(static_cast<double>(b(i, j))));
    }
  }
  return num / den;
}

mm::AttentionConfig config() {
  return {.d = 32,
          .heads = 4,
          .kv_heads = 2,
          .qk_norm = mm::QkNorm::rms_norm,
          .query_tile = 8,
          .seed = 3};
}

}  // namespace

TEST_CASE("Decoding token by token equals the full forward", "[layers][cpu]") {
  Cpu b;
  const Attn layer(config());
  const std::int64_t seq = 24;
  const std::int64_t n = 2 * seq;
  mm::Rng rng(4);
  auto x = rng.normal_tensor<float>(n, 32);
  std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    pos[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % seq);
  }
  mm::Tensor<float> full(n, 32);
  layer.forward(b, x.view(), span_of(pos), mm::AttentionMask::causal(seq), full.view());

  Cache cache({"layer 0", 2, seq, layer.config().kv_width()});
  mm::Tensor<float> y(n, 32);
  // Sequence 1 first fills a 5-token prompt at once; then both decode one token at a time,
  // interleaved, as a batched generator would.
  mm::attention_decode(b,
                       layer,
                       cache,
                       1,
                       x.view().row_block(seq, 5),
                       span_of(pos).subspan(seq, 5),
                       y.view().row_block(seq, 5));
  REQUIRE(cache.length(1) == 5);
  for (std::int64_t t = 0; t < seq; ++t) {
    for (std::int64_t s = 0; s < 2; ++s) {
      if (s == 1 && t < 5) {
        continue;
      }
      const std::int64_t i = s * seq + t;
      mm::attention_decode(b,
                           layer,
                           cache,
                           s,
                           x.view().row_block(i, 1),
                           span_of(pos).subspan(i, 1),
                           y.view().row_block(i, 1));
    }
  }
  REQUIRE(cache.length(0) == seq);
  REQUIRE(cache.length(1) == seq);
  const double err = rel_error(y.view(), full.view());
  INFO("decode vs full forward: " << err);
  REQUIRE(err < 1e-5);
}

TEST_CASE("A layer skipped by some tokens keeps its own cache length (MoD)", "[layers][cpu]") {
  // Layer A sees every token; layer B only the tokens a MoD router selected. B's cache holds
  // only those, and each keeps its original position for RoPE.
  Cpu b;
  const Attn layer_a(config());
  auto cfg_b = config();
  cfg_b.seed = 9;
  const Attn layer_b(cfg_b);
  const std::int64_t n = 16;
  mm::Rng rng(5);
  auto x = rng.normal_tensor<float>(n, 32);
  std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    pos[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(100 + i);
  }
  const std::vector<std::int64_t> selected = {0, 2, 3, 7, 8, 12, 15};

  Cache cache_a({"layer A", 1, n, layer_a.config().kv_width()});
  Cache cache_b({"layer B", 1, n, layer_b.config().kv_width()});
  mm::Tensor<float> ya(n, 32);
  mm::Tensor<float> yb(static_cast<std::int64_t>(selected.size()), 32);
  std::size_t next = 0;
  for (std::int64_t t = 0; t < n; ++t) {
    mm::attention_decode(b,
                         layer_a,
                         cache_a,
                         0,
                         x.view().row_block(t, 1),
                         span_of(pos).subspan(t, 1),
                         ya.view().row_block(t, 1));
    if (next < selected.size() && selected[next] == t) {
      mm::attention_decode(b,
                           layer_b,
                           cache_b,
                           0,
                           x.view().row_block(t, 1),
                           span_of(pos).subspan(t, 1),
                           yb.view().row_block(static_cast<std::int64_t>(next), 1));
      ++next;
    }
  }
  REQUIRE(cache_a.length(0) == n);
  REQUIRE(cache_b.length(0) == static_cast<std::int64_t>(selected.size()));

  // Training-time equivalent: attention among the selected tokens only, in position order, at
  // their original positions.
  const auto m = static_cast<std::int64_t>(selected.size());
  mm::Tensor<float> xs(m, 32);
  std::vector<std::int32_t> ps(selected.size());
  for (std::int64_t r = 0; r < m; ++r) {
    const std::int64_t t = selected[static_cast<std::size_t>(r)];
    for (std::int64_t j = 0; j < 32; ++j) {
      xs(r, j) = x(t, j);
    }
    ps[static_cast<std::size_t>(r)] = pos[static_cast<std::size_t>(t)];
  }
  mm::Tensor<float> full_b(m, 32);
  layer_b.forward(b, xs.view(), span_of(ps), mm::AttentionMask::causal(m), full_b.view());
  REQUIRE(rel_error(yb.view(), full_b.view()) < 1e-5);

  mm::Tensor<float> full_a(n, 32);
  layer_a.forward(b, x.view(), span_of(pos), mm::AttentionMask::causal(n), full_a.view());
  REQUIRE(rel_error(ya.view(), full_a.view()) < 1e-5);

  // Positions matter: the same tokens at positions 0..m-1 give other outputs.
  std::vector<std::int32_t> shifted(selected.size());
  for (std::int64_t r = 0; r < m; ++r) {
    shifted[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(r);
  }
  mm::Tensor<float> wrong(m, 32);
  layer_b.forward(b, xs.view(), span_of(shifted), mm::AttentionMask::causal(m), wrong.view());
  REQUIRE(rel_error(wrong.view(), full_b.view()) > 1e-3);
}

TEST_CASE("KvCache stores what it is given, per sequence", "[layers][cpu]") {
  Cpu b;
  Cache cache({"layer 2", 3, 5, 4});
  REQUIRE(cache.name() == "layer 2");
  REQUIRE(cache.capacity() == 5);
  REQUIRE(cache.width() == 4);
  mm::Rng rng(6);
  auto k = rng.normal_tensor<float>(3, 4);
  auto v = rng.normal_tensor<float>(3, 4);
  cache.append(b, 2, k.view().row_block(0, 2), v.view().row_block(0, 2));
  cache.append(b, 2, k.view().row_block(2, 1), v.view().row_block(2, 1));
  REQUIRE(cache.length(0) == 0);
  REQUIRE(cache.length(2) == 3);
  REQUIRE(cache.keys(0).rows == 0);
  for (std::int64_t i = 0; i < 3; ++i) {
    for (std::int64_t j = 0; j < 4; ++j) {
      REQUIRE(cache.keys(2)(i, j) == k(i, j));
      REQUIRE(cache.values(2)(i, j) == v(i, j));
    }
  }
  cache.reset(2);
  REQUIRE(cache.length(2) == 0);
  cache.append(b, 1, k.view(), v.view());
  cache.reset();
  REQUIRE(cache.length(1) == 0);
}

TEST_CASE("KvCache overflow is an error naming the cache, capacity and length", "[layers][cpu]") {
  using Catch::Matchers::Contains;
  Cpu b;
  const Attn layer(config());
  Cache cache({"layer 7", 2, 4, layer.config().kv_width()});
  mm::Rng rng(7);
  auto x = rng.normal_tensor<float>(3, 32);
  const std::vector<std::int32_t> pos = {0, 1, 2};
  mm::Tensor<float> y(3, 32);
  mm::attention_decode(b, layer, cache, 0, x.view(), span_of(pos), y.view());
  REQUIRE(cache.length(0) == 3);
  const mm::Tensor<float> keys_before = [&] {
    mm::Tensor<float> t(3, cache.width());
    for (std::int64_t i = 0; i < t.size(); ++i) {
      t.data()[i] = cache.keys(0).data[i];
    }
    return t;
  }();

  y.fill(-1.0f);
  const std::vector<std::int32_t> pos2 = {3, 4};
  REQUIRE_THROWS_WITH(
      mm::attention_decode(
          b, layer, cache, 0, x.view().row_block(0, 2), span_of(pos2), y.view().row_block(0, 2)),
      Contains("attention_decode") && Contains("cache 'layer 7' sequence 0 length") &&
          Contains("at most its capacity 4") && Contains("got 5"));
  // Nothing changed: the cache length and contents, and the output.
  REQUIRE(cache.length(0) == 3);
  for (std::int64_t i = 0; i < keys_before.size(); ++i) {
    REQUIRE(cache.keys(0).data[i] == keys_before.data()[i]);
  }
  for (std::int64_t i = 0; i < y.size(); ++i) {
    REQUIRE(y.data()[i] == -1.0f);
  }
  auto kv = rng.normal_tensor<float>(2, cache.width());
  REQUIRE_THROWS_WITH(cache.append(b, 0, kv.view(), kv.view()),
                      Contains("[KvCache::append] cache 'layer 7' sequence 0 length") &&
                          Contains("capacity 4") && Contains("got 5"));
  REQUIRE(cache.length(0) == 3);
  // The other sequence still has room.
  mm::attention_decode(b, layer, cache, 1, x.view(), span_of(pos), y.view());
  REQUIRE(cache.length(1) == 3);
}

TEST_CASE("KvCache and decode reject bad arguments", "[layers][cpu]") {
  using Catch::Matchers::Contains;
  Cpu b;
  const Attn layer(config());
  REQUIRE_THROWS_WITH(Cache({"c", 1, 0, 8}), Contains("[KvCache] capacity"));
  REQUIRE_THROWS_WITH(Cache({"c", 0, 4, 8}), Contains("[KvCache] sequences"));
  Cache narrow({"narrow", 1, 4, 8});
  Cache cache({"c", 1, 4, layer.config().kv_width()});
  mm::Rng rng(8);
  auto x = rng.normal_tensor<float>(2, 32);
  const std::vector<std::int32_t> pos = {0, 1};
  mm::Tensor<float> y(2, 32);
  REQUIRE_THROWS_WITH(mm::attention_decode(b, layer, narrow, 0, x.view(), span_of(pos), y.view()),
                      Contains("cache 'narrow' width"));
  REQUIRE_THROWS_WITH(mm::attention_decode(b, layer, cache, 1, x.view(), span_of(pos), y.view()),
                      Contains("sequence (of cache 'c')") && Contains("[0, 1)"));
  REQUIRE_THROWS_WITH(
      mm::attention_decode(b, layer, cache, 0, x.view(), span_of(pos).subspan(0, 1), y.view()),
      Contains("[core_attention_decode] positions"));
  REQUIRE_THROWS_WITH(
      mm::attention_decode(b, layer, cache, 0, x.view(), span_of(pos), y.view().row_block(0, 1)),
      Contains("[attention_decode] y"));
  REQUIRE(cache.length(0) == 0);
  auto k = rng.normal_tensor<float>(2, 6);
  REQUIRE_THROWS_WITH(cache.append(b, 0, k.view(), k.view()), Contains("[KvCache::append] k"));
}

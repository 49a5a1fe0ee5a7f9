// Tests of layers/sparse_ffn.hpp in bf16: for every router x dispatch scheme, the output, dx and
// the w1, w3, w2 and router gradients against the double layer on the same bf16-rounded weights and
// inputs (the oracle), under the ratio rule: the layer's rms error is at most twice that of a naive
// bf16 computation (loops, fp32 sums, bf16 stores where the layer stores, fp32 router) against the
// same oracle. The loss is L = Σ c ⊙ y (aux_scale 0); both precisions must route alike.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <tuple>
#include <vector>

#include <catch2/catch.hpp>

#include "cases/sparse_ffn_cases.hpp"
#include "layers/layer_checks.hpp"
#include <mmsparse/layers/sparse_ffn.hpp>
#include <mmsparse/testing/oracle.hpp>

namespace mm = mmsparse;
namespace cases = mmsparse::cases;

namespace {

// Wider than cases::layer_cases() so that the rms errors average over many roundings.
const std::vector<cases::SparseFfnCase>& bf16_cases() {
  static const std::vector<cases::SparseFfnCase> all = {
      {"4t4i_bf16", 64, 48, 64, {4, 4}, {0.4, 0.6}, 8, 31},
      {"2t6i_bf16", 96, 32, 48, {2, 6}, {0.25, 0.75}, 4, 32},
  };
  return all;
}

float round_bf16(float v) {
  return static_cast<float>(mm::bf16(v));
}

// How a router turns logits z = x W_r into gates: gate of (expert e, token t) = 1 (hard routing),
// sigmoid(z[t, e]), or softmax over the token's columns (all, or its modality group's) at e.
enum class GateRule { one, sigmoid, softmax };

template <class R>
struct gate_rule_of;
template <>
struct gate_rule_of<mm::ModalityHard> {
  static GateRule get(const mm::ModalityHard::Config&) {
    return GateRule::one;
  }
};
template <>
struct gate_rule_of<mm::TokenChoice> {
  static GateRule get(const mm::TokenChoice::Config& cfg) {
    REQUIRE(!cfg.renormalize);
    return GateRule::softmax;
  }
};
template <>
struct gate_rule_of<mm::ExpertChoice> {
  static GateRule get(const mm::ExpertChoice::Config& cfg) {
    return cfg.gate == mm::GateFn::sigmoid ? GateRule::sigmoid : GateRule::softmax;
  }
};
template <>
struct gate_rule_of<mm::MixtureOfDepths> {
  static GateRule get(const mm::MixtureOfDepths::Config&) {
    return GateRule::sigmoid;
  }
};
template <class Inner>
struct gate_rule_of<mm::ModalityAware<Inner>> {
  static GateRule get(const typename mm::ModalityAware<Inner>::Config& cfg) {
    return gate_rule_of<Inner>::get(cfg);
  }
};
template <class R>
inline constexpr bool per_modality_v = false;
template <class Inner>
inline constexpr bool per_modality_v<mm::ModalityAware<Inner>> = true;

// One problem in bf16 values held as floats. Expert e reads router column e (every router here).
struct Problem {
  std::int64_t n = 0, d = 0, f = 0, columns = 0;
  std::vector<float> x, dy;                           // [n, d]
  std::vector<float> w1, w3;                          // [E*d, f]
  std::vector<float> w2;                              // [E*f, d]
  std::vector<float> router;                          // [d, columns] (fp32)
  std::vector<std::int64_t> pair_expert, pair_token;  // the plan's slots, expert by expert
  GateRule rule = GateRule::one;
  std::vector<std::int64_t> column_begin, column_end;  // [n] the columns of a token's softmax
  bool per_modality = false;  // the router works per modality group (its dx rounded on its own)
};

struct Result {
  std::vector<float> y, dx, w1, w3, w2, router;
  std::vector<float> gate;  // of each plan slot
};

// The naive bf16 layer: fp32 sums, bf16 stores after each GEMM, SwiGLU and scatter-add (as the
// layer stores its activations and gradients), the router in fp32.
Result naive_bf16(const Problem& p) {
  const std::int64_t n = p.n, d = p.d, f = p.f, cols = p.columns;
  Result r{std::vector<float>(n * d, 0.0f),
           std::vector<float>(n * d, 0.0f),
           std::vector<float>(p.w1.size(), 0.0f),
           std::vector<float>(p.w3.size(), 0.0f),
           std::vector<float>(p.w2.size(), 0.0f),
           std::vector<float>(p.router.size(), 0.0f),
           {}};
  std::vector<float> score(n * cols), dgate(n * cols, 0.0f);  // [n, columns]
  for (std::int64_t t = 0; t < n; ++t) {
    float* s = score.data() + t * cols;
    for (std::int64_t c = 0; c < cols; ++c) {
      float z = 0;
      for (std::int64_t i = 0; i < d; ++i) {
        z += p.x[t * d + i] * p.router[i * cols + c];
      }
      s[c] = p.rule == GateRule::sigmoid ? 1.0f / (1.0f + std::exp(-z)) : z;
    }
    if (p.rule == GateRule::softmax) {
      const std::int64_t c0 = p.column_begin[t], c1 = p.column_end[t];
      const float m = *std::max_element(s + c0, s + c1);
      float sum = 0;
      for (std::int64_t c = c0; c < c1; ++c) {
        s[c] = std::exp(s[c] - m);
        sum += s[c];
      }
      for (std::int64_t c = c0; c < c1; ++c) {
        s[c] /= sum;
      }
    }
  }
  std::vector<float> buffers(6 * f + 2 * d);
  float* a = buffers.data();  // raw pointers: the loops also run in unoptimised sanitizer builds
  float *g = a + f, *h = g + f, *dh = h + f, *da = dh + f, *dg = da + f, *o = dg + f, *dout = o + d;
  for (std::size_t k = 0; k < p.pair_expert.size(); ++k) {
    const std::int64_t e = p.pair_expert[k], t = p.pair_token[k];
    const float gate = p.rule == GateRule::one ? 1.0f : score[t * cols + e];
    r.gate.push_back(gate);
    const float* xt = p.x.data() + t * d;
    const float* dyt = p.dy.data() + t * d;
    const float* w1 = p.w1.data() + e * d * f;  // [d, f] of expert e
    const float* w3 = p.w3.data() + e * d * f;
    const float* w2 = p.w2.data() + e * f * d;  // [f, d]
    float* gw1 = r.w1.data() + e * d * f;
    float* gw3 = r.w3.data() + e * d * f;
    float* gw2 = r.w2.data() + e * f * d;
    float* yt = r.y.data() + t * d;
    float* dxt = r.dx.data() + t * d;
    for (std::int64_t j = 0; j < f; ++j) {  // forward
      float sa = 0, sg = 0;
      for (std::int64_t i = 0; i < d; ++i) {
        sa += xt[i] * w1[i * f + j];
        sg += xt[i] * w3[i * f + j];
      }
      a[j] = round_bf16(sa);
      g[j] = round_bf16(sg);
      h[j] = round_bf16(a[j] / (1.0f + std::exp(-a[j])) * g[j]);
    }
    float dgate_k = 0;
    for (std::int64_t i = 0; i < d; ++i) {
      float so = 0;
      for (std::int64_t j = 0; j < f; ++j) {
        so += h[j] * w2[j * d + i];
      }
      o[i] = round_bf16(so);
      yt[i] = round_bf16(yt[i] + gate * o[i]);
      dgate_k += o[i] * dyt[i];  // backward from here
      dout[i] = round_bf16(gate * dyt[i]);
    }
    if (cols > 0) {
      dgate[t * cols + e] += dgate_k;
    }
    for (std::int64_t j = 0; j < f; ++j) {
      float s = 0;
      for (std::int64_t i = 0; i < d; ++i) {
        gw2[j * d + i] += h[j] * dout[i];
        s += dout[i] * w2[j * d + i];
      }
      dh[j] = round_bf16(s);
      const float sig = 1.0f / (1.0f + std::exp(-a[j]));
      da[j] = round_bf16(dh[j] * g[j] * sig * (1.0f + a[j] * (1.0f - sig)));
      dg[j] = round_bf16(dh[j] * a[j] * sig);
    }
    for (std::int64_t i = 0; i < d; ++i) {
      float s1 = 0, s3 = 0;
      for (std::int64_t j = 0; j < f; ++j) {
        gw1[i * f + j] += xt[i] * da[j];
        gw3[i * f + j] += xt[i] * dg[j];
        s1 += da[j] * w1[i * f + j];
        s3 += dg[j] * w3[i * f + j];
      }
      dxt[i] = round_bf16(dxt[i] + round_bf16(round_bf16(s1) + s3));
    }
  }
  for (auto* w : {&r.w1, &r.w3, &r.w2}) {
    std::transform(w->begin(), w->end(), w->begin(), round_bf16);
  }
  // Router: dgate -> dz (sigmoid or softmax backward) -> dW_r += x^T dz, dx += dz W_r^T.
  std::vector<float> dz(cols);
  for (std::int64_t t = 0; t < n && cols > 0; ++t) {
    const float* s = score.data() + t * cols;
    const float* dp = dgate.data() + t * cols;
    std::fill(dz.begin(), dz.end(), 0.0f);
    if (p.rule == GateRule::sigmoid) {
      for (std::int64_t c = 0; c < cols; ++c) {
        dz[c] = dp[c] * s[c] * (1.0f - s[c]);
      }
    } else if (p.rule == GateRule::softmax) {
      float dot = 0;
      for (std::int64_t c = p.column_begin[t]; c < p.column_end[t]; ++c) {
        dot += dp[c] * s[c];
      }
      for (std::int64_t c = p.column_begin[t]; c < p.column_end[t]; ++c) {
        dz[c] = s[c] * (dp[c] - dot);
      }
    }
    for (std::int64_t i = 0; i < d; ++i) {
      float s_dx = 0;
      for (std::int64_t c = 0; c < cols; ++c) {
        r.router[i * cols + c] += p.x[t * d + i] * dz[c];
        s_dx += dz[c] * p.router[i * cols + c];
      }
      float& dx = r.dx[t * d + i];
      dx = round_bf16(dx + (p.per_modality ? round_bf16(s_dx) : s_dx));
    }
  }
  return r;
}

template <class A, class B>
bool same_plan(const mm::RoutingPlan<A>& a, const mm::RoutingPlan<B>& b) {
  if (a.offsets != b.offsets || a.slots() != b.slots() || a.dropped != b.dropped) {
    return false;
  }
  for (std::int64_t s = 0; s < a.slots(); ++s) {
    if (a.token[s] != b.token[s]) {
      return false;
    }
  }
  return true;
}

template <class U>
std::vector<double> as_doubles(const U* data, std::int64_t size) {
  std::vector<double> out(static_cast<std::size_t>(size));
  for (std::int64_t i = 0; i < size; ++i) {
    out[static_cast<std::size_t>(i)] = mm::scalar_cast<double>(data[i]);
  }
  return out;
}

double rms_error(const std::vector<double>& a, const std::vector<double>& oracle) {
  REQUIRE(a.size() == oracle.size());
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    s += (a[i] - oracle[i]) * (a[i] - oracle[i]);
  }
  return std::sqrt(s / static_cast<double>(std::max<std::size_t>(a.size(), 1)));
}

// The ratio rule. The naive error is required to be > 0 (a bf16 computation of these sizes
// always rounds somewhere), so the rule needs no absolute floor.
void check_ratio(const char* what,
                 const std::vector<double>& layer,
                 const std::vector<float>& naive,
                 const std::vector<double>& oracle) {
  const double e_layer = rms_error(layer, oracle);
  const double e_naive = rms_error(std::vector<double>(naive.begin(), naive.end()), oracle);
  INFO(what << ": rms error " << e_layer << ", naive bf16 " << e_naive << ", ratio "
            << e_layer / e_naive);
  REQUIRE(e_naive > 0);
  CHECK(e_layer <= 2 * e_naive);
}

// The double layer on bf16-rounded weights and inputs (the oracle), the same inputs in bf16, and
// the naive bf16 computation of the oracle's plan.
template <class V>
struct Reference {
  using R = typename V::router;
  using Layer = mm::SparseFfn<double, R, mm::SortedGather, mm::CpuBackend<double>>;
  using bf = mm::bf16;

  const cases::SparseFfnCase& c;
  std::vector<mm::ModalityId> ids;
  Layer layer;
  typename Layer::Saved saved;
  mm::Tensor<double> x, dy, y, dx, router, w1, w3, w2;  // y: the oracle of the plan
  mm::Tensor<bf> xb, dyb;
  Result naive;

  explicit Reference(const cases::SparseFfnCase& kase)
      : c(kase), ids(cases::modalities_of(kase)), layer(cases::layer_config<Layer, V>(kase)) {
    // The weights rounded: the experts' to bf16, the router's to fp32 (router_t<bf16>).
    auto w = layer.weights();
    for (std::int64_t i = 0; i < w.router.size(); ++i) {
      w.router.data[i] = static_cast<float>(w.router.data[i]);
    }
    for (auto v : {w.w1, w.w3, w.w2}) {
      for (std::int64_t i = 0; i < v.size(); ++i) {
        v.data[i] = mm::scalar_cast<double>(bf(static_cast<float>(v.data[i])));
      }
    }
    mm::Rng rng(c.seed * 131 + 7);
    x = mm::Tensor<double>(c.tokens, c.d);
    dy = mm::Tensor<double>(c.tokens, c.d);
    xb = mm::Tensor<bf>(c.tokens, c.d);
    dyb = mm::Tensor<bf>(c.tokens, c.d);
    for (auto [to, from] : {std::pair{&xb, &x}, std::pair{&dyb, &dy}}) {
      for (std::int64_t i = 0; i < from->size(); ++i) {
        to->data()[i] = bf(static_cast<float>(rng.normal()));
        from->data()[i] = mm::scalar_cast<double>(to->data()[i]);
      }
    }
    mm::CpuBackend<double> b;
    mm::Tensor<double> y_layer(c.tokens, c.d);
    (void)layer.forward(b, x.view(), modality(), y_layer.view(), saved);
    y = mm::oracle_sparse_ffn<double>(
        x.view(), mm::plan_assignments(saved.plan), w.w1, w.w3, w.w2, layer.num_experts());
    CHECK(mm::test::rel_error(y_layer, y) < cases::output_tolerance<double>);
    const auto shapes = Layer::parameter_shapes(layer.config());
    dx = mm::Tensor<double>(c.tokens, c.d);
    router = mm::Tensor<double>(shapes[0].second);
    w1 = mm::Tensor<double>(shapes[1].second);
    w3 = mm::Tensor<double>(shapes[2].second);
    w2 = mm::Tensor<double>(shapes[3].second);
    for (auto* t : {&dx, &router, &w1, &w3, &w2}) {
      t->fill(0.0);
    }
    layer.backward(b,
                   saved,
                   dy.view(),
                   dx.view(),
                   {router.view(), w1.view(), w3.view(), w2.view()},
                   /*aux_scale=*/0.0);
    naive = naive_bf16(problem());
  }

  [[nodiscard]] mm::Span<const mm::ModalityId> modality() const {
    return {ids.data(), c.tokens};
  }

  Problem problem() {
    auto w = layer.weights();
    Problem p;
    p.n = c.tokens;
    p.d = c.d;
    p.f = layer.config().hidden;
    p.columns = layer.router_columns();
    p.x.assign(x.data(), x.data() + x.size());
    p.dy.assign(dy.data(), dy.data() + dy.size());
    p.w1.assign(w.w1.data, w.w1.data + w.w1.size());
    p.w3.assign(w.w3.data, w.w3.data + w.w3.size());
    p.w2.assign(w.w2.data, w.w2.data + w.w2.size());
    p.router.assign(w.router.data, w.router.data + w.router.size());
    for (const auto& s : mm::plan_assignments(saved.plan)) {
      p.pair_expert.push_back(s.expert);
      p.pair_token.push_back(s.token);
    }
    p.rule = gate_rule_of<R>::get(layer.config().router);
    p.per_modality = per_modality_v<R>;
    for (std::int64_t t = 0; t < c.tokens; ++t) {
      std::int64_t begin = 0;
      std::int64_t end = p.columns;
      if (p.per_modality) {
        const auto group = static_cast<std::size_t>(ids[static_cast<std::size_t>(t)]);
        begin = std::accumulate(c.groups.begin(), c.groups.begin() + group, std::int64_t{0});
        end = begin + c.groups[group];
      }
      p.column_begin.push_back(begin);
      p.column_end.push_back(end);
    }
    return p;
  }
};

// The bf16 layer with dispatch scheme D against the reference: same plan, then the ratio rule
// for y, dx and every weight gradient.
template <class V, class D>
void check_bf16_layer(Reference<V>& ref) {
  using bf = mm::bf16;
  using L = mm::SparseFfn<bf, typename V::router, D, mm::CpuBackend<bf>>;
  INFO("dispatch " << D::name);
  const auto& c = ref.c;
  L layer(cases::layer_config<L, V>(c));
  auto wd = ref.layer.weights();
  auto wb = layer.weights();
  for (std::int64_t i = 0; i < wd.router.size(); ++i) {
    wb.router.data[i] = static_cast<float>(wd.router.data[i]);  // exact: fp32 values
  }
  for (auto [to, from] : {std::pair{wb.w1, wd.w1}, std::pair{wb.w3, wd.w3}, {wb.w2, wd.w2}}) {
    for (std::int64_t i = 0; i < from.size(); ++i) {
      to.data[i] = bf(static_cast<float>(from.data[i]));  // exact: bf16 values
    }
  }
  mm::CpuBackend<bf> b;
  typename L::Saved saved;
  mm::Tensor<bf> y(c.tokens, c.d);
  (void)layer.forward(b, ref.xb.view(), ref.modality(), y.view(), saved);
  // A routing decision that flips between the precisions makes the comparison meaningless.
  REQUIRE(same_plan(saved.plan, ref.saved.plan));
  // The naive gates are the router's (a check of the gate rule the naive computation assumes).
  const auto planned = mm::plan_assignments(saved.plan);
  REQUIRE(planned.size() == ref.naive.gate.size());
  for (std::size_t k = 0; k < planned.size(); ++k) {
    REQUIRE(ref.naive.gate[k] == Approx(planned[k].gate).epsilon(1e-5));
  }
  mm::Tensor<bf> dx(c.tokens, c.d), w1(ref.w1.shape()), w3(ref.w3.shape()), w2(ref.w2.shape());
  mm::Tensor<float> router(ref.router.shape());
  for (auto* t : {&dx, &w1, &w3, &w2}) {
    t->fill(bf{});
  }
  router.fill(0.0f);
  layer.backward(b,
                 saved,
                 ref.dyb.view(),
                 dx.view(),
                 {router.view(), w1.view(), w3.view(), w2.view()},
                 /*aux_scale=*/0.0);
  const auto as_vec = [](const auto& t) { return as_doubles(t.data(), t.size()); };
  check_ratio("y", as_vec(y), ref.naive.y, as_vec(ref.y));
  check_ratio("dx", as_vec(dx), ref.naive.dx, as_vec(ref.dx));
  check_ratio("w1", as_vec(w1), ref.naive.w1, as_vec(ref.w1));
  check_ratio("w3", as_vec(w3), ref.naive.w3, as_vec(ref.w3));
  check_ratio("w2", as_vec(w2), ref.naive.w2, as_vec(ref.w2));
  if (layer.router_columns() > 0) {
    check_ratio("router", as_vec(router), ref.naive.router, as_vec(ref.router));
  }
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("SparseFfn in bf16 errs at most twice a naive bf16 computation",
                        "[layers][cpu]",
                        mm::test::Variants) {
  using V = TestType;
  for (const auto& c : bf16_cases()) {
    INFO("case " << c.name << ", router " << V::name << ", seed " << c.seed);
    Reference<V> ref(c);
    [&]<class... D>(std::tuple<D...>) {
      (check_bf16_layer<V, D>(ref), ...);
    }(mm::test::Dispatches{});
  }
}

// test/layers/sparse_ffn_cuda_test.cu
//
// SparseFfn on CudaBackend, every router variant x dispatch scheme of the case table, forward and
// backward against the same layer on CpuBackend<double> (the companion sparse_ffn_cuda_oracle.cpp,
// compiled by the host compiler): same weights, same inputs, same routing decisions; fp32 within
// cases::output_tolerance, bf16 within 1e-2. Also: bitwise-repeatable runs and a warm arena.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "backend/cuda/require_device.cuh"
#include "cases/sparse_ffn_cases.hpp"
#include "layers/sparse_ffn_cuda_oracle.hpp"
#include <mmsparse/backend/cuda/backend.cuh>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/dispatch/dense_mask.hpp>
#include <mmsparse/dispatch/padded_capacity.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>

namespace {

namespace mm = mmsparse;
namespace cases = mmsparse::cases;
using mm::bf16;
using mm::CudaBackend;
using mm::device_space;
template <class T>
using DTensor = mm::Tensor<T, device_space>;

template <class V, class D, class T = float>
struct Combo {
  using variant = V;
  using dispatch = D;
  using scalar = T;
  using layer = mm::SparseFfn<T, typename V::router, D, CudaBackend<T>>;
};

template <class V>
using AllDispatches =
    std::tuple<Combo<V, mm::SortedGather>, Combo<V, mm::PaddedCapacity>, Combo<V, mm::DenseMask>>;
using Fp32Combos = decltype(std::tuple_cat(AllDispatches<cases::HardVariant>{},
                                           AllDispatches<cases::TokenChoiceCapacityVariant>{},
                                           AllDispatches<cases::TokenChoiceDroplessVariant>{},
                                           AllDispatches<cases::ExpertChoiceSigmoidVariant>{},
                                           AllDispatches<cases::ExpertChoiceSoftmaxVariant>{},
                                           AllDispatches<cases::DepthVariant>{},
                                           AllDispatches<cases::MomaExpertChoiceVariant>{},
                                           AllDispatches<cases::MomaTokenChoiceVariant>{}));
using Bf16Combos = std::tuple<Combo<cases::MomaExpertChoiceVariant, mm::SortedGather, bf16>,
                              Combo<cases::TokenChoiceCapacityVariant, mm::PaddedCapacity, bf16>>;

std::vector<cases::SparseFfnCase> all_cases() {
  std::vector<cases::SparseFfnCase> all = cases::layer_cases();
  all.insert(all.end(), cases::edge_cases().begin(), cases::edge_cases().end());
  return all;
}

// Rounded through T, so the oracle (double) sees exactly what the device layer sees.
template <class T>
float representable(double v) {
  return static_cast<float>(mm::scalar_cast<T>(v));
}

// Random inputs and weights of a case (scaled like the layer's own initialisation).
template <class L>
mm::test::SparseFfnRun make_run(const cases::SparseFfnCase& c, const typename L::Config& cfg) {
  using T = typename L::backend_type::scalar;
  mm::test::SparseFfnRun run;
  const auto shapes = L::parameter_shapes(cfg);
  mm::Rng rng(c.seed * 7907 + 3);
  const auto fill = [&](std::vector<float>& v, mm::Shape s, double scale, bool router) {
    v.resize(static_cast<std::size_t>(s.rows * s.cols));
    for (auto& x : v) {
      const double draw = scale * rng.normal();
      x = router ? static_cast<float>(draw) : representable<T>(draw);
    }
  };
  const double d = static_cast<double>(cfg.d);
  const double f = static_cast<double>(shapes[1].second.cols);  // the hidden width
  fill(run.x, {c.tokens, c.d}, 1.0, false);
  fill(run.dy, {c.tokens, c.d}, 1.0, false);
  fill(run.router, shapes[0].second, 1.0 / std::sqrt(d), true);
  fill(run.w1, shapes[1].second, 1.0 / std::sqrt(d), false);
  fill(run.w3, shapes[2].second, 1.0 / std::sqrt(d), false);
  fill(run.w2, shapes[3].second, 1.0 / std::sqrt(f), false);
  run.modality = cases::modalities_of(c);
  run.training = true;
  run.seed = c.seed + 1000;
  return run;
}

template <class T>
DTensor<T> upload(CudaBackend<T>& b, const std::vector<float>& v, mm::Shape s) {
  mm::Tensor<T> h(s.rows, s.cols);
  for (std::int64_t i = 0; i < h.size(); ++i) {
    h.data()[i] = mm::scalar_cast<T>(v[static_cast<std::size_t>(i)]);
  }
  return b.to_device(h);
}
template <class T>
DTensor<float> upload_router(CudaBackend<T>& b, const std::vector<float>& v, mm::Shape s) {
  return b.to_device(mm::View<const float>(v.data(), s.rows, s.cols));
}

template <class B, class U>
std::vector<double> download(B& b, const DTensor<U>& t) {
  const auto h = b.to_host(t);
  std::vector<double> v(static_cast<std::size_t>(h.size()));
  for (std::int64_t i = 0; i < h.size(); ++i) {
    v[static_cast<std::size_t>(i)] = mm::scalar_cast<double>(h.data()[i]);
  }
  return v;
}

// The device layer's forward + backward over the run's data; the same outputs as the oracle.
template <class C>
mm::test::SparseFfnResult run_cuda(CudaBackend<typename C::scalar>& b,
                                   const cases::SparseFfnCase& c,
                                   const mm::test::SparseFfnRun& in) {
  using T = typename C::scalar;
  using L = typename C::layer;
  using V = typename C::variant;
  auto cfg = cases::layer_config<L, V>(c);
  if constexpr (requires { cfg.router.gumbel; }) {
    cfg.router.gumbel = in.gumbel;
  }
  L layer(cfg);
  const auto shapes = L::parameter_shapes(layer.config());
  auto router = upload_router(b, in.router, shapes[0].second);
  auto w1 = upload<T>(b, in.w1, shapes[1].second);
  auto w3 = upload<T>(b, in.w3, shapes[2].second);
  auto w2 = upload<T>(b, in.w2, shapes[3].second);
  layer.bind({router.view(), w1.view(), w3.view(), w2.view()});

  auto x = upload<T>(b, in.x, {c.tokens, c.d});
  auto dy = upload<T>(b, in.dy, {c.tokens, c.d});
  auto modality = b.to_device(in.modality);
  DTensor<T> y(c.tokens, c.d), dx(c.tokens, c.d), dw1(w1.shape()), dw3(w3.shape()), dw2(w2.shape());
  DTensor<float> drouter(router.shape());
  for (auto* t : {&dx, &dw1, &dw3, &dw2}) {
    b.fill(t->view(), T{});
  }
  b.fill(drouter.view(), 0.0f);

  typename L::Saved saved;
  typename L::ForwardOptions opt;
  opt.training = in.training;
  opt.seed = in.seed;
  const auto stats = layer.forward(b,
                                   mm::View<const T, device_space>(x.view()),
                                   mm::Span<const mm::ModalityId, device_space>(modality.span()),
                                   y.view(),
                                   saved,
                                   opt);
  layer.backward(b,
                 saved,
                 mm::View<const T, device_space>(dy.view()),
                 dx.view(),
                 {drouter.view(), dw1.view(), dw3.view(), dw2.view()});

  mm::test::SparseFfnResult r;
  r.y = download(b, y);
  r.dx = download(b, dx);
  r.drouter = download(b, drouter);
  r.dw1 = download(b, dw1);
  r.dw3 = download(b, dw3);
  r.dw2 = download(b, dw2);
  r.tokens_per_expert = stats.tokens_per_expert;
  r.dropped = stats.dropped;
  r.aux = static_cast<double>(stats.aux.total());
  return r;
}

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

void check_against_oracle(const mm::test::SparseFfnResult& gpu,
                          const mm::test::SparseFfnResult& cpu,
                          double tol) {
  // Same routing decisions first: otherwise the outputs cannot be compared.
  REQUIRE(gpu.tokens_per_expert == cpu.tokens_per_expert);
  REQUIRE(gpu.dropped == cpu.dropped);
  CHECK(rel_error(gpu.y, cpu.y) < tol);
  CHECK(rel_error(gpu.dx, cpu.dx) < tol);
  CHECK(rel_error(gpu.drouter, cpu.drouter) < tol);
  CHECK(rel_error(gpu.dw1, cpu.dw1) < tol);
  CHECK(rel_error(gpu.dw3, cpu.dw3) < tol);
  CHECK(rel_error(gpu.dw2, cpu.dw2) < tol);
  CHECK(std::abs(gpu.aux - cpu.aux) <= tol * (1.0 + std::abs(cpu.aux)));
}

TEMPLATE_LIST_TEST_CASE("SparseFfn on CUDA equals the double CPU layer, forward and backward",
                        "[layers][cuda]",
                        Fp32Combos) {
  using V = typename TestType::variant;
  using D = typename TestType::dispatch;
  using L = typename TestType::layer;
  CudaBackend<float> b;
  for (const auto& c : all_cases()) {
    for (const bool gumbel : {false, true}) {
      INFO("case " << c.name << ", router " << V::name << ", dispatch " << D::name << ", seed "
                   << c.seed << ", gumbel " << gumbel);
      auto run = make_run<L>(c, cases::layer_config<L, V>(c));
      run.gumbel = gumbel;
      const auto cpu = mm::test::sparse_ffn_cpu_oracle(V::name, D::name, c, run);
      const auto gpu = run_cuda<TestType>(b, c, run);
      check_against_oracle(gpu, cpu, cases::output_tolerance<float>);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("SparseFfn on CUDA in bf16 stays within 1e-2 of the double CPU layer",
                        "[layers][cuda]",
                        Bf16Combos) {
  using V = typename TestType::variant;
  using D = typename TestType::dispatch;
  using L = typename TestType::layer;
  CudaBackend<bf16> b;
  for (const auto& c : cases::layer_cases()) {
    INFO("case " << c.name << ", router " << V::name << ", dispatch " << D::name);
    const auto run = make_run<L>(c, cases::layer_config<L, V>(c));
    const auto cpu = mm::test::sparse_ffn_cpu_oracle(V::name, D::name, c, run);
    const auto gpu = run_cuda<TestType>(b, c, run);
    check_against_oracle(gpu, cpu, 1e-2);
  }
}

TEST_CASE("SparseFfn on CUDA repeats bitwise and stops growing its arena", "[layers][cuda]") {
  using C = Combo<cases::MomaExpertChoiceVariant, mm::SortedGather>;
  using L = C::layer;
  CudaBackend<float> b;
  const auto& c = cases::layer_cases()[1];  // 4t4i
  auto run = make_run<L>(c, cases::layer_config<L, cases::MomaExpertChoiceVariant>(c));
  run.gumbel = true;
  const auto first = run_cuda<C>(b, c, run);
  const auto warm = b.workspace().allocations();
  const auto second = run_cuda<C>(b, c, run);
  CHECK(b.workspace().allocations() == warm);
  CHECK(second.y == first.y);  // exact: no float atomics anywhere on the path
  CHECK(second.dx == first.dx);
  CHECK(second.drouter == first.drouter);
  CHECK(second.dw1 == first.dw1);
  CHECK(second.dw3 == first.dw3);
  CHECK(second.dw2 == first.dw2);
}

TEST_CASE("SparseFfn on CUDA owns no weights until bind()", "[layers][cuda]") {
  using L = Combo<cases::MomaExpertChoiceVariant, mm::SortedGather>::layer;
  CudaBackend<float> b;
  const auto& c = cases::layer_cases()[0];
  L layer(cases::layer_config<L, cases::MomaExpertChoiceVariant>(c));
  DTensor<float> x(c.tokens, c.d), y(c.tokens, c.d);
  const auto ids = cases::modalities_of(c);
  auto modality = b.to_device(ids);
  REQUIRE_THROWS_WITH(layer.forward(b,
                                    mm::View<const float, device_space>(x.view()),
                                    mm::Span<const mm::ModalityId, device_space>(modality.span()),
                                    y.view()),
                      Catch::Contains("SparseFfn::forward") && Catch::Contains("weights"));
}

}  // namespace

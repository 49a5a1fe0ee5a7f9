// test/layers/sparse_ffn_cuda_oracle.cpp
//
// Companion of sparse_ffn_cuda_test.cu, compiled by the host compiler: the double-precision
// CpuBackend run of a SparseFfn that the CUDA layer is checked against (STYLE.md §6: CPU first,
// oracle always). Linked into the CUDA test executable by cmake/MmsparseTests.cmake.
#include "layers/sparse_ffn_cuda_oracle.hpp"

#include <optional>
#include <string>
#include <tuple>

#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/dispatch/dense_mask.hpp>
#include <mmsparse/dispatch/padded_capacity.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>

namespace mmsparse::test {

namespace {

using Variants = std::tuple<cases::HardVariant,
                            cases::TokenChoiceCapacityVariant,
                            cases::TokenChoiceDroplessVariant,
                            cases::ExpertChoiceSigmoidVariant,
                            cases::ExpertChoiceSoftmaxVariant,
                            cases::DepthVariant,
                            cases::MomaExpertChoiceVariant,
                            cases::MomaTokenChoiceVariant>;
using Dispatches = std::tuple<SortedGather, PaddedCapacity, DenseMask>;

template <class Tuple, class F>
void for_each_type(F&& f) {
  [&]<class... Ts>(std::tuple<Ts...>*) {
    (f.template operator()<Ts>(), ...);
  }(static_cast<Tuple*>(nullptr));
}

Tensor<double> tensor_of(const std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
  MMSPARSE_CHECK(static_cast<std::int64_t>(v.size()) == rows * cols,
                 "sparse_ffn_cpu_oracle",
                 "input",
                 rows * cols,
                 v.size());
  Tensor<double> t(rows, cols);
  for (std::int64_t i = 0; i < t.size(); ++i) {
    t.data()[i] = static_cast<double>(v[static_cast<std::size_t>(i)]);
  }
  return t;
}

std::vector<double> values_of(const Tensor<double>& t) {
  return {t.data(), t.data() + t.size()};
}

template <class V, class D>
SparseFfnResult run_oracle(const cases::SparseFfnCase& c, const SparseFfnRun& in) {
  using L = SparseFfn<double, typename V::router, D, CpuBackend<double>>;
  auto cfg = cases::layer_config<L, V>(c);
  if constexpr (requires { cfg.router.gumbel; }) {
    cfg.router.gumbel = in.gumbel;
  }
  L layer(cfg);
  const auto shapes = L::parameter_shapes(layer.config());
  auto router = tensor_of(in.router, shapes[0].second.rows, shapes[0].second.cols);
  auto w1 = tensor_of(in.w1, shapes[1].second.rows, shapes[1].second.cols);
  auto w3 = tensor_of(in.w3, shapes[2].second.rows, shapes[2].second.cols);
  auto w2 = tensor_of(in.w2, shapes[3].second.rows, shapes[3].second.cols);
  layer.bind({router.view(), w1.view(), w3.view(), w2.view()});

  auto x = tensor_of(in.x, c.tokens, c.d);
  auto dy = tensor_of(in.dy, c.tokens, c.d);
  Tensor<double> y(c.tokens, c.d), dx(c.tokens, c.d);
  Tensor<double> drouter(router.shape()), dw1(w1.shape()), dw3(w3.shape()), dw2(w2.shape());
  for (auto* t : {&dx, &drouter, &dw1, &dw3, &dw2}) {
    t->fill(0.0);
  }
  CpuBackend<double> b;
  typename L::Saved saved;
  typename L::ForwardOptions opt;
  opt.training = in.training;
  opt.seed = in.seed;
  const auto stats = layer.forward(b,
                                   View<const double>(x.view()),
                                   Span<const ModalityId>(in.modality.data(), c.tokens),
                                   y.view(),
                                   saved,
                                   opt);
  layer.backward(b,
                 saved,
                 View<const double>(dy.view()),
                 dx.view(),
                 {drouter.view(), dw1.view(), dw3.view(), dw2.view()});

  SparseFfnResult r;
  r.y = values_of(y);
  r.dx = values_of(dx);
  r.drouter = values_of(drouter);
  r.dw1 = values_of(dw1);
  r.dw3 = values_of(dw3);
  r.dw2 = values_of(dw2);
  r.tokens_per_expert = stats.tokens_per_expert;
  r.dropped = stats.dropped;
  r.aux = static_cast<double>(stats.aux.total());
  return r;
}

}  // namespace

SparseFfnResult sparse_ffn_cpu_oracle(std::string_view variant,
                                      std::string_view dispatch,
                                      const cases::SparseFfnCase& c,
                                      const SparseFfnRun& run) {
  std::optional<SparseFfnResult> result;
  for_each_type<Variants>([&]<class V>() {
    for_each_type<Dispatches>([&]<class D>() {
      if (variant == V::name && dispatch == D::name) {
        result = run_oracle<V, D>(c, run);
      }
    });
  });
  MMSPARSE_CHECK(result.has_value(),
                 "sparse_ffn_cpu_oracle",
                 "variant / dispatch",
                 "a router variant and a dispatch scheme of the case table",
                 std::string(variant) + " / " + std::string(dispatch));
  return *std::move(result);
}

}  // namespace mmsparse::test

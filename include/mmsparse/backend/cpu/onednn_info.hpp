// mmsparse/backend/cpu/onednn_info.hpp
//
// What oneDNN is and does on this machine, for benchmark contexts and docs: its version and
// threading runtime, the ISA it dispatches to, and the matmul implementation it picks for a shape
// (runtime dims as in the plain path, or fixed shapes with the weights in its preferred layout).
#pragma once

#if !__has_include(<oneapi/dnnl/dnnl.hpp>)
#error \
    "mmsparse/backend/cpu/onednn_info.hpp needs oneDNN 2.x (libdnnl-dev); without it the CPU backend uses Eigen"
#endif

#include <cstdint>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>

#include <mmsparse/backend/concepts.hpp>
#include <mmsparse/backend/cpu/onednn_detail.hpp>

namespace mmsparse::cpu {

[[nodiscard]] inline std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  std::string s =
      std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  s += v->cpu_runtime == DNNL_RUNTIME_OMP   ? " (OpenMP)"
       : v->cpu_runtime == DNNL_RUNTIME_SEQ ? " (sequential)"
                                            : " (other threading)";
  return s;
}

[[nodiscard]] inline std::string onednn_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41:
      return "sse41";
    case dnnl::cpu_isa::avx:
      return "avx";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic:
    case dnnl::cpu_isa::avx512_mic_4ops:
      return "avx512_mic";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "isa_all";
  }
}

// The implementation oneDNN picks for a [m, k] x [k, n] matmul of T, or "unsupported".
// runtime_dims: M, N, K decided at run time (the plain path); otherwise fixed shapes with the
// weights in the layout oneDNN prefers (the packed path).
template <class T>
[[nodiscard]] std::string onednn_matmul_impl(std::int64_t m,
                                             std::int64_t k,
                                             std::int64_t n,
                                             bool runtime_dims) {
  using onednn_detail::runtime_desc;
  constexpr auto type = onednn_detail::data_type<T>();
  using tag = dnnl::memory::format_tag;
  try {
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    const dnnl::matmul::desc d =
        runtime_dims ? dnnl::matmul::desc(runtime_desc(Trans::no, type),
                                          runtime_desc(Trans::no, type),
                                          runtime_desc(Trans::no, type))
                     : dnnl::matmul::desc(dnnl::memory::desc({m, k}, type, tag::ab),
                                          dnnl::memory::desc({k, n}, type, tag::any),
                                          dnnl::memory::desc({m, n}, type, tag::ab));
    const dnnl::matmul::primitive_desc pd(d, engine);
    std::string s = pd.impl_info_str();
    if (!runtime_dims) {
      s += onednn_detail::is_plain(pd.weights_desc()) ? " (plain weights)" : " (blocked weights)";
    }
    return s;
  } catch (const dnnl::error&) {
    return "unsupported";
  }
}

}  // namespace mmsparse::cpu

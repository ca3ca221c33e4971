// Shared by the fused CPU ops (fused_*.cpp): how a C++ exception becomes an error string for
// the Rust side (src/model/native/fused.rs), which frees it with adpo_fused_free_error.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>

namespace adpo_fused {

// Runs f; NULL when it returned, else a malloc'ed copy of the exception's message.
template <typename F>
char* guarded(F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception in a fused op");
  }
}

// The instruction-set level the kernels run at: 2 = x86-64-v4 (AVX-512), 1 = x86-64-v3 (AVX2
// with FMA), 0 = the x86-64 baseline. The CPU's, lowered as ATEN_CPU_CAPABILITY lowers
// libtorch's own kernels ("avx2": at most 1, "default": 0), so that tests/lower-isa runs the
// lower builds too. Read once.
inline int isa_level() {
#if defined(__x86_64__)
  static const int level = [] {
    __builtin_cpu_init();
    int cpu = __builtin_cpu_supports("x86-64-v4") ? 2 : __builtin_cpu_supports("x86-64-v3") ? 1 : 0;
    const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && cpu > 1) cpu = 1;
    if (cap != nullptr && std::strcmp(cap, "default") == 0) cpu = 0;
    return cpu;
  }();
  return level;
#else
  return 0;
#endif
}

// Defines `void name params` running `call` (which names the parameters `args` lists) built
// three times, one per level of isa_level(): the library must run on CPUs without AVX-512, and
// FMA alone makes the exponential-heavy kernels about 1.7x faster than plain AVX2.
#if defined(__x86_64__)
#define ADPO_ISA_V4 __attribute__((target("arch=x86-64-v4")))
#define ADPO_ISA_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define ADPO_ISA_V4
#define ADPO_ISA_V3
#endif
#define ADPO_PER_ISA(name, params, args, call) \
  ADPO_ISA_V4 void name##_v4 params { call; }  \
  ADPO_ISA_V3 void name##_v3 params { call; }  \
  void name##_base params { call; }            \
  void name params {                           \
    switch (adpo_fused::isa_level()) {         \
      case 2:                                  \
        return name##_v4 args;                 \
      case 1:                                  \
        return name##_v3 args;                 \
      default:                                 \
        return name##_base args;               \
    }                                          \
  }

// Conversions between a stored value and the arithmetic dtype, written without branches so
// that loops over them vectorize (c10's bfloat16 rounding branches on NaN, which keeps the
// compiler from vectorizing). Same results as c10's: round to nearest even, NaN kept NaN.
template <typename Acc, typename T>
inline __attribute__((always_inline)) Acc load(T v) {
  return static_cast<Acc>(v);
}
template <>
inline __attribute__((always_inline)) float load<float, c10::BFloat16>(c10::BFloat16 v) {
  uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T, typename Acc>
inline __attribute__((always_inline)) T store(Acc v) {
  return static_cast<T>(v);
}
template <>
inline __attribute__((always_inline)) c10::BFloat16 store<c10::BFloat16, float>(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  rounded = v != v ? 0x7FC0u : rounded;
  return c10::BFloat16(static_cast<uint16_t>(rounded), c10::BFloat16::from_bits());
}

// Rounds v as storing it in T would (the identity when T is the arithmetic dtype).
template <typename T, typename Acc>
inline __attribute__((always_inline)) Acc round_as(Acc v) {
  return load<Acc>(store<T, Acc>(v));
}

// exp(x) in float with Cephes' range reduction and polynomial (within 2 ulp of the exact
// value, about what libtorch's own vectorized exp gives): written out, without library calls
// or branches, so that the compiler vectorizes it (as it cannot expf; with -fno-trapping-math,
// build.rs). NaN stays NaN.
inline __attribute__((always_inline)) float vector_exp(float x) {
  float c = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  float k = std::floor(c * 1.44269504088896341f + 0.5f);  // nearest integer to c / ln 2
  float r = c - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x != x ? x : p * scale;
}

// exp in float64 (what the exactness tests run in): the library's own.
inline __attribute__((always_inline)) double vector_exp(double x) { return std::exp(x); }

}  // namespace adpo_fused

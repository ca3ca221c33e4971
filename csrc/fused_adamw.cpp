// The optimizer's element-wise work on the CPU, one memory pass each: AdamW's update in place,
// the four largest magnitudes its overflow bound reads, and a gradient's sum of squares.
//
// Composed of ATen ops the update is about ten passes over the weights, the bound four aminmax
// passes and the norm a float64 copy, square and sum per piece. Here each reads its tensors
// once. The update rounds as ATen's ops do, op by op in the tensors' dtype: lerp and addcmul
// are fused multiply-adds where ATen's vector kernels use them (its AVX2 and AVX-512 builds),
// plain multiplies and adds where they do not (its baseline build); nothing else is
// contracted. So the moments equal the composed update's (src/optimizer/in_place.rs) bit for
// bit. The weights may differ by an ulp or so: ATen's sqrt is MKL's vsSqrt, within an ulp but
// not correctly rounded (0.6% of float32 values differ with AVX-512); this one is.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "fused_ops.h"

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

// Every multiply and add below rounds on its own, as ATen's separate ops do (GCC would
// otherwise contract, say, the decayed weight plus the step into one FMA).
#pragma GCC optimize("fp-contract=off")

namespace {

// AdamW's per-step scalars, computed once by the caller (src/optimizer/fused.rs, same layout)
// so that the fused and the composed update multiply by the very same values.
struct AdamwScalars {
  double decay;           // 1 - lr * weight_decay
  double lerp_weight;     // 1 - beta1
  double beta2;           // beta2
  double one_minus_beta2; // 1 - beta2
  double bias2_sqrt;      // sqrt(1 - beta2^t)
  double eps;             // eps
  double neg_inv_step;    // -1 / (lr / (1 - beta1^t))
};

constexpr int kLanes = 16;        // independent partial results: lets the compiler vectorize
constexpr int64_t kGrain = 32768; // elements per parallel task of the update
constexpr int64_t kChunk = 65536; // elements per partial of a reduction, whatever the threads

// The builtins, not <cmath>'s wrappers: those were compiled without the pragma above, and GCC
// may decline to inline a function built with other optimization options.
static inline __attribute__((always_inline)) float root(float x) { return __builtin_sqrtf(x); }
static inline __attribute__((always_inline)) double root(double x) { return __builtin_sqrt(x); }
static inline __attribute__((always_inline)) float magnitude(float x) {
  return __builtin_fabsf(x);
}
static inline __attribute__((always_inline)) double magnitude(double x) {
  return __builtin_fabs(x);
}

// sqrt of x[0..n) into r, n <= kBlock: its own loop, which vectorizes (build.rs passes
// -fno-math-errno, as libtorch's build does; with errno kept, every sqrt had a test and the
// update took 0.45 s for 135M float32 values on one thread, against 0.20 s).
constexpr int64_t kBlock = 16;
template <typename T>
static inline __attribute__((always_inline)) void roots(const T* x, T* r, int64_t n) {
  for (int64_t j = 0; j < n; ++j) r[j] = root(x[j]);
}

// a * b + c rounded once (kFma) or twice.
template <typename T, bool kFma>
static inline __attribute__((always_inline)) T mul_add(T a, T b, T c) {
  if constexpr (kFma) {
    if constexpr (sizeof(T) == sizeof(float))
      return __builtin_fmaf(a, b, c);
    else
      return __builtin_fma(a, b, c);
  }
  return a * b + c;
}

template <typename T>
struct Adamw {
  // p *= decay; m.lerp_(g, w); v *= b2; v.addcmul_(g, g * (1 - b2));
  // d = sqrt(v) / bias2_sqrt + eps; d *= neg_inv_step; p.addcdiv_(m, d).
  // ATen's lerp: m + w * (g - m) for |w| < 0.5, else g + (w - 1) * (g - m).
  // By blocks of kBlock, the sqrt apart (`roots`): the rest vectorizes.
  template <bool kFma>
  static inline __attribute__((always_inline)) void update(T* p, const T* g, T* m, T* v,
                                                          int64_t n, const AdamwScalars& s) {
    const T decay = T(s.decay), w = T(s.lerp_weight), b2 = T(s.beta2);
    const T c2 = T(s.one_minus_beta2), bias2 = T(s.bias2_sqrt), eps = T(s.eps);
    const T neg_inv_step = T(s.neg_inv_step);
    const bool small = magnitude(w) < T(0.5);
    const T coeff = small ? w : w - T(1);
    for (int64_t i = 0; i < n; i += kBlock) {
      const int64_t len = std::min<int64_t>(kBlock, n - i);
      T decayed[kBlock], root_v[kBlock];
      for (int64_t l = 0; l < len; ++l) {
        T gi = g[i + l], mi = m[i + l];
        decayed[l] = p[i + l] * decay;
        m[i + l] = mul_add<T, kFma>(coeff, gi - mi, small ? mi : gi);
        v[i + l] = mul_add<T, kFma>(gi, gi * c2, v[i + l] * b2);
      }
      roots(v + i, root_v, len);
      for (int64_t l = 0; l < len; ++l) {
        T d = root_v[l] / bias2 + eps;
        d = d * neg_inv_step;
        p[i + l] = decayed[l] + m[i + l] / d;
      }
    }
  }

  static inline __attribute__((always_inline)) void update(T* p, const T* g, T* m, T* v,
                                                          int64_t n, const AdamwScalars* s,
                                                          bool fma) {
    if (fma)
      update<true>(p, g, m, v, n, *s);
    else
      update<false>(p, g, m, v, n, *s);
  }

  // Largest |x| over x[0..n) into *max, NaN when there is one. On the bit patterns: with the
  // sign cleared they order as the magnitudes do, and a NaN's is above Inf's; an integer max
  // vectorizes, where a float max that keeps NaN does not.
  static inline __attribute__((always_inline)) void max_abs(const T* x, int64_t n, T* max) {
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    constexpr U kMagnitude = ~U(0) >> 1;
    U top = 0;
    for (int64_t i = 0; i < n; ++i) {
      U bits;
      std::memcpy(&bits, x + i, sizeof bits);
      bits &= kMagnitude;
      top = bits > top ? bits : top;
    }
    std::memcpy(max, &top, sizeof top);
  }

  // Sum of x[i]^2 over x[0..n) in float64, lane by lane then the lanes in order.
  static inline __attribute__((always_inline)) double sum_squares(const T* x, int64_t n) {
    double lane[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        double a = double(x[j + l]);
        lane[l] += a * a;
      }
    double total = 0;
    for (; j < n; ++j) total += double(x[j]) * double(x[j]);
    for (int l = 0; l < kLanes; ++l) total += lane[l];
    return total;
  }
};

// One non-template entry point per dtype, cloned per instruction set (fused_ops.h).
#define ADPO_ADAMW_KERNELS(T, suffix)                                                         \
  ADPO_PER_ISA(update_##suffix,                                                             \
               (T * p, const T* g, T* m, T* v, int64_t n, const AdamwScalars* s, bool fma), \
               (p, g, m, v, n, s, fma), (Adamw<T>::update(p, g, m, v, n, s, fma)))          \
  ADPO_PER_ISA(max_abs_##suffix, (const T* x, int64_t n, T* max), (x, n, max),               \
               (Adamw<T>::max_abs(x, n, max)))                                               \
  ADPO_PER_ISA(sum_squares_##suffix, (const T* x, int64_t n, double* out), (x, n, out),      \
               (*out = Adamw<T>::sum_squares(x, n)))                                         \
  void update_kernel(T* p, const T* g, T* m, T* v, int64_t n, const AdamwScalars* s,         \
                     bool fma) {                                                             \
    update_##suffix(p, g, m, v, n, s, fma);                                                  \
  }                                                                                          \
  void max_abs_kernel(const T* x, int64_t n, T* max) {                                       \
    max_abs_##suffix(x, n, max);                                                             \
  }                                                                                          \
  void sum_squares_kernel(const T* x, int64_t n, double* out) {                              \
    sum_squares_##suffix(x, n, out);                                                         \
  }

ADPO_ADAMW_KERNELS(float, f32)
ADPO_ADAMW_KERNELS(double, f64)

// The checks every entry point makes: CPU, contiguous, float32 or float64, all one dtype and
// one number of elements.
void check(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  const at::Tensor& first = **tensors.begin();
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->device().is_cpu(), op, " runs on the CPU, got a tensor on ", t->device());
    TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, op,
                " takes float32 or float64 tensors, got ", t->scalar_type());
    TORCH_CHECK(t->scalar_type() == first.scalar_type(), op, ": tensors of ",
                first.scalar_type(), " and ", t->scalar_type(), " differ in dtype");
    TORCH_CHECK(t->numel() == first.numel(), op, ": tensors of ", first.numel(), " and ",
                t->numel(), " elements differ in size");
    TORCH_CHECK(t->is_contiguous(), op, " takes contiguous tensors");
  }
}

// Runs chunk(begin, end, c) over [0, n) in chunks of kChunk (c: the chunk's number), in
// parallel: partial results kept per chunk and combined in chunk order do not depend on the
// number of threads.
template <typename F>
int64_t for_each_chunk(int64_t n, F&& chunk) {
  int64_t chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) chunk(c * kChunk, std::min(n, (c + 1) * kChunk), c);
  });
  return chunks;
}

template <typename T>
void max_abs4(const at::Tensor* const (&t)[4], double* out) {
  const T* data[4];
  for (int k = 0; k < 4; ++k) data[k] = t[k]->const_data_ptr<T>();
  int64_t n = t[0]->numel();
  std::vector<T> maxima(4 * ((n + kChunk - 1) / kChunk), T(0));
  int64_t chunks = for_each_chunk(n, [&](int64_t b, int64_t e, int64_t c) {
    for (int k = 0; k < 4; ++k) max_abs_kernel(data[k] + b, e - b, &maxima[4 * c + k]);
  });
  for (int k = 0; k < 4; ++k) {
    double max = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      double m = maxima[4 * c + k];
      max = m > max || m != m ? m : max;  // NaN sticks
    }
    out[k] = max;
  }
}

template <typename T>
double sum_squares(const at::Tensor& x) {
  const T* data = x.const_data_ptr<T>();
  std::vector<double> partial((x.numel() + kChunk - 1) / kChunk, 0.0);
  for_each_chunk(x.numel(), [&](int64_t b, int64_t e, int64_t c) {
    sum_squares_kernel(data + b, e - b, &partial[c]);
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace

// AdamW's update of (param, grad, exp_avg, exp_avg_sq) in place, as torch.optim.AdamW's
// single-tensor path rounds it; `s` points to its scalars (AdamwScalars).
extern "C" char* adpo_fused_adamw(const at::Tensor* param, const at::Tensor* grad,
                                  const at::Tensor* exp_avg, const at::Tensor* exp_avg_sq,
                                  const AdamwScalars* s) {
  return adpo_fused::guarded([&] {
    check("fused AdamW", {param, grad, exp_avg, exp_avg_sq});
    // ATen's vector kernels fuse lerp's and addcmul's multiply-add from AVX2 up
    bool fma = adpo_fused::isa_level() > 0;
    AT_DISPATCH_FLOATING_TYPES(param->scalar_type(), "adpo_fused_adamw", [&] {
      scalar_t* p = param->mutable_data_ptr<scalar_t>();
      const scalar_t* g = grad->const_data_ptr<scalar_t>();
      scalar_t* m = exp_avg->mutable_data_ptr<scalar_t>();
      scalar_t* v = exp_avg_sq->mutable_data_ptr<scalar_t>();
      at::parallel_for(0, param->numel(), kGrain, [&](int64_t b, int64_t e) {
        update_kernel(p + b, g + b, m + b, v + b, e - b, s, fma);
      });
    });
  });
}

// The largest magnitudes of param, grad, exp_avg and exp_avg_sq into out[0..4), each NaN when
// its tensor holds a NaN; 0 for empty tensors.
extern "C" char* adpo_fused_adamw_max_abs(const at::Tensor* param, const at::Tensor* grad,
                                          const at::Tensor* exp_avg,
                                          const at::Tensor* exp_avg_sq, double* out) {
  return adpo_fused::guarded([&] {
    check("fused AdamW bound", {param, grad, exp_avg, exp_avg_sq});
    const at::Tensor* const tensors[4] = {param, grad, exp_avg, exp_avg_sq};
    AT_DISPATCH_FLOATING_TYPES(param->scalar_type(), "adpo_fused_adamw_max_abs",
                               [&] { max_abs4<scalar_t>(tensors, out); });
  });
}

// The sum of squares of x's elements, accumulated in float64, into *out.
extern "C" char* adpo_fused_sum_squares(const at::Tensor* x, double* out) {
  return adpo_fused::guarded([&] {
    check("fused sum of squares", {x});
    AT_DISPATCH_FLOATING_TYPES(x->scalar_type(), "adpo_fused_sum_squares",
                               [&] { *out = sum_squares<scalar_t>(*x); });
  });
}

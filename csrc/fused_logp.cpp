// The output head's softmax for token log-probs, fused (logprob/chunked.rs calls these on one
// chunk of logits at a time, without autograd: its backward is by hand).
//
// Composed, a chunk of 16-bit logits [rows, V] is first copied to float32, then max, subtract,
// exp, sum and divide each pass over the float32 copy (and the gradient multiplies, scatters and
// casts back): seven or eight passes over [rows, V] where V is tens of thousands. Here each row
// is read twice while it is in cache (its max, then its sum of exponentials) and, for the
// gradient, written once in the logits' own dtype. Sums run in float32 for 16-bit and float32
// logits and in float64 for float64 logits, as the composed version's do.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

#include "fused_ops.h"

namespace {

using adpo_fused::load;
using adpo_fused::store;
using adpo_fused::vector_exp;

constexpr int kLanes = 16;  // independent partial sums: lets the compiler vectorize them

template <typename T, typename Acc>
struct SoftmaxRow {
  static inline __attribute__((always_inline)) Acc max(const T* z, int64_t n) {
    Acc lane[kLanes];
    for (int l = 0; l < kLanes; ++l) lane[l] = -INFINITY;
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        Acc v = load<Acc>(z[j + l]);
        lane[l] = v > lane[l] ? v : lane[l];
      }
    Acc m = -INFINITY;
    for (; j < n; ++j) m = load<Acc>(z[j]) > m ? load<Acc>(z[j]) : m;
    for (int l = 0; l < kLanes; ++l) m = lane[l] > m ? lane[l] : m;
    return m;
  }

  // sum of exp(z - m)
  static inline __attribute__((always_inline)) Acc sum_exp(const T* z, Acc m, int64_t n) {
    Acc lane[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
      for (int l = 0; l < kLanes; ++l) lane[l] += vector_exp(load<Acc>(z[j + l]) - m);
    Acc total = 0;
    for (; j < n; ++j) total += vector_exp(load<Acc>(z[j]) - m);
    for (int l = 0; l < kLanes; ++l) total += lane[l];
    return total;
  }

  // logp[r] = z[r, next[r]] - (max + log sum exp(z - max))
  static inline __attribute__((always_inline)) void logp(const T* z, const int64_t* next,
                                                        Acc* out, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* zr = z + r * n;
      Acc m = max(zr, n);
      out[r] = load<Acc>(zr[next[r]]) - (m + std::log(sum_exp(zr, m, n)));
    }
  }

  // dz[r] = w[r] * (onehot(next[r]) - softmax(z[r]))
  static inline __attribute__((always_inline)) void grad(const T* z, const int64_t* next,
                                                        const Acc* w, T* dz, int64_t rows,
                                                        int64_t n) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* zr = z + r * n;
      T* dr = dz + r * n;
      Acc m = max(zr, n);
      Acc scale = -w[r] / sum_exp(zr, m, n);
      for (int64_t j = 0; j < n; ++j) dr[j] = store<T>(vector_exp(load<Acc>(zr[j]) - m) * scale);
      Acc p = vector_exp(load<Acc>(zr[next[r]]) - m) * scale;  // the stored value, unrounded
      dr[next[r]] = store<T>(p + w[r]);
    }
  }
};

#define ADPO_SOFTMAX_KERNELS(T, Acc, suffix)                                                  \
  ADPO_PER_ISA(logp_##suffix,                                                                 \
               (const T* z, const int64_t* next, Acc* out, int64_t rows, int64_t n),         \
               (z, next, out, rows, n), (SoftmaxRow<T, Acc>::logp(z, next, out, rows, n)))   \
  ADPO_PER_ISA(grad_##suffix,                                                                 \
               (const T* z, const int64_t* next, const Acc* w, T* dz, int64_t rows,          \
                int64_t n),                                                                   \
               (z, next, w, dz, rows, n), (SoftmaxRow<T, Acc>::grad(z, next, w, dz, rows, n))) \
  template <>                                                                                 \
  void logp_kernel<T>(const T* z, const int64_t* next, Acc* out, int64_t rows, int64_t n) {  \
    logp_##suffix(z, next, out, rows, n);                                                    \
  }                                                                                           \
  template <>                                                                                 \
  void grad_kernel<T>(const T* z, const int64_t* next, const Acc* w, T* dz, int64_t rows,    \
                      int64_t n) {                                                            \
    grad_##suffix(z, next, w, dz, rows, n);                                                  \
  }

template <typename T>
void logp_kernel(const T* z, const int64_t* next, at::opmath_type<T>* out, int64_t rows,
                 int64_t n);
template <typename T>
void grad_kernel(const T* z, const int64_t* next, const at::opmath_type<T>* w, T* dz,
                 int64_t rows, int64_t n);

ADPO_SOFTMAX_KERNELS(float, float, f32)
ADPO_SOFTMAX_KERNELS(double, double, f64)
ADPO_SOFTMAX_KERNELS(c10::BFloat16, float, bf16)
ADPO_SOFTMAX_KERNELS(c10::Half, float, f16)

at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The logits as a contiguous [rows, V] and the next ids as a contiguous [rows], checked.
std::pair<at::Tensor, at::Tensor> rows_and_ids(const at::Tensor& logits, const at::Tensor& next) {
  TORCH_CHECK(logits.device().is_cpu() && next.device().is_cpu(), "fused log-softmax runs on the CPU");
  TORCH_CHECK(logits.dim() == 2, "fused log-softmax: logits must be [rows, V], got ", logits.sizes());
  TORCH_CHECK(next.scalar_type() == at::kLong && next.numel() == logits.size(0),
              "fused log-softmax: next ids must be int64, one per row; got ", next.scalar_type(),
              " ", next.sizes(), " for logits ", logits.sizes());
  at::Tensor ids = next.reshape({-1}).contiguous();
  if (ids.numel() > 0) {
    auto [lo, hi] = at::aminmax(ids);
    TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < logits.size(1),
                "fused log-softmax: a next id is outside the vocabulary [0, ", logits.size(1), ")");
  }
  return {logits.contiguous(), ids};
}

int64_t grain(int64_t n) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(n, 1)); }

}  // namespace

extern "C" char* adpo_fused_token_logp(const at::Tensor* logits, const at::Tensor* next,
                                       at::Tensor** out) {
  return adpo_fused::guarded([&] {
    auto [z, ids] = rows_and_ids(*logits, *next);
    int64_t rows = z.size(0), n = z.size(1);
    at::Tensor result = at::empty({rows}, z.options().dtype(accumulate_type(z.scalar_type())));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "adpo_token_logp", [&] {
      using Acc = at::opmath_type<scalar_t>;
      const scalar_t* zp = z.const_data_ptr<scalar_t>();
      const int64_t* np = ids.const_data_ptr<int64_t>();
      Acc* op = result.mutable_data_ptr<Acc>();
      at::parallel_for(0, rows, grain(n), [&](int64_t b, int64_t e) {
        logp_kernel<scalar_t>(zp + b * n, np + b, op + b, e - b, n);
      });
    });
    *out = new at::Tensor(result);
  });
}

extern "C" char* adpo_fused_logp_grad(const at::Tensor* logits, const at::Tensor* next,
                                      const at::Tensor* weights, at::Tensor** out) {
  return adpo_fused::guarded([&] {
    auto [z, ids] = rows_and_ids(*logits, *next);
    int64_t rows = z.size(0), n = z.size(1);
    at::ScalarType acc = accumulate_type(z.scalar_type());
    TORCH_CHECK(weights->device().is_cpu() && weights->numel() == rows,
                "fused log-softmax gradient: one weight per row, got ", weights->sizes());
    at::Tensor w = weights->reshape({-1}).to(acc).contiguous();
    at::Tensor dz = at::empty_like(z, at::MemoryFormat::Contiguous);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "adpo_logp_grad", [&] {
      using Acc = at::opmath_type<scalar_t>;
      const scalar_t* zp = z.const_data_ptr<scalar_t>();
      const int64_t* np = ids.const_data_ptr<int64_t>();
      const Acc* wp = w.const_data_ptr<Acc>();
      scalar_t* dp = dz.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, grain(n), [&](int64_t b, int64_t e) {
        grad_kernel<scalar_t>(zp + b * n, np + b, wp + b, dp + b * n, e - b, n);
      });
    });
    *out = new at::Tensor(dz);
  });
}

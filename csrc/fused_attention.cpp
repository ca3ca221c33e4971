// Grouped-query attention as one autograd node: libtorch's CPU flash-attention forward, and a
// backward of whole blocks of queries.
//
// libtorch's CPU flash-attention backward multiplies blocks of 64 queries by 512 keys, per
// query head, each through a fresh oneDNN matrix-product call: at [16, 9, 320, 64] (bf16) it
// spends most of its time setting up those calls, about 77 ms per layer against 15 ms of
// arithmetic. Here the G query heads that share a key/value head go through together: their
// queries, ordered position-major, are the rows of one matrix, and a block of positions is a
// few matrix products of hundreds of rows, each stopping at the last key the block's rows
// attend to (half the work, under a causal mask). The arithmetic is flash attention's: scores
// in float32 (the inputs' dtype for float64), probabilities from the forward's log-sum-exp,
// rounded to the inputs' dtype before they multiply the gradients, as libtorch's does.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fused_ops.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using adpo_fused::store;
using adpo_fused::vector_exp;

// Row-major C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C (beta 0: C is only written).
//
// With T the arithmetic dtype (float32, float64), libtorch's own matrix product on views of the
// buffers. 16-bit inputs need a float32 product, which libtorch's operators do not offer on
// the CPU (mm gives 16-bit results): MKL's cblas_gemm_bf16bf16f32 / cblas_gemm_f16f16f32, which
// the x86-64 libtorch links and exports, looked up at run time so that a libtorch without MKL
// still loads adpo; without them the inputs are widened to float32 first (slower, same sums).
at::Tensor matrix(const void* data, bool transposed, int64_t rows, int64_t cols, int64_t ld,
                  at::ScalarType type) {
  // op(X) [rows, cols] of X stored row-major with leading dimension ld
  auto options = at::TensorOptions().dtype(type);
  void* p = const_cast<void*>(data);
  if (transposed) return at::from_blob(p, {cols, rows}, {ld, 1}, options).t();
  return at::from_blob(p, {rows, cols}, {ld, 1}, options);
}

template <typename T, typename Acc>
void gemm_by_libtorch(bool ta, bool tb, int64_t m, int64_t n, int64_t k, Acc alpha, const T* a,
                      int64_t lda, const T* b, int64_t ldb, Acc beta, Acc* c, int64_t ldc) {
  constexpr auto type = c10::CppTypeToScalarType<T>::value;
  constexpr auto acc = c10::CppTypeToScalarType<Acc>::value;
  at::Tensor x = matrix(a, ta, m, k, lda, type), y = matrix(b, tb, k, n, ldb, type);
  if constexpr (type != acc) {
    x = x.to(acc);
    y = y.to(acc);
  }
  matrix(c, false, m, n, ldc, acc).addmm_(x, y, beta, alpha);
}

// MKL's CBLAS signature for 16-bit inputs and float32 results (LP64: 32-bit sizes).
using CblasGemm16 = void (*)(int layout, int ta, int tb, int m, int n, int k, float alpha,
                             const void* a, int lda, const void* b, int ldb, float beta, float* c,
                             int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

template <typename T>
CblasGemm16 mkl_gemm16() {
  static const CblasGemm16 f = reinterpret_cast<CblasGemm16>(dlsym(
      RTLD_DEFAULT,
      std::is_same_v<T, c10::BFloat16> ? "cblas_gemm_bf16bf16f32" : "cblas_gemm_f16f16f32"));
  return f;
}

template <typename T, typename Acc>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, Acc alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, Acc beta, Acc* c, int64_t ldc) {
  if constexpr (!std::is_same_v<T, Acc>) {
    constexpr int64_t kMax = std::numeric_limits<int>::max();
    CblasGemm16 mkl = mkl_gemm16<T>();
    if (mkl != nullptr && std::max({m, n, k, lda, ldb, ldc}) <= kMax) {
      auto op = [](bool t) { return t ? kTrans : kNoTrans; };
      mkl(kRowMajor, op(ta), op(tb), int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta,
          c, int(ldc));
      return;
    }
  }
  gemm_by_libtorch<T, Acc>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// One query row: p = exp(s * scale - lse) where the key is attended, else 0, in the arithmetic
// dtype (p) and rounded to the inputs' (p16, the next matrix product's input; unused when they
// are one dtype).
template <typename T, typename Acc>
inline __attribute__((always_inline)) void probs_row(const Acc* s, const uint8_t* attended,
                                                    Acc scale, Acc lse, Acc* p, T* p16,
                                                    int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    Acc e = vector_exp(s[j] * scale - lse);
    p[j] = attended[j] ? e : Acc(0);
    if constexpr (!std::is_same_v<T, Acc>) p16[j] = store<T>(p[j]);
  }
}

// One query row: ds = p * (dp - di) (di its sum of dout * out), in the inputs' dtype.
template <typename T, typename Acc>
inline __attribute__((always_inline)) void dscores_row(const Acc* p, const Acc* dp, Acc di, T* ds,
                                                      int64_t n) {
  for (int64_t j = 0; j < n; ++j) ds[j] = store<T>(p[j] * (dp[j] - di));
}

template <typename T, typename Acc>
inline __attribute__((always_inline)) void round_row(const Acc* x, T* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = store<T>(x[j]);
}

#define ADPO_ATTENTION_KERNELS(T, Acc, suffix)                                                  \
  ADPO_PER_ISA(probs_##suffix,                                                                  \
               (const Acc* s, const uint8_t* a, Acc c, Acc l, Acc* p, T* p16, int64_t n),       \
               (s, a, c, l, p, p16, n), (probs_row<T, Acc>(s, a, c, l, p, p16, n)))            \
  ADPO_PER_ISA(dscores_##suffix, (const Acc* p, const Acc* dp, Acc di, T* ds, int64_t n),      \
               (p, dp, di, ds, n), (dscores_row<T, Acc>(p, dp, di, ds, n)))                    \
  ADPO_PER_ISA(round_##suffix, (const Acc* x, T* y, int64_t n), (x, y, n),                     \
               (round_row<T, Acc>(x, y, n)))                                                   \
  void probs(const Acc* s, const uint8_t* a, Acc c, Acc l, Acc* p, T* p16, int64_t n) {        \
    probs_##suffix(s, a, c, l, p, p16, n);                                                     \
  }                                                                                             \
  void dscores(const Acc* p, const Acc* dp, Acc di, T* ds, int64_t n) {                       \
    dscores_##suffix(p, dp, di, ds, n);                                                        \
  }                                                                                             \
  void round_to(const Acc* x, T* y, int64_t n) { round_##suffix(x, y, n); }

ADPO_ATTENTION_KERNELS(float, float, f32)
ADPO_ATTENTION_KERNELS(double, double, f64)
ADPO_ATTENTION_KERNELS(c10::BFloat16, float, bf16)
ADPO_ATTENTION_KERNELS(c10::Half, float, f16)

// Query rows per block: few enough that each block's products stop near its own last key (a
// causal mask leaves half the score matrix out), enough for efficient matrix products. And at
// most 1 MiB of float32 scores per block, so that they stay in cache and long sequences need
// no [T, T] buffer.
constexpr int64_t kBlockRows = 128;
constexpr int64_t kBlockElements = 1 << 18;

// What one (batch row, key/value head) pair's backward reads and writes. Queries, outputs'
// gradients, their log-sum-exps and dout·out sums are position-major [T, G(, D)] (row t * G + j
// is position t of the group's query head j); keys, values and their gradients [K, D].
template <typename T, typename Acc>
struct Pair {
  const T *q, *dout, *k, *v;
  const Acc *lse, *di;
  const uint8_t* mask;      // [T, K]: whether position t attends to key j
  const int64_t* last_key;  // [T]: the last key position t attends to, -1 for none
  T *dq, *dk, *dv;
};

template <typename T, typename Acc>
class Backward {
 public:
  Backward(int64_t t, int64_t keys, int64_t g, int64_t d, Acc scale)
      : t_(t), keys_(keys), g_(g), d_(d), scale_(scale) {
    int64_t most = std::min(kBlockRows / g, kBlockElements / std::max<int64_t>(1, g * keys));
    block_ = std::max<int64_t>(1, std::min(t, most));
    int64_t rows = block_ * g;
    p_.resize(rows * keys);
    dp_.resize(rows * keys);
    dq_.resize(rows * d);
    dk_.resize(keys * d);
    dv_.resize(keys * d);
    p16_.resize(std::is_same_v<T, Acc> ? 0 : rows * keys);
    ds_.resize(rows * keys);
  }

  void run(const Pair<T, Acc>& x) {
    std::fill(dk_.begin(), dk_.end(), Acc(0));
    std::fill(dv_.begin(), dv_.end(), Acc(0));
    for (int64_t t0 = 0; t0 < t_; t0 += block_) block(x, t0, std::min(t_, t0 + block_));
    store_rows(dk_.data(), x.dk, keys_ * d_);
    store_rows(dv_.data(), x.dv, keys_ * d_);
  }

 private:
  // Positions [t0, t1): their rows' scores against the keys up to the last one any attends to.
  void block(const Pair<T, Acc>& x, int64_t t0, int64_t t1) {
    int64_t n = 0;  // keys in play
    for (int64_t t = t0; t < t1; ++t) n = std::max(n, x.last_key[t] + 1);
    int64_t rows = (t1 - t0) * g_, first = t0 * g_;
    const T *q = x.q + first * d_, *dout = x.dout + first * d_;
    Acc *s = p_.data(), *dp = dp_.data();
    if (n == 0) {
      std::fill(dq_.begin(), dq_.begin() + rows * d_, Acc(0));
      store_rows(dq_.data(), x.dq + first * d_, rows * d_);
      return;
    }
    gemm<T, Acc>(false, true, rows, n, d_, Acc(1), q, d_, x.k, d_, Acc(0), s, n);
    T* p16 = std::is_same_v<T, Acc> ? reinterpret_cast<T*>(s) : p16_.data();
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* attended = x.mask + (t0 + r / g_) * keys_;
      // s becomes p, in place
      probs(s + r * n, attended, scale_, x.lse[first + r], s + r * n, p16 + r * n, n);
    }
    gemm<T, Acc>(true, false, n, d_, rows, Acc(1), p16, n, dout, d_, Acc(1), dv_.data(), d_);
    gemm<T, Acc>(false, true, rows, n, d_, Acc(1), dout, d_, x.v, d_, Acc(0), dp, n);
    T* ds = ds_.data();
    for (int64_t r = 0; r < rows; ++r) dscores(s + r * n, dp + r * n, x.di[first + r], ds + r * n, n);
    gemm<T, Acc>(false, false, rows, d_, n, scale_, ds, n, x.k, d_, Acc(0), dq_.data(), d_);
    store_rows(dq_.data(), x.dq + first * d_, rows * d_);
    gemm<T, Acc>(true, false, n, d_, rows, scale_, ds, n, q, d_, Acc(1), dk_.data(), d_);
  }

  static void store_rows(const Acc* x, T* y, int64_t n) { round_to(x, y, n); }

  int64_t t_, keys_, g_, d_, block_;
  Acc scale_;
  std::vector<Acc> p_, dp_, dq_, dk_, dv_;
  std::vector<T> p16_, ds_;
};

// [B, H, T, X...] as [B, H_kv, T, G, X...] (position-major within each group), contiguous.
at::Tensor grouped(const at::Tensor& x, int64_t kv_heads) {
  auto s = x.sizes().vec();
  std::vector<int64_t> split{s[0], kv_heads, s[1] / kv_heads, s[2]};
  split.insert(split.end(), s.begin() + 3, s.end());
  auto g = x.reshape(split);
  return s.size() == 4 ? g.permute({0, 1, 3, 2, 4}).contiguous() : g.permute({0, 1, 3, 2}).contiguous();
}

at::Tensor ungrouped(const at::Tensor& g) {
  // [B, H_kv, T, G, D] -> [B, H, T, D]
  auto s = g.sizes();
  return g.permute({0, 1, 3, 2, 4}).reshape({s[0], s[1] * s[3], s[2], s[4]});
}

// Per (batch row, position): the last key attended to, -1 for none.
at::Tensor last_keys(const at::Tensor& mask) {
  int64_t keys = mask.size(-1);
  auto positions = at::arange(1, keys + 1, mask.options().dtype(at::kLong));
  return (mask.to(at::kLong) * positions).amax(-1).sub(1).contiguous();
}

struct Attention : public torch::autograd::Function<Attention> {
  // q [B, H, T, D], k and v [B, H_kv, K, D], mask (bool) [B or 1, 1, T, K] -> [B, H, T, D].
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& mask) {
    double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
    // the additive mask scaled_dot_product_attention makes of a boolean one
    auto options = q.options();
    at::Tensor additive = at::where(mask.logical_not(),
                                    at::scalar_tensor(-std::numeric_limits<double>::infinity(), options),
                                    at::scalar_tensor(0.0, options));
    auto [out, lse] =
        at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, false, additive, scale);
    ctx->save_for_backward({q, k, v, out, lse, mask});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4],
                     &mask = saved[5];
    double scale = ctx->saved_data["scale"].toDouble();
    at::Tensor dq, dk, dv;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "adpo_attention_backward",
                                    [&] {
                                      std::tie(dq, dk, dv) = backward_of<scalar_t>(
                                          grads[0], q, k, v, out, lse, mask, scale);
                                    });
    return {dq, dk, dv, at::Tensor()};
  }

  template <typename T>
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_of(
      const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
      const at::Tensor& out, const at::Tensor& lse, const at::Tensor& mask, double scale) {
    using Acc = at::opmath_type<T>;
    int64_t b = q.size(0), heads = q.size(1), t = q.size(2), d = q.size(3);
    int64_t kv = k.size(1), keys = k.size(2), g = heads / kv;
    auto acc = q.options().dtype(c10::CppTypeToScalarType<Acc>::value);
    at::Tensor qg = grouped(q, kv), dog = grouped(dout, kv);
    at::Tensor di = grouped((dout.to(acc) * out.to(acc)).sum(-1), kv);
    at::Tensor lg = grouped(lse.to(acc), kv);
    at::Tensor kc = k.contiguous(), vc = v.contiguous();
    at::Tensor m = mask.expand({b, 1, t, keys}).reshape({b, t, keys}).to(at::kByte).contiguous();
    at::Tensor last = last_keys(m);
    at::Tensor dqg = at::empty_like(qg), dk = at::empty_like(kc), dv = at::empty_like(vc);
    at::parallel_for(0, b * kv, 1, [&](int64_t begin, int64_t end) {
      Backward<T, Acc> work(t, keys, g, d, static_cast<Acc>(scale));
      for (int64_t i = begin; i < end; ++i) {
        int64_t row = i / kv;
        work.run(Pair<T, Acc>{qg.const_data_ptr<T>() + i * t * g * d,
                              dog.const_data_ptr<T>() + i * t * g * d,
                              kc.const_data_ptr<T>() + i * keys * d,
                              vc.const_data_ptr<T>() + i * keys * d,
                              lg.const_data_ptr<Acc>() + i * t * g,
                              di.const_data_ptr<Acc>() + i * t * g,
                              m.const_data_ptr<uint8_t>() + row * t * keys,
                              last.const_data_ptr<int64_t>() + row * t,
                              dqg.mutable_data_ptr<T>() + i * t * g * d,
                              dk.mutable_data_ptr<T>() + i * keys * d,
                              dv.mutable_data_ptr<T>() + i * keys * d});
      }
    });
    return {ungrouped(dqg), dk, dv};
  }
};

}  // namespace

extern "C" char* adpo_fused_attention(const at::Tensor* q, const at::Tensor* k,
                                      const at::Tensor* v, const at::Tensor* mask,
                                      at::Tensor** out) {
  return adpo_fused::guarded([&] {
    TORCH_CHECK(q->device().is_cpu() && k->device().is_cpu() && v->device().is_cpu() &&
                    mask->device().is_cpu(),
                "fused attention runs on the CPU");
    TORCH_CHECK(q->dim() == 4 && k->dim() == 4 && v->dim() == 4 && mask->dim() == 4,
                "fused attention: q, k, v and the mask must be 4-D");
    TORCH_CHECK(q->scalar_type() == k->scalar_type() && q->scalar_type() == v->scalar_type(),
                "fused attention: q, k and v differ in dtype");
    TORCH_CHECK(mask->scalar_type() == at::kBool, "fused attention: the mask must be boolean");
    TORCH_CHECK(k->sizes() == v->sizes() && q->size(0) == k->size(0) && q->size(3) == k->size(3),
                "fused attention: q ", q->sizes(), ", k ", k->sizes(), " and v ", v->sizes(),
                " do not fit");
    TORCH_CHECK(k->size(1) > 0 && q->size(1) % k->size(1) == 0,
                "fused attention: ", q->size(1), " query heads are not a multiple of ",
                k->size(1), " key/value heads");
    TORCH_CHECK((mask->size(0) == q->size(0) || mask->size(0) == 1) && mask->size(1) == 1 &&
                    mask->size(2) == q->size(2) && mask->size(3) == k->size(2),
                "fused attention: mask ", mask->sizes(), " does not fit q ", q->sizes(),
                " and k ", k->sizes());
    *out = new at::Tensor(Attention::apply(*q, *k, *v, *mask));
  });
}

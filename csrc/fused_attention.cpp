// Grouped-query attention as one autograd node, forward and backward in whole blocks of
// queries.
//
// libtorch's CPU flash attention multiplies blocks of 64 queries by 512 keys, per query head,
// each through a fresh oneDNN matrix-product call: at [16, 9, 320, 64] (bf16) its backward
// spends most of its time setting up those calls (about 77 ms per layer against 15 ms of
// arithmetic), and its forward about four times what its arithmetic needs. Here the G query
// heads that share a key/value head go through together: their queries, ordered
// position-major, are the rows of one matrix, and a block of positions is a few matrix
// products of hundreds of rows, each stopping at the last key the block's rows attend to (half
// the work, under a causal mask). The arithmetic is flash attention's: scores in float32 (the
// inputs' dtype for float64), probabilities rounded to the inputs' dtype before they multiply
// the values or the gradients, the output divided by the probabilities' sum at the end; the
// backward takes the probabilities from the forward's log-sum-exp. A block's rows see all their
// keys at once (no running rescale), so beyond 512 keys the forward rounds less than
// libtorch's.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// 64 bytes of Acc as one vector (GCC's vector extension: one AVX-512 register, or two or four
// narrower ones), for the row reductions, which the compiler does not vectorize by itself.
template <typename Acc>
struct LanesOf;
template <>
struct LanesOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct LanesOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename Acc>
using Lanes = typename LanesOf<Acc>::type;
template <typename Acc>
constexpr int kWidth = 64 / sizeof(Acc);

// The lanes of v combined pairwise (a chain of 4 steps for 16 lanes, not 15: short rows make
// the final reduction a noticeable part of a row's work).
template <typename Acc, typename F>
inline __attribute__((always_inline)) Acc tree_reduce(const Lanes<Acc>& v, F f) {
  Acc a[kWidth<Acc>];
  std::memcpy(a, &v, sizeof a);
  for (int w = kWidth<Acc> / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) a[l] = f(a[l], a[l + w]);
  return a[0];
}

// One query row's softmax over its scores s: p = exp(s * scale - max) where the key is attended,
// else 0, rounded to the inputs' dtype into p16 (in place in s when they are one dtype). Writes
// the row's log-sum-exp and the reciprocal of the sum of the unrounded p; with no key attended,
// -inf and 0 (the row's output is then 0). Plain loops, and vectors for the two reductions:
// each vectorizes (one loop doing it all would not).
template <typename T, typename Acc>
inline __attribute__((always_inline)) void softmax_row(Acc* s, const uint8_t* attended, Acc scale,
                                                      T* p16, int64_t n, Acc* lse, Acc* inv) {
  constexpr Acc kNone = -std::numeric_limits<Acc>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    Acc x = s[j] * scale;
    s[j] = attended[j] ? x : kNone;
  }
  int64_t j = 0;
  Lanes<Acc> lane = Lanes<Acc>{} + kNone;
  for (; j + kWidth<Acc> <= n; j += kWidth<Acc>) {
    Lanes<Acc> x;
    std::memcpy(&x, s + j, sizeof x);
    lane = x > lane ? x : lane;
  }
  Acc m = kNone;
  for (; j < n; ++j) m = s[j] > m ? s[j] : m;
  auto larger = [](Acc a, Acc b) { return a > b ? a : b; };
  m = larger(tree_reduce<Acc>(lane, larger), m);
  for (j = 0; j < n; ++j) {
    Acc e = vector_exp(s[j] - m);
    s[j] = attended[j] ? e : Acc(0);
  }
  Lanes<Acc> sums = {};
  for (j = 0; j + kWidth<Acc> <= n; j += kWidth<Acc>) {
    Lanes<Acc> x;
    std::memcpy(&x, s + j, sizeof x);
    sums += x;
  }
  Acc sum = 0;
  for (; j < n; ++j) sum += s[j];
  sum += tree_reduce<Acc>(sums, [](Acc a, Acc b) { return a + b; });
  if constexpr (!std::is_same_v<T, Acc>)
    for (j = 0; j < n; ++j) p16[j] = store<T>(s[j]);
  *lse = sum > 0 ? m + std::log(sum) : kNone;
  *inv = sum > 0 ? Acc(1) / sum : Acc(0);
}

// A block's rows of scores [rows, n]: row r is position t0 + r / g, whose mask row is mask +
// position * keys. The row kernels below run over all of a block's rows in one call: per-row
// calls through the instruction-set dispatch cost more than the short rows' arithmetic.
template <typename Acc>
struct BlockRows {
  const uint8_t* mask;
  int64_t keys, g, t0, rows, n;
  Acc scale;

  const uint8_t* attended(int64_t r) const { return mask + (t0 + r / g) * keys; }
};

// softmax_row over each row; lse and inv [rows].
template <typename T, typename Acc>
inline __attribute__((always_inline)) void softmax_rows(Acc* s, T* p16, const BlockRows<Acc>& x,
                                                       Acc* lse, Acc* inv) {
  for (int64_t r = 0; r < x.rows; ++r)
    softmax_row<T, Acc>(s + r * x.n, x.attended(r), x.scale, p16 + r * x.n, x.n, lse + r,
                        inv + r);
}

// probs_row over each row, s becoming p in place; lse [rows].
template <typename T, typename Acc>
inline __attribute__((always_inline)) void probs_rows(Acc* s, T* p16, const BlockRows<Acc>& x,
                                                     const Acc* lse) {
  for (int64_t r = 0; r < x.rows; ++r)
    probs_row<T, Acc>(s + r * x.n, x.attended(r), x.scale, lse[r], s + r * x.n, p16 + r * x.n,
                      x.n);
}

// y = x * c, rounded to the inputs' dtype.
template <typename T, typename Acc>
inline __attribute__((always_inline)) void scale_row(const Acc* x, Acc c, T* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = store<T>(x[j] * c);
}

// Rows [rows, n]: ds = p * (dp - di) (di [rows], each row's sum of dout * out), in the inputs'
// dtype.
template <typename T, typename Acc>
inline __attribute__((always_inline)) void dscores_rows(const Acc* p, const Acc* dp, const Acc* di,
                                                       T* ds, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) ds[r * n + j] = store<T>(p[r * n + j] * (dp[r * n + j] - di[r]));
}

template <typename T, typename Acc>
inline __attribute__((always_inline)) void round_row(const Acc* x, T* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = store<T>(x[j]);
}

#define ADPO_ATTENTION_KERNELS(T, Acc, suffix)                                                  \
  ADPO_PER_ISA(softmax_##suffix, (Acc* s, T* p16, const BlockRows<Acc>& x, Acc* lse, Acc* inv),   \
               (s, p16, x, lse, inv), (softmax_rows<T, Acc>(s, p16, x, lse, inv)))              \
  ADPO_PER_ISA(probs_##suffix, (Acc* s, T* p16, const BlockRows<Acc>& x, const Acc* lse),        \
               (s, p16, x, lse), (probs_rows<T, Acc>(s, p16, x, lse)))                          \
  ADPO_PER_ISA(dscores_##suffix,                                                                \
               (const Acc* p, const Acc* dp, const Acc* di, T* ds, int64_t rows, int64_t n),    \
               (p, dp, di, ds, rows, n), (dscores_rows<T, Acc>(p, dp, di, ds, rows, n)))        \
  ADPO_PER_ISA(round_##suffix, (const Acc* x, T* y, int64_t n), (x, y, n),                     \
               (round_row<T, Acc>(x, y, n)))                                                   \
  ADPO_PER_ISA(scale_##suffix, (const Acc* x, Acc c, T* y, int64_t n), (x, c, y, n),           \
               (scale_row<T, Acc>(x, c, y, n)))                                                \
  void softmax(Acc* s, T* p16, const BlockRows<Acc>& x, Acc* lse, Acc* inv) {                  \
    softmax_##suffix(s, p16, x, lse, inv);                                                     \
  }                                                                                             \
  void probs(Acc* s, T* p16, const BlockRows<Acc>& x, const Acc* lse) {                        \
    probs_##suffix(s, p16, x, lse);                                                            \
  }                                                                                             \
  void dscores(const Acc* p, const Acc* dp, const Acc* di, T* ds, int64_t rows, int64_t n) {   \
    dscores_##suffix(p, dp, di, ds, rows, n);                                                  \
  }                                                                                             \
  void round_to(const Acc* x, T* y, int64_t n) { round_##suffix(x, y, n); }                   \
  void scale_to(const Acc* x, Acc c, T* y, int64_t n) { scale_##suffix(x, c, y, n); }

ADPO_ATTENTION_KERNELS(float, float, f32)
ADPO_ATTENTION_KERNELS(double, double, f64)
ADPO_ATTENTION_KERNELS(c10::BFloat16, float, bf16)
ADPO_ATTENTION_KERNELS(c10::Half, float, f16)

// Below this many query positions (a decoding step: one), the forward is libtorch's flash
// attention: its per-call cost is lower than a block's two matrix-product calls per key/value
// head (0.56 ms against 0.67 per layer at 32 rows of one query over 200 cached keys,
// SmolLM2's heads, bf16). By the count alone, so that a pass with a gradient and one without
// compute the same values. fused.rs leaves such passes without a gradient to libtorch's op
// itself.
constexpr int64_t kFewQueries = 16;

// Query rows per block: few enough that each block's products stop near its own last key (a
// causal mask leaves half the score matrix out), enough for efficient matrix products. And at
// most 1 MiB of float32 scores per block, so that they stay in cache and long sequences need
// no [T, T] buffer. (At [16, 9, 320, 64], bf16, blocks of 256 rows gave the fastest forward
// among 128, 256 and 512: 17.3 ms against 18.8 and 20.6, and an equal backward.)
constexpr int64_t kBlockRows = 256;
constexpr int64_t kBlockElements = 1 << 18;

// The keys positions [t0, t1) see: up to the last key any of them attends to, rounded up to a
// multiple of 16 within the keys, so that the row loops run whole vectors (the keys beyond
// the last are masked out, adding zeros).
int64_t keys_in_play(const int64_t* last_key, int64_t t0, int64_t t1, int64_t keys) {
  int64_t n = 0;
  for (int64_t t = t0; t < t1; ++t) n = std::max(n, last_key[t] + 1);
  return std::min(keys, (n + 15) / 16 * 16);
}

// Positions per block, for G query heads per key/value head and `keys` keys (kBlockRows,
// kBlockElements).
int64_t block_positions(int64_t t, int64_t keys, int64_t g) {
  int64_t most = std::min(kBlockRows / g, kBlockElements / std::max<int64_t>(1, g * keys));
  return std::max<int64_t>(1, std::min(t, most));
}

// What one (batch row, key/value head) pair's forward reads and writes: queries and their
// log-sum-exps position-major [T, G(, D)], keys and values [K, D]; the output's row of position
// t and query head j at out + t * out_stride + j * D (the output is [B, T, H, D]).
template <typename T, typename Acc>
struct ForwardPair {
  const T *q, *k, *v;
  const uint8_t* mask;      // [T, K]: whether position t attends to key j
  const int64_t* last_key;  // [T]: the last key position t attends to, -1 for none
  T* out;
  int64_t out_stride;
  Acc* lse;
};

template <typename T, typename Acc>
class Forward {
 public:
  Forward(int64_t t, int64_t keys, int64_t g, int64_t d, Acc scale)
      : t_(t), keys_(keys), g_(g), d_(d), block_(block_positions(t, keys, g)), scale_(scale) {
    int64_t rows = block_ * g;
    s_.resize(rows * keys);
    p16_.resize(std::is_same_v<T, Acc> ? 0 : rows * keys);
    o_.resize(rows * d);
    inv_.resize(rows);
  }

  void run(const ForwardPair<T, Acc>& x) {
    for (int64_t t0 = 0; t0 < t_; t0 += block_) block(x, t0, std::min(t_, t0 + block_));
  }

 private:
  // Positions [t0, t1): scores against the keys up to the last one any attends to, their
  // softmax, its product with the values, divided by the sums into the output.
  void block(const ForwardPair<T, Acc>& x, int64_t t0, int64_t t1) {
    int64_t n = keys_in_play(x.last_key, t0, t1, keys_);
    int64_t rows = (t1 - t0) * g_, first = t0 * g_;
    Acc* s = s_.data();
    T* p16 = std::is_same_v<T, Acc> ? reinterpret_cast<T*>(s) : p16_.data();
    if (n > 0) gemm<T, Acc>(false, true, rows, n, d_, Acc(1), x.q + first * d_, d_, x.k, d_, Acc(0), s, n);
    softmax(s, p16, BlockRows<Acc>{x.mask, keys_, g_, t0, rows, n, scale_}, x.lse + first, inv_.data());
    if (n > 0) gemm<T, Acc>(false, false, rows, d_, n, Acc(1), p16, n, x.v, d_, Acc(0), o_.data(), d_);
    else std::fill(o_.begin(), o_.begin() + rows * d_, Acc(0));
    for (int64_t r = 0; r < rows; ++r) {
      T* out = x.out + (t0 + r / g_) * x.out_stride + (r % g_) * d_;
      scale_to(o_.data() + r * d_, inv_[r], out, d_);
    }
  }

  int64_t t_, keys_, g_, d_, block_;
  Acc scale_;
  std::vector<Acc> s_, o_, inv_;
  std::vector<T> p16_;
};

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
    block_ = block_positions(t, keys, g);
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
    int64_t n = keys_in_play(x.last_key, t0, t1, keys_);
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
    probs(s, p16, BlockRows<Acc>{x.mask, keys_, g_, t0, rows, n, scale_}, x.lse + first);  // s becomes p
    gemm<T, Acc>(true, false, n, d_, rows, Acc(1), p16, n, dout, d_, Acc(1), dv_.data(), d_);
    gemm<T, Acc>(false, true, rows, n, d_, Acc(1), dout, d_, x.v, d_, Acc(0), dp, n);
    T* ds = ds_.data();
    dscores(s, dp, x.di + first, ds, rows, n);
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

// Per (mask row, position) of a boolean mask [M, T, K]: the last key attended to, -1 for none.
at::Tensor last_keys(const at::Tensor& mask) {
  int64_t positions = mask.size(0) * mask.size(1), keys = mask.size(2);
  at::Tensor last = at::empty({mask.size(0), mask.size(1)}, mask.options().dtype(at::kLong));
  const bool* m = mask.const_data_ptr<bool>();
  int64_t* out = last.mutable_data_ptr<int64_t>();
  for (int64_t p = 0; p < positions; ++p) {
    int64_t j = keys - 1;
    while (j >= 0 && !m[p * keys + j]) --j;
    out[p] = j;
  }
  return last;
}

// Keys or values [B, H_kv, K, D] whose (batch row, head) pairs are each one [K, D] block of
// rows, in place (a KV cache's filled prefix is: copying it would cost each decoding step a
// pass over the whole cache), else a contiguous copy.
at::Tensor rows_in_place(const at::Tensor& x) {
  bool rows = x.stride(3) == 1 && (x.size(2) <= 1 || x.stride(2) == x.size(3));
  return rows ? x : x.contiguous();
}

// Pair i's (= row * H_kv + head) first element of such a tensor.
template <typename T>
T* pair_of(const at::Tensor& x, int64_t i) {
  int64_t kv = x.size(1);
  return const_cast<T*>(x.const_data_ptr<T>()) + (i / kv) * x.stride(0) + (i % kv) * x.stride(1);
}

struct Attention : public torch::autograd::Function<Attention> {
  // q [B, H, T, D], k and v [B, H_kv, K, D], mask (bool) [B or 1, 1, T, K] -> [B, H, T, D].
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& mask) {
    double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
    Operands x = Operands::of(q, k, v, mask);
    at::Tensor out, lse;
    if (q.size(2) < kFewQueries)
      std::tie(out, lse) = flash_forward(q, k, v, mask, scale);
    else
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "adpo_attention",
                                      [&] { std::tie(out, lse) = forward_of<scalar_t>(x, scale); });
    ctx->save_for_backward({x.qg, x.k, x.v, out, lse, x.mask, x.last});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Operands x{saved[0], saved[1], saved[2], saved[5], saved[6]};
    const at::Tensor &out = saved[3], &lse = saved[4];
    double scale = ctx->saved_data["scale"].toDouble();
    at::Tensor dq, dk, dv;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "adpo_attention_backward",
                                    [&] {
                                      std::tie(dq, dk, dv) =
                                          backward_of<scalar_t>(grads[0], x, out, lse, scale);
                                    });
    return {dq, dk, dv, at::Tensor()};
  }

  // The operands as both directions read them: queries grouped [B, H_kv, T, G, D], keys and
  // values contiguous, the mask [B or 1, T, K] and each of its positions' last key.
  struct Operands {
    at::Tensor qg, k, v, mask, last;

    static Operands of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& mask) {
      at::Tensor m = mask.reshape({mask.size(0), mask.size(2), mask.size(3)}).contiguous();
      return {grouped(q, k.size(1)), rows_in_place(k), rows_in_place(v), m, last_keys(m)};
    }

    // Batch row `row`'s mask [T, K] (as bytes: a bool is stored as 0 or 1) and last keys [T]:
    // the mask's own row, or its one row shared by the batch.
    const uint8_t* mask_of(int64_t row) const {
      int64_t r = mask.size(0) == 1 ? 0 : row;
      return reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>()) + r * mask.size(1) * mask.size(2);
    }
    const int64_t* last_of(int64_t row) const {
      return last.const_data_ptr<int64_t>() + (mask.size(0) == 1 ? 0 : row) * mask.size(1);
    }

  };

  // The sizes both directions work with.
  struct Sizes {
    int64_t b, t, heads, kv, g, keys, d;
    explicit Sizes(const Operands& x)
        : b(x.qg.size(0)), t(x.qg.size(2)), heads(x.qg.size(1) * x.qg.size(3)), kv(x.qg.size(1)),
          g(x.qg.size(3)), keys(x.k.size(2)), d(x.qg.size(4)) {}
  };

  // libtorch's flash-attention forward, with the log-sum-exps grouped [B, H_kv, T, G].
  static std::tuple<at::Tensor, at::Tensor> flash_forward(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v,
                                                          const at::Tensor& mask, double scale) {
    // the additive mask scaled_dot_product_attention makes of a boolean one
    auto options = q.options();
    at::Tensor additive = at::where(mask.logical_not(),
                                    at::scalar_tensor(-std::numeric_limits<double>::infinity(), options),
                                    at::scalar_tensor(0.0, options));
    auto [out, lse] =
        at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, false, additive, scale);
    auto acc = at::toOpMathType(q.scalar_type());
    return {out, grouped(lse.to(acc), k.size(1))};
  }

  // The output [B, H, T, D] (a view of [B, T, H, D], as the output projection reads it) and the
  // log-sum-exps grouped [B, H_kv, T, G].
  template <typename T>
  static std::tuple<at::Tensor, at::Tensor> forward_of(const Operands& x, double scale) {
    using Acc = at::opmath_type<T>;
    const Sizes z(x);
    int64_t b = z.b, t = z.t, heads = z.heads, kv = z.kv, g = z.g, keys = z.keys, d = z.d;
    at::Tensor out = at::empty({b, t, heads, d}, x.qg.options());
    at::Tensor lse = at::empty({b, kv, t, g}, x.qg.options().dtype(c10::CppTypeToScalarType<Acc>::value));
    at::parallel_for(0, b * kv, 1, [&](int64_t begin, int64_t end) {
      Forward<T, Acc> work(t, keys, g, d, static_cast<Acc>(scale));
      for (int64_t i = begin; i < end; ++i) {
        int64_t row = i / kv, head = i % kv;
        work.run(ForwardPair<T, Acc>{x.qg.const_data_ptr<T>() + i * t * g * d,
                                     pair_of<T>(x.k, i), pair_of<T>(x.v, i),
                                     x.mask_of(row), x.last_of(row),
                                     out.mutable_data_ptr<T>() + (row * t * heads + head * g) * d,
                                     heads * d, lse.mutable_data_ptr<Acc>() + i * t * g});
      }
    });
    return {out.transpose(1, 2), lse};
  }

  template <typename T>
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_of(const at::Tensor& dout,
                                                                    const Operands& x,
                                                                    const at::Tensor& out,
                                                                    const at::Tensor& lse,
                                                                    double scale) {
    using Acc = at::opmath_type<T>;
    const Sizes z(x);
    int64_t b = z.b, t = z.t, kv = z.kv, g = z.g, keys = z.keys, d = z.d;
    auto acc = x.qg.options().dtype(c10::CppTypeToScalarType<Acc>::value);
    at::Tensor dog = grouped(dout, kv);
    at::Tensor di = grouped((dout.to(acc) * out.to(acc)).sum(-1), kv);
    auto fresh = [](const at::Tensor& x) { return at::empty(x.sizes(), x.options()); };
    at::Tensor dqg = fresh(x.qg), dk = fresh(x.k), dv = fresh(x.v);
    at::parallel_for(0, b * kv, 1, [&](int64_t begin, int64_t end) {
      Backward<T, Acc> work(t, keys, g, d, static_cast<Acc>(scale));
      for (int64_t i = begin; i < end; ++i) {
        int64_t row = i / kv;
        work.run(Pair<T, Acc>{x.qg.const_data_ptr<T>() + i * t * g * d,
                              dog.const_data_ptr<T>() + i * t * g * d,
                              pair_of<T>(x.k, i), pair_of<T>(x.v, i),
                              lse.const_data_ptr<Acc>() + i * t * g,
                              di.const_data_ptr<Acc>() + i * t * g,
                              x.mask_of(row), x.last_of(row),
                              dqg.mutable_data_ptr<T>() + i * t * g * d,
                              pair_of<T>(dk, i), pair_of<T>(dv, i)});
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

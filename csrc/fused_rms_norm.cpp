// RMSNorm as one autograd node with a fused CPU forward and backward, alone or with the
// residual add that precedes it in a decoder.
//
// Composed of ATen ops, RMSNorm over 16-bit activations is eight passes forward (a float32
// copy, square, mean, add, rsqrt, multiply, a cast back, the weight) and about twice that
// backward, each over the whole [rows, hidden] tensor, with float32 intermediates saved for
// the backward. Here a row is read once forward (sum of squares, then the scaled output) and
// once backward (the dot product, then the input gradient), in registers: only the input and
// one float per row are saved. The arithmetic is the composed version's (sums in float32 for
// 16-bit inputs, in the input's own dtype for float32 and float64; the normalized value is
// rounded to the input dtype before the weight multiplies it), so float64 results agree with
// it to rounding and 16-bit forward results bit for bit wherever the sums of squares do.
//
// AddRmsNorm is the decoder's residual add x + delta folded into the RMSNorm that reads the
// sum: forward, each row's sum is formed (rounded as libtorch's add rounds it), written out
// and normalized in the same pass; backward, the gradient of the sum (the residual stream's)
// is added to the norm's input gradient in the same pass, and that one tensor is the gradient
// of both x and delta. Composed, these are two more passes forward (the add) and one backward
// (autograd summing the two gradients of the sum, which feeds both the norm and the next
// residual add).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "fused_ops.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using adpo_fused::load;
using adpo_fused::round_as;
using adpo_fused::store;

constexpr int kLanes = 16;  // independent partial sums: lets the compiler vectorize them

template <typename T, typename Acc>
struct Row {
  // The row's value at j: x[j], or with kAdd the residual sum x[j] + delta[j] rounded to T as
  // libtorch's add rounds it (the sum in float32 for 16-bit T, in T itself for float and
  // double), which it also writes to sum[j].
  template <bool kAdd>
  static inline __attribute__((always_inline)) Acc value(const T* x, const T* delta, T* sum,
                                                        int64_t j) {
    if constexpr (kAdd) {
      T s = store<T>(load<Acc>(x[j]) + load<Acc>(delta[j]));
      sum[j] = s;
      return load<Acc>(s);
    } else {
      return load<Acc>(x[j]);
    }
  }

  // Sum of squares of the row's n values (value<kAdd>) in Acc, lane by lane (the compiler
  // keeps the lanes in one vector register).
  template <bool kAdd>
  static inline __attribute__((always_inline)) Acc sum_squares(const T* x, const T* delta,
                                                              T* sum, int64_t n) {
    Acc lane[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        Acc v = value<kAdd>(x, delta, sum, j + l);
        lane[l] += v * v;
      }
    Acc total = 0;
    for (; j < n; ++j) {
      Acc v = value<kAdd>(x, delta, sum, j);
      total += v * v;
    }
    for (int l = 0; l < kLanes; ++l) total += lane[l];
    return total;
  }

  static inline __attribute__((always_inline)) Acc dot(const T* dy, const T* w, const T* x,
                                                      int64_t n) {
    Acc lane[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
      for (int l = 0; l < kLanes; ++l)
        lane[l] += load<Acc>(dy[j + l]) * load<Acc>(w[j + l]) *
                   load<Acc>(x[j + l]);
    Acc total = 0;
    for (; j < n; ++j)
      total += load<Acc>(dy[j]) * load<Acc>(w[j]) * load<Acc>(x[j]);
    for (int l = 0; l < kLanes; ++l) total += lane[l];
    return total;
  }

  // y = w * T(x * rstd) row by row; returns rstd. With delta (else NULL), the rows normalized
  // are those of x + delta (value<true>), which are written to sum.
  static inline __attribute__((always_inline)) void forward(const T* x, const T* delta,
                                                           const T* w, T* sum, T* y,
                                                           Acc* rstd, int64_t rows, int64_t n,
                                                           double eps) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * n;
      T* yr = y + r * n;
      Acc squares;
      if (delta != nullptr) {
        T* sr = sum + r * n;
        squares = sum_squares<true>(xr, delta + r * n, sr, n);
        xr = sr;  // normalize the sum, just written (in cache)
      } else {
        squares = sum_squares<false>(xr, nullptr, nullptr, n);
      }
      Acc s = Acc(1) / std::sqrt(squares / static_cast<Acc>(n) + static_cast<Acc>(eps));
      rstd[r] = s;
      for (int64_t j = 0; j < n; ++j) {
        Acc normed = round_as<T>(load<Acc>(xr[j]) * s);
        yr[j] = store<T>(load<Acc>(w[j]) * normed);
      }
    }
  }

  // The norm's input gradient at j, before rounding.
  static inline __attribute__((always_inline)) Acc input_grad(const T* dy, const T* w,
                                                             const T* x, Acc s, Acc c,
                                                             int64_t j) {
    return load<Acc>(dy[j]) * load<Acc>(w[j]) * s - load<Acc>(x[j]) * c;
  }

  // dx = rstd * (dy*w - x * rstd^2 * mean(dy*w*x)), plus dres (else NULL: the gradient of the
  // residual sum AddRmsNorm also returns) added in Acc before the one rounding to T;
  // dw_acc += dy * T(x * rstd) when asked.
  static inline __attribute__((always_inline)) void backward(const T* dy, const T* dres,
                                                            const T* x, const T* w,
                                                            const Acc* rstd, T* dx,
                                                            Acc* dw_acc, int64_t rows,
                                                            int64_t n) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* dyr = dy + r * n;
      const T* xr = x + r * n;
      T* dxr = dx + r * n;
      Acc s = rstd[r];
      Acc c = dot(dyr, w, xr, n) * s * s * s / static_cast<Acc>(n);
      if (dres != nullptr) {
        const T* rr = dres + r * n;
        for (int64_t j = 0; j < n; ++j)
          dxr[j] = store<T>(input_grad(dyr, w, xr, s, c, j) + load<Acc>(rr[j]));
      } else {
        for (int64_t j = 0; j < n; ++j) dxr[j] = store<T>(input_grad(dyr, w, xr, s, c, j));
      }
      if (dw_acc != nullptr)
        for (int64_t j = 0; j < n; ++j) {
          Acc normed = round_as<T>(load<Acc>(xr[j]) * s);
          dw_acc[j] += load<Acc>(dyr[j]) * normed;
        }
    }
  }
};

// One non-template entry point per dtype, cloned per instruction set (fused_ops.h).

#define ADPO_RMS_NORM_KERNELS(T, Acc, suffix)                                                 \
  ADPO_PER_ISA(forward_##suffix,                                                              \
               (const T* x, const T* delta, const T* w, T* sum, T* y, Acc* rstd, int64_t rows, \
                int64_t n, double eps),                                                       \
               (x, delta, w, sum, y, rstd, rows, n, eps),                                     \
               (Row<T, Acc>::forward(x, delta, w, sum, y, rstd, rows, n, eps)))               \
  ADPO_PER_ISA(backward_##suffix,                                                             \
               (const T* dy, const T* dres, const T* x, const T* w, const Acc* rstd, T* dx,   \
                Acc* dw_acc, int64_t rows, int64_t n),                                        \
               (dy, dres, x, w, rstd, dx, dw_acc, rows, n),                                   \
               (Row<T, Acc>::backward(dy, dres, x, w, rstd, dx, dw_acc, rows, n)))

ADPO_RMS_NORM_KERNELS(float, float, f32)
ADPO_RMS_NORM_KERNELS(double, double, f64)
ADPO_RMS_NORM_KERNELS(c10::BFloat16, float, bf16)
ADPO_RMS_NORM_KERNELS(c10::Half, float, f16)

template <typename T, typename Acc>
void forward_kernel(const T* x, const T* delta, const T* w, T* sum, T* y, Acc* rstd,
                    int64_t rows, int64_t n, double eps);
template <typename T, typename Acc>
void backward_kernel(const T* dy, const T* dres, const T* x, const T* w, const Acc* rstd, T* dx,
                     Acc* dw_acc, int64_t rows, int64_t n);

#define ADPO_DISPATCH(T, Acc, suffix)                                                         \
  template <>                                                                                 \
  void forward_kernel<T, Acc>(const T* x, const T* delta, const T* w, T* sum, T* y, Acc* rstd, \
                              int64_t rows, int64_t n, double eps) {                          \
    forward_##suffix(x, delta, w, sum, y, rstd, rows, n, eps);                               \
  }                                                                                           \
  template <>                                                                                 \
  void backward_kernel<T, Acc>(const T* dy, const T* dres, const T* x, const T* w,            \
                               const Acc* rstd, T* dx, Acc* dw_acc, int64_t rows, int64_t n) { \
    backward_##suffix(dy, dres, x, w, rstd, dx, dw_acc, rows, n);                            \
  }

ADPO_DISPATCH(float, float, f32)
ADPO_DISPATCH(double, double, f64)
ADPO_DISPATCH(c10::BFloat16, float, bf16)
ADPO_DISPATCH(c10::Half, float, f16)

// Rows per parallel task: enough work per task to amortize the scheduling.
int64_t grain(int64_t n) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)); }

// The data of an optional operand: NULL for an undefined tensor.
template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// y = RMSNorm(x) * w, or with delta defined y = RMSNorm(x + delta) * w and sum = x + delta.
template <typename T, typename Acc>
void run_forward(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& w,
                 at::Tensor& sum, at::Tensor& y, at::Tensor& rstd, double eps) {
  int64_t n = x.size(-1), rows = x.numel() / n;
  const T* xp = x.const_data_ptr<T>();
  const T* dp = data_or_null<T>(delta);
  const T* wp = w.const_data_ptr<T>();
  T* sump = dp != nullptr ? sum.mutable_data_ptr<T>() : nullptr;
  T* yp = y.mutable_data_ptr<T>();
  Acc* sp = rstd.mutable_data_ptr<Acc>();
  at::parallel_for(0, rows, grain(n), [&](int64_t begin, int64_t end) {
    forward_kernel<T, Acc>(xp + begin * n, dp != nullptr ? dp + begin * n : nullptr, wp,
                           sump != nullptr ? sump + begin * n : nullptr, yp + begin * n,
                           sp + begin, end - begin, n, eps);
  });
}

// dx = the norm's input gradient for dy (+ dres where defined); dw where asked.
template <typename T, typename Acc>
void run_backward(const at::Tensor& dy, const at::Tensor& dres, const at::Tensor& x,
                  const at::Tensor& w, const at::Tensor& rstd, at::Tensor& dx, at::Tensor* dw) {
  int64_t n = x.size(-1), rows = x.numel() / n;
  const T* dyp = dy.const_data_ptr<T>();
  const T* rp = data_or_null<T>(dres);
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  const Acc* sp = rstd.const_data_ptr<Acc>();
  T* dxp = dx.mutable_data_ptr<T>();
  // One weight-gradient accumulator per thread, summed at the end in thread order.
  int threads = at::get_num_threads();
  std::vector<Acc> partial(dw != nullptr ? static_cast<size_t>(threads) * n : 0, Acc(0));
  at::parallel_for(0, rows, grain(n), [&](int64_t begin, int64_t end) {
    Acc* acc = dw != nullptr ? partial.data() + static_cast<size_t>(at::get_thread_num()) * n
                             : nullptr;
    backward_kernel<T, Acc>(dyp + begin * n, rp != nullptr ? rp + begin * n : nullptr,
                            xp + begin * n, wp, sp + begin, dxp + begin * n, acc, end - begin,
                            n);
  });
  if (dw == nullptr) return;
  std::vector<Acc> total(n, Acc(0));
  for (int t = 0; t < threads; ++t)
    for (int64_t j = 0; j < n; ++j) total[j] += partial[static_cast<size_t>(t) * n + j];
  *dw = at::from_blob(total.data(), {n}, at::TensorOptions().dtype(rstd.scalar_type()))
            .to(w.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The forward of both nodes: y, and rstd [rows] in the accumulation dtype; sum written where
// delta is defined.
void forward_dispatch(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& w,
                      at::Tensor& sum, at::Tensor& y, at::Tensor& rstd, double eps) {
  y = at::empty_like(x, at::MemoryFormat::Contiguous);
  rstd = at::empty({x.numel() / x.size(-1)}, x.options().dtype(accumulate_type(x.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "adpo_rms_norm",
                                  [&] {
                                    using Acc = at::opmath_type<scalar_t>;
                                    run_forward<scalar_t, Acc>(x, delta, w, sum, y, rstd, eps);
                                  });
}

// The backward of both nodes: dx for the saved (normalized) input x, from dy and dres.
at::Tensor backward_dispatch(const at::Tensor& dy, const at::Tensor& dres, const at::Tensor& x,
                             const at::Tensor& w, const at::Tensor& rstd, at::Tensor* dw) {
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "adpo_rms_norm_backward", [&] {
                                    using Acc = at::opmath_type<scalar_t>;
                                    run_backward<scalar_t, Acc>(dy, dres, x, w, rstd, dx, dw);
                                  });
  return dx;
}

struct RmsNorm : public torch::autograd::Function<RmsNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& w,
                            double eps) {
    at::Tensor x = x_in.contiguous();
    at::Tensor none, y, rstd;
    forward_dispatch(x, none, w, none, y, rstd, eps);
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &rstd = saved[2];
    at::Tensor dw;
    at::Tensor dx = backward_dispatch(grads[0].contiguous(), at::Tensor(), x, w, rstd,
                                      ctx->needs_input_grad(1) ? &dw : nullptr);
    return {dx, dw, at::Tensor()};
  }
};

// (s, RMSNorm(s) * w) for s = x + delta, or s = x itself (returned as is) without delta: the
// residual add of a decoder sublayer's output folded into the norm that reads the sum. Saves s
// and rstd. The gradient of x and of delta is one tensor, g_sum + the norm's input gradient,
// computed in the norm's backward pass; for 16-bit dtypes the two are added in float32 and
// rounded once, where the composed ops round the norm's gradient to the dtype and then round
// its sum with g_sum again: 16-bit gradients may differ from the composed ones in the last
// bit (and are the more accurate). Float32 and float64 add in their own dtype, as composed.
struct AddRmsNorm : public torch::autograd::Function<AddRmsNorm> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x_in,
                               const std::optional<at::Tensor>& delta_in, const at::Tensor& w,
                               double eps) {
    at::Tensor x = x_in.contiguous();
    at::Tensor delta, sum = x, y, rstd;
    if (delta_in.has_value()) {
      delta = delta_in->contiguous();
      sum = at::empty_like(x, at::MemoryFormat::Contiguous);
    }
    forward_dispatch(x, delta, w, sum, y, rstd, eps);
    ctx->set_materialize_grads(false);  // an output left out of the loss: no pass for it
    ctx->saved_data["delta"] = delta_in.has_value();
    ctx->save_for_backward({sum, w, rstd});
    return {sum, y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &s = saved[0], &w = saved[1], &rstd = saved[2];
    const at::Tensor &g_sum = grads[0], &g_normed = grads[1];
    bool has_delta = ctx->saved_data["delta"].toBool();
    // The weight's edge comes after delta's, which is there only when delta was given.
    bool want_dw = g_normed.defined() && ctx->needs_input_grad(has_delta ? 2 : 1);
    at::Tensor dx = g_sum, dw;
    if (g_normed.defined())
      dx = backward_dispatch(g_normed.contiguous(), g_sum.defined() ? g_sum.contiguous() : g_sum,
                             s, w, rstd, want_dw ? &dw : nullptr);
    return {dx, has_delta ? dx : at::Tensor(), dw, at::Tensor()};
  }
};

// The checks both entry points make on x and w.
void check_operands(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "fused RMSNorm runs on the CPU");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "fused RMSNorm: input ", x.scalar_type(),
              " and weight ", w.scalar_type(), " differ in dtype");
  TORCH_CHECK(x.dim() >= 1 && w.dim() == 1 && w.size(0) == x.size(-1), "fused RMSNorm: weight ",
              w.sizes(), " does not match input ", x.sizes());
  TORCH_CHECK(w.is_contiguous(), "fused RMSNorm: the weight must be contiguous");
}

}  // namespace

extern "C" char* adpo_fused_rms_norm(const at::Tensor* x, const at::Tensor* w, double eps,
                                     at::Tensor** out) {
  return adpo_fused::guarded([&] {
    check_operands(*x, *w);
    *out = new at::Tensor(RmsNorm::apply(*x, *w, eps));
  });
}

// x + delta and its RMSNorm times w, as (*sum, *normed), both written on success, neither on
// an error. delta may be NULL: then *sum is x itself, and the node's gradient for x is the
// one of x's two uses (the norm and the residual stream) summed in its backward pass.
extern "C" char* adpo_fused_add_rms_norm(const at::Tensor* x, const at::Tensor* delta,
                                         const at::Tensor* w, double eps, at::Tensor** sum,
                                         at::Tensor** normed) {
  return adpo_fused::guarded([&] {
    check_operands(*x, *w);
    if (delta != nullptr) {
      TORCH_CHECK(delta->device().is_cpu(), "fused RMSNorm runs on the CPU");
      TORCH_CHECK(delta->scalar_type() == x->scalar_type(), "fused add and RMSNorm: input ",
                  x->scalar_type(), " and residual ", delta->scalar_type(), " differ in dtype");
      TORCH_CHECK(delta->sizes() == x->sizes(), "fused add and RMSNorm: residual ",
                  delta->sizes(), " does not match input ", x->sizes());
    }
    std::optional<at::Tensor> d;
    if (delta != nullptr) d = *delta;
    variable_list outs = AddRmsNorm::apply(*x, d, *w, eps);
    auto s = std::make_unique<at::Tensor>(std::move(outs[0]));
    auto y = std::make_unique<at::Tensor>(std::move(outs[1]));
    *sum = s.release();
    *normed = y.release();
  });
}

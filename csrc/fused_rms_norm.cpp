// RMSNorm as one autograd node with a fused CPU forward and backward.
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
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstring>
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
  // Sum of squares of x[0..n) in Acc, lane by lane (the compiler keeps the lanes in one
  // vector register).
  static inline __attribute__((always_inline)) Acc sum_squares(const T* x, int64_t n) {
    Acc lane[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        Acc v = load<Acc>(x[j + l]);
        lane[l] += v * v;
      }
    Acc total = 0;
    for (; j < n; ++j) total += load<Acc>(x[j]) * load<Acc>(x[j]);
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

  // y = w * T(x * rstd); returns rstd.
  static inline __attribute__((always_inline)) void forward(const T* x, const T* w, T* y,
                                                           Acc* rstd, int64_t rows, int64_t n,
                                                           double eps) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * n;
      T* yr = y + r * n;
      Acc s = Acc(1) / std::sqrt(sum_squares(xr, n) / static_cast<Acc>(n) + static_cast<Acc>(eps));
      rstd[r] = s;
      for (int64_t j = 0; j < n; ++j) {
        Acc normed = round_as<T>(load<Acc>(xr[j]) * s);
        yr[j] = store<T>(load<Acc>(w[j]) * normed);
      }
    }
  }

  // dx = rstd * (dy*w - x * rstd^2 * mean(dy*w*x)); dw_acc += dy * T(x * rstd) when asked.
  static inline __attribute__((always_inline)) void backward(const T* dy, const T* x,
                                                            const T* w, const Acc* rstd, T* dx,
                                                            Acc* dw_acc, int64_t rows,
                                                            int64_t n) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* dyr = dy + r * n;
      const T* xr = x + r * n;
      T* dxr = dx + r * n;
      Acc s = rstd[r];
      Acc c = dot(dyr, w, xr, n) * s * s * s / static_cast<Acc>(n);
      for (int64_t j = 0; j < n; ++j) {
        Acc xv = load<Acc>(xr[j]);
        Acc g = load<Acc>(dyr[j]);
        dxr[j] = store<T>(g * load<Acc>(w[j]) * s - xv * c);
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
               (const T* x, const T* w, T* y, Acc* rstd, int64_t rows, int64_t n, double eps), \
               (x, w, y, rstd, rows, n, eps), (Row<T, Acc>::forward(x, w, y, rstd, rows, n, eps))) \
  ADPO_PER_ISA(backward_##suffix,                                                             \
               (const T* dy, const T* x, const T* w, const Acc* rstd, T* dx, Acc* dw_acc,      \
                int64_t rows, int64_t n),                                                     \
               (dy, x, w, rstd, dx, dw_acc, rows, n),                                         \
               (Row<T, Acc>::backward(dy, x, w, rstd, dx, dw_acc, rows, n)))

ADPO_RMS_NORM_KERNELS(float, float, f32)
ADPO_RMS_NORM_KERNELS(double, double, f64)
ADPO_RMS_NORM_KERNELS(c10::BFloat16, float, bf16)
ADPO_RMS_NORM_KERNELS(c10::Half, float, f16)

template <typename T, typename Acc>
void forward_kernel(const T* x, const T* w, T* y, Acc* rstd, int64_t rows, int64_t n,
                    double eps);
template <typename T, typename Acc>
void backward_kernel(const T* dy, const T* x, const T* w, const Acc* rstd, T* dx, Acc* dw_acc,
                     int64_t rows, int64_t n);

#define ADPO_DISPATCH(T, Acc, suffix)                                                         \
  template <>                                                                                 \
  void forward_kernel<T, Acc>(const T* x, const T* w, T* y, Acc* rstd, int64_t rows,         \
                              int64_t n, double eps) {                                        \
    forward_##suffix(x, w, y, rstd, rows, n, eps);                                           \
  }                                                                                           \
  template <>                                                                                 \
  void backward_kernel<T, Acc>(const T* dy, const T* x, const T* w, const Acc* rstd, T* dx, \
                               Acc* dw_acc, int64_t rows, int64_t n) {                       \
    backward_##suffix(dy, x, w, rstd, dx, dw_acc, rows, n);                                  \
  }

ADPO_DISPATCH(float, float, f32)
ADPO_DISPATCH(double, double, f64)
ADPO_DISPATCH(c10::BFloat16, float, bf16)
ADPO_DISPATCH(c10::Half, float, f16)

// Rows per parallel task: enough work per task to amortize the scheduling.
int64_t grain(int64_t n) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)); }

template <typename T, typename Acc>
void run_forward(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, at::Tensor& rstd,
                 double eps) {
  int64_t n = x.size(-1), rows = x.numel() / n;
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  Acc* sp = rstd.mutable_data_ptr<Acc>();
  at::parallel_for(0, rows, grain(n), [&](int64_t begin, int64_t end) {
    forward_kernel<T, Acc>(xp + begin * n, wp, yp + begin * n, sp + begin, end - begin, n, eps);
  });
}

template <typename T, typename Acc>
void run_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                  const at::Tensor& rstd, at::Tensor& dx, at::Tensor* dw) {
  int64_t n = x.size(-1), rows = x.numel() / n;
  const T* dyp = dy.const_data_ptr<T>();
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
    backward_kernel<T, Acc>(dyp + begin * n, xp + begin * n, wp, sp + begin, dxp + begin * n,
                            acc, end - begin, n);
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

struct RmsNorm : public torch::autograd::Function<RmsNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& w,
                            double eps) {
    at::Tensor x = x_in.contiguous();
    at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
    auto rows = x.numel() / x.size(-1);
    at::Tensor rstd = at::empty({rows}, x.options().dtype(accumulate_type(x.scalar_type())));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "adpo_rms_norm",
                                    [&] {
                                      using Acc = at::opmath_type<scalar_t>;
                                      run_forward<scalar_t, Acc>(x, w, y, rstd, eps);
                                    });
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &rstd = saved[2];
    at::Tensor dy = grads[0].contiguous();
    at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
    at::Tensor dw;
    bool want_dw = ctx->needs_input_grad(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                    "adpo_rms_norm_backward", [&] {
                                      using Acc = at::opmath_type<scalar_t>;
                                      run_backward<scalar_t, Acc>(dy, x, w, rstd, dx,
                                                                  want_dw ? &dw : nullptr);
                                    });
    return {dx, dw, at::Tensor()};
  }
};

}  // namespace

extern "C" char* adpo_fused_rms_norm(const at::Tensor* x, const at::Tensor* w, double eps,
                                     at::Tensor** out) {
  return adpo_fused::guarded([&] {
    TORCH_CHECK(x->device().is_cpu() && w->device().is_cpu(), "fused RMSNorm runs on the CPU");
    TORCH_CHECK(x->scalar_type() == w->scalar_type(), "fused RMSNorm: input ",
                x->scalar_type(), " and weight ", w->scalar_type(), " differ in dtype");
    TORCH_CHECK(x->dim() >= 1 && w->dim() == 1 && w->size(0) == x->size(-1),
                "fused RMSNorm: weight ", w->sizes(), " does not match input ", x->sizes());
    TORCH_CHECK(w->is_contiguous(), "fused RMSNorm: the weight must be contiguous");
    *out = new at::Tensor(RmsNorm::apply(*x, *w, eps));
  });
}

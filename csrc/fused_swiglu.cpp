// The SwiGLU gate silu(gate) * up as one autograd node with a fused CPU forward and backward.
//
// Composed, the gate is a silu pass and a multiply forward, two multiplies and a silu backward
// pass backward, and it keeps three [rows, intermediate] tensors (gate, up, silu(gate)) alive
// until the backward. Here each direction is one pass that reads gate and up (and the incoming
// gradient) once, and only gate and up are saved. The roundings are the composed version's
// (silu(gate) rounded to the input dtype before it multiplies up), so 16-bit outputs agree
// with it to the last bit wherever the two exponentials do, and float64 to rounding.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fused_ops.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using adpo_fused::load;
using adpo_fused::round_as;
using adpo_fused::store;
using adpo_fused::vector_exp;

static inline __attribute__((always_inline)) float sigmoid(float x) {
  return 1.0f / (1.0f + vector_exp(-x));
}
static inline __attribute__((always_inline)) double sigmoid(double x) {
  return 1.0 / (1.0 + vector_exp(-x));
}

template <typename T, typename Acc>
struct Gate {
  static inline __attribute__((always_inline)) void forward(const T* g, const T* u, T* y,
                                                           int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      Acc gv = load<Acc>(g[i]);
      Acc silu = round_as<T>(gv * sigmoid(gv));
      y[i] = store<T>(silu * load<Acc>(u[i]));
    }
  }

  // dg = dy * up * silu'(gate), du = dy * T(silu(gate)), each only where wanted (a loop per
  // case: a test inside the loop would keep it from vectorizing).
  template <bool kGate, bool kUp>
  static inline __attribute__((always_inline)) void backward(const T* dy, const T* g,
                                                            const T* u, T* dg, T* du,
                                                            int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      Acc gv = load<Acc>(g[i]), d = load<Acc>(dy[i]);
      Acc s = sigmoid(gv);
      if constexpr (kUp) du[i] = store<T>(d * round_as<T>(gv * s));
      if constexpr (kGate)
        dg[i] = store<T>(d * load<Acc>(u[i]) * s * (Acc(1) + gv * (Acc(1) - s)));
    }
  }

  static inline __attribute__((always_inline)) void backward(const T* dy, const T* g,
                                                            const T* u, T* dg, T* du,
                                                            int64_t n) {
    if (dg != nullptr && du != nullptr)
      backward<true, true>(dy, g, u, dg, du, n);
    else if (dg != nullptr)
      backward<true, false>(dy, g, u, dg, du, n);
    else if (du != nullptr)
      backward<false, true>(dy, g, u, dg, du, n);
  }
};

// One non-template entry point per dtype, cloned per instruction set (fused_ops.h).

#define ADPO_GATE_KERNELS(T, Acc, suffix)                                                    \
  ADPO_PER_ISA(forward_##suffix, (const T* g, const T* u, T* y, int64_t n), (g, u, y, n),   \
               (Gate<T, Acc>::forward(g, u, y, n)))                                          \
  ADPO_PER_ISA(backward_##suffix,                                                            \
               (const T* dy, const T* g, const T* u, T* dg, T* du, int64_t n),              \
               (dy, g, u, dg, du, n), (Gate<T, Acc>::backward(dy, g, u, dg, du, n)))         \
  template <>                                                                                 \
  void forward_kernel<T>(const T* g, const T* u, T* y, int64_t n) {                          \
    forward_##suffix(g, u, y, n);                                                            \
  }                                                                                           \
  template <>                                                                                 \
  void backward_kernel<T>(const T* dy, const T* g, const T* u, T* dg, T* du, int64_t n) {   \
    backward_##suffix(dy, g, u, dg, du, n);                                                  \
  }

template <typename T>
void forward_kernel(const T* g, const T* u, T* y, int64_t n);
template <typename T>
void backward_kernel(const T* dy, const T* g, const T* u, T* dg, T* du, int64_t n);

ADPO_GATE_KERNELS(float, float, f32)
ADPO_GATE_KERNELS(double, double, f64)
ADPO_GATE_KERNELS(c10::BFloat16, float, bf16)
ADPO_GATE_KERNELS(c10::Half, float, f16)

constexpr int64_t kGrain = 32768;  // elements per parallel task

struct SwiGlu : public torch::autograd::Function<SwiGlu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_in,
                            const at::Tensor& up_in) {
    at::Tensor g = gate_in.contiguous(), u = up_in.contiguous();
    at::Tensor y = at::empty_like(g, at::MemoryFormat::Contiguous);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "adpo_swiglu",
                                    [&] {
                                      const scalar_t* gp = g.const_data_ptr<scalar_t>();
                                      const scalar_t* up = u.const_data_ptr<scalar_t>();
                                      scalar_t* yp = y.mutable_data_ptr<scalar_t>();
                                      at::parallel_for(0, g.numel(), kGrain,
                                                       [&](int64_t b, int64_t e) {
                                                         forward_kernel<scalar_t>(
                                                             gp + b, up + b, yp + b, e - b);
                                                       });
                                    });
    ctx->save_for_backward({g, u});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &g = saved[0], &u = saved[1];
    at::Tensor dy = grads[0].contiguous();
    at::Tensor dg, du;
    if (ctx->needs_input_grad(0)) dg = at::empty_like(g, at::MemoryFormat::Contiguous);
    if (ctx->needs_input_grad(1)) du = at::empty_like(u, at::MemoryFormat::Contiguous);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, g.scalar_type(), "adpo_swiglu_backward", [&] {
          const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
          const scalar_t* gp = g.const_data_ptr<scalar_t>();
          const scalar_t* up = u.const_data_ptr<scalar_t>();
          scalar_t* dgp = dg.defined() ? dg.mutable_data_ptr<scalar_t>() : nullptr;
          scalar_t* dup = du.defined() ? du.mutable_data_ptr<scalar_t>() : nullptr;
          at::parallel_for(0, g.numel(), kGrain, [&](int64_t b, int64_t e) {
            backward_kernel<scalar_t>(dyp + b, gp + b, up + b, dgp ? dgp + b : nullptr,
                                      dup ? dup + b : nullptr, e - b);
          });
        });
    return {dg, du};
  }
};

// The gate of one joint projection [.., 2 I] (gate then up along the last axis: the gate and
// up projections as one matrix product, joint.rs): the same arithmetic row by row, and the
// gradient comes back joint too, so nothing splits or concatenates around the product.
struct SwiGluJoint : public torch::autograd::Function<SwiGluJoint> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& joint_in) {
    at::Tensor j = joint_in.contiguous();
    int64_t width = j.size(-1) / 2, rows = j.numel() / std::max<int64_t>(1, 2 * width);
    auto shape = j.sizes().vec();
    shape.back() = width;
    at::Tensor y = at::empty(shape, j.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, j.scalar_type(), "adpo_swiglu_joint",
                                    [&] {
                                      const scalar_t* jp = j.const_data_ptr<scalar_t>();
                                      scalar_t* yp = y.mutable_data_ptr<scalar_t>();
                                      at::parallel_for(0, rows, row_grain(width), [&](int64_t b, int64_t e) {
                                        for (int64_t r = b; r < e; ++r)
                                          forward_kernel<scalar_t>(jp + 2 * r * width,
                                                                   jp + (2 * r + 1) * width,
                                                                   yp + r * width, width);
                                      });
                                    });
    ctx->save_for_backward({j});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor j = ctx->get_saved_variables()[0];
    at::Tensor dy = grads[0].contiguous();
    at::Tensor dj = at::empty_like(j, at::MemoryFormat::Contiguous);
    int64_t width = j.size(-1) / 2, rows = j.numel() / std::max<int64_t>(1, 2 * width);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, j.scalar_type(), "adpo_swiglu_joint_backward", [&] {
          const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
          const scalar_t* jp = j.const_data_ptr<scalar_t>();
          scalar_t* djp = dj.mutable_data_ptr<scalar_t>();
          at::parallel_for(0, rows, row_grain(width), [&](int64_t b, int64_t e) {
            for (int64_t r = b; r < e; ++r) {
              const scalar_t *g = jp + 2 * r * width, *u = g + width;
              scalar_t* dg = djp + 2 * r * width;
              backward_kernel<scalar_t>(dyp + r * width, g, u, dg, dg + width, width);
            }
          });
        });
    return {dj};
  }

  static int64_t row_grain(int64_t width) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, width)); }
};

}  // namespace

extern "C" char* adpo_fused_swiglu(const at::Tensor* gate, const at::Tensor* up,
                                   at::Tensor** out) {
  return adpo_fused::guarded([&] {
    TORCH_CHECK(gate->device().is_cpu() && up->device().is_cpu(), "fused SwiGLU runs on the CPU");
    TORCH_CHECK(gate->scalar_type() == up->scalar_type(), "fused SwiGLU: gate ",
                gate->scalar_type(), " and up ", up->scalar_type(), " differ in dtype");
    TORCH_CHECK(gate->sizes() == up->sizes(), "fused SwiGLU: gate ", gate->sizes(), " and up ",
                up->sizes(), " differ in shape");
    *out = new at::Tensor(SwiGlu::apply(*gate, *up));
  });
}

extern "C" char* adpo_fused_swiglu_joint(const at::Tensor* gate_up, at::Tensor** out) {
  return adpo_fused::guarded([&] {
    TORCH_CHECK(gate_up->device().is_cpu(), "fused SwiGLU runs on the CPU");
    TORCH_CHECK(gate_up->dim() >= 1 && gate_up->size(-1) % 2 == 0, "fused SwiGLU: the joint gate ",
                "and up ", gate_up->sizes(), " do not split in two halves along the last axis");
    *out = new at::Tensor(SwiGluJoint::apply(*gate_up));
  });
}

// Rotary position embeddings (rotate-half form) as one autograd node with a fused CPU forward
// and backward.
//
// Composed, x cos + rotate_half(x) sin is a negation, a concatenation, two multiplies and an
// add forward, as many backward, and autograd adds the two gradients that reach x (through
// x cos and through rotate_half): about 0.6 s of a bf16-mixed SmolLM2 step at 16 x 320. Here
// each direction reads a row of x (or of the gradient) once and writes one row. The roundings
// are the composed version's (each product rounded to the input dtype before the sum), so
// 16-bit results agree with it wherever the sums do, and float64 to rounding.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>

#include "fused_ops.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using adpo_fused::load;
using adpo_fused::round_as;
using adpo_fused::store;

// The heads of one position: rows x + i * x_stride -> y + i * y_stride (i < count), all with
// the same cos and sin. One call per position, not per row: the rows are short (D values), and a call per
// row spent more on the call and its index arithmetic than on the row.
struct Heads {
  int64_t count, x_stride, y_stride, d;
};

template <typename T, typename Acc>
struct Rotate {
  // y = x cos + rotate_half(x) sin over one row of d values (rotate_half(x) = [-x2, x1]).
  static inline __attribute__((always_inline)) void forward(const T* x, const T* c, const T* s,
                                                           T* y, int64_t d) {
    int64_t h = d / 2;
    for (int64_t i = 0; i < h; ++i) {
      Acc a = round_as<T>(load<Acc>(x[i]) * load<Acc>(c[i]));
      Acc b = round_as<T>(-load<Acc>(x[i + h]) * load<Acc>(s[i]));
      y[i] = store<T>(a + b);
    }
    for (int64_t i = h; i < d; ++i) {
      Acc a = round_as<T>(load<Acc>(x[i]) * load<Acc>(c[i]));
      Acc b = round_as<T>(load<Acc>(x[i - h]) * load<Acc>(s[i]));
      y[i] = store<T>(a + b);
    }
  }

  // dx = dy cos + rotate_half^T(dy sin), rotate_half^T(z) = [z2, -z1].
  static inline __attribute__((always_inline)) void backward(const T* dy, const T* c,
                                                            const T* s, T* dx, int64_t d) {
    int64_t h = d / 2;
    for (int64_t i = 0; i < h; ++i) {
      Acc a = round_as<T>(load<Acc>(dy[i]) * load<Acc>(c[i]));
      Acc b = round_as<T>(load<Acc>(dy[i + h]) * load<Acc>(s[i + h]));
      dx[i] = store<T>(a + b);
    }
    for (int64_t i = h; i < d; ++i) {
      Acc a = round_as<T>(load<Acc>(dy[i]) * load<Acc>(c[i]));
      Acc b = round_as<T>(load<Acc>(dy[i - h]) * load<Acc>(s[i - h]));
      dx[i] = store<T>(a - b);
    }
  }

  static inline __attribute__((always_inline)) void forward_heads(const T* x, const T* c,
                                                                 const T* s, T* y,
                                                                 const Heads& h) {
    for (int64_t i = 0; i < h.count; ++i) forward(x + i * h.x_stride, c, s, y + i * h.y_stride, h.d);
  }

  static inline __attribute__((always_inline)) void backward_heads(const T* dy, const T* c,
                                                                  const T* s, T* dx,
                                                                  const Heads& h) {
    for (int64_t i = 0; i < h.count; ++i)
      backward(dy + i * h.x_stride, c, s, dx + i * h.y_stride, h.d);
  }
};

template <typename T>
void forward_kernel(const T* x, const T* c, const T* s, T* y, const Heads& h);
template <typename T>
void backward_kernel(const T* dy, const T* c, const T* s, T* dx, const Heads& h);

#define ADPO_ROPE_KERNELS(T, Acc, suffix)                                                       \
  ADPO_PER_ISA(forward_##suffix, (const T* x, const T* c, const T* s, T* y, const Heads& h),    \
               (x, c, s, y, h), (Rotate<T, Acc>::forward_heads(x, c, s, y, h)))                 \
  ADPO_PER_ISA(backward_##suffix, (const T* dy, const T* c, const T* s, T* dx, const Heads& h), \
               (dy, c, s, dx, h), (Rotate<T, Acc>::backward_heads(dy, c, s, dx, h)))            \
  template <>                                                                                    \
  void forward_kernel<T>(const T* x, const T* c, const T* s, T* y, const Heads& h) {           \
    forward_##suffix(x, c, s, y, h);                                                            \
  }                                                                                              \
  template <>                                                                                    \
  void backward_kernel<T>(const T* dy, const T* c, const T* s, T* dx, const Heads& h) {        \
    backward_##suffix(dy, c, s, dx, h);                                                         \
  }

ADPO_ROPE_KERNELS(float, float, f32)
ADPO_ROPE_KERNELS(double, double, f64)
ADPO_ROPE_KERNELS(c10::BFloat16, float, bf16)
ADPO_ROPE_KERNELS(c10::Half, float, f16)

// in [B, H, T, D] with unit stride along D (any other strides) -> out (same layout), the H rows
// of one position at a time; cos and sin [B or 1, 1, T, D], the same for every head.
template <typename T, typename Kernel>
void for_each_position(const at::Tensor& in, const at::Tensor& cos, const at::Tensor& sin,
                       at::Tensor& out, Kernel kernel) {
  int64_t heads = in.size(1), t = in.size(2), d = in.size(3);
  const T* x = in.const_data_ptr<T>();
  const T *c = cos.const_data_ptr<T>(), *s = sin.const_data_ptr<T>();
  T* y = out.mutable_data_ptr<T>();
  auto xs = in.strides(), ys = out.strides(), cs = cos.strides();
  int64_t cb = cos.size(0) == 1 ? 0 : cs[0];
  Heads h{heads, xs[1], ys[1], d};
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(heads * d, 1));
  at::parallel_for(0, in.size(0) * t, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t b = r / t, p = r % t;
      int64_t from = b * cb + p * cs[2];
      kernel(x + b * xs[0] + p * xs[2], c + from, s + from, y + b * ys[0] + p * ys[2], h);
    }
  });
}

// Unit stride along the last axis (the kernels' rows), else a contiguous copy.
at::Tensor rows_of(const at::Tensor& x) { return x.stride(3) == 1 ? x : x.contiguous(); }

struct Rope : public torch::autograd::Function<Rope> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& cos_in,
                            const at::Tensor& sin_in) {
    at::Tensor x = rows_of(x_in), cos = cos_in.contiguous(), sin = sin_in.contiguous();
    at::Tensor y = at::empty_like(x);  // x's layout: the projections' [B, T, H, D] order
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "adpo_rope", [&] {
      for_each_position<scalar_t>(x, cos, sin, y, forward_kernel<scalar_t>);
    });
    ctx->save_for_backward({cos, sin});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor dy = rows_of(grads[0]);
    at::Tensor dx = at::empty_like(dy);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "adpo_rope_backward",
                                    [&] {
                                      for_each_position<scalar_t>(dy, saved[0], saved[1], dx,
                                                                  backward_kernel<scalar_t>);
                                    });
    return {dx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" char* adpo_fused_rope(const at::Tensor* x, const at::Tensor* cos, const at::Tensor* sin,
                                 at::Tensor** out) {
  return adpo_fused::guarded([&] {
    TORCH_CHECK(x->device().is_cpu() && cos->device().is_cpu() && sin->device().is_cpu(),
                "fused RoPE runs on the CPU");
    TORCH_CHECK(x->scalar_type() == cos->scalar_type() && x->scalar_type() == sin->scalar_type(),
                "fused RoPE: x ", x->scalar_type(), ", cos and sin differ in dtype");
    TORCH_CHECK(x->dim() == 4 && x->size(3) % 2 == 0, "fused RoPE: x ", x->sizes(),
                " is not [B, H, T, D] with D even");
    TORCH_CHECK(cos->sizes() == sin->sizes() && cos->dim() == 4 && cos->size(1) == 1 &&
                    (cos->size(0) == x->size(0) || cos->size(0) == 1) &&
                    cos->size(2) == x->size(2) && cos->size(3) == x->size(3),
                "fused RoPE: cos ", cos->sizes(), " and sin ", sin->sizes(), " do not fit x ",
                x->sizes());
    TORCH_CHECK(!cos->requires_grad() && !sin->requires_grad(),
                "fused RoPE: cos and sin take no gradient");
    *out = new at::Tensor(Rope::apply(*x, *cos, *sin));
  });
}

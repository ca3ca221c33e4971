//! The optimizer's fused CPU kernels (csrc/fused_adamw.cpp), one memory pass each where
//! libtorch's composed ops make several: AdamW's update in place, the four largest magnitudes
//! its overflow bound reads, and a gradient's sum of squares for the global norm. They take
//! contiguous CPU tensors of float32 or float64 (`takes`); anything else (CUDA, 16-bit weights,
//! a strided view) keeps the composed ops.

use crate::error::Result;
use crate::model::native::fused::checked;
use std::ffi::c_char;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// AdamW's per-step scalars, shared by the fused and the composed update so that both multiply
/// by the same values (csrc/fused_adamw.cpp: AdamwScalars, same layout). Each is rounded to the
/// tensors' dtype where it is used, as a libtorch Scalar is.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct AdamwScalars {
    /// 1 - lr * weight_decay
    pub decay: f64,
    /// 1 - beta1: the first moment's lerp weight
    pub lerp_weight: f64,
    pub beta2: f64,
    /// 1 - beta2
    pub one_minus_beta2: f64,
    /// sqrt(1 - beta2^t)
    pub bias2_sqrt: f64,
    pub eps: f64,
    /// -1 / step_size, step_size = lr / (1 - beta1^t)
    pub neg_inv_step: f64,
}

extern "C" {
    fn adpo_fused_adamw(
        param: *const C_tensor,
        grad: *const C_tensor,
        exp_avg: *const C_tensor,
        exp_avg_sq: *const C_tensor,
        scalars: *const AdamwScalars,
    ) -> *mut c_char;
    fn adpo_fused_adamw_max_abs(
        param: *const C_tensor,
        grad: *const C_tensor,
        exp_avg: *const C_tensor,
        exp_avg_sq: *const C_tensor,
        out: *mut f64,
    ) -> *mut c_char;
    fn adpo_fused_sum_squares(x: *const C_tensor, out: *mut f64) -> *mut c_char;
}

/// Whether the kernels take these tensors: contiguous, on the CPU, all float32 or all float64,
/// all of one size.
pub(super) fn takes(tensors: &[&Tensor]) -> bool {
    let Some(first) = tensors.first() else {
        return false;
    };
    matches!(first.kind(), Kind::Float | Kind::Double)
        && tensors.iter().all(|t| {
            t.device() == Device::Cpu
                && t.kind() == first.kind()
                && t.numel() == first.numel()
                && t.is_contiguous()
        })
}

/// AdamW's update of `param` and its moments in place (torch.optim.AdamW's single-tensor
/// order and roundings, as `in_place::AdamwStep::apply` composes it).
pub(super) fn adamw(
    param: &Tensor,
    grad: &Tensor,
    first: &Tensor,
    second: &Tensor,
    scalars: &AdamwScalars,
) -> Result<()> {
    // SAFETY: four live tch handles and a live AdamwScalars; the kernel checks the tensors.
    checked(unsafe {
        adpo_fused_adamw(
            param.as_ptr(),
            grad.as_ptr(),
            first.as_ptr(),
            second.as_ptr(),
            scalars,
        )
    })
}

/// The largest magnitudes [|param|, |grad|, |first|, |second|] (each NaN where its tensor
/// holds a NaN), in one pass.
pub(super) fn max_abs(
    param: &Tensor,
    grad: &Tensor,
    first: &Tensor,
    second: &Tensor,
) -> Result<[f64; 4]> {
    let mut out = [0.0; 4];
    // SAFETY: four live tch handles and room for four doubles.
    checked(unsafe {
        adpo_fused_adamw_max_abs(
            param.as_ptr(),
            grad.as_ptr(),
            first.as_ptr(),
            second.as_ptr(),
            out.as_mut_ptr(),
        )
    })?;
    Ok(out)
}

/// The sum of the squares of `x`'s elements, accumulated in float64 (in an order that does
/// not depend on the number of threads).
pub(super) fn sum_squares(x: &Tensor) -> Result<f64> {
    let mut out = 0.0;
    // SAFETY: a live tch handle and room for one double.
    checked(unsafe { adpo_fused_sum_squares(x.as_ptr(), &mut out) })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::in_place::composed;
    use super::super::Piece;
    use super::*;

    fn scalars(t: i32, lr: f64, b1: f64) -> AdamwScalars {
        let (b2, eps, wd) = (0.999f64, 1e-8, 0.01);
        AdamwScalars {
            decay: 1.0 - lr * wd,
            lerp_weight: 1.0 - b1,
            beta2: b2,
            one_minus_beta2: 1.0 - b2,
            bias2_sqrt: (1.0 - b2.powi(t)).sqrt(),
            eps,
            neg_inv_step: -1.0 / (lr / (1.0 - b1.powi(t))),
        }
    }

    /// A random piece of `n` elements of `kind`: weights, gradient, moments as after a few steps.
    fn piece(n: i64, kind: Kind, seed: i64) -> Piece {
        tch::manual_seed(seed);
        let opts = (kind, Device::Cpu);
        Piece {
            param: Tensor::randn([n], opts),
            grad: Tensor::randn([n], opts) * 0.01,
            first: Tensor::randn([n], opts) * 0.001,
            second: Tensor::rand([n], opts) * 1e-4,
        }
    }

    fn copy(p: &Piece) -> Piece {
        Piece {
            param: p.param.copy(),
            grad: p.grad.copy(),
            first: p.first.copy(),
            second: p.second.copy(),
        }
    }

    /// Steps 1..=3 from `start`, each fused and composed from the composed state before it:
    /// calls `check(before, fused, composed)` on each step's [weights, m, v].
    fn compare_steps(start: &Piece, b1: f64, check: impl Fn(&Tensor, [&Tensor; 3], [&Tensor; 3])) {
        let mut c = copy(start);
        for t in 1..=3 {
            let s = scalars(t, 0.1, b1);
            let f = copy(&c);
            let before = c.param.copy();
            adamw(&f.param, &f.grad, &f.first, &f.second, &s).unwrap();
            composed(&mut c, &s);
            assert!(!f.param.equal(&before), "the update changed nothing");
            check(
                &before,
                [&f.param, &f.first, &f.second],
                [&c.param, &c.first, &c.second],
            );
        }
    }

    /// Odd sizes: vector tails, one element, several parallel tasks.
    const SIZES: [i64; 5] = [1, 17, 1000, 65536 + 3, 3 * 32768 + 11];

    /// In float64 the fused update is the composed one to rounding (1e-12 relative), for either
    /// branch of lerp (weight 1 - beta1 below and above 0.5); the moments bit for bit (only the
    /// weights take a sqrt).
    #[test]
    fn the_fused_update_is_the_composed_one_in_float64() {
        for (i, n) in SIZES.into_iter().enumerate() {
            for b1 in [0.9, 0.3] {
                compare_steps(
                    &piece(n, Kind::Double, i as i64),
                    b1,
                    |_, [w, m, v], [cw, cm, cv]| {
                        assert!(
                            m.equal(cm) && v.equal(cv),
                            "moments differ at n {n}, beta1 {b1}"
                        );
                        let d = (w - cw).abs().max().double_value(&[]);
                        let rel = d / cw.abs().max().double_value(&[]);
                        assert!(rel < 1e-12, "weights off by {rel} at n {n}, beta1 {b1}");
                    },
                );
            }
        }
    }

    /// In float32 the moments are the composed update's bit for bit. The weights need not be:
    /// libtorch's sqrt is MKL's vsSqrt, which may round a value the other way than the correctly
    /// rounded one here (about 0.6% of them with AVX-512, none with AVX2, 16% with SSE4.2). A
    /// denominator an ulp off moves the step s = m / denom by at most about 2.5 ulp (2^-22 |s|,
    /// counting the roundings after the sqrt), and the new weight p' = round(p * decay + s) by
    /// that plus an ulp of p': within 2^-20 (|p| + 2 |p'|), as |s| <= |p'| + |p|.
    #[test]
    fn the_fused_update_is_the_composed_one_in_float32() {
        for (i, n) in SIZES.into_iter().enumerate() {
            for b1 in [0.9, 0.3] {
                let start = piece(n, Kind::Float, 10 + i as i64);
                compare_steps(&start, b1, |before, [w, m, v], [cw, cm, cv]| {
                    assert!(
                        m.equal(cm) && v.equal(cv),
                        "moments differ at n {n}, beta1 {b1}"
                    );
                    let bound = (before.abs() + cw.abs() * 2.0) * 2f64.powi(-20);
                    let excess = ((w - cw).abs() - bound).max().double_value(&[]);
                    assert!(
                        excess <= 0.0,
                        "weights off by {excess} past the bound at n {n}"
                    );
                });
            }
        }
    }

    /// The four maxima are the composed ones exactly (a max does not round); a NaN anywhere in
    /// a tensor makes its maximum NaN, an Inf Inf.
    #[test]
    fn the_fused_maxima_are_the_composed_ones_and_keep_nan() {
        let composed_max = |t: &Tensor| t.abs().max().double_value(&[]);
        for (i, n) in SIZES.into_iter().enumerate() {
            for kind in [Kind::Float, Kind::Double] {
                let x = piece(n, kind, 20 + i as i64);
                let got = max_abs(&x.param, &x.grad, &x.first, &x.second).unwrap();
                let want = x.all().map(composed_max);
                assert_eq!(got, want, "maxima of {n} elements of {kind:?}");
                // a NaN in the last element (a vector tail), an Inf in the first
                let _ = x.grad.narrow(0, n - 1, 1).fill_(f64::NAN);
                let _ = x.second.narrow(0, 0, 1).fill_(f64::INFINITY);
                let [p, g, m, v] = max_abs(&x.param, &x.grad, &x.first, &x.second).unwrap();
                assert!(g.is_nan() && v == f64::INFINITY, "got {g}, {v} at n {n}");
                assert_eq!([p, m], [want[0], want[2]]);
            }
        }
        let empty = Tensor::zeros([0], (Kind::Float, Device::Cpu));
        assert_eq!(max_abs(&empty, &empty, &empty, &empty).unwrap(), [0.0; 4]);
    }

    /// The sum of squares is the composed float64 sum to 1e-12 relative, for float32 and
    /// float64 gradients.
    #[test]
    fn the_fused_sum_of_squares_is_the_float64_sum() {
        for (i, n) in SIZES.into_iter().chain([1 << 20]).enumerate() {
            for kind in [Kind::Float, Kind::Double] {
                let x = piece(n, kind, 30 + i as i64).grad;
                let want = x
                    .to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[]);
                let got = sum_squares(&x).unwrap();
                let rel = (got - want).abs() / want;
                assert!(rel < 1e-12, "{n} elements of {kind:?}: off by {rel}");
            }
        }
    }

    /// Tensors the kernels do not take are an error from libtorch's checks, not a crash; and
    /// `takes` refuses them first.
    #[test]
    fn the_kernels_refuse_what_they_do_not_take() {
        let x = piece(100, Kind::Float, 40);
        let short = Tensor::zeros([99], (Kind::Float, Device::Cpu));
        let double = x.grad.to_kind(Kind::Double);
        let half = x.grad.to_kind(Kind::BFloat16);
        let strided = Tensor::zeros([200], (Kind::Float, Device::Cpu)).slice(0, 0, 200, 2);
        let s = scalars(1, 0.1, 0.9);
        for (bad, why) in [
            (&short, "elements"),
            (&double, "dtype"),
            (&half, "float32 or float64"),
            (&strided, "contiguous"),
        ] {
            let before = x.param.copy();
            let e = adamw(&x.param, bad, &x.first, &x.second, &s).unwrap_err();
            assert_eq!(e.status, crate::error::Status::Torch);
            assert!(e.message.contains(why), "{why}: {}", e.message);
            assert!(x.param.equal(&before), "{why}: the weights were written");
            assert!(max_abs(&x.param, &x.grad, bad, &x.second).is_err(), "{why}");
            assert!(!takes(&[&x.param, &x.grad, &x.first, bad]), "{why}");
        }
        assert!(sum_squares(&half).is_err() && sum_squares(&strided).is_err());
        assert!(takes(&x.all()) && takes(&[&double]));
    }

    /// Fused against composed on SmolLM2-135M's 135M float32 values, in 2^18-element pieces
    /// as the optimizer cuts them and (fused only) whole: prints the times, asserts nothing.
    /// `cargo test --release --features mpi --lib fused_adamw_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn fused_adamw_timing() {
        use super::super::in_place::max_abs;
        use std::time::Instant;
        let whole = piece(135_000_000, Kind::Float, 50);
        let mut pieces: Vec<Piece> = super::super::pieces(whole.all())
            .into_iter()
            .map(Piece::from)
            .collect();
        let s = scalars(3, 1e-5, 0.9);
        let time = |what: &str, f: &mut dyn FnMut()| {
            f(); // warm: page faults, thread pool
            let start = Instant::now();
            f();
            println!("  {what}: {:.3} s", start.elapsed().as_secs_f64());
        };
        for threads in [1, tch::get_num_threads()] {
            tch::set_num_threads(threads);
            println!("{threads} thread(s), 135M float32 values:");
            time("update, composed (pieces)", &mut || {
                pieces.iter_mut().for_each(|x| composed(x, &s))
            });
            time("update, fused (pieces)", &mut || {
                for x in &pieces {
                    adamw(&x.param, &x.grad, &x.first, &x.second, &s).unwrap();
                }
            });
            time("update, fused (whole)", &mut || {
                adamw(&whole.param, &whole.grad, &whole.first, &whole.second, &s).unwrap();
            });
            time("bound maxima, composed (4 aminmax passes)", &mut || {
                for k in 0..4 {
                    max_abs(pieces.iter().map(|x| x.all()[k]));
                }
            });
            time("bound maxima, fused (pieces)", &mut || {
                for x in &pieces {
                    max_abs_fused(x);
                }
            });
            time("sum of squares, composed (pieces)", &mut || {
                let sums: Vec<Tensor> = pieces
                    .iter()
                    .map(|x| x.grad.to_kind(Kind::Double).square().sum(Kind::Double))
                    .collect();
                Tensor::stack(&sums, 0).sum(Kind::Double).double_value(&[]);
            });
            time("sum of squares, fused (whole)", &mut || {
                sum_squares(&whole.grad).unwrap();
            });
        }
    }

    fn max_abs_fused(x: &Piece) -> [f64; 4] {
        max_abs(&x.param, &x.grad, &x.first, &x.second).unwrap()
    }
}

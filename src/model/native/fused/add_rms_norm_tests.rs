//! The fused residual add and RMSNorm node against the composed ops (x + delta, then
//! decoder.rs: composed_rms_norm) and their autograd.

use super::{add_rms_norm, adpo_fused_add_rms_norm, call_pair};
use crate::error::Status;
use crate::model::native::decoder::{self, composed_rms_norm};
use tch::{Device, Kind, Tensor};

const EPS: f64 = 1e-6;

/// (sum, normed) of x + delta (x alone for None) and weight w.
type Op<'a> = &'a dyn Fn(&Tensor, Option<&Tensor>, &Tensor) -> (Tensor, Tensor);

fn fused(x: &Tensor, delta: Option<&Tensor>, w: &Tensor) -> (Tensor, Tensor) {
    add_rms_norm(x, delta, w, EPS)
        .expect("the fused node applies")
        .unwrap()
}

fn composed(x: &Tensor, delta: Option<&Tensor>, w: &Tensor) -> (Tensor, Tensor) {
    let sum = delta.map_or_else(|| x.shallow_clone(), |d| x + d);
    let normed = composed_rms_norm(&sum, w, EPS).unwrap();
    (sum, normed)
}

/// Outputs and gradients of one run: sum, normed, then the gradients of x, delta and w
/// (undefined where none reached them).
struct Run([Tensor; 5]);

/// `op` at (x, delta, w), back-propagating upstream gradient `d_sum` into the sum and
/// `d_normed` into the norm where given (an output without one is left out of the loss).
fn run(
    op: Op,
    (x, delta, w): (&Tensor, Option<&Tensor>, &Tensor),
    (d_sum, d_normed): (Option<&Tensor>, Option<&Tensor>),
) -> Run {
    let x = x.detach().set_requires_grad(true);
    let delta = delta.map(|d| d.detach().set_requires_grad(true));
    let w = w.detach().set_requires_grad(true);
    let (sum, normed) = op(&x, delta.as_ref(), &w);
    let terms = [(&sum, d_sum), (&normed, d_normed)];
    let loss = terms
        .iter()
        .filter_map(|(y, g)| g.map(|g| (*y * g).sum(Kind::Double))) // d(y · g)/dy = g exactly
        .reduce(|a, b| a + b)
        .expect("at least one output in the loss");
    loss.backward();
    let grad = |t: Option<&Tensor>| t.map_or_else(Tensor::new, |t| t.grad());
    Run([
        sum.detach(),
        normed.detach(),
        x.grad(),
        grad(delta.as_ref()),
        w.grad(),
    ])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Each of the runs' five tensors within `tol` of the other's (relative to its largest
/// magnitude, at least 1), or undefined in both.
fn assert_close(a: &Run, b: &Run, tol: f64, what: &str) {
    let names = [
        "sum",
        "normed",
        "x gradient",
        "delta gradient",
        "weight gradient",
    ];
    for ((a, b), name) in a.0.iter().zip(&b.0).zip(names) {
        assert_eq!(
            a.defined(),
            b.defined(),
            "{what}: {name} defined in one only"
        );
        if a.defined() {
            let scale = max_diff(b, &b.zeros_like()).max(1.0);
            let d = max_diff(a, b) / scale;
            assert!(d < tol, "{what}: {name} differs by {d}");
        }
    }
}

fn randn(shape: &[i64], scale: f64) -> Tensor {
    Tensor::randn(shape, (Kind::Double, Device::Cpu)) * scale
}

#[test]
fn float64_matches_the_composed_ops_and_their_autograd() {
    tch::manual_seed(31);
    // hidden sizes below, at and off the kernels' 16-lane blocks
    for shape in [vec![3, 5, 37], vec![2, 64], vec![4, 1, 7]] {
        let (x, delta) = (randn(&shape, 3.0), randn(&shape, 1.0));
        let w = randn(&shape[shape.len() - 1..], 1.0);
        let (d_sum, d_normed) = (randn(&shape, 1.0), randn(&shape, 1.0));
        for upstream in [
            (Some(&d_sum), Some(&d_normed)),
            (Some(&d_sum), None),
            (None, Some(&d_normed)),
        ] {
            for delta in [Some(&delta), None] {
                let operands = (&x, delta, &w);
                let what = format!("{shape:?}, delta {}, {upstream:?}", delta.is_some());
                let a = run(&fused, operands, upstream);
                let b = run(&composed, operands, upstream);
                assert_close(&a, &b, 1e-12, &what);
            }
        }
    }
    // non-contiguous operands, and delta the same tensor as x (its gradient counted twice)
    let x = randn(&[6, 9], 1.0).transpose(0, 1);
    let delta = randn(&[6, 9], 1.0).transpose(0, 1);
    let w = randn(&[6], 1.0);
    let (d_sum, d_normed) = (randn(&[9, 6], 1.0), randn(&[9, 6], 1.0));
    let upstream = (Some(&d_sum), Some(&d_normed));
    let a = run(&fused, (&x, Some(&delta), &w), upstream);
    let b = run(&composed, (&x, Some(&delta), &w), upstream);
    assert_close(&a, &b, 1e-12, "non-contiguous");
    let twice = |op: Op| {
        let x = x.detach().set_requires_grad(true);
        let (sum, normed) = op(&x, Some(&x), &w);
        ((&sum * &d_sum).sum(Kind::Double) + (&normed * &d_normed).sum(Kind::Double)).backward();
        x.grad()
    };
    assert!(
        max_diff(&twice(&fused), &twice(&composed)) < 1e-12,
        "delta = x"
    );
}

#[test]
fn without_delta_the_sum_is_x_itself() {
    tch::manual_seed(32);
    let x = randn(&[2, 3, 16], 1.0).to_kind(Kind::BFloat16);
    let w = randn(&[16], 1.0).to_kind(Kind::BFloat16);
    let (sum, normed) = fused(&x, None, &w);
    assert!(
        sum.equal(&x) && sum.data_ptr() == x.data_ptr(),
        "the sum is x, not a copy"
    );
    let plain = super::rms_norm(&x, &w, EPS).unwrap().unwrap();
    assert!(normed.equal(&plain), "the norm is the fused RMSNorm's");
    // without grad too (generation, checkpointing's forward)
    let (sum, normed) = tch::no_grad(|| fused(&x, None, &w));
    assert!(sum.equal(&x) && normed.equal(&plain));
}

#[test]
fn sixteen_bit_forward_is_the_composed_one_bit_for_bit() {
    tch::manual_seed(33);
    for kind in [Kind::BFloat16, Kind::Half] {
        // activations of a decoder's scale, the delta smaller than the stream: rounding in
        // the add
        let x = (randn(&[4, 8, 576], 2.0)).to_kind(kind);
        let delta = (randn(&[4, 8, 576], 0.3)).to_kind(kind);
        let w = (randn(&[576], 0.5) + 1.0).to_kind(kind);
        let (sum, normed) = fused(&x, Some(&delta), &w);
        let (sum_c, normed_c) = composed(&x, Some(&delta), &w);
        assert_eq!((sum.kind(), normed.kind()), (kind, kind));
        assert!(sum.equal(&sum_c), "{kind:?} sum");
        // The norm is bit for bit where the float32 sums of squares are, which sum in another
        // order: a last-bit difference in rstd may move a value across a rounding boundary,
        // once in a few such tensors in bfloat16, about once a tensor in half (3 more bits).
        if kind == Kind::BFloat16 {
            assert!(normed.equal(&normed_c), "{kind:?} normed");
        } else {
            let ulp = normed_c.to_kind(Kind::Double).abs() * 2f64.powi(-10) + 1e-7;
            let off = (normed.to_kind(Kind::Double) - normed_c.to_kind(Kind::Double)).abs();
            assert!(
                off.le_tensor(&ulp).all().int64_value(&[]) == 1,
                "{kind:?} normed"
            );
        }
    }
}

#[test]
fn sixteen_bit_gradients_agree_with_float64_to_their_rounding() {
    tch::manual_seed(34);
    // measured: about 3e-3 in bfloat16 and 4e-4 in half, the dtypes' rounding
    for (kind, tol) in [
        (Kind::BFloat16, 8e-3),
        (Kind::Half, 1.5e-3),
        (Kind::Float, 1e-5),
    ] {
        let shape = [4, 8, 576];
        let x = randn(&shape, 2.0).to_kind(kind);
        let delta = randn(&shape, 0.3).to_kind(kind);
        let w = (randn(&[576], 0.5) + 1.0).to_kind(kind);
        let (d_sum, d_normed) = (
            randn(&shape, 1.0).to_kind(kind),
            randn(&shape, 1.0).to_kind(kind),
        );
        let upstream = (Some(&d_sum), Some(&d_normed));
        let low = run(&fused, (&x, Some(&delta), &w), upstream);
        // the reference: the composed ops on the same values in float64
        let [x64, delta64, w64, d_sum64, d_normed64] =
            [&x, &delta, &w, &d_sum, &d_normed].map(|t| t.to_kind(Kind::Double));
        let upstream64 = (Some(&d_sum64), Some(&d_normed64));
        let exact = run(&composed, (&x64, Some(&delta64), &w64), upstream64);
        assert_close(&low, &exact, tol, &format!("{kind:?}"));
        // one rounding where the composed ops make two: no less accurate than theirs
        let composed_low = run(&composed, (&x, Some(&delta), &w), upstream);
        let error = |r: &Run| {
            let d = r.0[2].to_kind(Kind::Double) - &exact.0[2];
            d.abs().sum(Kind::Double).double_value(&[])
        };
        assert!(
            error(&low) <= error(&composed_low),
            "{kind:?}: fused gradient error {} against composed {}",
            error(&low),
            error(&composed_low)
        );
    }
}

#[test]
fn misfit_operands_compose_or_are_errors() {
    let o = (Kind::Float, Device::Cpu);
    let x = Tensor::ones([2, 4], o);
    let w = Tensor::ones([4], o);
    // the Rust side leaves mixed dtypes and shapes to the composed ops
    let wide = Tensor::ones([2, 8], o);
    assert!(
        add_rms_norm(&x, Some(&wide), &w, EPS).is_none(),
        "shapes differ"
    );
    let double = Tensor::ones([2, 4], (Kind::Double, Device::Cpu));
    assert!(
        add_rms_norm(&x, Some(&double), &w, EPS).is_none(),
        "dtypes differ"
    );
    let err = decoder::add_rms_norm(&x, Some(&wide), &w, EPS, true).unwrap_err();
    assert_eq!(err.status, Status::Torch, "the composed add refuses: {err}");
    // the entry point refuses them itself
    let entry = |x: &Tensor, delta: &Tensor, w: &Tensor| {
        // SAFETY: live tch tensors.
        call_pair(|sum, normed| unsafe {
            adpo_fused_add_rms_norm(x.as_ptr(), delta.as_ptr(), w.as_ptr(), EPS, sum, normed)
        })
        .unwrap_err()
    };
    for (delta, weight, message) in [
        (&wide, &w, "does not match input"),
        (&double, &w, "differ in dtype"),
        (&x, &Tensor::ones([3], o), "does not match input"),
    ] {
        let err = entry(&x, delta, weight);
        assert_eq!(err.status, Status::Torch);
        assert!(err.to_string().contains(message), "{err}");
    }
    let short = Tensor::ones([3], o);
    let err = add_rms_norm(&x, None, &short, EPS).unwrap().unwrap_err();
    assert!(err.to_string().contains("does not match input"), "{err}");
}

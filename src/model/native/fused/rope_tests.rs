//! The fused RoPE node against the composed ops (rope.rs) and their autograd.

use super::rope;
use crate::model::native::rope::composed;
use tch::{Device, Kind, Tensor};

/// Output and input gradient of `f` at x against upstream gradient dy.
fn run(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let y = f(&x);
    (&y * dy).sum(y.kind()).backward(); // d(y · dy)/dy = dy exactly
    (y.detach(), x.grad())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// x [B, H, T, D] laid out [B, T, H, D] as the projections give it; cos and sin [b, 1, T, D].
fn inputs(b: i64, tables_b: i64, kind: Kind) -> (Tensor, Tensor, Tensor, Tensor) {
    let o = (Kind::Double, Device::Cpu);
    let (h, t, d) = (3, 5, 8);
    let x = Tensor::randn([b, t, h, d], o).transpose(1, 2);
    let angles = Tensor::randn([tables_b, 1, t, d / 2], o) * 3.0;
    let angles = Tensor::cat(&[&angles, &angles], 3);
    let dy = Tensor::randn([b, h, t, d], o);
    let k = |x: Tensor| x.to_kind(kind);
    (k(x), k(angles.cos()), k(angles.sin()), k(dy))
}

#[test]
fn float64_matches_the_composed_ops_and_their_autograd() {
    tch::manual_seed(21);
    for tables_b in [2, 1] {
        let (x, cos, sin, dy) = inputs(2, tables_b, Kind::Double);
        let fused = run(|x| rope(x, &cos, &sin).unwrap().unwrap(), &x, &dy);
        let plain = run(|x| composed(x, &cos, &sin).unwrap(), &x, &dy);
        assert!(max_diff(&fused.0, &plain.0) < 1e-12, "output");
        assert!(max_diff(&fused.1, &plain.1) < 1e-12, "gradient");
    }
}

#[test]
fn sixteen_bit_results_are_the_composed_ones_bit_for_bit() {
    tch::manual_seed(22);
    for kind in [Kind::BFloat16, Kind::Half] {
        let (x, cos, sin, dy) = inputs(2, 2, kind);
        let fused = run(|x| rope(x, &cos, &sin).unwrap().unwrap(), &x, &dy);
        let plain = run(|x| composed(x, &cos, &sin).unwrap(), &x, &dy);
        assert_eq!(fused.0.kind(), kind);
        assert!(fused.0.equal(&plain.0), "{kind:?} output");
        assert!(fused.1.equal(&plain.1), "{kind:?} gradient");
    }
    let (x, cos, sin, dy) = inputs(2, 2, Kind::Float);
    let fused = run(|x| rope(x, &cos, &sin).unwrap().unwrap(), &x, &dy);
    let plain = run(|x| composed(x, &cos, &sin).unwrap(), &x, &dy);
    // float32: the sum may be one fused multiply-add, one rounding fewer
    assert!(max_diff(&fused.0, &plain.0) < 1e-6 && max_diff(&fused.1, &plain.1) < 1e-6);
}

#[test]
fn misfit_tables_are_errors() {
    let (x, cos, sin, _) = inputs(2, 2, Kind::Float);
    let short = cos.narrow(2, 0, 4);
    let err = rope(&x, &short, &sin.narrow(2, 0, 4)).unwrap().unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
    let odd = Tensor::randn([1, 1, 5, 7], (Kind::Float, Device::Cpu));
    let err = rope(&odd, &odd, &odd).unwrap().unwrap_err();
    assert!(err.to_string().contains("D even"), "{err}");
}

//! The fused gate of a joint gate-and-up projection against the composed gate of its halves.

use super::swiglu_joint;
use crate::model::native::decoder::composed_swiglu;
use tch::{Device, Kind, Tensor};

/// Output and the joint input's gradient of `f` at gate_up against upstream gradient dy.
fn run(f: impl Fn(&Tensor) -> Tensor, gate_up: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
    let j = gate_up.detach().set_requires_grad(true);
    let y = f(&j);
    (&y * dy).sum(y.kind()).backward();
    (y.detach(), j.grad())
}

fn composed(j: &Tensor) -> Tensor {
    let halves = j.chunk(2, -1);
    composed_swiglu(&halves[0], &halves[1]).unwrap()
}

#[test]
fn the_joint_gate_is_the_composed_gate_of_its_halves() {
    tch::manual_seed(41);
    for kind in [Kind::Double, Kind::BFloat16, Kind::Float] {
        let o = (Kind::Double, Device::Cpu);
        let j = (Tensor::randn([2, 3, 2 * 37], o) * 3.0).to_kind(kind);
        let dy = Tensor::randn([2, 3, 37], o).to_kind(kind);
        let fused = run(|j| swiglu_joint(j).unwrap().unwrap(), &j, &dy);
        let plain = run(composed, &j, &dy);
        assert_eq!(fused.0.size(), vec![2, 3, 37]);
        let diff = |a: &Tensor, b: &Tensor| {
            let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
                .abs()
                .max();
            d.double_value(&[]) / b.to_kind(Kind::Double).abs().max().double_value(&[])
        };
        // float64 to rounding; 16 and 32 bits within the exponentials' few ulp (fused.rs tests)
        let tol = if kind == Kind::Double { 1e-12 } else { 1e-2 };
        assert!(diff(&fused.0, &plain.0) < tol, "{kind:?} output");
        assert!(diff(&fused.1, &plain.1) < tol, "{kind:?} gradient");
    }
    let odd = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
    let err = swiglu_joint(&odd).unwrap().unwrap_err();
    assert!(err.to_string().contains("two halves"), "{err}");
}

//! Projections of one input as one matrix product: q, k and v (attention.rs), gate and up
//! (decoder.rs). Separately, each product's input gradient is a [rows, hidden] tensor and
//! autograd adds them up (two additions for q, k, v, one for gate and up, per layer); the k and
//! v products are narrow (N = 192 for SmolLM2), where the matrix units run below their rate.
//! Joint, the weights are concatenated (a copy of the weights, not of the activations) and one
//! product gives every output and, backward, the whole input gradient.

use super::decoder::Linear;
use crate::error::Result;
use tch::Tensor;

/// x through `linears` as one product [.., sum of their outputs] (in their order), where that
/// computes the same values: `on`, no adapter in use (LoRA adds into each output in place,
/// which a split view does not allow), one dtype and device, and all or none with a bias.
pub fn product(
    linears: &[&Linear],
    x: &Tensor,
    adapters: bool,
    on: bool,
) -> Result<Option<Tensor>> {
    let first = &linears[0].weight;
    let joinable = linears.iter().all(|l| {
        (l.lora.is_none() || !adapters)
            && l.weight.kind() == first.kind()
            && l.weight.device() == first.device()
            && l.bias.is_some() == linears[0].bias.is_some()
    });
    if !on || linears.len() < 2 || !joinable {
        return Ok(None);
    }
    let weights: Vec<&Tensor> = linears.iter().map(|l| &l.weight).collect();
    let weight = Tensor::f_cat(&weights, 0)?;
    let biases: Option<Vec<&Tensor>> = linears.iter().map(|l| l.bias.as_ref()).collect();
    let bias = biases.map(|b| Tensor::f_cat(&b, 0)).transpose()?;
    Ok(Some(x.f_linear(&weight, bias.as_ref())?))
}

/// The outputs of `linears` on x: views of their joint product where `product` applies, else
/// one product each.
pub fn outputs(linears: &[&Linear], x: &Tensor, adapters: bool, on: bool) -> Result<Vec<Tensor>> {
    match product(linears, x, adapters, on)? {
        Some(joint) => {
            let sizes: Vec<i64> = linears.iter().map(|l| l.weight.size()[0]).collect();
            Ok(joint.f_split_with_sizes(&sizes, -1)?)
        }
        None => linears.iter().map(|l| l.forward(x, adapters)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn linear(out: i64, bias: bool) -> Linear {
        let o = (Kind::Double, Device::Cpu);
        Linear {
            weight: Tensor::randn([out, 6], o).set_requires_grad(true),
            bias: bias.then(|| Tensor::randn([out], o).set_requires_grad(true)),
            lora: None,
        }
    }

    /// Outputs, and the gradients of x and of every weight and bias, for upstream gradients dys.
    fn run(ls: &[&Linear], x: &Tensor, dys: &[Tensor], on: bool) -> Vec<Tensor> {
        let x = x.detach().set_requires_grad(true);
        let ys = outputs(ls, &x, true, on).unwrap();
        let loss = ys.iter().zip(dys).map(|(y, d)| (y * d).sum(Kind::Double));
        loss.reduce(|a, b| a + b).unwrap().backward();
        let mut all: Vec<Tensor> = ys.iter().map(|y| y.detach()).collect();
        all.push(x.grad());
        for l in ls {
            all.push(l.weight.grad());
            all.extend(l.bias.as_ref().map(|b| b.grad()));
            let _ = l.weight.grad().zero_();
            let _ = l.bias.as_ref().map(|b| b.grad().zero_());
        }
        all
    }

    #[test]
    fn joint_outputs_and_gradients_are_the_separate_ones() {
        tch::manual_seed(31);
        for bias in [false, true] {
            let (q, k, v) = (linear(8, bias), linear(4, bias), linear(4, bias));
            let ls = [&q, &k, &v];
            let x = Tensor::randn([2, 3, 6], (Kind::Double, Device::Cpu));
            let dys: Vec<Tensor> = [8, 4, 4]
                .iter()
                .map(|&n| Tensor::randn([2, 3, n], (Kind::Double, Device::Cpu)))
                .collect();
            assert!(product(&ls, &x, true, true).unwrap().is_some());
            let joint = run(&ls, &x, &dys, true);
            let separate = run(&ls, &x, &dys, false);
            for (a, b) in joint.iter().zip(&separate) {
                assert_eq!(a.size(), b.size());
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff < 1e-12, "bias {bias}: off by {diff}");
            }
        }
    }

    #[test]
    fn mixed_biases_or_dtypes_go_separately() {
        let (q, k) = (linear(4, true), linear(4, false));
        let x = Tensor::randn([1, 6], (Kind::Double, Device::Cpu));
        assert!(product(&[&q, &k], &x, true, true).unwrap().is_none());
        let mut f = linear(4, false);
        f.weight = f.weight.to_kind(Kind::Float);
        assert!(product(&[&k, &f], &x, true, true).unwrap().is_none());
        assert!(product(&[&k, &k], &x, true, false).unwrap().is_none());
    }
}

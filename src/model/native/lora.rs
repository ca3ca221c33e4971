//! One LoRA adapter on a linear projection, as PEFT's `lora.Linear` computes it:
//! y = W x + b + scaling * B (A x), with A [r, in], B [out, r], scaling = alpha / r. The input
//! is cast to the adapter's dtype and the sum back to the base output's dtype (PEFT does the
//! same), so a bfloat16 base runs float32 adapters. Merging gives W + scaling * B A.
//!
//! Fresh adapters: B = 0 and A drawn on the host from adpo's generator, seeded by the options'
//! seed and the module's name, so every rank and every run starts from the same adapters and
//! adding a target does not change the others' draws.

use crate::error::Result;
use crate::model::options::{LoraInit, LoraOptions};
use crate::rng::next_uniform;
use tch::{Device, Kind, Tensor};

pub struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scaling: f64,
}

/// The adapters' dtype on a base of `base`: float64 stays float64, everything else trains in
/// float32 (PEFT's autocast_adapter_dtype upcasts 16-bit adapters the same way).
pub fn adapter_kind(base: Kind) -> Kind {
    crate::dtype::compute_kind(base)
}

impl Adapter {
    /// `base_out` (W x + b) plus the adapter's term for input `x`.
    pub fn add_to(&self, x: &Tensor, base_out: Tensor) -> Result<Tensor> {
        let kind = base_out.kind();
        let low = x
            .f_to_kind(self.a.kind())?
            .f_linear(&self.a, None::<&Tensor>)?;
        if kind != self.a.kind() {
            // A 16-bit base: the sum in the adapter's dtype, cast back (PEFT's order).
            let up = low.f_linear(&self.b, None::<&Tensor>)?;
            return Ok(base_out.f_add(&(up * self.scaling))?.f_to_kind(kind)?);
        }
        // Same dtype: accumulate s (x A^T) B^T into the base output in place, scaling the
        // narrow [.., r] side. No [.., out] temporaries: under autograd they are freed
        // between long-lived saved tensors and fragment the heap (peak RSS far above the
        // live tensors in a LoRA step).
        let shape = base_out.size();
        let out = *shape
            .last()
            .expect("a projection's output has a feature axis");
        let mut flat = base_out.f_reshape([-1, out])?;
        let r = self.a.size()[0];
        let low = (low * self.scaling).f_reshape([-1, r])?;
        let _ = flat.f_addmm_(&low, &self.b.f_transpose(0, 1)?)?;
        Ok(flat.f_view(shape.as_slice())?)
    }

    /// W + scaling * B A, in W's dtype (computed in the adapter's).
    pub fn merged(&self, weight: &Tensor) -> Result<Tensor> {
        let delta = self.b.f_matmul(&self.a)? * self.scaling;
        Ok(weight
            .f_to_kind(self.a.kind())?
            .f_add(&delta)?
            .f_to_kind(weight.kind())?)
    }

    /// A copy with its own storage (an anchor's adapters).
    pub fn deep_copy(&self) -> Adapter {
        tch::no_grad(|| Adapter {
            a: self.a.detach().copy(),
            b: self.b.detach().copy(),
            scaling: self.scaling,
        })
    }

    /// Fresh adapters for `module` (a [out, in] projection): A drawn as `lora.init` says, B zero.
    pub fn fresh(
        lora: &LoraOptions,
        module: &str,
        (out, inp): (i64, i64),
        kind: Kind,
        device: Device,
    ) -> Result<Adapter> {
        let values = draw_a(lora, module, lora.r * inp, inp);
        let a = Tensor::f_from_slice(&values)?
            .f_view([lora.r, inp])?
            .f_to_device_(device, kind, false, false)?;
        Ok(Adapter {
            a,
            b: Tensor::f_zeros([out, lora.r], (kind, device))?,
            scaling: lora.scaling(),
        })
    }
}

/// FNV-1a of the module name, mixed with the seed: one stream per module.
fn stream(seed: u64, module: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in module.bytes() {
        h = (h ^ byte as u64).wrapping_mul(0x0100_0000_01B3);
    }
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// n values of A for a projection with `fan_in` inputs.
fn draw_a(lora: &LoraOptions, module: &str, n: i64, fan_in: i64) -> Vec<f64> {
    let mut state = stream(lora.seed, module);
    match lora.init {
        // kaiming_uniform_(a = sqrt(5)): gain sqrt(2 / 6), bound gain * sqrt(3 / fan_in).
        LoraInit::Default => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| (2.0 * next_uniform(&mut state) - 1.0) * bound)
                .collect()
        }
        LoraInit::Gaussian => {
            let std = 1.0 / lora.r as f64;
            (0..n)
                .map(|_| {
                    // Box-Muller; 1 - u is in (0, 1], so the log is finite.
                    let u = 1.0 - next_uniform(&mut state);
                    let v = next_uniform(&mut state);
                    std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_adapters_follow_peft_init_and_are_reproducible() {
        let lora = LoraOptions {
            r: 4,
            ..LoraOptions::default()
        };
        let fresh = |name: &str| Adapter::fresh(&lora, name, (6, 64), Kind::Float, Device::Cpu);
        let ad = fresh("model.layers.0.self_attn.q_proj").unwrap();
        assert_eq!((ad.a.size(), ad.b.size()), (vec![4, 64], vec![6, 4]));
        assert_eq!(ad.b.abs().sum(Kind::Double).double_value(&[]), 0.0);
        let max = ad.a.abs().max().double_value(&[]);
        assert!(
            max <= 1.0 / 8.0 && max > 0.1,
            "A outside uniform(-1/8, 1/8): {max}"
        );
        let again = fresh("model.layers.0.self_attn.q_proj").unwrap();
        assert!(again.a.equal(&ad.a));
        assert!(!fresh("model.layers.0.self_attn.k_proj")
            .unwrap()
            .a
            .equal(&ad.a));
        let gaussian = LoraOptions {
            init: LoraInit::Gaussian,
            r: 2,
            ..LoraOptions::default()
        };
        let values = draw_a(&gaussian, "m", 20000, 64);
        let var = values.iter().map(|v| v * v).sum::<f64>() / values.len() as f64;
        assert!((var.sqrt() - 0.5).abs() < 0.02, "std {}", var.sqrt());
    }

    #[test]
    fn the_adapter_term_accumulates_into_the_base_output_without_a_new_tensor() {
        let ad = Adapter {
            a: Tensor::randn([2, 3], (Kind::Float, Device::Cpu)),
            b: Tensor::randn([5, 2], (Kind::Float, Device::Cpu)),
            scaling: 0.5,
        };
        let x = Tensor::randn([2, 4, 3], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
        let base = x.linear(&w, None::<&Tensor>);
        let at = base.data_ptr();
        let y = ad.add_to(&x, base).unwrap();
        assert_eq!(y.data_ptr(), at, "the sum went to a new [.., out] tensor");
        let want = x.linear(&w, None::<&Tensor>)
            + x.linear(&ad.a, None::<&Tensor>)
                .linear(&ad.b, None::<&Tensor>)
                * 0.5;
        assert_eq!(y.size(), vec![2, 4, 5]);
        let d = (y - want).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn the_adapter_term_and_the_merged_weight_agree() {
        let w = Tensor::randn([5, 3], (Kind::Double, Device::Cpu));
        let ad = Adapter {
            a: Tensor::randn([2, 3], (Kind::Double, Device::Cpu)),
            b: Tensor::randn([5, 2], (Kind::Double, Device::Cpu)),
            scaling: 1.5,
        };
        let x = Tensor::randn([4, 3], (Kind::Double, Device::Cpu));
        let y = ad.add_to(&x, x.linear(&w, None::<&Tensor>)).unwrap();
        let merged = x.linear(&ad.merged(&w).unwrap(), None::<&Tensor>);
        let d = (y - merged).abs().max().double_value(&[]);
        assert!(d < 1e-12, "{d}");
    }
}

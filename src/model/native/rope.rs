//! Rotary position embeddings, rotate-half form (not interleaved), as transformers computes them:
//! inverse frequencies theta^(-2i/d) in float32, optionally rescaled ("linear": divided by the
//! factor; "llama3": band by band), angles = position x inverse frequency in float32, cos and sin
//! cast to the activations' dtype, x' = x cos + rotate_half(x) sin.

use crate::error::Result;
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// RoPE scaling of the inverse frequencies (config.json `rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: i64,
    },
    /// A GGUF file's `rope_freqs` (llama.cpp's freq_factors, what its converter writes for Llama
    /// 3.1 scaling): inverse frequency i divided by factor i.
    Factors(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// Inverse frequencies [head_dim / 2], float32.
    pub fn inverse_frequencies(&self, head_dim: i64, device: Device) -> Tensor {
        let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(self.theta, &exponent).reciprocal();
        match self.scaling {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Factors(ref f) => {
                inv_freq / Tensor::from_slice(f).to_kind(Kind::Float).to_device(device)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                let wavelen = inv_freq.reciprocal() * (2.0 * PI);
                let long = wavelen.gt(low_wavelen);
                let scaled = inv_freq.where_self(&long.logical_not(), &(&inv_freq / factor));
                let smooth = ((wavelen.reciprocal() * old) - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let blended: Tensor = (1.0 - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen
                    .ge(high_wavelen)
                    .logical_and(&wavelen.le(low_wavelen));
                blended.where_self(&medium, &scaled)
            }
        }
    }
}

impl Rope {
    /// llama.cpp's per-frequency factors (GGUF `rope_freqs`, [head_dim / 2]) that give these
    /// inverse frequencies: None for plain RoPE; linear scaling has none (llama.cpp writes it
    /// as metadata, which adpo does not).
    pub fn gguf_factors(&self, head_dim: i64) -> Option<Vec<f64>> {
        let plain = Rope {
            theta: self.theta,
            scaling: RopeScaling::None,
        };
        match &self.scaling {
            RopeScaling::None | RopeScaling::Linear { .. } => None,
            RopeScaling::Factors(f) => Some(f.clone()),
            RopeScaling::Llama3 { .. } => {
                let base = plain.inverse_frequencies(head_dim, Device::Cpu);
                let scaled = self.inverse_frequencies(head_dim, Device::Cpu);
                Vec::<f64>::try_from((base / scaled).to_kind(Kind::Double)).ok()
            }
        }
    }
}

/// cos and sin [B, 1, T, head_dim] in `kind` for positions [B, T] (int64).
pub fn cos_sin(inv_freq: &Tensor, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
    let freqs = positions
        .to_kind(Kind::Float)
        .unsqueeze(-1)
        .f_mul(&inv_freq.to_device(positions.device()))?;
    let angles = Tensor::f_cat(&[&freqs, &freqs], -1)?.unsqueeze(1);
    Ok((angles.cos().to_kind(kind), angles.sin().to_kind(kind)))
}

/// x [B, H, T, D] rotated by the cos and sin of its positions; `fused` false composes it from
/// libtorch's ops.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, fused: bool) -> Result<Tensor> {
    super::fused::or_composed(
        fused,
        || super::fused::rope(x, cos, sin),
        || composed(x, cos, sin),
    )
}

/// x cos + rotate_half(x) sin of libtorch's ops.
pub(crate) fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    let rotated = Tensor::f_cat(&[&(-x2), &x1], 3)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

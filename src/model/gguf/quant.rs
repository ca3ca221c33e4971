//! Tensor values to the bytes of a ggml type, as gguf-py (`gguf/quants.py`) and ggml's reference
//! `quantize_row_q8_0_ref` compute them: F32, F16 and BF16 by libtorch's round-to-nearest-even
//! conversion (numpy's and gguf-py's); Q8_0 in blocks of 32 values, d = max |x| / 127 stored as
//! float16, q = round(x / d) (halves away from zero; d = 0 gives q = 0).

use super::dequant::GgmlType;
use crate::error::{torch_message, Error, Result, Status};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

const QK8_0: usize = 32;

fn torch(e: tch::TchError) -> Error {
    Error::new(Status::Torch, torch_message(&e))
}

/// The values of `t` as `kind` on the host, in row-major order.
fn host_bytes(t: &Tensor, kind: Kind) -> Result<Vec<u8>> {
    let cpu = tch::no_grad(|| {
        t.f_detach()
            .and_then(|x| x.f_to_device(Device::Cpu))
            .and_then(|x| x.f_to_kind(kind))
            .and_then(|x| x.f_contiguous())
    })
    .map_err(torch)?;
    let n = cpu.numel();
    let mut data = vec![0u8; n * kind.elt_size_in_bytes()];
    cpu.f_copy_data_u8(&mut data, n).map_err(torch)?;
    Ok(data)
}

/// The bytes of `t` stored as `ty` (F32, F16, BF16 or Q8_0; Q8_0 rows a multiple of 32 values).
pub fn encode(t: &Tensor, ty: GgmlType) -> Result<Vec<u8>> {
    match ty {
        GgmlType::F32 => host_bytes(t, Kind::Float),
        GgmlType::F16 => host_bytes(t, Kind::Half),
        GgmlType::BF16 => host_bytes(t, Kind::BFloat16),
        GgmlType::Q8_0 => {
            let bytes = host_bytes(t, Kind::Float)?;
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            Ok(q8_0(&values))
        }
        other => Err(Error::unsupported(format!(
            "adpo does not write GGUF tensors of type {}",
            other.name()
        ))),
    }
}

/// Q8_0 blocks (2-byte float16 scale, 32 signed bytes) of `values` (a multiple of 32).
pub fn q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() / QK8_0 * (2 + QK8_0)];
    out.par_chunks_mut(2 + QK8_0)
        .zip(values.par_chunks(QK8_0))
        .for_each(|(block, x)| {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            block[..2].copy_from_slice(&f16_bits(d).to_le_bytes());
            for (q, v) in block[2..].iter_mut().zip(x) {
                *q = (v * id).round() as i8 as u8;
            }
        });
    out
}

/// float32 -> IEEE float16 bits, round to nearest even (as numpy and ggml's FP32_TO_FP16).
fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::dequant::dequantize;

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let values: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect();
        let bytes = q8_0(&values);
        assert_eq!(bytes.len(), 2 * 34);
        let mut back = vec![0f32; 64];
        dequantize(GgmlType::Q8_0, &bytes, &mut back);
        for (block, xs) in back.chunks(32).zip(values.chunks(32)) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (b, x) in block.iter().zip(xs) {
                assert!((b - x).abs() <= amax / 127.0 * 0.51, "{b} vs {x}");
            }
        }
        assert_eq!(q8_0(&[0.0; 32])[2..], [0u8; 32]);
    }
}

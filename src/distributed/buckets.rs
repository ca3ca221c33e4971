//! Gradients and weights moved in flattened buckets of about `bucket_bytes`, one collective per
//! bucket rather than one per tensor.

use super::Distributed;
use crate::error::Result;
use std::ops::Range;
use tch::{Kind, Tensor};

/// The dtype a tensor travels in: f64 stays f64, everything else goes as f32.
fn wire_kind(kind: Kind) -> Kind {
    crate::dtype::compute_kind(kind)
}

/// Consecutive runs of tensors of one wire dtype, each up to `bucket_bytes` (a tensor larger
/// than that is a bucket of its own).
fn buckets(tensors: &[Tensor], bucket_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        let kind = wire_kind(t.kind());
        let size = t.numel() * kind.elt_size_in_bytes();
        let new_kind = i > start && kind != wire_kind(tensors[start].kind());
        if i > start && (new_kind || bytes + size > bucket_bytes) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}

impl Distributed {
    /// Every tensor (same shapes on every rank) becomes the sum over ranks of `scale` times
    /// itself, in place.
    fn sum_in_buckets(&mut self, tensors: &[Tensor], scale: f64, root_only: bool) -> Result<()> {
        let zero = root_only && self.rank() != 0;
        for range in buckets(tensors, self.bucket_bytes) {
            let part = &tensors[range];
            let kind = wire_kind(part[0].kind());
            let mut flat = tch::no_grad(|| {
                let flat = Tensor::cat(
                    &part
                        .iter()
                        .map(|t| t.detach().reshape([-1]).to_kind(kind))
                        .collect::<Vec<_>>(),
                    0,
                );
                if zero {
                    flat.zeros_like()
                } else if scale != 1.0 {
                    flat * scale
                } else {
                    flat
                }
            });
            self.sum(&mut flat)?;
            tch::no_grad(|| {
                let mut offset = 0;
                for t in part {
                    let n = t.numel() as i64;
                    let mut t = t.shallow_clone();
                    t.copy_(&flat.narrow(0, offset, n).view_as(&t));
                    offset += n;
                }
            });
        }
        Ok(())
    }

    /// Sums the parameters' gradients over ranks, each rank's scaled by `scale` (its share of
    /// the global loss normaliser). A parameter without a gradient takes part with zeros.
    pub fn reduce_grads(&mut self, params: &[(String, Tensor)], scale: f64) -> Result<()> {
        for (_, p) in params {
            if !p.grad().defined() {
                // Gives the parameter a zero gradient (tch exposes no setter for .grad).
                (p * 0.0).sum(p.kind()).backward();
            }
        }
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).collect();
        self.sum_in_buckets(&grads, scale, false)
    }

    /// Every rank's tensors become rank 0's.
    pub fn broadcast(&mut self, tensors: &[Tensor]) -> Result<()> {
        self.sum_in_buckets(tensors, 1.0, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_by_size_and_dtype() {
        let f = |n: i64, k: Kind| Tensor::zeros([n], (k, tch::Device::Cpu));
        let ts = [
            f(10, Kind::Float),
            f(10, Kind::Float),
            f(30, Kind::Float),
            f(5, Kind::Double),
            f(1, Kind::Double),
        ];
        // 80 bytes per bucket: 40 + 40 | 120 alone | the two f64 together (48 bytes).
        assert_eq!(buckets(&ts, 80), vec![0..2, 2..3, 3..5]);
        assert_eq!(buckets(&ts, 1 << 20), vec![0..3, 3..5]);
        assert_eq!(buckets(&ts, 1), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
    }
}

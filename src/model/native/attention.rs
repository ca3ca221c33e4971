//! Self-attention: q/k/v projections (optional bias), Qwen3's per-head RMSNorm of q and k before
//! RoPE, RoPE, grouped-query attention through libtorch's `scaled_dot_product_attention`
//! (`enable_gqa`: the key/value heads are never repeated in memory) with an explicit boolean
//! mask (mask.rs), and the output projection. With a cache, the new keys and values (of the
//! key/value heads, after RoPE) are written into the layer's preallocated buffers and the
//! queries attend over everything cached so far.

use super::decoder::{rms_norm, Linear};
use super::fused;
use super::joint;
use super::rope;
use crate::error::Result;
use tch::Tensor;

pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub eps: f64,
}

/// One layer's key and value buffers [B, H_kv, capacity, D], `len` positions filled.
pub struct LayerCache<'a> {
    pub keys: &'a mut Tensor,
    pub values: &'a mut Tensor,
    pub len: i64,
}

impl LayerCache<'_> {
    /// Writes k, v [B, H_kv, t, D] after the filled positions; the filled prefix with them.
    fn append(self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2];
        self.keys.f_narrow(2, self.len, t)?.f_copy_(k)?;
        self.values.f_narrow(2, self.len, t)?.f_copy_(v)?;
        Ok((
            self.keys.f_narrow(2, 0, self.len + t)?,
            self.values.f_narrow(2, 0, self.len + t)?,
        ))
    }
}

impl Attention {
    /// x [B, T, hidden]; rope (cos, sin) [B, 1, T, D]; mask [B, 1, T, K] (K = cached + T);
    /// `adapters` false skips the projections' LoRA adapters, `fused` false composes the q/k
    /// norms from libtorch's ops.
    pub fn forward(
        &self,
        x: &Tensor,
        (cos, sin): &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<LayerCache>,
        (adapters, fused): (bool, bool),
    ) -> Result<Tensor> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let projections = [&self.q, &self.k, &self.v];
        let [q, k, v]: [Tensor; 3] = joint::outputs(&projections, x, adapters, fused)?
            .try_into()
            .expect("three projections");
        let q = self.split_heads(&q, self.heads, self.q_norm.as_ref(), fused)?;
        let k = self.split_heads(&k, self.kv_heads, self.k_norm.as_ref(), fused)?;
        // its own copy, [B, H_kv, T, D] as attention reads it: a view would keep the whole joint
        // product alive until the backward
        let v = self
            .split_heads(&v, self.kv_heads, None, fused)?
            .f_contiguous()?;
        let q = rope::apply(&q, cos, sin, fused)?;
        let k = rope::apply(&k, cos, sin, fused)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let out = fused::or_composed(
            fused,
            || fused::attention(&q, &k, &v, mask),
            || {
                Ok(Tensor::f_scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    Some(mask),
                    0.0,
                    false,
                    None::<f64>,
                    self.kv_heads != self.heads,
                )?)
            },
        )?;
        let out = out
            .f_transpose(1, 2)?
            .f_reshape([b, t, self.heads * self.head_dim])?;
        self.o.forward(&out, adapters)
    }

    /// [B, n, T, D] from a projection [B, T, n * D], per-head normed if asked.
    fn split_heads(
        &self,
        h: &Tensor,
        n: i64,
        norm: Option<&Tensor>,
        fused: bool,
    ) -> Result<Tensor> {
        let (b, t) = (h.size()[0], h.size()[1]);
        let h = h.f_view([b, t, n, self.head_dim])?;
        let h = match norm {
            Some(weight) => rms_norm(&h, weight, self.eps, fused)?,
            None => h,
        };
        Ok(h.f_transpose(1, 2)?)
    }
}

//! The decoder shared by every architecture (the differences are values: arch.rs, config.rs):
//! token embedding; per layer x += attention(RMSNorm(x)), x += MLP(RMSNorm(x)) with the SwiGLU
//! MLP down(silu(gate(h)) * up(h)); a final RMSNorm; the output head (`lm_head.weight`, or the
//! embedding matrix when tied). No dropout anywhere. LoRA adapters (lora.rs) may sit on the
//! seven projections of each layer; `hidden` runs with them or, for the base model, without.
//!
//! Each residual add is made by the RMSNorm that next reads the stream ([`add_rms_norm`]): a
//! layer takes the stream x and the previous layer's MLP output not yet added to it, and hands
//! on its own, which the next layer's input norm (or the final norm) adds. Fused, sum and norm
//! are one node, forward and backward; composed, the same ops in the same order as adding
//! first.

mod checkpointing;

use super::attention::{Attention, LayerCache};
use super::config::Config;
use super::layout::{self, attention_module, layer_module, projection_modules};
use super::lora::Adapter;
use super::mask;
use super::rope;
use crate::error::{Error, Result};
use crate::model::KvCache;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// A projection y = x W^T + b, with a LoRA adapter or without.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Adapter>,
}

impl Linear {
    /// `adapters` false: the base projection even where an adapter sits.
    pub fn forward(&self, x: &Tensor, adapters: bool) -> Result<Tensor> {
        let y = x.f_linear(&self.weight, self.bias.as_ref())?;
        match (&self.lora, adapters) {
            (Some(lora), true) => lora.add_to(x, y),
            _ => Ok(y),
        }
    }
}

/// RMSNorm over the last axis, computed in float32 for 16-bit activations (as transformers
/// does) and in the activations' own dtype for float32 and float64, then scaled by `weight`:
/// with `fused` on the CPU as one fused node (fused.rs), else composed.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    super::fused::or_composed(
        fused,
        || super::fused::rms_norm(x, weight, eps),
        || composed_rms_norm(x, weight, eps),
    )
}

/// RMSNorm composed of libtorch's ops (any device and dtype): the fused op's reference.
pub fn composed_rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let kind = x.kind();
    let compute = crate::dtype::compute_kind(kind);
    let h = x.to_kind(compute);
    let variance = h.square().f_mean_dim([-1i64].as_slice(), true, compute)?;
    let normed = (h * (variance + eps).rsqrt()).to_kind(kind);
    Ok(weight.f_mul(&normed)?)
}

/// The residual sum s = x + delta (x itself where delta is None) and its RMSNorm (as
/// [`rms_norm`]), as (s, RMSNorm(s) * weight): with `fused` on the CPU as one fused node
/// (fused.rs), whose gradient for x and delta is s's own plus the norm's in one pass (16-bit
/// results may differ from the composed ones in the last bit), else composed (x + delta, then
/// [`composed_rms_norm`]).
pub fn add_rms_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    weight: &Tensor,
    eps: f64,
    fused: bool,
) -> Result<(Tensor, Tensor)> {
    super::fused::or_composed(
        fused,
        || super::fused::add_rms_norm(x, delta, weight, eps),
        || {
            let sum = match delta {
                Some(delta) => x.f_add(delta)?,
                None => x.shallow_clone(),
            };
            let normed = composed_rms_norm(&sum, weight, eps)?;
            Ok((sum, normed))
        },
    )
}

/// The SwiGLU gate silu(gate) * up: with `fused` on the CPU as one fused node (fused.rs), else
/// composed.
pub fn swiglu(gate: &Tensor, up: &Tensor, fused: bool) -> Result<Tensor> {
    super::fused::or_composed(
        fused,
        || super::fused::swiglu(gate, up),
        || composed_swiglu(gate, up),
    )
}

/// The gate composed of libtorch's ops: the fused op's reference.
pub fn composed_swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.f_silu()?.f_mul(up)?)
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    /// silu(gate(h)) * up(h): gate and up as one product (joint.rs) whose gradient the fused
    /// gate returns joint, where they apply.
    fn gated(&self, h: &Tensor, (adapters, fused): (bool, bool)) -> Result<Tensor> {
        let Some(gate_up) = super::joint::product(&[&self.gate, &self.up], h, adapters, fused)?
        else {
            let gate = self.gate.forward(h, adapters)?;
            return swiglu(&gate, &self.up.forward(h, adapters)?, fused);
        };
        super::fused::or_composed(
            fused,
            || super::fused::swiglu_joint(&gate_up),
            || {
                let halves = gate_up.f_chunk(2, -1)?;
                composed_swiglu(&halves[0], &halves[1])
            },
        )
    }
}

struct Layer {
    input_norm: Tensor,
    attention: Attention,
    post_norm: Tensor,
    mlp: Mlp,
}

pub struct Decoder {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// None: tied to `embed`.
    lm_head: Option<Tensor>,
    /// RoPE inverse frequencies [head_dim / 2], float32, on the model's device.
    inv_freq: Tensor,
    eps: f64,
    /// Every parameter under its checkpoint name, in layout order (shared storage).
    params: Vec<(String, Tensor)>,
    /// The fused CPU ops of fused.rs on (the load option `fused_ops`): RMSNorm with the
    /// residual add before it, the SwiGLU gate, RoPE, attention and the head's log-softmax.
    pub fused_ops: bool,
}

/// Takes tensors out of the loaded map by name.
struct Tensors(HashMap<String, Tensor>);

impl Tensors {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.0
            .get(name)
            .map(|t| t.shallow_clone())
            .ok_or_else(|| Error::checkpoint(format!("tensor {name} is missing")))
    }

    fn linear(&self, name: &str, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: self.get(&format!("{name}.weight"))?,
            bias: if bias {
                Some(self.get(&format!("{name}.bias"))?)
            } else {
                None
            },
            lora: None,
        })
    }

    fn attention(&self, c: &Config, i: i64) -> Result<Attention> {
        let p = attention_module(i);
        let norm = |which: &str| -> Result<Option<Tensor>> {
            match c.arch.qk_norm {
                true => Ok(Some(self.get(&format!("{p}.{which}.weight"))?)),
                false => Ok(None),
            }
        };
        let [q, k, v, o, ..] = projection_modules(i);
        Ok(Attention {
            q: self.linear(&q, c.qkv_bias)?,
            k: self.linear(&k, c.qkv_bias)?,
            v: self.linear(&v, c.qkv_bias)?,
            o: self.linear(&o, c.o_bias)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            eps: c.rms_norm_eps,
        })
    }

    fn layer(&self, c: &Config, i: i64) -> Result<Layer> {
        let p = layer_module(i);
        let [.., gate, up, down] = projection_modules(i);
        Ok(Layer {
            input_norm: self.get(&format!("{p}.input_layernorm.weight"))?,
            attention: self.attention(c, i)?,
            post_norm: self.get(&format!("{p}.post_attention_layernorm.weight"))?,
            mlp: Mlp {
                gate: self.linear(&gate, c.mlp_bias)?,
                up: self.linear(&up, c.mlp_bias)?,
                down: self.linear(&down, c.mlp_bias)?,
            },
        })
    }
}

/// The residual stream as a layer hands it on: `x` after the layer's attention and `delta` its
/// MLP's output, whose add the next RMSNorm makes; and `entered`, the stream where it entered
/// the layer (x + the delta the layer was handed), which activation checkpointing keeps.
struct LayerOut {
    entered: Tensor,
    x: Tensor,
    delta: Tensor,
}

impl Layer {
    /// The layer on the stream x plus `delta`, the previous layer's MLP output (None for the
    /// first layer).
    fn forward(
        &self,
        (x, delta): (&Tensor, Option<&Tensor>),
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<LayerCache>,
        eps: f64,
        (adapters, fused): (bool, bool),
    ) -> Result<LayerOut> {
        let (entered, h) = add_rms_norm(x, delta, &self.input_norm, eps, fused)?;
        let attention = self
            .attention
            .forward(&h, rope, mask, cache, (adapters, fused))?;
        let (x, h) = add_rms_norm(&entered, Some(&attention), &self.post_norm, eps, fused)?;
        let gated = self.mlp.gated(&h, (adapters, fused))?;
        let delta = self.mlp.down.forward(&gated, adapters)?;
        Ok(LayerOut { entered, x, delta })
    }

    /// The seven projections, in the order of `layout::projection_modules`.
    fn linears(&self) -> [&Linear; 7] {
        let (a, m) = (&self.attention, &self.mlp);
        [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down]
    }

    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        let (a, m) = (&mut self.attention, &mut self.mlp);
        [
            &mut a.q,
            &mut a.k,
            &mut a.v,
            &mut a.o,
            &mut m.gate,
            &mut m.up,
            &mut m.down,
        ]
    }
}

impl Decoder {
    /// Builds the decoder from checkpoint tensors (checked against layout.rs by weights.rs);
    /// `fused_ops`: the load option of that name.
    pub fn new(c: &Config, tensors: HashMap<String, Tensor>, fused_ops: bool) -> Result<Decoder> {
        let t = Tensors(tensors);
        let params = layout::parameters(c)
            .into_iter()
            .map(|(name, _)| Ok((name.clone(), t.get(&name)?)))
            .collect::<Result<Vec<_>>>()?;
        let embed = t.get("model.embed_tokens.weight")?;
        let layers = (0..c.num_layers)
            .map(|i| t.layer(c, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            inv_freq: c.rope.inverse_frequencies(c.head_dim, embed.device()),
            lm_head: match c.tie_word_embeddings {
                true => None,
                false => Some(t.get("lm_head.weight")?),
            },
            norm: t.get("model.norm.weight")?,
            embed,
            layers,
            eps: c.rms_norm_eps,
            params,
            fused_ops,
        })
    }

    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    /// Every linear projection under its module name, in module order.
    pub fn projections(&self) -> Vec<(String, &Linear)> {
        let layers = self.layers.iter().enumerate();
        layers
            .flat_map(|(i, l)| projection_modules(i as i64).into_iter().zip(l.linears()))
            .collect()
    }

    pub fn projections_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let layers = self.layers.iter_mut().enumerate();
        layers
            .flat_map(|(i, l)| {
                projection_modules(i as i64)
                    .into_iter()
                    .zip(l.linears_mut())
            })
            .collect()
    }

    /// The adapters' A and B under `MODULE.lora_A.weight`, `MODULE.lora_B.weight`, in module
    /// order (PEFT's, less its `base_model.model.` prefix); shared storage.
    pub fn adapter_params(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (module, linear) in self.projections() {
            if let Some(lora) = &linear.lora {
                out.push((format!("{module}.lora_A.weight"), lora.a.shallow_clone()));
                out.push((format!("{module}.lora_B.weight"), lora.b.shallow_clone()));
            }
        }
        out
    }

    /// The checkpoint parameters with every adapted projection's weight merged (W + s B A).
    pub fn merged_params(&self) -> Result<Vec<(String, Tensor)>> {
        let merged = self
            .projections()
            .into_iter()
            .filter_map(|(module, l)| l.lora.as_ref().map(|a| (module, a, &l.weight)))
            .map(|(module, a, w)| Ok((format!("{module}.weight"), tch::no_grad(|| a.merged(w))?)))
            .collect::<Result<HashMap<String, Tensor>>>()?;
        Ok(self
            .params
            .iter()
            .map(|(n, t)| match merged.get(n) {
                Some(m) => (n.clone(), m.shallow_clone()),
                None => (n.clone(), t.shallow_clone()),
            })
            .collect())
    }

    /// Final hidden states [B, t, hidden] (after the final norm) of ids [B, t], the columns
    /// after the `cache.len` cached ones; `mask` [B, cache.len + t]. Appends to the cache.
    /// `adapters` false runs the base model (LoRA adapters skipped).
    pub fn hidden(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        adapters: bool,
    ) -> Result<Tensor> {
        let mut cache = cache;
        let past = cache.as_ref().map_or(0, |c| c.len);
        let positions = mask::positions(mask, past)?;
        let attention_mask = mask::attention(mask, past)?;
        let rope = rope::cos_sin(&self.inv_freq, &positions, self.embed.kind())?;
        let (mut x, mut delta) = (self.embed_ids(ids)?, None);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| LayerCache {
                keys: &mut c.keys[i],
                values: &mut c.values[i],
                len: past,
            });
            let switches = (adapters, self.fused_ops);
            let stream = (&x, delta.as_ref());
            let out = layer.forward(
                stream,
                &rope,
                &attention_mask,
                layer_cache,
                self.eps,
                switches,
            )?;
            (x, delta) = (out.x, Some(out.delta));
        }
        if let Some(c) = cache {
            c.len += ids.size()[1];
        }
        let (_, normed) = add_rms_norm(&x, delta.as_ref(), &self.norm, self.eps, self.fused_ops)?;
        Ok(normed)
    }

    /// The embeddings [B, t, hidden] of ids [B, t]. Once a float32 or float64 embedding has a
    /// dense gradient (the tied head's, or an earlier step's), its backward is sparse: the
    /// rows of the ids are added into it in place, where a dense backward would first build a
    /// second [V, hidden] tensor. Not in 16 bits: there each row would be rounded into the
    /// gradient one at a time.
    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let sparse = self.embed.requires_grad()
            && matches!(self.embed.kind(), Kind::Float | Kind::Double)
            && self.embed.grad().defined();
        Ok(Tensor::f_embedding(&self.embed, ids, -1, false, sparse)?)
    }

    /// The output head [V, hidden] (`lm_head.weight`, or the embedding when tied), sharing
    /// storage.
    pub fn head_weight(&self) -> Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed).shallow_clone()
    }
}

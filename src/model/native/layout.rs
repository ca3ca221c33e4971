//! The parameters of a native model, named as in the checkpoint and in transformers'
//! `named_parameters()` order, with their shapes: what the loader expects to find (weights.rs),
//! what the decoder is built from (decoder.rs) and what `named_parameters` lists.

use super::config::Config;
use crate::error::{Error, Result};
use std::path::Path;

/// The projections of one layer, in transformers' module order.
pub const ATTENTION_PROJECTIONS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
pub const MLP_PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Module names of layer `i` (transformers' Llama-family scheme, written only here).
pub fn layer_module(i: i64) -> String {
    format!("model.layers.{i}")
}
pub fn attention_module(i: i64) -> String {
    format!("model.layers.{i}.self_attn")
}
pub fn mlp_module(i: i64) -> String {
    format!("model.layers.{i}.mlp")
}

/// The seven projection modules of layer `i`, attention then MLP, in module order.
pub fn projection_modules(i: i64) -> [String; 7] {
    let (attn, mlp) = (attention_module(i), mlp_module(i));
    let mut names = ATTENTION_PROJECTIONS
        .map(|p| format!("{attn}.{p}"))
        .to_vec();
    names.extend(MLP_PROJECTIONS.map(|p| format!("{mlp}.{p}")));
    names.try_into().expect("4 + 3 projections")
}

fn linear(out: &mut Vec<(String, Vec<i64>)>, name: &str, rows: i64, cols: i64, bias: bool) {
    out.push((format!("{name}.weight"), vec![rows, cols]));
    if bias {
        out.push((format!("{name}.bias"), vec![rows]));
    }
}

/// Every parameter tensor (a tied output head only once, as `model.embed_tokens.weight`).
pub fn parameters(c: &Config) -> Vec<(String, Vec<i64>)> {
    let (h, d, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_heads * d, c.num_kv_heads * d);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for i in 0..c.num_layers {
        let [q_proj, k_proj, v_proj, o_proj, gate, up, down] = projection_modules(i);
        linear(&mut out, &q_proj, q, h, c.qkv_bias);
        linear(&mut out, &k_proj, kv, h, c.qkv_bias);
        linear(&mut out, &v_proj, kv, h, c.qkv_bias);
        linear(&mut out, &o_proj, h, q, c.o_bias);
        if c.arch.qk_norm {
            let attn = attention_module(i);
            out.push((format!("{attn}.q_norm.weight"), vec![d]));
            out.push((format!("{attn}.k_norm.weight"), vec![d]));
        }
        linear(&mut out, &gate, inter, h, c.mlp_bias);
        linear(&mut out, &up, inter, h, c.mlp_bias);
        linear(&mut out, &down, h, inter, c.mlp_bias);
        let layer = layer_module(i);
        out.push((format!("{layer}.input_layernorm.weight"), vec![h]));
        out.push((format!("{layer}.post_attention_layernorm.weight"), vec![h]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}

/// Refuses a config.json with more layers than the checkpoint holds tensors (`held`; each
/// layer has several of its own) before anything proportional to num_hidden_layers is built: a
/// 1 KB config could ask for 10^7 layers. Below that bound, each missing tensor is named when
/// the weights are read.
pub fn check_layers(c: &Config, dir: &Path, held: usize) -> Result<()> {
    if usize::try_from(c.num_layers).is_ok_and(|n| n <= held) {
        return Ok(());
    }
    Err(Error::model(format!(
        "{}: num_hidden_layers = {} is more than the {held} tensors the checkpoint holds",
        dir.join("config.json").display(),
        c.num_layers
    )))
}

/// Names a checkpoint may hold that the model does not use: the output head when it is tied
/// to the embedding (transformers then uses the embedding), and RoPE's inverse-frequency
/// buffers (recomputed from config.json).
pub fn tolerated(c: &Config, name: &str) -> bool {
    (c.tie_word_embeddings && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq")
}

//! The parameters of a native model, named as in the checkpoint and in transformers'
//! `named_parameters()` order, with their shapes: what the loader expects to find (weights.rs),
//! what the decoder is built from (decoder.rs) and what `named_parameters` lists.

use super::config::Config;

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
        let attn = format!("model.layers.{i}.self_attn");
        linear(&mut out, &format!("{attn}.q_proj"), q, h, c.qkv_bias);
        linear(&mut out, &format!("{attn}.k_proj"), kv, h, c.qkv_bias);
        linear(&mut out, &format!("{attn}.v_proj"), kv, h, c.qkv_bias);
        linear(&mut out, &format!("{attn}.o_proj"), h, q, c.o_bias);
        if c.arch.qk_norm {
            out.push((format!("{attn}.q_norm.weight"), vec![d]));
            out.push((format!("{attn}.k_norm.weight"), vec![d]));
        }
        let mlp = format!("model.layers.{i}.mlp");
        linear(&mut out, &format!("{mlp}.gate_proj"), inter, h, c.mlp_bias);
        linear(&mut out, &format!("{mlp}.up_proj"), inter, h, c.mlp_bias);
        linear(&mut out, &format!("{mlp}.down_proj"), h, inter, c.mlp_bias);
        out.push((format!("model.layers.{i}.input_layernorm.weight"), vec![h]));
        out.push((
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            vec![h],
        ));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}

/// Names a checkpoint may hold that the model does not use: the output head when it is tied
/// to the embedding (transformers then uses the embedding), and RoPE's inverse-frequency
/// buffers (recomputed from config.json).
pub fn tolerated(c: &Config, name: &str) -> bool {
    (c.tie_word_embeddings && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq")
}

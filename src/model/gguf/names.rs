//! What llama.cpp's names mean in adpo's native model: the architecture and its config.json
//! keys from `{arch}.*` metadata, and each `blk.N.*` tensor's Hugging Face parameter name (as
//! transformers' GGUF loader maps them). The `llama` architecture also covers Mistral-style
//! models (llama.cpp writes Mistral 7B as `llama`); with no sliding window in GGUF metadata,
//! both compute the same network.

use super::reader::Gguf;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};

/// llama.cpp architecture -> Hugging Face model_type.
const ARCHITECTURES: &[(&str, &str)] =
    &[("llama", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3")];

/// Per-layer tensors: llama.cpp's suffix after `blk.N.` -> transformers' after `model.layers.N.`.
const LAYER_TENSORS: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The model_type for the file's `general.architecture`.
pub fn model_type(g: &Gguf) -> Result<(&str, &'static str)> {
    let arch = g
        .string("general.architecture")?
        .ok_or_else(|| Error::model(format!("{}: no general.architecture", g.path.display())))?;
    match ARCHITECTURES.iter().find(|(a, _)| *a == arch) {
        Some((_, model_type)) => Ok((arch, model_type)),
        None => Err(Error::model(format!(
            "{}: GGUF architecture {arch:?} is not supported; adpo loads {}",
            g.path.display(),
            ARCHITECTURES
                .iter()
                .map(|(a, _)| *a)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The Hugging Face name of GGUF tensor `name`, if it is one of the model's.
pub fn hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok().filter(|_| !layer.starts_with('+'))?;
    let (tensor, param) = rest.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let (_, hf) = LAYER_TENSORS.iter().find(|(g, _)| *g == tensor)?;
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// The GGUF tensor name of Hugging Face parameter `hf` (the inverse of [`hf_name`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let (g, _) = LAYER_TENSORS.iter().find(|(_, h)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{param}"))
}

/// The llama.cpp architecture a native model of `model_type` is written as (Mistral as llama,
/// as llama.cpp's converter writes it).
pub fn gguf_architecture(model_type: &str) -> Option<&'static str> {
    match model_type {
        "llama" | "mistral" => Some("llama"),
        "qwen2" => Some("qwen2"),
        "qwen3" => Some("qwen3"),
        _ => None,
    }
}

/// Whether llama.cpp's converter permuted this tensor's rows (LLaMA-family q and k
/// projections, for its interleaved RoPE); the permutation is undone at load.
pub fn permuted(arch: &str, hf_name: &str) -> Option<&'static str> {
    if arch != "llama" {
        return None;
    }
    if hf_name.contains(".self_attn.q_proj.") {
        Some("q")
    } else if hf_name.contains(".self_attn.k_proj.") {
        Some("k")
    } else {
        None
    }
}

/// A config.json for the native model, from the `{arch}.*` metadata; `vocab` is the
/// embedding's row count, `tied` whether the file has no separate `output.weight`.
pub fn config_json(g: &Gguf, vocab: u64, tied: bool) -> Result<String> {
    let (arch, model_type) = model_type(g)?;
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| -> Result<u64> {
        g.uint(&key(k))?
            .ok_or_else(|| Error::model(format!("{}: no metadata {}", g.path.display(), key(k))))
    };
    let heads = need("attention.head_count")?;
    let mut c = Map::new();
    c.insert("model_type".into(), json!(model_type));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(need("embedding_length")?));
    c.insert(
        "intermediate_size".into(),
        json!(need("feed_forward_length")?),
    );
    c.insert("num_hidden_layers".into(), json!(need("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    let kv = g.uint(&key("attention.head_count_kv"))?.unwrap_or(heads);
    c.insert("num_key_value_heads".into(), json!(kv));
    if let Some(d) = g.uint(&key("attention.key_length"))? {
        c.insert("head_dim".into(), json!(d));
    }
    let eps = g.float(&key("attention.layer_norm_rms_epsilon"))?;
    c.insert("rms_norm_eps".into(), json!(eps.unwrap_or(1e-6)));
    c.insert(
        "rope_theta".into(),
        json!(g.float(&key("rope.freq_base"))?.unwrap_or(10000.0)),
    );
    if let Some(n) = g.uint(&key("context_length"))? {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    c.insert("tie_word_embeddings".into(), json!(tied));
    // llama's optional biases (adpo writes them; llama.cpp loads them when present).
    let has = |name: &str| g.tensors.iter().any(|t| t.name == name);
    if arch == "llama" {
        c.insert("attention_bias".into(), json!(has("blk.0.attn_q.bias")));
        c.insert("mlp_bias".into(), json!(has("blk.0.ffn_up.bias")));
    }
    if let Some(factor) = linear_rope_factor(g, arch)? {
        c.insert(
            "rope_scaling".into(),
            json!({"type": "linear", "factor": factor}),
        );
    }
    if let Some(eos) = g.uint("tokenizer.ggml.eos_token_id")? {
        c.insert("eos_token_id".into(), json!(eos));
    }
    if let Some(bos) = g.uint("tokenizer.ggml.bos_token_id")? {
        c.insert("bos_token_id".into(), json!(bos));
    }
    Ok(Value::Object(c).to_string())
}

/// The factor of linear RoPE scaling (position interpolation, llama.cpp's `linear`: positions
/// divided by `{arch}.rope.scaling.factor`), None for plain RoPE. Other scalings in the metadata
/// (YaRN) are refused, not silently computed as plain RoPE; Llama 3.1's comes as the
/// `rope_freqs` tensor instead.
fn linear_rope_factor(g: &Gguf, arch: &str) -> Result<Option<f64>> {
    let key = format!("{arch}.rope.scaling.type");
    match g.string(&key)? {
        None | Some("none") => Ok(None),
        Some("linear") => {
            let factor_key = format!("{arch}.rope.scaling.factor");
            match g.float(&factor_key)? {
                Some(f) if f.is_finite() && f >= 1.0 => Ok(Some(f)),
                other => Err(Error::model(format!(
                    "{}: {key} = \"linear\" needs {factor_key} >= 1, got {other:?}",
                    g.path.display()
                ))),
            }
        }
        Some(other) => Err(Error::unsupported(format!(
            "{}: {key} = {other:?}; adpo loads GGUF models with plain RoPE, linear scaling \
             or rope_freqs factors only",
            g.path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_transformers() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.+1.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        for name in [
            "blk.3.attn_k.bias",
            "blk.0.ffn_down.weight",
            "output.weight",
        ] {
            assert_eq!(gguf_name(&hf_name(name).unwrap()).as_deref(), Some(name));
        }
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary.weight"), None);
        assert_eq!(
            permuted("llama", "model.layers.0.self_attn.k_proj.weight"),
            Some("k")
        );
        assert_eq!(
            permuted("qwen2", "model.layers.0.self_attn.k_proj.weight"),
            None
        );
    }
}

//! A native model as GGUF (what llama.cpp's `convert_hf_to_gguf.py` writes for llama, qwen2 and
//! qwen3): `general.*` and `{arch}.*` metadata from the config, the tokenizer (vocab.rs), and
//! every parameter under llama.cpp's name (a LoRA model merged, W + (alpha / r) B A, the model
//! itself unchanged). LLaMA-family q/k projections get llama.cpp's row permutation back (the
//! inverse of what the loader undoes). Matrices are stored as the options' dtype; vectors
//! (norms, biases) as f32.

use super::dequant::GgmlType;
use super::names;
use super::save_options::GgufDtype;
use super::vocab;
use super::writer::{GgufOut, Meta, OutTensor};
use crate::error::{Error, Result};
use crate::model::native::{Config, NativeLm, RopeScaling};
use tch::Tensor;

/// The `general.*` and `{arch}.*` metadata of `config`, or an error naming what GGUF cannot say.
pub fn architecture(lm: &NativeLm, arch: &str, out: &mut GgufOut) -> Result<()> {
    let c = lm.config();
    let factors_ok = arch == "llama" && c.rope.gguf_factors(c.head_dim).is_some();
    let linear = match c.rope.scaling {
        RopeScaling::Linear { factor } => Some(factor),
        _ => None,
    };
    if c.rope.scaling != RopeScaling::None && !factors_ok && linear.is_none() {
        return Err(Error::unsupported(format!(
            "{}: RoPE scaling {:?} is not written to GGUF by adpo (plain RoPE, linear scaling, \
             and llama's per-frequency factors for llama3 scaling, only)",
            lm.dir().display(),
            c.rope.scaling
        )));
    }
    let u32_of = |v: i64| Meta::U32(v.clamp(0, u32::MAX as i64) as u32);
    let name = lm
        .dir()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned());
    out.put("general.architecture", Meta::Str(arch.into()));
    out.put("general.type", Meta::Str("model".into()));
    out.put("general.name", Meta::Str(name.unwrap_or_default()));
    out.put("general.quantization_version", Meta::U32(2));
    let key = |k: &str| format!("{arch}.{k}");
    out.put(key("vocab_size"), u32_of(c.vocab_size));
    out.put(key("context_length"), u32_of(c.max_position_embeddings));
    out.put(key("embedding_length"), u32_of(c.hidden_size));
    out.put(key("block_count"), u32_of(c.num_layers));
    out.put(key("feed_forward_length"), u32_of(c.intermediate_size));
    out.put(key("attention.head_count"), u32_of(c.num_heads));
    out.put(key("attention.head_count_kv"), u32_of(c.num_kv_heads));
    out.put(key("attention.key_length"), u32_of(c.head_dim));
    out.put(key("attention.value_length"), u32_of(c.head_dim));
    out.put(key("rope.dimension_count"), u32_of(c.head_dim));
    out.put(key("rope.freq_base"), Meta::F32(c.rope.theta as f32));
    if let Some(factor) = linear {
        // llama.cpp's names for position interpolation (its freq_scale is 1 / factor).
        out.put(key("rope.scaling.type"), Meta::Str("linear".into()));
        out.put(key("rope.scaling.factor"), Meta::F32(factor as f32));
    }
    out.put(
        key("attention.layer_norm_rms_epsilon"),
        Meta::F32(c.rms_norm_eps as f32),
    );
    Ok(())
}

/// The llama.cpp architecture of the model, or an UNSUPPORTED error. llama.cpp's qwen3 has no
/// attention biases: a qwen3 model with `attention_bias` has no GGUF form.
pub fn arch_of(lm: &NativeLm) -> Result<&'static str> {
    let c = lm.config();
    let model_type = c.arch.model_type;
    let arch = names::gguf_architecture(model_type).ok_or_else(|| {
        Error::unsupported(format!(
            "{}: model_type {model_type} has no GGUF architecture adpo writes",
            lm.dir().display()
        ))
    })?;
    if arch == "qwen3" && (c.qkv_bias || c.o_bias || c.mlp_bias) {
        return Err(Error::unsupported(format!(
            "{}: a qwen3 model with attention biases has no GGUF form (llama.cpp's qwen3 has \
             none)",
            lm.dir().display()
        )));
    }
    Ok(arch)
}

/// llama.cpp's `permute(w, n_head)` of q (`which` = "q") or k rows: [heads, 2, head_dim / 2]
/// to [heads, head_dim / 2, 2] (the inverse of the loader's `unpermute`).
pub fn permute(t: &Tensor, c: &Config, which: &str) -> Result<Tensor> {
    let heads = if which == "q" {
        c.num_heads
    } else {
        c.num_kv_heads
    };
    let size = t.size();
    let mut view = vec![heads, 2, c.head_dim / 2];
    view.extend_from_slice(&size[1..]);
    Ok(t.f_reshape(&view)?
        .f_transpose(1, 2)?
        .f_contiguous()?
        .f_reshape(&size)?)
}

/// The type a tensor of `shape` is stored as: vectors f32, q8_0 only for rows of whole blocks.
pub fn storage_type(shape: &[i64], dtype: GgufDtype) -> GgmlType {
    let row = *shape.last().unwrap_or(&0);
    match dtype.ggml_type() {
        _ if shape.len() < 2 => GgmlType::F32,
        GgmlType::Q8_0 if row % 32 != 0 => GgmlType::F16,
        t => t,
    }
}

/// The whole file for `lm` (merged when it has adapters).
pub fn model(lm: &NativeLm, dtype: GgufDtype) -> Result<GgufOut> {
    let arch = arch_of(lm)?;
    let mut out = GgufOut::default();
    architecture(lm, arch, &mut out)?;
    out.put("general.file_type", Meta::U32(dtype.file_type()));
    for (key, v) in vocab::metadata(lm.dir(), lm.config().vocab_size)? {
        out.put(key, v);
    }
    // Llama 3.1 scaling: llama.cpp's converter writes the per-frequency factors as a tensor.
    if let Some(f) = lm.config().rope.gguf_factors(lm.config().head_dim) {
        out.tensors.push(OutTensor {
            name: "rope_freqs.weight".into(),
            values: Tensor::from_slice(&f).to_kind(tch::Kind::Float),
            ggml_type: GgmlType::F32,
        });
    }
    for (hf, t) in lm.merged_params()? {
        let name = names::gguf_name(&hf)
            .ok_or_else(|| Error::unsupported(format!("parameter {hf} has no GGUF tensor name")))?;
        let values = match names::permuted(arch, &hf) {
            Some(which) => tch::no_grad(|| permute(&t, lm.config(), which))?,
            None => t.detach(),
        };
        let ggml_type = storage_type(&values.size(), dtype);
        out.tensors.push(OutTensor {
            name,
            values,
            ggml_type,
        });
    }
    Ok(out)
}

//! GGUF files (what llama.cpp and Ollama run) loaded as native models: reader.rs (the
//! container, every count and offset bounded), dequant.rs (ggml tensor types to float32),
//! names.rs (llama.cpp's architecture, metadata keys and tensor names to the native model's).
//! The result is a [`NativeLm`] like a checkpoint directory's: same network, LoRA, saving.
//!
//! Weights are dequantized to float32 exactly as ggml does, then converted to the load
//! option's dtype (`auto`: float32, which is what transformers' GGUF loader gives too). The
//! row permutation llama.cpp's converter applies to LLaMA q/k projections is undone.

mod adapter;
mod dequant;
mod export;
mod names;
mod quant;
pub(crate) mod reader;
mod save_options;
mod vocab;
mod vocab_sentencepiece;
mod writer;

pub use save_options::{GgufDtype, GgufSaveOptions};

use super::native::{self, Config, NativeLm, RopeScaling};
use super::options::LoadOptions;
use crate::error::{torch_message, Error, Result};
use dequant::GgmlType;
pub use reader::is_gguf;
use reader::{Gguf, TensorInfo};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Loads the GGUF file at `path` as a native model with the options' dtype, device and LoRA.
pub fn open(path: &Path, options: &LoadOptions) -> Result<NativeLm> {
    let g = Gguf::open(path)?;
    let (arch, _) = names::model_type(&g)?;
    let embedding = find(&g, "token_embd.weight")?;
    let vocab = *embedding.dims.get(1).unwrap_or(&0);
    let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
    let config_json = names::config_json(&g, vocab, tied)?;
    let mut config = Config::parse(&config_json).map_err(|e| {
        Error::new(
            e.status,
            format!("{} (metadata): {}", path.display(), e.message),
        )
    })?;
    if let Some(factors) = rope_factors(&g, &config)? {
        config.rope.scaling = RopeScaling::Factors(factors);
    }
    if config.num_layers as u64 > g.tensors.len() as u64 {
        return Err(Error::model(format!(
            "{}: {arch}.block_count = {} is more than the {} tensors the file holds",
            path.display(),
            config.num_layers,
            g.tensors.len()
        )));
    }
    let kind = options.dtype.kind().unwrap_or(Kind::Float);
    let tensors = tch::no_grad(|| read_tensors(&g, arch, &config, kind, options.device))?;
    let eos = g.uint("tokenizer.ggml.eos_token_id")?.map(|id| id as i64);
    NativeLm::from_tensors(
        path,
        config,
        config_json,
        tensors,
        eos.into_iter().collect(),
        options,
    )
}

/// Writes `lm` (merged when it has adapters) as a GGUF file at `path`, atomically.
pub fn save(lm: &NativeLm, path: &Path, options: &GgufSaveOptions) -> Result<()> {
    let out = tch::no_grad(|| export::model(lm, options.dtype))?;
    writer::save(path, &out)
}

/// Writes the LoRA adapters of `lm` as a llama.cpp LoRA adapter GGUF at `path`, atomically.
pub fn save_adapter(lm: &NativeLm, path: &Path, options: &GgufSaveOptions) -> Result<()> {
    let out = tch::no_grad(|| adapter::adapter(lm, options.dtype))?;
    writer::save(path, &out)
}

/// llama.cpp's tensor of per-frequency RoPE factors (Llama 3.1 scaling, as its converter writes
/// it).
const ROPE_FREQS: &str = "rope_freqs.weight";

/// The file's RoPE frequency factors, [head_dim / 2] finite positive values, when it has them.
fn rope_factors(g: &Gguf, config: &Config) -> Result<Option<Vec<f64>>> {
    let Some(info) = g.tensors.iter().find(|t| t.name == ROPE_FREQS) else {
        return Ok(None);
    };
    let t = tch::no_grad(|| tensor(g, info, &[config.head_dim / 2]))?;
    let v = Vec::<f64>::try_from(t.to_kind(Kind::Double)).map_err(|e| torch(g, info, e))?;
    if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(Error::checkpoint(format!(
            "{}: {ROPE_FREQS} holds {bad}: RoPE factors are finite and positive",
            g.path.display()
        )));
    }
    Ok(Some(v))
}

fn find<'a>(g: &'a Gguf, name: &str) -> Result<&'a TensorInfo> {
    g.tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::checkpoint(format!("{}: no tensor {name}", g.path.display())))
}

/// Every tensor of the file, under its Hugging Face name, checked against the layout the
/// config implies, dequantized and converted.
fn read_tensors(
    g: &Gguf,
    arch: &str,
    config: &Config,
    kind: Kind,
    device: Device,
) -> Result<HashMap<String, Tensor>> {
    let shapes: HashMap<String, Vec<i64>> = native::parameter_shapes(config).into_iter().collect();
    let mut out = HashMap::new();
    for info in &g.tensors {
        let hf = names::hf_name(&info.name).filter(|n| shapes.contains_key(n));
        if info.name == ROPE_FREQS {
            continue; // read into the config by rope_factors
        }
        let Some(hf) = hf else {
            return Err(Error::checkpoint(format!(
                "{}: unexpected tensor {} (not a parameter of this {arch} model)",
                g.path.display(),
                info.name
            )));
        };
        let t = tensor(g, info, &shapes[&hf])?;
        let t = match names::permuted(arch, &hf) {
            Some(which) => unpermute(g, info, &t, config, which)?,
            None => t,
        };
        let t = t
            .f_to_device_(device, kind, false, false)
            .map_err(|e| torch(g, info, e))?;
        out.insert(hf, t);
    }
    if let Some((name, _)) = shapes.iter().find(|(n, _)| !out.contains_key(*n)) {
        return Err(Error::checkpoint(format!(
            "{}: tensor {name} is missing ({} of {} expected tensors missing)",
            g.path.display(),
            shapes.len() - out.len(),
            shapes.len()
        )));
    }
    Ok(out)
}

fn torch(g: &Gguf, info: &TensorInfo, e: tch::TchError) -> Error {
    Error::checkpoint(format!(
        "{}: tensor {}: {}",
        g.path.display(),
        info.name,
        torch_message(&e)
    ))
}

/// One tensor's values on the CPU (float32, or its stored float type), shape-checked.
fn tensor(g: &Gguf, info: &TensorInfo, shape: &[i64]) -> Result<Tensor> {
    // ggml lists dimensions innermost first; torch outermost first.
    let stored: Vec<i64> = info
        .dims
        .iter()
        .rev()
        .map(|&d| d.min(i64::MAX as u64) as i64)
        .collect();
    if stored != shape {
        return Err(Error::checkpoint(format!(
            "{}: tensor {} has shape {stored:?}; its metadata needs {shape:?}",
            g.path.display(),
            info.name
        )));
    }
    let t = reader::tensor_type(g, info)?;
    let (block, size) = t.block();
    let count = shape
        .iter()
        .try_fold(1i64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            Error::checkpoint(format!(
                "{}: tensor {} is too large",
                g.path.display(),
                info.name
            ))
        })?;
    if shape[shape.len() - 1] % block as i64 != 0 {
        return Err(Error::checkpoint(format!(
            "{}: tensor {} ({}) has rows of {} values, not a whole number of {block}-value blocks",
            g.path.display(),
            info.name,
            t.name(),
            shape[shape.len() - 1]
        )));
    }
    let nbytes = count as u64 / block as u64 * size as u64;
    let data = g.tensor_data(info, nbytes)?;
    let values = match plain_kind(t) {
        Some(k) => Tensor::f_from_data_size(data, shape, k).map_err(|e| torch(g, info, e))?,
        None => {
            let mut out = vec![0f32; count as usize];
            dequant::dequantize(t, data, &mut out);
            Tensor::f_from_slice(&out)
                .and_then(|x| x.f_reshape(shape))
                .map_err(|e| torch(g, info, e))?
        }
    };
    g.release(data);
    check_finite(g, info, &values)?;
    Ok(values)
}

fn plain_kind(t: GgmlType) -> Option<Kind> {
    match t {
        GgmlType::F32 => Some(Kind::Float),
        GgmlType::F16 => Some(Kind::Half),
        GgmlType::BF16 => Some(Kind::BFloat16),
        GgmlType::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// A NaN or Inf weight (or block scale) would make every log-prob NaN: refused by name.
fn check_finite(g: &Gguf, info: &TensorInfo, t: &Tensor) -> Result<()> {
    let bad = t
        .f_isfinite()
        .and_then(|f| f.f_logical_not())
        .and_then(|b| b.f_any())
        .map_err(|e| torch(g, info, e))?;
    if bool::try_from(bad).unwrap_or(true) {
        return Err(Error::checkpoint(format!(
            "{}: tensor {} holds NaN or Inf",
            g.path.display(),
            info.name
        )));
    }
    Ok(())
}

/// Undoes llama.cpp's `permute(w, n_head)` of q (`which` = "q": the query heads) or k (the
/// key/value heads): rows [heads, head_dim / 2, 2] back to [heads, 2, head_dim / 2].
fn unpermute(g: &Gguf, info: &TensorInfo, t: &Tensor, c: &Config, which: &str) -> Result<Tensor> {
    let heads = if which == "q" {
        c.num_heads
    } else {
        c.num_kv_heads
    };
    let size = t.size();
    if c.head_dim % 2 != 0 {
        return Err(Error::model(format!(
            "{}: head_dim {} is odd; RoPE needs it even",
            g.path.display(),
            c.head_dim
        )));
    }
    let mut view = vec![heads, c.head_dim / 2, 2];
    view.extend_from_slice(&size[1..]);
    t.f_reshape(&view)
        .and_then(|v| v.f_transpose(1, 2))
        .and_then(|v| v.f_reshape(&size))
        .map_err(|e| torch(g, info, e))
}

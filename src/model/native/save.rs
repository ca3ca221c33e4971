//! Writes a native model back as a Hugging Face checkpoint directory that transformers'
//! `from_pretrained` (and adpo) loads: config.json (the one loaded, with its dtype set to the
//! weights' dtype), model.safetensors (every parameter under its checkpoint name, a tied head
//! once, metadata {"format": "pt"}), and the tokenizer and generation files of the source
//! directory. `checkpoint::publish_dir` puts the directory in place atomically: `dir` is the
//! old checkpoint or the new one, never a partial one; an existing directory is replaced only
//! when it is a checkpoint (it holds config.json) or empty.

use super::weights::SINGLE;
use crate::checkpoint::publish_dir;
use crate::error::{torch_message, Error, Result, Status};
use safetensors::tensor::{Dtype, View};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Files of a checkpoint directory that are not weights or config and travel with it.
fn travels(file: &str) -> bool {
    file.starts_with("tokenizer")
        || [
            "generation_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "vocab.json",
            "merges.txt",
            "chat_template.jinja",
            "chat_template.json",
        ]
        .contains(&file)
}

pub(super) fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(format!("cannot {what} {}: {e}", path.display()))
}

/// A tensor's bytes on the host, as safetensors serialises them.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn host_tensor(name: &str, t: &Tensor) -> Result<HostTensor> {
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        other => return Err(Error::unsupported(format!("{name}: cannot save {other:?}"))),
    };
    let cpu = tch::no_grad(|| t.detach().to_device(Device::Cpu).contiguous());
    let mut data = vec![0u8; cpu.numel() * cpu.kind().elt_size_in_bytes()];
    cpu.f_copy_data_u8(&mut data, cpu.numel())
        .map_err(|e| Error::new(Status::Torch, format!("{name}: {}", torch_message(&e))))?;
    let shape = cpu.size().iter().map(|&d| d as usize).collect();
    Ok(HostTensor { dtype, shape, data })
}

/// The config.json text that was loaded, with `dtype` (and `torch_dtype` where present)
/// naming the weights' dtype now.
pub fn config_json(loaded: &str, kind: Kind) -> Result<String> {
    let mut json: Map<String, Value> =
        serde_json::from_str(loaded).map_err(|e| Error::model(format!("config.json: {e}")))?;
    let name = match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    };
    if json.contains_key("torch_dtype") {
        json.insert("torch_dtype".into(), name.into());
    }
    if json.contains_key("dtype") || !json.contains_key("torch_dtype") {
        json.insert("dtype".into(), name.into());
    }
    serde_json::to_string_pretty(&Value::Object(json))
        .map_err(|e| Error::model(format!("config.json: {e}")))
}

/// A safetensors file of `params` under their names, metadata {"format": "pt"} (what
/// transformers and PEFT write).
pub fn write_safetensors(file: &Path, params: &[(String, Tensor)]) -> Result<()> {
    let host = params
        .iter()
        .map(|(n, t)| Ok((n.clone(), host_tensor(n, t)?)))
        .collect::<Result<Vec<_>>>()?;
    let views = host.iter().map(|(n, t)| (n.as_str(), t));
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize_to_file(views, &metadata, file)
        .map_err(|e| io_error("write", file, e))
}

fn write_contents(
    tmp: &Path,
    config: &str,
    params: &[(String, Tensor)],
    source: &Path,
) -> Result<()> {
    let config_path = tmp.join("config.json");
    std::fs::write(&config_path, config).map_err(|e| io_error("write", &config_path, e))?;
    write_safetensors(&tmp.join(SINGLE), params)?;
    if let Ok(entries) = std::fs::read_dir(source) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if travels(&file) && entry.path().is_file() {
                std::fs::copy(entry.path(), tmp.join(&file))
                    .map_err(|e| io_error("copy", &entry.path(), e))?;
            }
        }
    }
    Ok(())
}

/// Writes the checkpoint into `dir` (see the module doc).
pub fn save(dir: &Path, config: &str, params: &[(String, Tensor)], source: &Path) -> Result<()> {
    publish_dir(dir, &["config.json"], |tmp| {
        write_contents(tmp, config, params, source)
    })
}

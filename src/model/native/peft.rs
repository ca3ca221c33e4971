//! PEFT adapter directories, as `PeftModel.save_pretrained` writes and
//! `PeftModel.from_pretrained(base, dir)` reads them: adapter_config.json (peft_type LORA, r,
//! lora_alpha, target_modules, ...) and adapter_model.safetensors with the tensors
//! `base_model.model.MODULE.lora_A.weight` [r, in] and `...lora_B.weight` [out, r]. A config
//! asking for something adpo's adapters do not compute (DoRA, rsLoRA, biases, per-module
//! ranks, modules_to_save, a regular expression of targets, ...) is refused by name.

use super::save::{self, io_error};
use super::weights::{self, Expected};
use crate::checkpoint::publish_dir;
use crate::error::{Error, Result};
use crate::model::options::{LoraInit, LoraOptions};
use crate::regular_file;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter_model.safetensors";
/// What PeftModel puts before the base model's parameter names.
const PREFIX: &str = "base_model.model.";

/// Writes `adapters` (under adpo's names, `MODULE.lora_A.weight`) as a PEFT adapter directory
/// for the base at `base`, through a temporary directory renamed into place.
pub fn write(
    dir: &Path,
    lora: &LoraOptions,
    base: &Path,
    adapters: &[(String, Tensor)],
) -> Result<()> {
    let named: Vec<(String, Tensor)> = adapters
        .iter()
        .map(|(n, t)| (format!("{PREFIX}{n}"), t.shallow_clone()))
        .collect();
    let config = serde_json::to_string_pretty(&config_json(lora, base))
        .map_err(|e| Error::invalid(format!("{CONFIG}: {e}")))?;
    publish_dir(dir, &[CONFIG], |tmp| {
        let path = tmp.join(CONFIG);
        std::fs::write(&path, config).map_err(|e| io_error("write", &path, e))?;
        save::write_safetensors(&tmp.join(WEIGHTS), &named)
    })
}

fn config_json(lora: &LoraOptions, base: &Path) -> Value {
    // PEFT types lora_alpha as an int; keep integral values integral.
    let alpha = if lora.alpha.fract() == 0.0 && lora.alpha.abs() < 1e15 {
        json!(lora.alpha as i64)
    } else {
        json!(lora.alpha)
    };
    let init = match lora.init {
        LoraInit::Default => json!(true),
        LoraInit::Gaussian => json!("gaussian"),
    };
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.display().to_string(),
        "r": lora.r,
        "lora_alpha": alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": init,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}

/// The adapter_config.json keys that may be "on": what adpo reads (r, lora_alpha, lora_dropout,
/// target_modules, bias "none", init_lora_weights of a plain init) and what changes nothing it
/// computes (descriptions, versions, and settings that only matter with a feature that must be
/// off). Every other key must be off (null, false, {}, []): an allow-list, so a PEFT feature
/// adpo does not implement (DoRA, rsLoRA, PiSSA's residual base, LoftQ, patterns, ...) is
/// refused by name, also one added in a later PEFT release.
const UNDERSTOOD: [&str; 18] = [
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "auto_mapping",
    "peft_version",
    "megatron_config",
    "megatron_core",
    "layers_pattern",
    "qalora_group_size",
    "runtime_config",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "bias",
    "init_lora_weights",
];

/// init_lora_weights values that only chose how A and B started: a loaded adapter computes
/// W x + s B A x whatever they were. PiSSA, OLoRA, CorDA and LoftQ also rewrite the base at
/// save time, so PEFT reloads them onto a residual base that adpo does not build.
fn plain_init(v: &Value) -> bool {
    matches!(v, Value::Bool(_)) || v.as_str() == Some("gaussian")
}

/// The first key of `json` whose meaning adpo does not implement, with its value.
fn unimplemented(json: &Map<String, Value>) -> Option<(&String, &Value)> {
    let mut keys: Vec<_> = json.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    keys.into_iter().find(|(key, v)| match key.as_str() {
        "bias" => !is_off(v) && v.as_str() != Some("none"),
        "init_lora_weights" => !plain_init(v),
        k => !UNDERSTOOD.contains(&k) && !is_off(v),
    })
}

/// null, false, {} and [] are "off".
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The LoRA options of the adapter directory `dir` (its adapter_config.json), validated.
pub fn read_config(dir: &Path) -> Result<LoraOptions> {
    let path = dir.join(CONFIG);
    let text = regular_file::read_text(&path, regular_file::JSON_LIMIT).map_err(|e| {
        Error::checkpoint(format!(
            "cannot read {} ({e}): a PEFT adapter directory holds {CONFIG} and {WEIGHTS}",
            path.display()
        ))
    })?;
    let json: Map<String, Value> = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(format!("{} is not a JSON object: {e}", path.display())))?;
    let what = path.display().to_string();
    let refuse = |key: &str, v: &Value| {
        Err(Error::unsupported(format!(
            "{what}: {key} = {v} is not supported (adpo's LoRA: y = W x + (lora_alpha / r) B A x \
             on whole projections)"
        )))
    };
    match json.get("peft_type") {
        None => {}
        Some(Value::String(t)) if t == "LORA" => {}
        Some(v) => return refuse("peft_type", v),
    }
    if let Some((key, v)) = unimplemented(&json) {
        return refuse(key, v);
    }
    let targets = match json.get("target_modules") {
        Some(Value::Array(entries)) => entries
            .iter()
            .map(|e| e.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>(),
        Some(Value::String(_)) => {
            return refuse(
                "target_modules (a regular expression)",
                &json["target_modules"],
            )
        }
        _ => None,
    };
    let number = |key: &str, default: Option<f64>| -> Result<f64> {
        match json.get(key) {
            Some(v) => v.as_f64(),
            None => default,
        }
        .ok_or_else(|| Error::checkpoint(format!("{what}: {key} is missing or not a number")))
    };
    let r = number("r", None)?;
    if r.fract() != 0.0 {
        return Err(Error::checkpoint(format!(
            "{what}: r = {r} is not an integer"
        )));
    }
    let lora = LoraOptions {
        r: r as i64,
        alpha: number("lora_alpha", Some(8.0))?,
        dropout: number("lora_dropout", Some(0.0))?,
        target_modules: targets.ok_or_else(|| {
            Error::checkpoint(format!(
                "{what}: target_modules is missing or not a list of names"
            ))
        })?,
        init: LoraInit::Default,
        seed: 0,
    };
    lora.validate(&what)?;
    Ok(lora)
}

/// The adapter tensors of `dir`, shape-checked against `shapes` (by adpo's names), as `kind` on
/// `device`, by adpo's names. A tensor for a module the base lacks, or of another shape, is an
/// ADPO_STATUS_CHECKPOINT error naming it.
pub fn read_tensors(
    dir: &Path,
    shapes: &[(String, Vec<i64>)],
    kind: Kind,
    device: Device,
) -> Result<HashMap<String, Tensor>> {
    let file = dir.join(WEIGHTS);
    if !file.is_file() {
        let hint = match dir.join("adapter_model.bin").is_file() {
            true => " (adapter_model.bin is a pickle; save with safe_serialization=True)",
            false => "",
        };
        return Err(Error::checkpoint(format!(
            "{} is missing{hint}",
            file.display()
        )));
    }
    let in_file: Vec<(String, Vec<i64>)> = shapes
        .iter()
        .map(|(n, s)| (format!("{PREFIX}{n}"), s.clone()))
        .collect();
    let expected = Expected {
        shapes: &in_file,
        tolerated: &|_| false,
        source: "the adapters adapter_config.json puts on this base model",
    };
    let (tensors, _) = tch::no_grad(|| weights::read_file(&file, &expected, Some(kind), device))?;
    Ok(tensors
        .into_iter()
        .map(|(n, t)| (n.strip_prefix(PREFIX).unwrap_or(&n).to_string(), t))
        .collect())
}

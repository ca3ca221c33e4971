//! How a model is loaded: its load options (device, dtype, LoRA adapters: new ones or a PEFT
//! adapter directory), declared once, and the LoRA adapters' own options.

use super::device::parse_device;
use crate::config::{options, parse_json, Shape};
use crate::error::{Error, Result, Status};
use serde::Deserialize;
use std::path::PathBuf;
use tch::{Device, Kind};

/// The dtype to load the weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    Auto,
    Float32,
    Bfloat16,
    Float16,
    Float64,
}

impl Dtype {
    /// The libtorch kind; None for "auto".
    pub fn kind(self) -> Option<Kind> {
        match self {
            Dtype::Auto => None,
            Dtype::Float32 => Some(Kind::Float),
            Dtype::Bfloat16 => Some(Kind::BFloat16),
            Dtype::Float16 => Some(Kind::Half),
            Dtype::Float64 => Some(Kind::Double),
        }
    }
}

/// How LoRA's A matrices start (B starts at zero), as PEFT's `init_lora_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// `true`: kaiming_uniform(a = sqrt(5)), i.e. uniform(-1/sqrt(in), 1/sqrt(in)).
    #[default]
    Default,
    /// `"gaussian"`: normal(0, (1/r)^2).
    Gaussian,
}

/// LoRA adapters with PEFT's semantics: y = W x + (alpha / r) B A x on every linear projection
/// whose module name equals an entry of `target_modules` or ends with "." + entry; the base
/// weights frozen, A and B trained. A is drawn from adpo's own generator, seeded by `seed` and
/// the module's name (the same adapters on every rank and every run).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraOptions {
    #[serde(default = "default_r")]
    pub r: i64,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub init: LoraInit,
    #[serde(default)]
    pub seed: u64,
}

/// PEFT's defaults (r = lora_alpha = 8; q_proj and v_proj for llama, mistral, qwen2, qwen3).
fn default_r() -> i64 {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

impl Default for LoraOptions {
    fn default() -> Self {
        LoraOptions {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_targets(),
            init: LoraInit::Default,
            seed: 0,
        }
    }
}

impl LoraOptions {
    /// Its keys whose values are arrays (the strict reader refuses arrays elsewhere).
    pub const LISTS: &'static [&'static str] = &["target_modules"];

    /// alpha / r, the factor of B A.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Values PEFT would accept but adpo cannot honour are refused here, before any weight is
    /// read; `what` names the source ("lora" options or an adapter_config.json).
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.r < 1 {
            return Err(Error::config(format!(
                "{what}: r must be >= 1, got {}",
                self.r
            )));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::config(format!(
                "{what}: alpha must be a finite number > 0, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(format!(
                "{what}: dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.dropout > 0.0 {
            return Err(Error::unsupported(format!(
                "{what}: dropout {} is not implemented (adpo's LoRA adapters have no dropout; \
                 use 0.0)",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() || self.target_modules.iter().any(|t| t.is_empty()) {
            return Err(Error::config(format!(
                "{what}: target_modules must be a non-empty list of module names, got {:?}",
                self.target_modules
            )));
        }
        Ok(())
    }
}

options! {
    /// The load options as given (README "Loading options"), before the device is parsed.
    pub(crate) struct LoadConfig {
        /// `"cpu"`, `"cuda"` or `"cuda:N"`; null = cpu
        device: Option<String> = "null";
        /// `auto` (a checkpoint directory's config.json `dtype`/`torch_dtype`, else the stored
        /// weights'; a GGUF file's: float32, its weights dequantized; a TorchScript file's own),
        /// `float32`, `bfloat16`, `float16` or `float64`
        dtype: Dtype = r#""auto""#;
        /// checkpoint directories and GGUF files: new LoRA adapters with PEFT's semantics and defaults,
        /// `{"r": 8, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "init": "default",
        /// "seed": 0}` (`init`: `default` or `gaussian`, as PEFT's `init_lora_weights`; `dropout`
        /// only 0); the frozen base is then the fixed anchor
        lora: Option<LoraOptions> = "null", shape Shape::Object(LoraOptions::LISTS);
        /// checkpoint directories and GGUF files: a PEFT adapter directory to continue (its
        /// adapter_config.json says r, alpha and the targets); not with `lora`
        adapter: Option<PathBuf> = "null";
        /// checkpoint directories and GGUF files on the CPU: RMSNorm, the SwiGLU gate, RoPE,
        /// attention and the output head's log-softmax as fused ops, q/k/v and gate/up as
        /// joint products (README "Threads"); false composes them from libtorch's ops, as adpo
        /// did before (the same values to rounding; slower, and more memory:
        /// docs/BENCHMARKS.md)
        fused_ops: bool = "true";
    }
}

/// Where and in which dtype to load a model, and the LoRA adapters to put on it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: Dtype,
    /// New adapters (A drawn, B zero).
    pub lora: Option<LoraOptions>,
    /// A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to continue.
    pub adapter: Option<PathBuf>,
    /// RMSNorm, the SwiGLU gate and the head's log-softmax as fused CPU ops
    /// (model/native/fused.rs).
    pub fused_ops: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: Dtype::Auto,
            lora: None,
            adapter: None,
            fused_ops: true,
        }
    }
}

impl LoadOptions {
    pub fn on(device: Device) -> LoadOptions {
        LoadOptions {
            device,
            ..LoadOptions::default()
        }
    }

    /// Parses the JSON options; an empty string means the defaults (cpu, auto).
    pub fn from_json(json: &str) -> Result<LoadOptions> {
        let raw: LoadConfig = parse_json("model load options", json)?;
        let device = match raw.device {
            Some(d) => parse_device(&d)?,
            None => Device::Cpu,
        };
        let options = LoadOptions {
            device,
            dtype: raw.dtype,
            lora: raw.lora,
            adapter: raw.adapter,
            fused_ops: raw.fused_ops,
        };
        options.validate()?;
        Ok(options)
    }

    /// Whether adapters go on the model (new or loaded).
    pub fn has_adapters(&self) -> bool {
        self.lora.is_some() || self.adapter.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        if self.lora.is_some() && self.adapter.is_some() {
            return Err(Error::new(
                Status::InvalidConfig,
                "model load options: give \"lora\" (new adapters) or \"adapter\" (a PEFT \
                 adapter directory, whose adapter_config.json says r, alpha and the targets), \
                 not both",
            ));
        }
        match &self.lora {
            Some(lora) => lora.validate("lora"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Status;

    #[test]
    fn options_parse_with_defaults_and_refuse_unknown_keys() {
        assert_eq!(LoadOptions::from_json("").unwrap(), LoadOptions::default());
        let o = LoadOptions::from_json(r#"{"dtype": "bfloat16", "device": "cpu"}"#).unwrap();
        assert_eq!(o.dtype.kind(), Some(Kind::BFloat16));
        let e = LoadOptions::from_json(r#"{"dtyp": "float32"}"#).unwrap_err();
        assert_eq!(e.status, Status::InvalidConfig);
        assert!(e.message.contains("dtyp"), "{}", e.message);
        let e = LoadOptions::from_json(r#"{"dtype": "int8"}"#).unwrap_err();
        assert!(e.message.contains("int8"), "{}", e.message);
        assert!(LoadOptions::from_json(r#"{"device": "tpu"}"#).is_err());
    }

    #[test]
    fn lora_options_take_peft_defaults_and_refuse_what_adpo_cannot_honour() {
        let o = LoadOptions::from_json(r#"{"lora": {}}"#).unwrap();
        assert_eq!(o.lora, Some(LoraOptions::default()));
        let o = LoadOptions::from_json(
            r#"{"lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj"], "init": "gaussian"}}"#,
        )
        .unwrap();
        let lora = o.lora.unwrap();
        assert_eq!(
            (lora.r, lora.scaling(), lora.init),
            (16, 2.0, LoraInit::Gaussian)
        );
        let refused = |json: &str, status: Status, needle: &str| {
            let e = LoadOptions::from_json(json).unwrap_err();
            assert_eq!(e.status, status, "{json}: {e}");
            assert!(e.message.contains(needle), "{json}: {e}");
        };
        refused(
            r#"{"lora": {"r": 0}}"#,
            Status::InvalidConfig,
            "r must be >= 1",
        );
        refused(r#"{"lora": {"alpha": 0}}"#, Status::InvalidConfig, "alpha");
        refused(
            r#"{"lora": {"dropout": 0.1}}"#,
            Status::Unsupported,
            "dropout",
        );
        refused(
            r#"{"lora": {"dropout": 1.5}}"#,
            Status::InvalidConfig,
            "dropout",
        );
        refused(
            r#"{"lora": {"target_modules": []}}"#,
            Status::InvalidConfig,
            "target_modules",
        );
        refused(r#"{"lora": {"rank": 4}}"#, Status::InvalidConfig, "rank");
        refused(
            r#"{"lora": {"init": "pissa"}}"#,
            Status::InvalidConfig,
            "pissa",
        );
        refused(
            r#"{"lora": {}, "adapter": "/x"}"#,
            Status::InvalidConfig,
            "not both",
        );
    }
}

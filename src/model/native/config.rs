//! config.json of a Hugging Face checkpoint, read by serde and validated once. Unknown keys are
//! fine (HF configs carry many that do not touch the network: token ids, `architectures`,
//! `initializer_range`, ...); every key that changes the mathematics is read, checked, and
//! either honoured or refused with a message naming the key, its value and what is supported.
//! Defaults are transformers' for the architecture (arch.rs).

use super::arch::{self, Architecture, Bias, SlidingWindow};
use super::rope::{Rope, RopeScaling};
use crate::error::{Error, Result};
use crate::regular_file;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;
use tch::Kind;

/// The keys adpo reads (types as transformers writes them; null = absent).
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    intermediate_size: Option<i64>,
    num_hidden_layers: Option<i64>,
    num_attention_heads: Option<i64>,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    partial_rotary_factor: Option<f64>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<i64>,
    sliding_window: Option<i64>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<i64>,
    layer_types: Option<Vec<String>>,
    attention_dropout: Option<f64>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    quantization_config: Option<Value>,
}

/// `rope_scaling` (older configs) or `rope_parameters` (transformers 5). Every key of it
/// changes the mathematics, so an unknown one (another RoPE variant's, or per-layer-type
/// nesting) is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<i64>,
    partial_rotary_factor: Option<f64>,
}

/// A validated configuration: everything the decoder needs, nothing else.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: &'static Architecture,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope: Rope,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: i64,
    /// `dtype` / `torch_dtype` (what dtype "auto" loads).
    pub dtype: Option<Kind>,
}

fn required(value: Option<i64>, key: &str) -> Result<i64> {
    let v = value.ok_or_else(|| Error::model(format!("config.json has no {key}")))?;
    positive(v, key)
}

fn positive(v: i64, key: &str) -> Result<i64> {
    if v > 0 {
        Ok(v)
    } else {
        Err(Error::model(format!(
            "config.json: {key} = {v}; it must be > 0"
        )))
    }
}

fn positive_f64(v: f64, key: &str) -> Result<f64> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(Error::model(format!(
            "config.json: {key} = {v}; it must be a finite number > 0"
        )))
    }
}

/// The attention widths heads x head_dim, which layout.rs computes, must fit in i64: a product
/// that wrapped would be a small, plausible width (2^62 + 4 heads of 12 give 48).
fn check_widths(num_heads: i64, num_kv_heads: i64, head_dim: i64) -> Result<()> {
    for (heads, key) in [
        (num_heads, "num_attention_heads"),
        (num_kv_heads, "num_key_value_heads"),
    ] {
        if heads.checked_mul(head_dim).is_none() {
            return Err(Error::model(format!(
                "config.json: {key} = {heads} times head_dim = {head_dim} overflows a 64-bit size"
            )));
        }
    }
    Ok(())
}

/// A `Bias::Flag` key: a boolean, false when absent or null.
fn flag(json: &Map<String, Value>, key: &str) -> Result<bool> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::model(format!(
            "config.json: {key} = {other}; it must be true or false"
        ))),
    }
}

fn bias(json: &Map<String, Value>, rule: Bias) -> Result<bool> {
    match rule {
        Bias::Never => Ok(false),
        Bias::Always => Ok(true),
        Bias::Flag(key) => flag(json, key),
    }
}

/// The torch dtype a config names ("float32", "bfloat16", ...).
pub fn parse_dtype(text: &str, key: &str) -> Result<Kind> {
    match text {
        "float32" | "float" => Ok(Kind::Float),
        "bfloat16" => Ok(Kind::BFloat16),
        "float16" | "half" => Ok(Kind::Half),
        "float64" | "double" => Ok(Kind::Double),
        _ => Err(Error::model(format!(
            "config.json: {key} = \"{text}\"; supported: float32, bfloat16, float16, float64"
        ))),
    }
}

impl Config {
    /// Reads and validates `dir/config.json`; the config and the file's text.
    pub fn read(dir: &Path) -> Result<(Config, String)> {
        let path = dir.join("config.json");
        let text = regular_file::read_text(&path, regular_file::JSON_LIMIT).map_err(|e| {
            Error::model(format!(
                "{} is not a Hugging Face checkpoint directory: cannot read {}: {e}",
                dir.display(),
                path.display()
            ))
        })?;
        let config = Config::parse(&text)
            .map_err(|e| Error::new(e.status, format!("{}: {}", path.display(), e.message)))?;
        Ok((config, text))
    }

    /// Validates the text of a config.json.
    pub fn parse(text: &str) -> Result<Config> {
        let json: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| Error::model(format!("config.json is not a JSON object: {e}")))?;
        let raw: RawConfig = serde_json::from_value(Value::Object(json.clone()))
            .map_err(|e| Error::model(format!("config.json: {e}")))?;
        let model_type = raw.model_type.as_deref().ok_or_else(|| {
            Error::model(format!(
                "config.json has no model_type; supported: {}",
                arch::supported()
            ))
        })?;
        let arch = arch::lookup(model_type).ok_or_else(|| {
            Error::model(format!(
                "config.json: model_type = \"{model_type}\" is not supported; supported: {}",
                arch::supported()
            ))
        })?;
        raw.refuse_unsupported()?;
        let config = raw.shape(arch, &json)?;
        raw.check_sliding_window(arch, config.num_layers, config.max_position_embeddings)?;
        Ok(config)
    }
}

impl RawConfig {
    /// Keys whose values adpo does not implement.
    fn refuse_unsupported(&self) -> Result<()> {
        if let Some(act) = self.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(Error::model(format!(
                "config.json: hidden_act = \"{act}\" is not supported; supported: silu"
            )));
        }
        if let Some(p) = self.attention_dropout.filter(|p| *p != 0.0) {
            return Err(Error::model(format!(
                "config.json: attention_dropout = {p} is not supported; adpo's native models \
                 have no dropout (supported: 0)"
            )));
        }
        if self.quantization_config.is_some() {
            return Err(Error::model(
                "config.json: quantization_config is set; quantized checkpoints are not \
                 supported (supported: float32, bfloat16, float16, float64 weights)"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// Sizes, norms, RoPE, biases, tying and dtype.
    fn shape(&self, arch: &'static Architecture, json: &Map<String, Value>) -> Result<Config> {
        let hidden_size = required(self.hidden_size, "hidden_size")?;
        let num_heads = required(self.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = match self.num_key_value_heads.or(arch.default_kv_heads) {
            Some(n) => positive(n, "num_key_value_heads")?,
            None => num_heads,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(Error::model(format!(
                "config.json: num_attention_heads = {num_heads} is not a multiple of \
                 num_key_value_heads = {num_kv_heads}"
            )));
        }
        let head_dim = self.head_dim(arch, hidden_size, num_heads)?;
        check_widths(num_heads, num_kv_heads, head_dim)?;
        let max_position_embeddings =
            required(self.max_position_embeddings, "max_position_embeddings")?;
        let dtype = match (&self.dtype, &self.torch_dtype) {
            (Some(d), _) => Some(parse_dtype(d, "dtype")?),
            (None, Some(d)) => Some(parse_dtype(d, "torch_dtype")?),
            (None, None) => None,
        };
        Ok(Config {
            arch,
            vocab_size: required(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(self.intermediate_size, "intermediate_size")?,
            num_layers: required(self.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: positive_f64(self.rms_norm_eps.unwrap_or(1e-6), "rms_norm_eps")?,
            rope: self.rope(max_position_embeddings)?,
            qkv_bias: bias(json, arch.qkv_bias)?,
            o_bias: bias(json, arch.o_bias)?,
            mlp_bias: bias(json, arch.mlp_bias)?,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings,
            dtype,
        })
    }

    fn head_dim(&self, arch: &Architecture, hidden: i64, heads: i64) -> Result<i64> {
        let head_dim = match self.head_dim.or(arch.default_head_dim) {
            Some(d) => positive(d, "head_dim")?,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(Error::model(format!(
                    "config.json: hidden_size = {hidden} is not a multiple of \
                     num_attention_heads = {heads}, and there is no head_dim"
                )))
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::model(format!(
                "config.json: head_dim = {head_dim}; rotary embeddings need an even head_dim"
            )));
        }
        Ok(head_dim)
    }

    /// transformers' rules: `rope_scaling` wins over `rope_parameters`; the type is `rope_type`
    /// or `type` ("default" when absent); theta from the dict, else top-level `rope_theta`,
    /// else 10000.
    fn rope(&self, max_position_embeddings: i64) -> Result<Rope> {
        let params = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref());
        let key = if self.rope_scaling.is_some() {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        let theta = params
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        let theta = positive_f64(theta, "rope_theta")?;
        let partial = params
            .and_then(|p| p.partial_rotary_factor)
            .or(self.partial_rotary_factor);
        if let Some(f) = partial.filter(|f| *f != 1.0) {
            return Err(Error::model(format!(
                "config.json: partial_rotary_factor = {f} is not supported (supported: 1)"
            )));
        }
        let scaling = match params {
            None => RopeScaling::None,
            Some(p) => p.scaling(key, max_position_embeddings)?,
        };
        Ok(Rope { theta, scaling })
    }

    /// Refuses a sliding window that would mask something a full causal mask does not: one
    /// shorter than max_position_embeddings on a layer that uses it.
    fn check_sliding_window(&self, arch: &Architecture, layers: i64, max_pos: i64) -> Result<()> {
        let Some(window) = self.sliding_window else {
            return Ok(());
        };
        let applies = match arch.sliding_window {
            SlidingWindow::Absent => false,
            SlidingWindow::EveryLayer => true,
            SlidingWindow::Gated => {
                self.use_sliding_window.unwrap_or(false) && self.any_sliding_layer(layers)?
            }
        };
        if applies && window < max_pos {
            let (why, or_off) = match arch.sliding_window {
                SlidingWindow::Gated => (
                    " with use_sliding_window = true",
                    ", or use_sliding_window false",
                ),
                _ => ("", ""),
            };
            return Err(Error::model(format!(
                "config.json: sliding_window = {window}{why} is shorter than \
                 max_position_embeddings = {max_pos}; sliding-window attention is not \
                 supported (supported: sliding_window null or >= max_position_embeddings{or_off})"
            )));
        }
        Ok(())
    }

    /// transformers' Qwen layer types: `layer_types` when given, else sliding from
    /// `max_window_layers` (default 28) on.
    fn any_sliding_layer(&self, layers: i64) -> Result<bool> {
        match &self.layer_types {
            Some(types) => {
                for t in types {
                    if t != "full_attention" && t != "sliding_attention" {
                        return Err(Error::model(format!(
                            "config.json: layer_types has \"{t}\"; supported: \
                             full_attention, sliding_attention"
                        )));
                    }
                }
                Ok(types.iter().any(|t| t == "sliding_attention"))
            }
            None => Ok(self.max_window_layers.unwrap_or(28) < layers),
        }
    }
}

impl RawRope {
    fn scaling(&self, key: &str, max_position_embeddings: i64) -> Result<RopeScaling> {
        let kind = self
            .rope_type
            .as_deref()
            .or(self.kind.as_deref())
            .unwrap_or("default");
        let factor = || -> Result<f64> {
            let f = self.factor.ok_or_else(|| {
                Error::model(format!(
                    "config.json: {key} of type \"{kind}\" has no factor"
                ))
            })?;
            positive_f64(f, &format!("{key}.factor"))
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
            "llama3" => {
                let get = |v: Option<f64>, name: &str| -> Result<f64> {
                    let v = v.ok_or_else(|| {
                        Error::model(format!(
                            "config.json: {key} of type \"llama3\" has no {name}"
                        ))
                    })?;
                    positive_f64(v, &format!("{key}.{name}"))
                };
                let low = get(self.low_freq_factor, "low_freq_factor")?;
                let high = get(self.high_freq_factor, "high_freq_factor")?;
                if high <= low {
                    return Err(Error::model(format!(
                        "config.json: {key}.high_freq_factor = {high} must be greater than \
                         low_freq_factor = {low}"
                    )));
                }
                let original = self
                    .original_max_position_embeddings
                    .unwrap_or(max_position_embeddings);
                Ok(RopeScaling::Llama3 {
                    factor: factor()?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: positive(
                        original,
                        &format!("{key}.original_max_position_embeddings"),
                    )?,
                })
            }
            other => Err(Error::model(format!(
                "config.json: {key} has rope_type \"{other}\", which is not supported; \
                 supported: default, linear, llama3"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Status;

    /// Llama-3.2-1B's config.json (hub style: rope_scaling with rope_type, top-level theta).
    const LLAMA_3_2: &str = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256}"#;

    /// Qwen2.5-0.5B's: sliding_window set but use_sliding_window false.
    const QWEN2_5: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
        "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
        "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
        "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
        "vocab_size": 151936}"#;

    /// Qwen3-0.6B's: head_dim 128 with hidden 1024 and 16 heads; integer rope_theta.
    const QWEN3: &str = r#"{"architectures": ["Qwen3ForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
        "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
        "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": null,
        "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16", "use_sliding_window": false, "vocab_size": 151936}"#;

    /// Mistral-7B-v0.1's window (4096 of 32768 positions) binds.
    const MISTRAL_V01: &str = r#"{"model_type": "mistral", "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 32000,
        "torch_dtype": "bfloat16"}"#;

    #[test]
    fn hub_configs_parse_to_what_transformers_builds() {
        let c = Config::parse(LLAMA_3_2).unwrap();
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 64));
        assert!(c.tie_word_embeddings && !c.qkv_bias && !c.mlp_bias);
        assert_eq!(c.dtype, Some(Kind::BFloat16));
        assert_eq!(c.rope.theta, 500000.0);
        assert_eq!(
            c.rope.scaling,
            RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );
        let c = Config::parse(QWEN2_5).unwrap();
        assert_eq!((c.head_dim, c.num_kv_heads), (64, 2));
        assert!(c.qkv_bias && !c.o_bias && !c.arch.qk_norm);
        let c = Config::parse(QWEN3).unwrap();
        assert_eq!((c.head_dim, c.num_heads, c.hidden_size), (128, 16, 1024));
        assert!(c.arch.qk_norm && !c.qkv_bias);
        assert_eq!(
            c.rope,
            Rope {
                theta: 1e6,
                scaling: RopeScaling::None
            }
        );
        let e = Config::parse(MISTRAL_V01).unwrap_err();
        assert_eq!(e.status, Status::Model);
        assert!(e.message.contains("sliding_window = 4096"), "{e}");
        let v03 = MISTRAL_V01.replace("\"sliding_window\": 4096", "\"sliding_window\": null");
        assert_eq!(Config::parse(&v03).unwrap().head_dim, 128);
    }

    #[test]
    fn transformers_defaults_apply_when_keys_are_absent() {
        let base = r#"{"model_type": "MT", "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 64,
            "vocab_size": 100}"#;
        let parse = |mt: &str| Config::parse(&base.replace("MT", mt));
        let llama = parse("llama").unwrap();
        assert_eq!((llama.num_kv_heads, llama.head_dim), (4, 16));
        assert_eq!(
            llama.rope,
            Rope {
                theta: 10000.0,
                scaling: RopeScaling::None
            }
        );
        assert_eq!(
            (llama.rms_norm_eps, llama.tie_word_embeddings),
            (1e-6, false)
        );
        assert_eq!(llama.dtype, None);
        // Qwen3's head_dim defaults to 128 and both Qwens' num_key_value_heads to 32: 4 heads
        // are then not a multiple, as in transformers.
        let e = parse("qwen3").unwrap_err();
        assert!(e.message.contains("num_key_value_heads = 32"), "{e}");
        let e = parse("gpt_neox").unwrap_err();
        assert!(
            e.message.contains("gpt_neox") && e.message.contains("qwen3"),
            "{e}"
        );
        let odd = base
            .replace("MT", "llama")
            .replace("\"hidden_size\": 64", "\"hidden_size\": 60");
        assert!(Config::parse(&odd)
            .unwrap_err()
            .message
            .contains("head_dim"));
    }

    #[test]
    fn rope_variants_and_keys_outside_the_supported_set_are_refused() {
        let with_rope = |rope: &str| {
            format!(
                r#"{{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 64,
                "vocab_size": 100, "rope_scaling": {rope}}}"#
            )
        };
        let linear = Config::parse(&with_rope(r#"{"type": "linear", "factor": 4}"#)).unwrap();
        assert_eq!(linear.rope.scaling, RopeScaling::Linear { factor: 4.0 });
        let default = Config::parse(&with_rope(r#"{"rope_type": "default"}"#)).unwrap();
        assert_eq!(default.rope.scaling, RopeScaling::None);
        for (rope, needle) in [
            (r#"{"rope_type": "dynamic", "factor": 2.0}"#, "\"dynamic\""),
            (r#"{"rope_type": "linear"}"#, "factor"),
            (
                r#"{"rope_type": "linear", "factor": 2.0, "beta_fast": 32}"#,
                "beta_fast",
            ),
            (
                r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}"#,
                "high_freq_factor",
            ),
            (
                r#"{"rope_type": "default", "partial_rotary_factor": 0.5}"#,
                "partial_rotary_factor",
            ),
        ] {
            let e = Config::parse(&with_rope(rope)).unwrap_err();
            assert_eq!(e.status, Status::Model);
            assert!(e.message.contains(needle), "{needle}: {e}");
        }
    }
}

//! How a model is loaded: device and dtype, from a JSON object (unknown keys are an error):
//! `{"device": "cpu" | "cuda" | "cuda:N", "dtype": "auto" | "float32" | "bfloat16" | "float16" |
//! "float64"}`, both optional. "auto" (the default) keeps a checkpoint directory's config.json
//! dtype (`dtype` / `torch_dtype`; if it names none, the stored weights' dtype) and a
//! TorchScript file's own dtype.

use super::device::parse_device;
use crate::config::parse_json;
use crate::error::Result;
use serde::Deserialize;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    dtype: Dtype,
}

/// Where and in which dtype to load a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: Dtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: Dtype::Auto,
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
        let raw: RawOptions = parse_json("model load options", json)?;
        let device = match raw.device {
            Some(d) => parse_device(&d)?,
            None => Device::Cpu,
        };
        Ok(LoadOptions {
            device,
            dtype: raw.dtype,
        })
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
}

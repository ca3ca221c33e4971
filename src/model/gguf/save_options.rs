//! The options of adpo_model_save_gguf / adpo_model_save_adapter_gguf: a JSON object (NULL or
//! "" = defaults; unknown keys refused), `{"dtype": "f32" | "f16" | "bf16" | "q8_0"}`.

use super::dequant::GgmlType;
use crate::config::options;
use crate::error::Result;
use serde::Deserialize;

/// The ggml type of the written matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GgufDtype {
    #[default]
    F32,
    F16,
    Bf16,
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl GgufDtype {
    pub fn ggml_type(self) -> GgmlType {
        match self {
            GgufDtype::F32 => GgmlType::F32,
            GgufDtype::F16 => GgmlType::F16,
            GgufDtype::Bf16 => GgmlType::BF16,
            GgufDtype::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*) for a file of these matrices.
    pub fn file_type(self) -> u32 {
        match self {
            GgufDtype::F32 => 0,
            GgufDtype::F16 => 1,
            GgufDtype::Q8_0 => 7,
            GgufDtype::Bf16 => 32,
        }
    }
}

options! {
    /// GGUF save options (adpo_model_save_gguf, adpo_model_save_adapter_gguf).
    pub struct GgufSaveOptions {
        /// the ggml type of the matrices: `f32` (lossless), `f16`, `bf16` or `q8_0`; vectors
        /// (norms, biases) stay f32, and q8_0 matrices whose rows are not a multiple of 32
        /// values are written f16, as llama.cpp's converter does
        dtype: GgufDtype = r#""f32""#;
    }
}

impl GgufSaveOptions {
    /// The options of `json` (empty: the defaults).
    pub fn from_json(json: &str) -> Result<GgufSaveOptions> {
        crate::config::parse_json("GGUF save options", json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Status;

    #[test]
    fn options_parse_and_refuse_unknown_keys_and_dtypes() {
        assert_eq!(
            GgufSaveOptions::from_json("").unwrap().dtype,
            GgufDtype::F32
        );
        let o = GgufSaveOptions::from_json(r#"{"dtype": "q8_0"}"#).unwrap();
        assert_eq!(o.dtype, GgufDtype::Q8_0);
        let e = GgufSaveOptions::from_json(r#"{"dtype": "q4_0"}"#).unwrap_err();
        assert_eq!(e.status, Status::InvalidConfig, "{}", e.message);
        assert!(e.message.contains("q4_0"), "{}", e.message);
        let e = GgufSaveOptions::from_json(r#"{"dtyp": "f16"}"#).unwrap_err();
        assert!(e.message.contains("dtyp"), "{}", e.message);
        assert!(GgufSaveOptions::from_json("{").is_err());
    }
}

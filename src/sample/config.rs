//! Sampling options (JSON, unknown keys refused), checked once.

use crate::error::{Error, Result};
use serde::Deserialize;

/// The most new tokens one call generates (a model's own limit, its maximum positions, may be
/// lower): a runaway request fails instead of never returning.
pub const MAX_NEW_TOKENS: usize = 1 << 16;

/// One EOS id or several (Hugging Face checkpoints often have several).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum EosIds {
    One(i64),
    Many(Vec<i64>),
}

impl EosIds {
    pub fn ids(&self) -> Vec<i64> {
        match self {
            EosIds::One(id) => vec![*id],
            EosIds::Many(ids) => ids.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches top_p (1 = off).
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// A row ends after one of these tokens (it is kept and scored). None: the model's own
    /// (a checkpoint's generation_config.json), or none.
    pub eos_id: Option<EosIds>,
    /// A row ends when its generated tokens end with one of these sequences (kept and scored).
    pub stop_sequences: Vec<Vec<i64>>,
    /// Written after the end of a row (attention and loss masks 0 there).
    pub pad_id: i64,
    /// None: continue the trainer's generator (seeded from the trainer's seed).
    pub seed: Option<u64>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 16,
            eos_id: None,
            stop_sequences: Vec::new(),
            pad_id: 0,
            seed: None,
        }
    }
}

impl SamplingConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: SamplingConfig = crate::config::parse_json("sampling", json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::config(format!(
                "temperature must be > 0, got {}",
                self.temperature
            )));
        }
        if self.top_k < 0 || !(self.top_p > 0.0 && self.top_p <= 1.0) || self.max_new_tokens == 0 {
            return Err(Error::config(
                "sampling needs top_k >= 0, top_p in (0, 1], max_new_tokens >= 1",
            ));
        }
        if self.max_new_tokens > MAX_NEW_TOKENS {
            return Err(Error::config(format!(
                "max_new_tokens {} is above the limit {MAX_NEW_TOKENS}",
                self.max_new_tokens
            )));
        }
        let eos = self.eos_id.as_ref().map(EosIds::ids).unwrap_or_default();
        if self.pad_id < 0 || eos.iter().any(|&e| e < 0) {
            return Err(Error::config("pad_id and eos_id must be >= 0"));
        }
        if let Some(i) = self.stop_sequences.iter().position(|s| s.is_empty()) {
            return Err(Error::config(format!("stop_sequences[{i}] is empty")));
        }
        if let Some(i) = self
            .stop_sequences
            .iter()
            .position(|s| s.iter().any(|&t| t < 0))
        {
            return Err(Error::config(format!(
                "stop_sequences[{i}] has a negative token id"
            )));
        }
        Ok(())
    }
}

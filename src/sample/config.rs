//! Sampling's options, declared once, checked once.

use crate::config::{options, Bound, Declared, Range, Shape};
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

options! {
    /// Sampling's options (README "Sampling").
    pub struct SamplingConfig {
        /// softmax temperature of the draw
        temperature: f64 = "1", range Range::POSITIVE;
        /// keep the k most likely tokens; 0 = off
        top_k: i64 = "0", range Range::NON_NEGATIVE;
        /// keep the smallest set of tokens whose probability reaches top_p; 1 = off
        top_p: f64 = "1", range Range::new(Bound::Open(0.0), Bound::Closed(1.0));
        /// new tokens per row at most (and prompt + new tokens at most the model's
        /// `max_position_embeddings`)
        max_new_tokens: usize = "16",
            range Range::new(Bound::Closed(1.0), Bound::Closed(MAX_NEW_TOKENS as f64));
        /// a row ends after one of these tokens (kept and scored): one id or a list; null = the
        /// checkpoint's `generation_config.json`/`config.json` `eos_token_id`, none for
        /// TorchScript; `[]` = no EOS
        eos_id: Option<EosIds> = "null", shape Shape::List;
        /// token-id lists: a row ends when its generated tokens end with one (kept and scored)
        stop_sequences: Vec<Vec<i64>> = "[]", shape Shape::Lists;
        /// written after the end of a row (attention and loss masks 0 there)
        pad_id: i64 = "0", range Range::NON_NEGATIVE;
        /// null = continue the trainer's generator (seeded from the trainer's seed)
        seed: Option<u64> = "null";
    }
}

impl SamplingConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: SamplingConfig = crate::config::parse_json("sampling", json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The declared ranges, and those of the token lists.
    pub fn validate(&self) -> Result<()> {
        self.check_ranges()?;
        let eos = self.eos_id.as_ref().map(EosIds::ids).unwrap_or_default();
        if let Some(e) = eos.iter().find(|&&e| e < 0) {
            return Err(Error::config(format!("eos_id must be >= 0, got {e}")));
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

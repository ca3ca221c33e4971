//! How a generation gets next-token logits: the model's key/value cache decodes one token per
//! step.

use crate::error::Result;
use crate::model::{KvCache, Model};
use tch::Tensor;

/// The rows being generated, on the device.
pub trait Stepper {
    /// Logits [B, V] at the last prompt position of every row.
    fn prefill(&mut self) -> Result<Tensor>;
    /// Appends `tokens` [B] to every row; logits [B, V] for the next position.
    fn step(&mut self, tokens: &Tensor) -> Result<Tensor>;
    /// Keeps only `rows` (int64 indices into the current rows), dropping finished ones.
    fn keep(&mut self, rows: &Tensor) -> Result<()>;
}

/// Logits of the last position of a forward's hidden states.
fn last_logits(model: &Model, hidden: Tensor) -> Result<Tensor> {
    model.head().logits(&hidden.select(1, -1))
}

/// Prefill every distinct prompt once (left-padded, positions from the mask), copy its cache to
/// its k rows, then one cached position per step.
pub struct Cached<'a> {
    pub model: &'a Model,
    /// Left-padded prompts [P, L] and their mask, one row per prompt.
    pub prompts: Tensor,
    pub prompt_mask: Tensor,
    /// Row r's prompt: prompt index [B].
    pub prompt_of_row: Tensor,
    /// Made for the prompts (one row each); prefill fills it and copies it to the rows.
    pub cache: Option<KvCache>,
    /// Mask over the cached and new positions [B, len].
    pub mask: Tensor,
}

impl Stepper for Cached<'_> {
    fn prefill(&mut self) -> Result<Tensor> {
        let mut cache = self.cache.take().expect("prefill runs once");
        let out = self
            .model
            .lm()
            .forward_cached(&self.prompts, &self.prompt_mask, &mut cache)?;
        let last = last_logits(self.model, out)?;
        let rows = &self.prompt_of_row;
        select_cache_rows(&mut cache, rows);
        self.cache = Some(cache);
        self.mask = self.prompt_mask.index_select(0, rows);
        Ok(last.index_select(0, rows))
    }

    fn step(&mut self, tokens: &Tensor) -> Result<Tensor> {
        self.mask = Tensor::cat(&[&self.mask, &self.mask.ones_like().narrow(1, 0, 1)], 1);
        let cache = self.cache.as_mut().expect("prefill came first");
        let out = self
            .model
            .lm()
            .forward_cached(&tokens.unsqueeze(1), &self.mask, cache)?;
        last_logits(self.model, out)
    }

    fn keep(&mut self, rows: &Tensor) -> Result<()> {
        select_cache_rows(self.cache.as_mut().expect("prefill came first"), rows);
        self.mask = self.mask.index_select(0, rows);
        Ok(())
    }
}

/// The cache's rows (dimension 0 of every buffer) become `rows`.
fn select_cache_rows(cache: &mut KvCache, rows: &Tensor) {
    for t in cache.keys.iter_mut().chain(cache.values.iter_mut()) {
        *t = t.index_select(0, rows);
    }
}

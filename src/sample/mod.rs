//! Sampling K candidates per prompt from the policy, returned as a batch ready for training:
//! ids, masks, group ids (the prompt's index) and the sampling-time token log-probs as
//! old_logp and as rollout_logp (under the policy itself: temperature 1, no truncation, so an
//! on-policy anchor starts at s = 0), which rows were truncated at max_new_tokens.
//!
//! A model with a key/value cache (native checkpoints) generates every row in one batch:
//! each prompt is prefilled once (left-padded; positions follow the mask), its cache copied to
//! its K rows, then one token per step for all rows, sampled on the device, finished rows
//! dropped as they accumulate. A model without one (TorchScript) re-runs the whole prefix at
//! every step, batched across the prompts of one length (see `stepper.rs`).

mod config;
mod draw;
mod generate;
mod stepper;
mod streams;

pub use config::{EosIds, SamplingConfig, MAX_NEW_TOKENS};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::model::{KvCache, Model};
use generate::{generate, Generated};
use stepper::Cached;
use tch::{Kind, Tensor};

/// K samples for each prompt. Rows are grouped by prompt (group id = prompt index). `rng` is
/// the trainer's generator: it gives this call's seed when `cfg.seed` is None.
pub fn sample(
    model: &Model,
    prompts: &[&[i64]],
    k: usize,
    cfg: &SamplingConfig,
    rng: &mut u64,
) -> Result<Batch> {
    check_prompts(model, prompts, k, cfg)?;
    let seed = match cfg.seed {
        Some(seed) => seed,
        None => (crate::rng::next_uniform(rng) * (1u64 << 53) as f64) as u64,
    };
    let eos = match &cfg.eos_id {
        Some(ids) => ids.ids(),
        None => model.lm().eos_ids(),
    };
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let capacity = (longest + cfg.max_new_tokens) as i64;
    let generated = tch::no_grad(|| {
        let cache = model.lm().new_cache(prompts.len() as i64, capacity);
        generate_cached(model, cache, prompts, k, cfg, &eos, seed)
    })?;
    assemble(prompts, k, cfg, &generated)
}

fn check_prompts(model: &Model, prompts: &[&[i64]], k: usize, cfg: &SamplingConfig) -> Result<()> {
    if prompts.is_empty() || k == 0 {
        return Err(Error::invalid(
            "sampling needs at least one prompt and k >= 1",
        ));
    }
    if let Some((i, _)) = prompts.iter().enumerate().find(|(_, p)| p.is_empty()) {
        return Err(Error::invalid(format!("prompt {i} is empty")));
    }
    let vocab = model.vocab();
    for (i, p) in prompts.iter().enumerate() {
        if let Some(&tok) = p.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::invalid(format!(
                "prompt {i} has token {tok} outside the vocabulary [0, {vocab})"
            )));
        }
    }
    let stop_tokens = cfg.stop_sequences.iter().flatten();
    let eos = cfg.eos_id.as_ref().map(EosIds::ids).unwrap_or_default();
    if let Some(&bad) = stop_tokens.chain(&eos).find(|&&t| t >= vocab) {
        return Err(Error::invalid(format!(
            "stop token {bad} (eos_id or stop_sequences) is outside the vocabulary [0, {vocab})"
        )));
    }
    if let Some(max) = model.lm().max_positions() {
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        if longest + cfg.max_new_tokens > max as usize {
            return Err(Error::invalid(format!(
                "the longest prompt ({longest} tokens) plus max_new_tokens ({}) exceeds the \
                 model's max_position_embeddings ({max})",
                cfg.max_new_tokens
            )));
        }
    }
    Ok(())
}

/// The dtype of the recorded log-probs: float64 models keep float64.
fn logp_kind(model: &Model) -> Kind {
    crate::dtype::compute_kind(model.kind())
}

fn generate_cached(
    model: &Model,
    cache: KvCache,
    prompts: &[&[i64]],
    k: usize,
    cfg: &SamplingConfig,
    eos: &[i64],
    seed: u64,
) -> Result<Generated> {
    let device = model.device();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(
            std::iter::repeat(cfg.pad_id)
                .take(pad)
                .chain(p.iter().copied()),
        );
        mask.extend(
            std::iter::repeat(0i64)
                .take(pad)
                .chain(std::iter::repeat(1).take(p.len())),
        );
    }
    let shape = [prompts.len() as i64, longest as i64];
    let prompt_of_row: Vec<i64> = (0..prompts.len() * k).map(|r| (r / k) as i64).collect();
    let mut stepper = Cached {
        model,
        prompts: Tensor::from_slice(&ids).view(shape).to_device(device),
        prompt_mask: Tensor::from_slice(&mask).view(shape).to_device(device),
        prompt_of_row: Tensor::from_slice(&prompt_of_row).to_device(device),
        cache: Some(cache),
        mask: Tensor::new(),
    };
    let u = streams::uniforms(
        seed,
        prompts,
        k,
        cfg.max_new_tokens,
        logp_kind(model),
        device,
    );
    generate(&mut stepper, cfg, eos, &u)
}

/// One right-padded batch: prompt, then the generated tokens (the ending token included, loss
/// mask 1 on them), then pad_id (attention and loss masks 0).
fn assemble(
    prompts: &[&[i64]],
    k: usize,
    cfg: &SamplingConfig,
    generated: &Generated,
) -> Result<Batch> {
    let n = prompts.len() * k;
    let row_len = |r: usize| prompts[r / k].len() + generated.tokens[r].len();
    let t = (0..n).map(row_len).max().unwrap_or(2).max(2);
    let (mut ids, mut attn, mut loss, mut old) = (
        vec![cfg.pad_id; n * t],
        vec![0u8; n * t],
        vec![0u8; n * t],
        vec![0.0; n * t],
    );
    let mut group_ids = Vec::with_capacity(n);
    for r in 0..n {
        group_ids.push((r / k) as i64);
        let prompt = prompts[r / k];
        let row = r * t;
        ids[row..row + prompt.len()].copy_from_slice(prompt);
        attn[row..row + prompt.len()].fill(1);
        for (j, (&tok, &lp)) in generated.tokens[r]
            .iter()
            .zip(&generated.logp[r])
            .enumerate()
        {
            let at = row + prompt.len() + j;
            ids[at] = tok;
            attn[at] = 1;
            loss[at] = 1;
            old[at] = lp;
        }
    }
    let mut batch = Batch::new(n, t, &ids, Some(&attn), &loss, &group_ids)?;
    batch.set_old_logp(&old)?;
    batch.set_rollout_logp(&old)?;
    batch.truncated = Some(generated.truncated.clone());
    Ok(batch)
}

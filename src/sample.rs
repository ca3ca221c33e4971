//! Sampling K candidates per prompt from the policy (temperature, top-k, top-p, max new
//! tokens, EOS), returning a batch ready for training: ids, masks, group ids (the prompt's
//! index) and the sampling-time token log-probs as old_logp (under the policy itself, i.e.
//! temperature 1 and no truncation, so an on-policy anchor starts at s = 0).

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::model::Model;
use serde::Deserialize;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches top_p (1 = off).
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Generation of a row stops after this token (it is kept and scored).
    pub eos_id: Option<i64>,
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
            pad_id: 0,
            seed: None,
        }
    }
}

impl SamplingConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: SamplingConfig = crate::config::parse_json("sampling", json)?;
        if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
            return Err(Error::config(format!(
                "temperature must be > 0, got {}",
                cfg.temperature
            )));
        }
        if cfg.top_k < 0 || !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) || cfg.max_new_tokens == 0 {
            return Err(Error::config(
                "sampling needs top_k >= 0, top_p in (0, 1], max_new_tokens >= 1",
            ));
        }
        if cfg.pad_id < 0 || cfg.eos_id.is_some_and(|e| e < 0) {
            return Err(Error::config("pad_id and eos_id must be >= 0"));
        }
        Ok(cfg)
    }
}

/// Probabilities of the sampling distribution from last-position logits [B, V].
fn sampling_probs(logits: &Tensor, cfg: &SamplingConfig) -> Tensor {
    let mut z = logits / cfg.temperature;
    let v = z.size()[1];
    if cfg.top_k > 0 && cfg.top_k < v {
        let kth = z
            .topk(cfg.top_k, 1, true, true)
            .0
            .narrow(1, cfg.top_k - 1, 1);
        z = z.masked_fill(&z.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if cfg.top_p < 1.0 {
        let (sorted, order) = z.sort(1, true);
        let p = sorted.softmax(1, sorted.kind());
        // Drop a token when the mass before it already reaches top_p (the first always stays).
        let before = p.cumsum(1, p.kind()) - &p;
        let drop_sorted = before.ge(cfg.top_p);
        let drop = drop_sorted.zeros_like().scatter(1, &order, &drop_sorted);
        z = z.masked_fill(&drop, f64::NEG_INFINITY);
    }
    z.softmax(1, z.kind())
}

/// K samples for each prompt. Rows are grouped by prompt (group id = prompt index).
pub fn sample(
    model: &Model,
    prompts: &[&[i64]],
    k: usize,
    cfg: &SamplingConfig,
    rng: &mut u64,
) -> Result<Batch> {
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
    let device = model.device();
    let mut rows: Vec<(Vec<i64>, usize, Vec<f64>)> = Vec::new(); // tokens, prompt length, token log-probs
    tch::no_grad(|| -> Result<()> {
        for prompt in prompts {
            let mut seqs = Tensor::from_slice(prompt)
                .to_device(device)
                .unsqueeze(0)
                .repeat([k as i64, 1]);
            let mut logps = vec![vec![0.0; prompt.len()]; k];
            let mut done = vec![false; k];
            for _ in 0..cfg.max_new_tokens {
                let attn = seqs.ones_like();
                let last = model.logits(&seqs, &attn)?.select(1, -1);
                // old_logp in the model's precision (float64 models get float64 log-probs).
                let kind = if last.kind() == Kind::Double {
                    Kind::Double
                } else {
                    Kind::Float
                };
                let last = last.to_kind(kind);
                let log_p = last.log_softmax(1, kind);
                let cdf = sampling_probs(&last, cfg).cumsum(1, kind);
                // Scale the draw by the CDF's total so rounding (a total slightly below 1) can
                // never push it past the last token with mass.
                let u: Vec<f64> = (0..k).map(|_| crate::rng::next_uniform(rng)).collect();
                let u = Tensor::from_slice(&u)
                    .to_device(device)
                    .to_kind(kind)
                    .unsqueeze(1)
                    * cdf.narrow(1, vocab - 1, 1);
                let drawn = cdf
                    .lt_tensor(&u)
                    .sum_dim_intlist(1, false, Kind::Int64)
                    .clamp_max(vocab - 1);
                let picked = Vec::<f64>::try_from(
                    log_p
                        .gather(1, &drawn.unsqueeze(1), false)
                        .squeeze_dim(1)
                        .to_kind(Kind::Double)
                        .to_device(tch::Device::Cpu),
                )?;
                let mut next = Vec::<i64>::try_from(drawn.to_device(tch::Device::Cpu))?;
                for r in 0..k {
                    if done[r] {
                        next[r] = cfg.pad_id;
                        logps[r].push(0.0);
                    } else {
                        logps[r].push(picked[r]);
                        done[r] = cfg.eos_id == Some(next[r]);
                    }
                }
                seqs = Tensor::cat(
                    &[
                        seqs,
                        Tensor::from_slice(&next).to_device(device).unsqueeze(1),
                    ],
                    1,
                );
                if done.iter().all(|&d| d) {
                    break;
                }
            }
            let seqs = Vec::<i64>::try_from(seqs.to_device(tch::Device::Cpu).reshape([-1]))?;
            let width = seqs.len() / k;
            for (r, lp) in logps.into_iter().enumerate() {
                rows.push((seqs[r * width..(r + 1) * width].to_vec(), prompt.len(), lp));
            }
        }
        Ok(())
    })?;
    // One right-padded batch: loss mask on generated tokens up to and including EOS.
    let t = rows
        .iter()
        .map(|(s, _, _)| s.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let n = rows.len();
    let (mut ids, mut attn, mut loss, mut old) = (
        vec![cfg.pad_id; n * t],
        vec![0u8; n * t],
        vec![0u8; n * t],
        vec![0.0; n * t],
    );
    let mut group_ids = Vec::with_capacity(n);
    for (r, (seq, plen, lp)) in rows.iter().enumerate() {
        group_ids.push((r / k) as i64);
        let mut ended = false;
        for (j, &tok) in seq.iter().enumerate() {
            ids[r * t + j] = tok;
            if j < *plen {
                attn[r * t + j] = 1;
            } else if !ended {
                attn[r * t + j] = 1;
                loss[r * t + j] = 1;
                old[r * t + j] = lp[j];
                ended = cfg.eos_id == Some(tok);
            }
        }
    }
    let mut batch = Batch::new(n, t, &ids, Some(&attn), &loss, &group_ids)?;
    batch.set_old_logp(&old)?;
    Ok(batch)
}

//! Agreeing on an outcome: every rank contributes its status to one small all-reduce (with the
//! step's metrics in the same buffer), and when any rank failed a second one carries the failed
//! ranks' messages, so that every rank returns the same error and none is left waiting.

use super::Distributed;
use crate::error::{Error, Result, Status};
use crate::objective::Metrics;
use tch::{Device, Kind, Tensor};

/// Bytes of a failed rank's message carried to the others (longer messages are cut).
const MESSAGE_BYTES: usize = 1024;

/// What a rank's local share of the global step counts, for weighting its values.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepWeights {
    /// The loss normaliser: counted groups for the ADPO losses; counted rows or counted tokens
    /// for GRPO (by its aggregation). A rank's gradient is scaled by its share of the total.
    pub loss: f64,
    /// Counted groups (size >= 2).
    pub groups: f64,
    /// Rows in counted groups.
    pub rows: f64,
    /// Loss-masked tokens in counted groups.
    pub tokens: f64,
    /// What the anchor_kl metric is a mean over (rows, or tokens for GRPO).
    pub anchor_kl: f64,
    /// What the anchor drift is a mean over (all rows, or all masked tokens for GRPO).
    pub drift: f64,
}

/// One rank's evaluation of its groups.
#[derive(Debug, Clone, Copy)]
pub struct LocalStep {
    pub metrics: Metrics,
    pub drift: f64,
    /// Loss-masked tokens of the batch.
    pub batch_tokens: f64,
    pub weights: StepWeights,
}

/// The step over all ranks, and this rank's gradient scale.
#[derive(Debug, Clone, Copy)]
pub struct GlobalStep {
    pub metrics: Metrics,
    pub drift: f64,
    pub batch_tokens: f64,
    /// Loss-masked tokens in counted groups, over all ranks.
    pub counted_tokens: f64,
    /// This rank's loss weight over the total: its mean-normalised gradient times this is its
    /// share of the gradient of the global mean.
    pub grad_scale: f64,
}

impl From<LocalStep> for GlobalStep {
    /// One process: the local step is the global one.
    fn from(l: LocalStep) -> Self {
        GlobalStep {
            metrics: l.metrics,
            drift: l.drift,
            batch_tokens: l.batch_tokens,
            counted_tokens: l.weights.tokens,
            grad_scale: 1.0,
        }
    }
}

/// x weighted by w, or 0 from a rank where x is a mean over nothing (and so NaN).
fn part(x: f64, w: f64) -> f64 {
    if w > 0.0 {
        x * w
    } else {
        0.0
    }
}

fn mean(sum: f64, w: f64) -> f64 {
    if w > 0.0 {
        sum / w
    } else {
        f64::NAN
    }
}

impl Distributed {
    /// Sums `payload` over ranks together with every rank's status. If any rank failed, every
    /// rank returns the error of the first failed rank, with its message.
    pub fn agree(&mut self, local: Option<&Error>, payload: Vec<f64>) -> Result<Vec<f64>> {
        let (rank, size) = (self.rank(), self.size());
        let n = payload.len();
        let mut buf = payload;
        buf.resize(n + size, 0.0);
        if let Some(e) = local {
            buf[n + rank] = e.status as i32 as f64;
        }
        let summed = self.sum_values(buf)?;
        let failed: Vec<(usize, i32)> = (0..size)
            .map(|r| (r, summed[n + r] as i32))
            .filter(|&(_, code)| code != 0)
            .collect();
        if failed.is_empty() {
            return Ok(summed[..n].to_vec());
        }
        let messages = self.gather_messages(local)?;
        let (first, code) = failed[0];
        let mut text = format!("rank {first} of {size}: {}", messages[first]);
        if failed.len() > 1 {
            let others: Vec<String> = failed[1..].iter().map(|(r, _)| r.to_string()).collect();
            text.push_str(&format!(" (ranks {} failed too)", others.join(", ")));
        }
        Err(Error::new(
            Status::from_code(code).unwrap_or(Status::InvalidArgument),
            text,
        ))
    }

    /// Every failed rank's message, through a gather built from a sum (own slot only).
    fn gather_messages(&mut self, local: Option<&Error>) -> Result<Vec<String>> {
        let (rank, size) = (self.rank(), self.size());
        let mut buf = vec![0.0; size * MESSAGE_BYTES];
        if let Some(e) = local {
            let mut end = e.message.len().min(MESSAGE_BYTES);
            while !e.message.is_char_boundary(end) {
                end -= 1;
            }
            for (i, b) in e.message.as_bytes()[..end].iter().enumerate() {
                buf[rank * MESSAGE_BYTES + i] = *b as f64;
            }
        }
        let summed = self.sum_values(buf)?;
        Ok(summed
            .chunks(MESSAGE_BYTES)
            .map(|slot| {
                let bytes: Vec<u8> = slot
                    .iter()
                    .map(|&v| v as u8)
                    .take_while(|&b| b != 0)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect())
    }

    /// Sums a small f64 vector over ranks, on the device the gradients live on (a host
    /// communicator such as NCCL may only take device buffers).
    fn sum_values(&mut self, values: Vec<f64>) -> Result<Vec<f64>> {
        let mut t = Tensor::from_slice(&values).to_device(self.device);
        self.sum(&mut t)?;
        Ok(Vec::<f64>::try_from(
            t.to_device(Device::Cpu).to_kind(Kind::Double),
        )?)
    }

    /// Agrees on a step and reduces its metrics: means weighted by what they are means over,
    /// the max |s| over ranks, counts summed.
    pub fn agree_step(&mut self, local: Result<LocalStep>) -> Result<GlobalStep> {
        let size = self.size();
        const FIXED: usize = 16;
        let mut v = vec![0.0; FIXED + size];
        if let Ok(l) = &local {
            let (m, w) = (&l.metrics, &l.weights);
            v[..FIXED].copy_from_slice(&[
                w.loss,
                w.groups,
                w.rows,
                w.tokens,
                w.anchor_kl,
                w.drift,
                l.batch_tokens,
                part(m.loss, w.loss),
                part(m.entropy, w.groups),
                part(m.kl_target, w.groups),
                part(m.win_mass, w.groups),
                part(m.tau, w.groups),
                part(m.mean_abs_score, w.rows),
                part(m.clip_fraction, w.tokens),
                part(m.anchor_kl, w.anchor_kl),
                part(l.drift, w.drift),
            ]);
            v[FIXED + self.rank()] = if w.rows > 0.0 {
                m.max_abs_score
            } else {
                f64::NAN
            };
        }
        let s = self.agree(local.as_ref().err(), v)?;
        let l = local.expect("a failed rank returned above");
        let max_abs = s[FIXED..]
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f64::NAN, f64::max);
        let metrics = Metrics {
            loss: if s[0] > 0.0 { s[7] / s[0] } else { 0.0 },
            entropy: mean(s[8], s[1]),
            kl_target: mean(s[9], s[1]),
            win_mass: mean(s[10], s[1]),
            tau: mean(s[11], s[1]),
            mean_abs_score: mean(s[12], s[2]),
            max_abs_score: max_abs,
            clip_fraction: mean(s[13], s[3]),
            anchor_kl: mean(s[14], s[4]),
            groups: s[1].round() as u64,
        };
        Ok(GlobalStep {
            metrics,
            drift: mean(s[15], s[5]),
            batch_tokens: s[6],
            counted_tokens: s[3],
            grad_scale: if s[0] > 0.0 {
                l.weights.loss / s[0]
            } else {
                0.0
            },
        })
    }
}

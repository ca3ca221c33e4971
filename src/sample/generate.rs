//! The decoding loop, on the device: draw a token for every live row, record it and its
//! log-prob, end rows at an EOS id or a stop sequence. The host learns how many rows are
//! still live every few steps (one small copy); when a quarter of the rows have ended they
//! are dropped from the batch (and from the cache), so finished rows stop costing compute.
//! The loop ends when every row has ended or `max_new_tokens` is reached. A row whose
//! recorded log-prob is NaN or Inf (non-finite logits) fails the whole call with
//! ADPO_STATUS_NON_FINITE.

use super::config::SamplingConfig;
use super::draw::draw;
use super::stepper::Stepper;
use crate::error::{Error, Result, Status};
use tch::{Device, Kind, Tensor};

/// How often (in steps) the host checks how many rows are live.
const CHECK_EVERY: usize = 8;

/// What was generated, on the host: per row the new tokens (the ending token included),
/// their log-probs, and whether it stopped at max_new_tokens (no EOS id or stop sequence).
pub struct Generated {
    pub tokens: Vec<Vec<i64>>,
    pub logp: Vec<Vec<f64>>,
    pub truncated: Vec<bool>,
}

/// Stop conditions on the device.
struct Stops {
    eos: Option<Tensor>,
    sequences: Vec<Tensor>,
}

impl Stops {
    fn new(eos: &[i64], sequences: &[Vec<i64>], device: Device) -> Stops {
        Stops {
            eos: (!eos.is_empty()).then(|| Tensor::from_slice(eos).to_device(device)),
            sequences: sequences
                .iter()
                .map(|s| Tensor::from_slice(s).to_device(device))
                .collect(),
        }
    }

    /// The longest stop sequence.
    fn longest(&self) -> i64 {
        self.sequences
            .iter()
            .map(|s| s.size()[0])
            .max()
            .unwrap_or(0)
    }

    /// Which rows end now: their token is an EOS id, or their last generated tokens
    /// (`tail` [b, up to the longest stop sequence]) end with a stop sequence.
    fn ended(&self, token: &Tensor, tail: Option<&Tensor>) -> Tensor {
        let mut ended = token.zeros_like().to_kind(Kind::Bool);
        if let Some(eos) = &self.eos {
            let is_eos = token
                .unsqueeze(1)
                .eq_tensor(&eos.unsqueeze(0))
                .any_dim(1, false);
            ended = ended.logical_or(&is_eos);
        }
        let Some(tail) = tail else { return ended };
        let have = tail.size()[1];
        for seq in &self.sequences {
            let len = seq.size()[0];
            if len <= have {
                let end = tail.narrow(1, have - len, len);
                ended = ended.logical_or(&end.eq_tensor(&seq.unsqueeze(0)).all_dim(1, false));
            }
        }
        ended
    }
}

/// Generates for `uniforms.size()[0]` rows (`uniforms` [rows, max_new_tokens], one stream per
/// row).
pub fn generate(
    stepper: &mut dyn Stepper,
    cfg: &SamplingConfig,
    eos: &[i64],
    uniforms: &Tensor,
) -> Result<Generated> {
    let (rows, steps) = (uniforms.size()[0], uniforms.size()[1] as usize);
    let device = uniforms.device();
    let stops = Stops::new(eos, &cfg.stop_sequences, device);
    let int = (Kind::Int64, device);
    let mut tokens = Tensor::full([rows, steps as i64], cfg.pad_id, int);
    let mut logps = Tensor::zeros([rows, steps as i64], (uniforms.kind(), device));
    let mut lengths = Tensor::full([rows], steps as i64, int);
    // Output rows that ended at an EOS id or a stop sequence (the rest hit max_new_tokens).
    let mut stopped = Tensor::zeros([rows], (Kind::Bool, device));
    // Row i of the current batch is row live[i] of the output; ended[i]: it has finished.
    let mut live = Tensor::arange(rows, int);
    let mut ended = Tensor::zeros([rows], (Kind::Bool, device));
    let mut logits = stepper.prefill()?;
    for step in 0..steps {
        let u = uniforms.select(1, step as i64).index_select(0, &live);
        let (token, logp) = draw(&logits, cfg, &u);
        let token = token.where_self(&ended.logical_not(), &token.full_like(cfg.pad_id));
        let logp = logp.to_kind(logps.kind()) * ended.logical_not().to_kind(logps.kind());
        let col = Tensor::full([live.size()[0]], step as i64, int);
        let _ = tokens.index_put_(&[Some(&live), Some(&col)], &token, false);
        let _ = logps.index_put_(&[Some(&live), Some(&col)], &logp, false);
        let tail = (!stops.sequences.is_empty()).then(|| {
            let from = (step as i64 + 1 - stops.longest()).max(0);
            tokens
                .narrow(1, from, step as i64 + 1 - from)
                .index_select(0, &live)
        });
        let now = stops
            .ended(&token, tail.as_ref())
            .logical_and(&ended.logical_not());
        let ended_at = col.full_like(step as i64 + 1);
        let now_rows = live.masked_select(&now);
        let _ = lengths.index_put_(&[Some(&now_rows)], &ended_at.masked_select(&now), false);
        let _ = stopped.index_fill_(0, &now_rows, 1);
        ended = ended.logical_or(&now);
        if step + 1 == steps {
            break;
        }
        if (step + 1) % CHECK_EVERY == 0 {
            let alive = ended.logical_not().nonzero().squeeze_dim(1);
            let n_alive = alive.size()[0];
            if n_alive == 0 {
                break;
            }
            if 4 * n_alive <= 3 * live.size()[0] {
                stepper.keep(&alive)?;
                live = live.index_select(0, &alive);
                ended = ended.index_select(0, &alive);
                logits = stepper.step(&token.index_select(0, &alive))?;
                continue;
            }
        }
        logits = stepper.step(&token)?;
    }
    to_host(&tokens, &logps, &lengths, &stopped)
}

/// One copy of everything to the host, cut to each row's length.
fn to_host(
    tokens: &Tensor,
    logps: &Tensor,
    lengths: &Tensor,
    stopped: &Tensor,
) -> Result<Generated> {
    let width = tokens.size()[1] as usize;
    let flat_tokens = Vec::<i64>::try_from(tokens.to_device(Device::Cpu).reshape([-1]))?;
    let flat_logp = Vec::<f64>::try_from(
        logps
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .reshape([-1]),
    )?;
    let lengths = Vec::<i64>::try_from(lengths.to_device(Device::Cpu))?;
    let stopped = Vec::<bool>::try_from(stopped.to_device(Device::Cpu))?;
    let (mut out_tokens, mut out_logp) = (Vec::new(), Vec::new());
    for (r, &len) in lengths.iter().enumerate() {
        let row = r * width..r * width + len as usize;
        // The drawn tokens of NaN or Inf logits are noise: refused rather than returned.
        if flat_logp[row.clone()].iter().any(|x| !x.is_finite()) {
            return Err(Error::new(
                Status::NonFinite,
                format!(
                    "sampling: row {r}'s logits contain NaN or Inf (the model's weights or \
                     activations are not finite)"
                ),
            ));
        }
        out_tokens.push(flat_tokens[row.clone()].to_vec());
        out_logp.push(flat_logp[row].to_vec());
    }
    Ok(Generated {
        tokens: out_tokens,
        logp: out_logp,
        truncated: stopped.iter().map(|s| !s).collect(),
    })
}

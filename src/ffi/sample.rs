//! C ABI of sampling candidates from a trainer's policy (src/sample/).

// Section of include/adpo.h: Sampling
// K candidates per prompt from the trainer's policy, returned as a batch ready to score.

use super::args::{c_str, require_out, slice, write_out};
use super::batch::adpo_batch;
use super::boundary::call_on;
use super::error::adpo_error;
use super::trainer::adpo_trainer;
use crate::error::{Error, Result, Status};
use crate::sample::SamplingConfig;
use std::ffi::c_char;

/// Samples k candidates for each of n_prompts prompts from the policy, in eval mode (no
/// dropout; the training forward runs in train mode). `prompt_tokens` holds
/// the prompts back to back; `prompt_lengths[i]` is the length of prompt i. `sampling_json`
/// (NULL = defaults): temperature 1, top_k 0 (off), top_p 1, max_new_tokens 16, eos_id null,
/// pad_id 0, seed null (continue the trainer's generator). `*out_batch` receives a new batch
/// (n_prompts * k rows, group id = prompt index, loss mask on the generated tokens up to and
/// including EOS, per-token old_logp set); set its rewards and pass it to adpo_trainer_step.
/// n_prompts * k above ADPO_MAX_SAMPLE_ROWS is ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_trainer_sample(
    trainer: *mut adpo_trainer,
    prompt_tokens: *const i64,
    prompt_lengths: *const usize,
    n_prompts: usize,
    k: usize,
    sampling_json: *const c_char,
    out_batch: *mut *mut adpo_batch,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer as *const adpo_trainer, "trainer", |t| {
        require_out(out_batch, "out_batch")?;
        if n_prompts == 0 {
            return Err(Error::invalid("n_prompts must be > 0"));
        }
        check_rows(n_prompts, k)?;
        let lengths = slice(prompt_lengths, n_prompts, "prompt_lengths")?;
        let total = lengths
            .iter()
            .try_fold(0usize, |a, &l| a.checked_add(l))
            .ok_or_else(|| Error::invalid("prompt lengths overflow"))?;
        let tokens = slice(prompt_tokens, total, "prompt_tokens")?;
        let mut prompts = Vec::with_capacity(n_prompts);
        let mut start = 0;
        for &l in lengths {
            prompts.push(&tokens[start..start + l]);
            start += l;
        }
        let json = if sampling_json.is_null() {
            ""
        } else {
            c_str(sampling_json, "sampling_json")?
        };
        let cfg = SamplingConfig::from_json(json)?;
        let batch = t.inner.lock().sample(&prompts, k, &cfg)?;
        write_out(out_batch, "out_batch", adpo_batch::boxed(batch))
    })
}

/// The most candidates (n_prompts * k) one adpo_trainer_sample call generates: a runaway
/// request fails instead of aborting the process on an allocation it cannot get.
pub const MAX_SAMPLE_ROWS: usize = 1 << 20;

fn check_rows(n_prompts: usize, k: usize) -> Result<()> {
    match n_prompts.checked_mul(k) {
        Some(rows) if rows <= MAX_SAMPLE_ROWS => Ok(()),
        _ => Err(Error::invalid(format!(
            "n_prompts * k = {n_prompts} * {k} is more than ADPO_MAX_SAMPLE_ROWS = {MAX_SAMPLE_ROWS} candidates"
        ))),
    }
}

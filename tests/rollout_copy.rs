//! `rollout_dtype: bfloat16` (src/trainer/rollout_copy.rs): the trainer samples from a bfloat16
//! copy of a float64 policy, LoRA merged, refreshed at every sample. The batch's rollout_logp
//! is the copy's (within bfloat16 rounding of the policy's own, and not equal to it), old_logp
//! is left to the step, and after an update the copy follows the new weights.

mod common;

use adpo::model::LoadOptions;
use adpo::sample::SamplingConfig;
use adpo::{Batch, Model, Status, Trainer};
use common::{device, model};
use parking_lot::Mutex;
use std::sync::Arc;
use tch::Kind;

const PROMPTS: [&[i64]; 2] = [&[3, 5, 7], &[2, 9]];

fn lora_policy() -> adpo::model::SharedModel {
    let json = r#"{"dtype": "float64", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"], "init": "gaussian", "seed": 2}}"#;
    let options = LoadOptions {
        device: device(),
        ..LoadOptions::from_json(json).unwrap()
    };
    let m = Model::load_with(&common::fixture("tiny/llama_f64"), &options).unwrap();
    Arc::new(Mutex::new(m))
}

fn sample(t: &mut Trainer) -> Batch {
    let cfg = SamplingConfig::from_json(r#"{"max_new_tokens": 6, "seed": 11}"#).unwrap();
    let mut b = t.sample(&PROMPTS, 4, &cfg).unwrap();
    let rewards: Vec<f64> = (0..b.n).map(|r| (r as f64 * 0.9).sin()).collect();
    b.set_rewards(&rewards).unwrap();
    b
}

/// The largest |rollout_logp − the policy's token log-prob| over the sampled tokens.
fn mismatch(t: &Trainer, b: &Batch) -> f64 {
    let policy = t
        .token_logp(b)
        .unwrap()
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu);
    let rollout = b.rollout_logp_values().unwrap();
    let mask = b.loss_mask.to_kind(Kind::Double);
    ((policy - rollout) * mask).abs().max().double_value(&[])
}

fn check_copy(policy: adpo::model::SharedModel, reference: Option<adpo::model::SharedModel>) {
    let cfg = r#"{"rollout_dtype": "bfloat16", "anchor": {"mode": "on_policy"}, "optimizer": {"name": "sgd", "lr": 20.0}}"#;
    let mut t = Trainer::new(policy, reference, cfg).unwrap();
    let b = sample(&mut t);
    assert!(b.old_logp.is_none(), "old_logp is the step's to compute");
    let d = mismatch(&t, &b);
    // bfloat16 keeps 8 bits: the copy's log-probs differ from the float64 policy's, a little.
    assert!(d > 1e-6 && d < 0.1, "rollout vs policy log-probs: {d}");
    t.step(&b).unwrap();
    // The step moved the policy: the old batch's rollout log-probs are now far off, and a new
    // sample follows the new weights.
    let stale = mismatch(&t, &b);
    let b2 = sample(&mut t);
    let fresh = mismatch(&t, &b2);
    assert!(
        stale > 5.0 * fresh.max(1e-3),
        "stale {stale}, fresh {fresh}"
    );
    assert!(fresh < 0.25, "after the step: {fresh}");
    eprintln!("bf16 copy: {d:.2e} before the step; stale {stale:.2e}, fresh {fresh:.2e} after");
    t.step(&b2).unwrap();
}

#[test]
fn a_float64_policy_samples_from_its_bfloat16_copy() {
    check_copy(model("tiny/llama_f64"), Some(model("tiny/llama_f64")));
}

#[test]
fn a_lora_policy_samples_from_its_merged_bfloat16_copy() {
    check_copy(lora_policy(), None);
}

#[test]
fn the_policy_itself_without_the_option_and_bad_values_refused() {
    let mut t = Trainer::new(model("tiny/llama_f64"), None, "{}").unwrap();
    let b = sample(&mut t);
    // The policy's own log-probs: the KV-cached sampler's against a full forward.
    assert!(mismatch(&t, &b) < 1e-12);
    assert!(b.old_logp.is_some());
    let e = Trainer::new(
        model("tiny/llama_f64"),
        None,
        r#"{"rollout_dtype": "float16"}"#,
    )
    .err()
    .expect("refused");
    assert_eq!(e.status, Status::InvalidConfig, "{}", e.message);
    assert!(e.message.contains("float16"), "{}", e.message);
}

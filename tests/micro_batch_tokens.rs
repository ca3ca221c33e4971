//! Token-budget micro-batches (`micro_batch_tokens`, src/trainer/micro_batches.rs): rows packed
//! by length into pieces that keep only the columns they attend train exactly as the whole
//! batch in one pass (float64, 1e-10), for every loss and anchor, with prefix sharing on and
//! off, LoRA, activation checkpointing, the entropy bonus, the rollout correction and a host's
//! own gradient; `padded_fraction` in the step metrics is the padding of the pieces.

mod common;

use adpo::model::LoadOptions;
use adpo::{Batch, Model, Trainer};
use common::{device, max_rel_diff, model, weights, Row};
use parking_lot::Mutex;
use std::sync::Arc;
use tch::{Kind, Tensor};

const T: usize = 12;

/// Whole groups of very different lengths (one left-padded), a group interleaved with others,
/// and a row alone.
const ROWS: &[Row] = &[
    Row(1, 0, &[1, 2, 3, 4, 5, 6], &[7, 8, 9, 10, 11]),
    Row(1, 0, &[1, 2, 3, 4, 5, 6], &[2]),
    Row(1, 0, &[1, 2, 3, 4, 5, 6], &[3, 4, 5]),
    Row(2, 0, &[9], &[1]),
    Row(2, 0, &[9], &[2, 3]),
    Row(3, 4, &[5, 5], &[6]),
    Row(3, 4, &[5, 5], &[7, 7]),
    Row(4, 0, &[8, 1], &[2, 3, 4]),
    Row(5, 0, &[6], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    Row(4, 0, &[8, 1], &[5]),
    Row(5, 0, &[6], &[3]),
];

fn attended() -> usize {
    ROWS.iter().map(|r| r.2.len() + r.3.len()).sum()
}

fn batch(seed: f64) -> Batch {
    common::rows_batch(ROWS, T, |r| ((r as f64 + seed) * 0.77).sin())
}

fn policy(lora: bool) -> adpo::model::SharedModel {
    if !lora {
        return model("tiny/llama_f64");
    }
    let json = r#"{"dtype": "float64", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "gate_proj", "down_proj"], "init": "gaussian", "seed": 5}}"#;
    let options = LoadOptions {
        device: device(),
        ..LoadOptions::from_json(json).unwrap()
    };
    let m = Model::load_with(&common::fixture("tiny/llama_f64"), &options).unwrap();
    Arc::new(Mutex::new(m))
}

/// Weights after two steps of two epochs, the last loss and padded fraction, and the sequence
/// log-probs after them; `keys`: the config's keys besides the optimizer.
fn train(
    keys: &str,
    lora: bool,
    prepare: &dyn Fn(&mut Batch),
) -> (Vec<Tensor>, f64, f64, Vec<f64>) {
    let policy = policy(lora);
    let reference = (!lora).then(|| model("tiny/llama_f64"));
    let cfg = format!(
        r#"{{{keys}, "optimizer": {{"name": "adamw", "lr": 0.01}}, "epochs_per_batch": 2}}"#
    );
    let mut t = Trainer::new(policy.clone(), reference, &cfg).unwrap();
    let mut b1 = batch(1.0);
    prepare(&mut b1);
    t.step(&b1).unwrap();
    let mut b2 = batch(2.0);
    prepare(&mut b2);
    let m = t.step(&b2).unwrap();
    let seq = t.sequence_logp(&batch(0.0)).unwrap();
    (weights(&policy), m.objective.loss, m.padded_fraction, seq)
}

/// `keys` with each token budget trains as `keys` alone (one pass over the whole batch).
fn assert_exact(keys: &str, lora: bool, prepare: &dyn Fn(&mut Batch)) {
    let (w0, loss0, padded0, seq0) = train(keys, lora, prepare);
    let whole = 1.0 - attended() as f64 / (ROWS.len() * T) as f64;
    assert!(
        (padded0 - whole).abs() < 1e-12,
        "{keys}: padded {padded0}, want {whole}"
    );
    for budget in [1, 20, 40] {
        let with = format!(r#"{keys}, "micro_batch_tokens": {budget}"#);
        let (w1, loss1, padded1, seq1) = train(&with, lora, prepare);
        let d = max_rel_diff(&w1, &w0);
        assert!(d < 1e-10, "{with} (LoRA {lora}): weights differ by {d}");
        assert!(
            (loss1 - loss0).abs() < 1e-10,
            "{with}: loss {loss1} vs {loss0}"
        );
        for (a, b) in seq1.iter().zip(&seq0) {
            assert!(
                (a - b).abs() < 1e-10,
                "{with}: sequence log-prob {a} vs {b}"
            );
        }
        assert!(
            padded1 < padded0 && padded1 >= 0.0,
            "{with}: padded {padded1}"
        );
    }
}

fn nothing(_: &mut Batch) {}

#[test]
fn each_loss_trains_as_the_whole_batch() {
    let fixed = r#""anchor": {"mode": "fixed"}"#;
    for loss in ["listwise", "plackett_luce", "top1"] {
        assert_exact(&format!(r#""loss": "{loss}", {fixed}"#), false, &nothing);
    }
    assert_exact(
        &format!(r#""loss": "grpo", "beta_kl": 0.05, {fixed}"#),
        false,
        &nothing,
    );
    assert_exact(
        r#""loss": "cltr", "anchor": {"mode": "on_policy"}"#,
        false,
        &nothing,
    );
}

#[test]
fn each_anchor_trains_as_the_whole_batch() {
    for anchor in [
        r#"{"mode": "on_policy"}"#,
        r#"{"mode": "ema", "alpha": 0.5}"#,
        r#"{"mode": "kl_triggered", "window": 1, "threshold": 0.0}"#,
    ] {
        assert_exact(&format!(r#""anchor": {anchor}"#), false, &nothing);
    }
    let entropy = r#""anchor": {"mode": "on_policy"}, "adaptive_tau": {"rule": "smooth_hybrid"}"#;
    assert_exact(entropy, false, &nothing);
}

#[test]
fn with_and_without_shared_prefixes_lora_checkpointing_and_a_row_cap() {
    let fixed = r#""anchor": {"mode": "fixed"}"#;
    assert_exact(
        &format!(r#"{fixed}, "shared_prefix": false"#),
        false,
        &nothing,
    );
    assert_exact(
        &format!(r#"{fixed}, "activation_checkpointing": true"#),
        false,
        &nothing,
    );
    assert_exact(r#""loss": "grpo", "beta_kl": 0.05"#, true, &nothing);
    assert_exact(
        r#""anchor": {"mode": "fixed"}, "micro_batch_rows": 3"#,
        true,
        &nothing,
    );
    assert_exact(
        r#""entropy_coef": 0.01, "logprob_chunk_rows": 5"#,
        false,
        &nothing,
    );
}

#[test]
fn the_rollout_correction_trains_as_the_whole_batch() {
    let with_logps = |b: &mut Batch| {
        let old: Vec<f64> = (0..ROWS.len() * T)
            .map(|i| -2.0 - (i as f64 * 0.3).sin())
            .collect();
        let rollout: Vec<f64> = old
            .iter()
            .enumerate()
            .map(|(i, x)| x - 0.2 * (i as f64).cos())
            .collect();
        b.set_old_logp(&old).unwrap();
        b.set_rollout_logp(&rollout).unwrap();
    };
    let keys = r#""loss": "grpo", "anchor": {"mode": "on_policy"}, "rollout_correction": {"rollout_is": "token", "rollout_is_threshold": 1.1}"#;
    assert_exact(keys, false, &with_logps);
}

#[test]
fn a_hosts_gradient_accumulates_as_the_whole_batch() {
    let run = |keys: &str| {
        let policy = model("tiny/llama_f64");
        let cfg = format!(r#"{{{keys}"optimizer": {{"name": "sgd", "lr": 0.1}}}}"#);
        let mut t = Trainer::new(policy.clone(), None, &cfg).unwrap();
        let b = batch(1.0);
        let g = Tensor::arange((ROWS.len() * T) as i64, (Kind::Double, device()))
            .view([ROWS.len() as i64, T as i64])
            .sin();
        let m = t.forward_backward(&b, Some(&g)).unwrap();
        t.optim_step().unwrap();
        (weights(&policy), m.padded_fraction)
    };
    let (w0, p0) = run("");
    let (w1, p1) = run(r#""micro_batch_tokens": 20, "#);
    let d = max_rel_diff(&w1, &w0);
    assert!(d < 1e-10, "weights differ by {d}");
    assert!(p1 < p0, "padded {p1} vs {p0}");
}

#[test]
fn a_zero_budget_is_refused() {
    let e = Trainer::new(
        model("tiny/llama_f64"),
        None,
        r#"{"micro_batch_tokens": 0}"#,
    )
    .err()
    .expect("refused");
    assert!(e.message.contains("micro_batch_tokens"), "{}", e.message);
}

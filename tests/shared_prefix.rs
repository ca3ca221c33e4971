//! Shared-prefix groups (src/model/shared_prefix.rs): the hidden states, a step and the
//! sequence log-probs with each group's prompt run once equal those of the rows run whole
//! (float64, 1e-10). The batch mixes what a host may send: prompts of different lengths,
//! right padding, a group whose rows share nothing, a row alone, a left-padded group, groups
//! interleaved, and micro-batches that split a group.

mod common;

use adpo::model::{shared_prefix, LoadOptions};
use adpo::{Batch, Model, Trainer};
use common::{device, max_rel_diff, model, weights, Row};
use parking_lot::Mutex;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

const T: usize = 10;
const PAD: i64 = 0;

const ROWS: &[Row] = &[
    Row(7, 0, &[1, 2, 3], &[4, 5]),
    Row(3, 0, &[2, 2, 5, 6, 1], &[3]),
    Row(7, 0, &[1, 2, 3], &[6]),
    Row(1, 0, &[5, 1], &[2]),
    Row(3, 0, &[2, 2, 5, 6, 1], &[3, 4]),
    Row(7, 0, &[1, 2, 3], &[7, 8, 9]),
    Row(9, 0, &[4, 4, 4], &[1]),
    Row(1, 0, &[6, 1], &[2, 3]),
    Row(4, 2, &[3, 3], &[1]),
    Row(3, 0, &[2, 2, 5, 6, 1], &[9, 9]),
    Row(4, 0, &[3, 3], &[2, 2]),
    Row(7, 0, &[1, 2, 3], &[10, 11]),
];

fn prompt_batch(seed: f64) -> Batch {
    common::rows_batch(ROWS, T, |r| ((r as f64 + seed) * 0.61).sin())
}

#[test]
fn the_plan_shares_each_groups_prompt_and_nothing_else() {
    let b = prompt_batch(0.0);
    let plan = shared_prefix::plan(
        &b.ids,
        &b.attention_mask,
        &b.loss_mask,
        &b.group_ids,
        Device::Cpu,
    )
    .expect("groups 7 and 3 share their prompts");
    // Groups 7 and 3, in order of first row; group 1 shares nothing, 9 is alone, 4 is
    // left-padded (its first row's leading positions are not attended).
    let want = Tensor::from_slice(&[1i64, 2, 3, PAD, PAD, 2, 2, 5, 6, 1]).view([2, 5]);
    assert_eq!(plan.prefix_ids, want);
    let of_row = Vec::<i64>::try_from(&plan.prefix_of_row).unwrap();
    assert_eq!((of_row[0], of_row[1], of_row[2], of_row[4]), (0, 1, 0, 1));
    // The longest suffix: an unshared row, whole.
    assert_eq!(plan.suffix_ids.size(), [12, T as i64]);
    assert_eq!(plan.gather.size(), [(12 * T) as i64]);
}

#[test]
fn hidden_states_with_shared_prefixes_equal_the_rows_run_whole() {
    let policy = model("tiny/llama_f64");
    let p = policy.lock();
    let b = prompt_batch(0.0);
    let (ids, attn, _) = b.rows(0, b.n as i64, device());
    let plan = shared_prefix::plan(
        &b.ids,
        &b.attention_mask,
        &b.loss_mask,
        &b.group_ids,
        device(),
    );
    let shared = p.forward_rows(&ids, &attn, plan.as_ref()).unwrap();
    let whole = p.forward(&ids, &attn).unwrap();
    let keep = attn.to_kind(Kind::Double).unsqueeze(2);
    let d = max_rel_diff(&[&shared * &keep], &[&whole * &keep]);
    assert!(d < 1e-12, "hidden states differ by {d}");
}

/// The fixture policy, with LoRA adapters on every projection when `lora` (then no reference:
/// its base is the anchor).
fn policy(lora: bool) -> adpo::model::SharedModel {
    if !lora {
        return model("tiny/llama_f64");
    }
    let json = r#"{"dtype": "float64", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "init": "gaussian", "seed": 3}}"#;
    let options = LoadOptions {
        device: device(),
        ..LoadOptions::from_json(json).unwrap()
    };
    let m = Model::load_with(&common::fixture("tiny/llama_f64"), &options).unwrap();
    Arc::new(Mutex::new(m))
}

/// Weights after two steps (two epochs each), the sequence log-probs after them, and the last
/// loss; `keys`: the trainer config's keys besides the optimizer and shared_prefix.
fn train(shared: bool, keys: &str, lora: bool) -> (Vec<Tensor>, Vec<f64>, f64) {
    let policy = policy(lora);
    let reference = (!lora).then(|| model("tiny/llama_f64"));
    let cfg = format!(
        r#"{{{keys}, "optimizer": {{"name": "adamw", "lr": 0.01}}, "epochs_per_batch": 2, "shared_prefix": {shared}}}"#
    );
    let mut t = Trainer::new(policy.clone(), reference, &cfg).unwrap();
    t.step(&prompt_batch(1.0)).unwrap();
    let m = t.step(&prompt_batch(2.0)).unwrap();
    let seq = t.sequence_logp(&prompt_batch(0.0)).unwrap();
    (weights(&policy), seq, m.objective.loss)
}

fn assert_same_training(keys: &str, lora: bool) {
    let (w0, seq0, loss0) = train(false, keys, lora);
    let (w1, seq1, loss1) = train(true, keys, lora);
    let d = max_rel_diff(&w1, &w0);
    assert!(d < 1e-10, "{keys} (LoRA {lora}): weights differ by {d}");
    assert!(
        (loss1 - loss0).abs() < 1e-10,
        "{keys}: loss {loss1} vs {loss0}"
    );
    for (a, b) in seq1.iter().zip(&seq0) {
        assert!(
            (a - b).abs() < 1e-10,
            "{keys}: sequence log-prob {a} vs {b}"
        );
    }
}

#[test]
fn a_step_with_shared_prefixes_equals_the_step_on_whole_rows_for_each_loss() {
    let fixed = r#""anchor": {"mode": "fixed"}"#;
    for loss in ["listwise", "plackett_luce", "top1"] {
        for micro in ["null", "5"] {
            let keys = format!(r#""loss": "{loss}", "micro_batch_rows": {micro}, {fixed}"#);
            assert_same_training(&keys, false);
        }
    }
    let grpo = format!(r#""loss": "grpo", "beta_kl": 0.05, "micro_batch_rows": 5, {fixed}"#);
    assert_same_training(&grpo, false);
}

#[test]
fn a_step_with_shared_prefixes_equals_the_step_on_whole_rows_for_each_anchor() {
    for anchor in [
        r#"{"mode": "on_policy"}"#,
        r#"{"mode": "ema", "alpha": 0.5}"#,
        r#"{"mode": "kl_triggered", "window": 1, "threshold": 0.0}"#,
    ] {
        assert_same_training(&format!(r#""anchor": {anchor}"#), false);
    }
    let entropy = r#""anchor": {"mode": "on_policy"}, "adaptive_tau": {"rule": "smooth_hybrid"}"#;
    assert_same_training(entropy, false);
}

#[test]
fn a_lora_step_with_shared_prefixes_equals_the_step_on_whole_rows() {
    assert_same_training(
        r#""anchor": {"mode": "fixed"}, "micro_batch_rows": 5"#,
        true,
    );
    assert_same_training(r#""loss": "grpo", "beta_kl": 0.05"#, true);
}

#[test]
fn a_checkpointed_step_with_shared_prefixes_equals_the_step_on_whole_rows() {
    let checkpointed = r#""activation_checkpointing": true, "anchor": {"mode": "fixed"}"#;
    for micro in ["null", "5"] {
        let keys = format!(r#"{checkpointed}, "micro_batch_rows": {micro}"#);
        assert_same_training(&keys, false);
    }
    let grpo = r#""loss": "grpo", "beta_kl": 0.05, "activation_checkpointing": true"#;
    assert_same_training(grpo, true);
    // And the same as the step without checkpointing.
    let (w0, _, _) = train(false, r#""anchor": {"mode": "fixed"}"#, false);
    let (w1, _, _) = train(true, checkpointed, false);
    let d = max_rel_diff(&w1, &w0);
    assert!(d < 1e-10, "checkpointed and shared against plain: {d}");
}

/// Groups of two (pairwise and DPO compare pairs): the four pairs' prompts, of lengths 3, 2, 4
/// and 1, with completions of one to three tokens.
fn pair_batch(seed: f64) -> Batch {
    let rows: [(&[i64], &[i64]); 8] = [
        (&[1, 2, 3], &[4, 5]),
        (&[1, 2, 3], &[6]),
        (&[7, 8], &[9, 9, 9]),
        (&[7, 8], &[1]),
        (&[2, 4, 6, 8], &[3]),
        (&[2, 4, 6, 8], &[5, 7]),
        (&[11], &[12, 13]),
        (&[11], &[14]),
    ];
    let n = rows.len();
    let (mut ids, mut attn, mut loss) = (vec![PAD; n * T], vec![0u8; n * T], vec![0u8; n * T]);
    for (r, (prompt, completion)) in rows.iter().enumerate() {
        for (j, &id) in prompt.iter().chain(completion.iter()).enumerate() {
            ids[r * T + j] = id;
            attn[r * T + j] = 1;
            loss[r * T + j] = (j >= prompt.len()) as u8;
        }
    }
    let groups: Vec<i64> = (0..n as i64).map(|r| r / 2).collect();
    let mut b = Batch::new(n, T, &ids, Some(&attn), &loss, &groups).unwrap();
    let rewards: Vec<f64> = (0..n).map(|r| ((r as f64 + seed) * 0.83).cos()).collect();
    b.set_rewards(&rewards).unwrap();
    b
}

#[test]
fn pairwise_and_dpo_steps_with_shared_prefixes_equal_the_steps_on_whole_rows() {
    for loss in ["pairwise", "dpo"] {
        let run = |shared: bool| {
            let policy = model("tiny/llama_f64");
            let cfg = format!(
                r#"{{"loss": "{loss}", "anchor": {{"mode": "fixed"}}, "optimizer": {{"name": "sgd", "lr": 0.1}}, "micro_batch_rows": 3, "shared_prefix": {shared}}}"#
            );
            let mut t = Trainer::new(policy.clone(), Some(model("tiny/llama_f64")), &cfg).unwrap();
            t.step(&pair_batch(1.0)).unwrap();
            t.step(&pair_batch(2.0)).unwrap();
            weights(&policy)
        };
        let d = max_rel_diff(&run(true), &run(false));
        assert!(d < 1e-10, "{loss}: weights differ by {d}");
    }
}

#[test]
fn a_bf16_mixed_step_with_shared_prefixes_stays_within_bfloat16_rounding() {
    let run = |shared: bool| {
        let options = LoadOptions {
            device: device(),
            dtype: adpo::model::Dtype::Bfloat16,
            ..LoadOptions::default()
        };
        let load = || {
            let m = Model::load_with(&common::fixture("tiny/llama"), &options).unwrap();
            Arc::new(Mutex::new(m))
        };
        let policy = load();
        let cfg = format!(
            r#"{{"precision": "bf16-mixed", "anchor": {{"mode": "fixed"}}, "optimizer": {{"name": "sgd", "lr": 0.1}}, "shared_prefix": {shared}}}"#
        );
        let mut t = Trainer::new(policy.clone(), Some(load()), &cfg).unwrap();
        let m = t.step(&prompt_batch(1.0)).unwrap();
        (
            t.sequence_logp(&prompt_batch(0.0)).unwrap(),
            m.objective.loss,
        )
    };
    let ((seq1, loss1), (seq0, loss0)) = (run(true), run(false));
    // bfloat16 keeps 8 bits: the two paths add the same terms in different orders.
    assert!((loss1 - loss0).abs() < 2e-2, "loss {loss1} vs {loss0}");
    for (a, b) in seq1.iter().zip(&seq0) {
        assert!((a - b).abs() < 5e-2 * b.abs().max(1.0), "{a} vs {b}");
    }
}

//! The trainer through the Rust API on the tiny Hugging Face fixtures (tiny/, make fixtures):
//! two-pass = one-pass, anchors, determinism, learning, checkpoints, errors.

mod common;

use adpo::trainer::Trainer;
use adpo::{Batch, Model, Status};
use common::{batch, device, fixture, max_rel_diff, model, weights};
use tch::{Device, Kind, Tensor};

#[test]
fn two_pass_step_equals_one_pass_step() {
    for loss in ["listwise", "plackett_luce\", \"pl_ties\": \"stable", "grpo"] {
        for opt in [
            r#"{"name": "sgd", "lr": 0.1}"#,
            r#"{"name": "adamw", "lr": 0.01}"#,
        ] {
            let run = |micro: &str| {
                let policy = model("tiny/llama_f64");
                let reference = model("tiny/llama_f64");
                let cfg = format!(
                    r#"{{"loss": "{loss}", "optimizer": {opt}, "micro_batch_rows": {micro}, "anchor": {{"mode": "fixed"}}, "epochs_per_batch": 2}}"#
                );
                let mut t = Trainer::new(policy.clone(), Some(reference), &cfg).unwrap();
                t.step(&batch(1)).unwrap();
                t.step(&batch(2)).unwrap();
                weights(&policy)
            };
            let (one, two) = (run("null"), run("5"));
            let d = max_rel_diff(&two, &one);
            assert!(
                d < 1e-10,
                "{loss} {opt}: two-pass differs from one-pass by {d}"
            );
        }
    }
}

#[test]
fn on_policy_first_evaluation_has_zero_scores() {
    let policy = model("tiny/llama");
    let mut t = Trainer::new(policy, None, r#"{"anchor": {"mode": "on_policy"}}"#).unwrap();
    let m = t.step(&batch(3)).unwrap();
    assert!(
        (m.objective.loss - 4f64.ln()).abs() < 1e-5,
        "loss {} != ln 4",
        m.objective.loss
    );
    assert!(m.objective.max_abs_score < 1e-5);
    assert!(m.grad_norm > 0.0);
}

/// The anchor tests run on an untied and on a tied checkpoint.
fn f64_models() -> [fn() -> adpo::model::SharedModel; 2] {
    [
        || model("tiny/llama_f64"),
        || common::native_f64("qwen3_gqa2_headdim16_tied"),
    ]
}

#[test]
fn ema_anchor_follows_the_policy_by_the_formula() {
    for load in f64_models() {
        ema_anchor_follows_the_policy(load());
    }
}

fn ema_anchor_follows_the_policy(policy: adpo::model::SharedModel) {
    let alpha = 0.7;
    let cfg = format!(
        r#"{{"anchor": {{"mode": "ema", "alpha": {alpha}}}, "optimizer": {{"name": "sgd", "lr": 0.5}}}}"#
    );
    let mut t = Trainer::new(policy.clone(), None, &cfg).unwrap();
    // a_0 = theta_0; after each optimizer step k: a_k = alpha a_(k-1) + (1 - alpha) theta_k.
    let mut expected = weights(&policy);
    for s in 0..4 {
        t.step(&batch(s)).unwrap();
        let theta = weights(&policy);
        expected = expected
            .iter()
            .zip(&theta)
            .map(|(a, th)| a * alpha + th * (1.0 - alpha))
            .collect();
    }
    let anchor: Vec<Tensor> = t
        .anchor()
        .copy
        .as_ref()
        .unwrap()
        .params()
        .iter()
        .map(|(_, p)| p.to_device(Device::Cpu))
        .collect();
    let d = max_rel_diff(&anchor, &expected);
    assert!(d < 1e-12, "EMA anchor off by {d}");
    assert!(
        max_rel_diff(&anchor, &weights(&policy)) > 1e-6,
        "anchor must lag the policy"
    );
}

#[test]
fn kl_triggered_anchor_copies_when_the_window_mean_exceeds_the_threshold() {
    for load in f64_models() {
        kl_triggered_anchor_copies(load);
    }
}

fn kl_triggered_anchor_copies(load: fn() -> adpo::model::SharedModel) {
    let policy = load();
    let cfg = r#"{"anchor": {"mode": "kl_triggered", "window": 2, "threshold": 0.0}, "optimizer": {"name": "sgd", "lr": 0.5}}"#;
    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
    let start = weights(&policy);
    t.step(&batch(0)).unwrap();
    let copy = |t: &Trainer| -> Vec<Tensor> {
        t.anchor()
            .copy
            .as_ref()
            .unwrap()
            .params()
            .iter()
            .map(|(_, p)| p.to_device(Device::Cpu))
            .collect()
    };
    assert_eq!(t.anchor().hard_copies, 0);
    assert!(
        max_rel_diff(&copy(&t), &start) == 0.0,
        "no copy before the window is full"
    );
    t.step(&batch(1)).unwrap();
    assert_eq!(t.anchor().hard_copies, 1);
    assert!(
        max_rel_diff(&copy(&t), &weights(&policy)) == 0.0,
        "hard copy of the policy"
    );
    // A huge threshold never triggers.
    let policy = load();
    let mut t = Trainer::new(
        policy,
        None,
        &cfg.replace("\"threshold\": 0.0", "\"threshold\": 1e9"),
    )
    .unwrap();
    for s in 0..4 {
        t.step(&batch(s)).unwrap();
    }
    assert_eq!(t.anchor().hard_copies, 0);
}

#[test]
fn fixed_anchor_needs_a_reference_or_supplied_anchor_logp() {
    let policy = model("tiny/llama");
    let mut t = Trainer::new(policy, None, r#"{"anchor": {"mode": "fixed"}}"#).unwrap();
    let mut b = batch(4);
    let e = t.step(&b).unwrap_err();
    assert!(
        e.message
            .contains("reference model or the batch's anchor_logp"),
        "{}",
        e.message
    );
    b.set_anchor_logp(&[-3.0; 12]).unwrap();
    let m = t.step(&b).unwrap();
    assert!(m.anchor_drift > 0.0);
}

#[test]
fn same_seed_same_weights() {
    let run = || {
        let policy = model("tiny/llama");
        let mut t = Trainer::new(
            policy.clone(),
            None,
            r#"{"seed": 11, "optimizer": {"name": "adamw", "lr": 0.01}, "loss": "plackett_luce"}"#,
        )
        .unwrap();
        let cfg = adpo::sample::SamplingConfig {
            max_new_tokens: 3,
            ..Default::default()
        };
        for _ in 0..3 {
            let mut b = t.sample(&[&[1, 2], &[1, 3, 4]], 4, &cfg).unwrap();
            let rewards: Vec<f64> =
                Vec::<i64>::try_from(b.ids.sum_dim_intlist(1, false, Kind::Int64))
                    .unwrap()
                    .iter()
                    .map(|&x| (x % 5) as f64)
                    .collect();
            b.set_rewards(&rewards).unwrap();
            t.step(&b).unwrap();
        }
        weights(&policy)
    };
    let (a, b) = (run(), run());
    // Bitwise on CPU; CUDA kernels may reorder float sums (atomics), so allow rounding there.
    let tol = if device() == Device::Cpu { 0.0 } else { 1e-5 };
    assert!(max_rel_diff(&a, &b) <= tol, "{}", max_rel_diff(&a, &b));
}

#[test]
fn adamw_raises_the_probability_of_preferred_candidates() {
    // Fixed anchor = the initial model; in each group the candidate with the highest reward is
    // preferred. Training must raise its log-prob relative to the others and the win mass.
    let policy = model("tiny/llama");
    let reference = model("tiny/llama");
    let mut t = Trainer::new(
        policy,
        Some(reference),
        r#"{"anchor": {"mode": "fixed"}, "optimizer": {"name": "adamw", "lr": 0.01}}"#,
    )
    .unwrap();
    let b = batch(5);
    // Margin of each group's best candidate over the group's mean log-prob.
    let rewards = Vec::<f64>::try_from(b.rewards.as_ref().unwrap()).unwrap();
    let margin = |logp: &[f64]| -> f64 {
        (0..3)
            .map(|g| {
                let rows: Vec<usize> = (0..12).filter(|r| r % 3 == g).collect();
                let best = *rows
                    .iter()
                    .max_by(|&&x, &&y| rewards[x].total_cmp(&rewards[y]))
                    .unwrap();
                logp[best] - rows.iter().map(|&r| logp[r]).sum::<f64>() / rows.len() as f64
            })
            .sum()
    };
    let before = margin(&t.sequence_logp(&b).unwrap());
    let first = t.step(&b).unwrap();
    let mut last = first;
    for _ in 0..30 {
        last = t.step(&b).unwrap();
    }
    let after = margin(&t.sequence_logp(&b).unwrap());
    assert!(after > before + 0.5, "preferred margin {before} -> {after}");
    assert!(
        last.objective.win_mass > first.objective.win_mass + 0.15,
        "win mass {} -> {}",
        first.objective.win_mass,
        last.objective.win_mass
    );
    assert!(
        last.objective.loss < first.objective.loss,
        "loss {} -> {}",
        first.objective.loss,
        last.objective.loss
    );
}

#[test]
fn checkpoint_round_trip_and_corruption() {
    let dir = std::env::temp_dir().join(format!("adpo-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.safetensors");
    let policy = model("tiny/llama");
    let cfg = r#"{"anchor": {"mode": "ema"}, "optimizer": {"name": "adamw", "lr": 0.01}}"#;
    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
    t.step(&batch(0)).unwrap();
    t.save(&path).unwrap();
    let saved_logp = t.sequence_logp(&batch(1)).unwrap();
    let saved_weights = weights(&policy);
    // The same next step from the checkpoint gives the same weights as continuing.
    t.step(&batch(1)).unwrap();
    let continued = weights(&policy);
    t.load(&path).unwrap();
    assert_eq!(t.sequence_logp(&batch(1)).unwrap(), saved_logp);
    assert_eq!(t.steps(), 1);
    t.step(&batch(1)).unwrap();
    assert_eq!(max_rel_diff(&weights(&policy), &continued), 0.0);
    // A fresh trainer loading the checkpoint reproduces the saved outputs exactly.
    let mut fresh = Trainer::new(model("tiny/llama"), None, cfg).unwrap();
    fresh.load(&path).unwrap();
    let logp = fresh.sequence_logp(&batch(1)).unwrap();
    assert_eq!(logp, saved_logp);
    // Corrupt: truncated weights file. Refused, and the trainer is unchanged and still works.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let before = weights(fresh.policy());
    let e = fresh.load(&path).unwrap_err();
    assert_eq!(e.status, Status::Checkpoint, "{}", e.message);
    assert_eq!(max_rel_diff(&weights(fresh.policy()), &before), 0.0);
    fresh.step(&batch(2)).unwrap();
    // Mismatched: a checkpoint of another architecture.
    let other_path = dir.join("qwen2.safetensors");
    Trainer::new(model("tiny/qwen2"), None, "")
        .unwrap()
        .save(&other_path)
        .unwrap();
    let e = fresh.load(&other_path).unwrap_err();
    assert_eq!(e.status, Status::Checkpoint);
    assert!(
        e.message.contains("missing") || e.message.contains("does not have"),
        "{}",
        e.message
    );
    let _ = saved_weights;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_model_is_refused_and_a_checkpoint_tells_its_vocabulary() {
    let e = Model::load(std::path::Path::new("/nonexistent/model"), Device::Cpu)
        .err()
        .unwrap();
    assert!(e.message.contains("not found"), "{}", e.message);
    assert_eq!(
        Model::load(&fixture("tiny/llama"), Device::Cpu)
            .unwrap()
            .vocab(),
        16
    );
}

/// TorchScript is an optional feature (tests/torchscript.rs runs with it): a default build
/// refuses a TorchScript file, saying how to get a build that loads it.
#[cfg(not(feature = "torchscript"))]
#[test]
fn a_torchscript_file_needs_the_torchscript_feature() {
    let e = Model::load(&fixture("tiny_transformer.pt"), Device::Cpu)
        .err()
        .unwrap();
    assert_eq!(e.status, Status::Unsupported, "{}", e.message);
    assert!(
        e.message.contains("--features torchscript"),
        "{}",
        e.message
    );
}

#[test]
fn token_ids_outside_the_vocabulary_are_a_clear_error() {
    let mut t = Trainer::new(model("tiny/llama"), None, "").unwrap();
    let mut b = Batch::new(
        2,
        3,
        &[1, 2, 99, 1, 2, 4],
        None,
        &[0, 1, 1, 0, 1, 1],
        &[0, 0],
    )
    .unwrap();
    b.set_rewards(&[1.0, 0.0]).unwrap();
    let e = t.step(&b).unwrap_err();
    assert_eq!(e.status, Status::InvalidArgument);
    assert!(
        e.message
            .contains("token id 99 is outside the vocabulary [0, 16)"),
        "{}",
        e.message
    );
}

#[test]
fn a_batch_with_nothing_to_learn_is_refused_and_changes_nothing() {
    let policy = model("tiny/llama");
    let mut t = Trainer::new(
        policy.clone(),
        None,
        r#"{"optimizer": {"name": "sgd", "lr": 0.5, "weight_decay": 0.1}}"#,
    )
    .unwrap();
    let before = weights(&policy);
    let (n, len) = (4usize, 5usize);
    let ids = vec![1i64; n * len];
    let scored: Vec<u8> = (0..n * len).map(|i| (i % len >= 2) as u8).collect();
    // Every candidate alone in its group; then groups of two without a scored token.
    let mut singletons = Batch::new(n, len, &ids, None, &scored, &[0, 1, 2, 3]).unwrap();
    let mut unscored = Batch::new(n, len, &ids, None, &vec![0; n * len], &[0, 0, 1, 1]).unwrap();
    for (b, needle) in [
        (&mut singletons, "two or more candidates"),
        (&mut unscored, "scored token"),
    ] {
        b.set_rewards(&[0.0, 1.0, 2.0, 3.0]).unwrap();
        let e = t.step(b).unwrap_err();
        assert_eq!(e.status, Status::InvalidArgument, "{}", e.message);
        assert!(e.message.contains(needle), "{}", e.message);
    }
    assert_eq!(t.steps(), 0);
    assert_eq!(max_rel_diff(&weights(&policy), &before), 0.0);
}

#[test]
fn bad_batches_are_refused() {
    let e = Batch::new(2, 3, &[1; 6], None, &[1, 0, 0, 0, 1, 1], &[0, 0])
        .err()
        .unwrap();
    assert!(e.message.contains("position 0"), "{}", e.message);
    let e = Batch::new(2, 3, &[1; 5], None, &[0; 6], &[0, 0])
        .err()
        .unwrap();
    assert_eq!(e.status, Status::ShapeMismatch);
    let mut b = Batch::new(2, 3, &[1; 6], None, &[0, 1, 1, 0, 1, 1], &[0, 0]).unwrap();
    assert_eq!(
        b.set_rewards(&[1.0, f64::NAN]).unwrap_err().status,
        Status::NonFinite
    );
    assert!(b.set_targets(&[0.5, 0.6]).is_err());
    assert!(b.set_old_logp(&[0.0; 5]).is_err());
}

#[test]
fn normalised_entropy_is_the_mean_token_entropy_over_log_v() {
    // Independent formula: softmax of the full logits that predict tokens 1..T, entropy per
    // position, mean over the loss mask, divided by ln V: through the head, all positions at once
    // or a chunk of positions at a time (any chunk size).
    let cases = [
        (model("tiny/llama"), None),
        (common::native_f64("llama_gqa2_untied_v97"), None),
        (common::native_f64("llama_gqa2_untied_v97"), Some(1)),
        (common::native_f64("qwen3_gqa2_headdim16_tied"), Some(5)),
    ];
    for (policy, chunk) in cases {
        let p = policy.lock();
        let b = batch(4);
        let (ids, attn, mask) = b.rows(0, b.n as i64, device());
        let got = adpo::logprob::normalised_entropy(&p, &ids, &attn, &mask, chunk).unwrap();
        let want = common::normalised_entropy_reference(&p, &ids, &attn, &mask);
        assert!(
            want.min().double_value(&[]) > 0.01,
            "entropies are not trivial"
        );
        let d = (got.to_kind(Kind::Double) - want)
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            d < 1e-5,
            "{}, chunk {chunk:?}: normalised entropy off by {d}",
            p.describe()
        );
    }
}

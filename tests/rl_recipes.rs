//! The RL recipes around the loss (src/trainer/batch_filters.rs, rollout_correction.rs): group
//! filtering, truncated rows, staleness and rollout correction. Each is checked against the
//! step it must equal (a batch built by hand without the filtered rows, float64, 1e-12) or
//! against a reference written here from verl's / TRL's definitions.

mod common;

use adpo::trainer::rollout_correction::{correct, RolloutCorrection};
use adpo::{Batch, Trainer};
use common::{max_rel_diff, model, weights};
use tch::{Device, Kind, Tensor};

const N: usize = 9;
const T: usize = 6;

/// Row r of the test batch: ids, loss mask (scored from column 2 or 3), group (3 groups of
/// 3, interleaved), reward (group 9's all equal).
fn row(r: usize) -> (Vec<i64>, Vec<u8>, i64, f64) {
    let ids = (0..T).map(|j| ((r * 5 + j * 3 + 1) % 16) as i64).collect();
    let loss = (0..T).map(|j| (j >= 2 + r % 2) as u8).collect();
    let group = [4, 9, 2][r % 3];
    let reward = if group == 9 {
        0.5
    } else {
        ((r as f64) * 0.77).sin()
    };
    (ids, loss, group, reward)
}

/// A batch of the rows `rows` (in that order), built from the arrays.
fn batch_of(rows: &[usize]) -> Batch {
    let (mut ids, mut loss, mut groups, mut rewards) = (vec![], vec![], vec![], vec![]);
    for &r in rows {
        let (i, l, g, w) = row(r);
        ids.extend(i);
        loss.extend(l);
        groups.push(g);
        rewards.push(w);
    }
    let mut b = Batch::new(rows.len(), T, &ids, None, &loss, &groups).unwrap();
    b.set_rewards(&rewards).unwrap();
    b
}

fn all_rows() -> Vec<usize> {
    (0..N).collect()
}

/// Weights after one step of a fresh trainer (fixed anchor: the reference fixture) with
/// `keys`, and its metrics.
fn step(keys: &str, batch: &Batch) -> (Vec<Tensor>, adpo::trainer::StepMetrics) {
    let policy = model("tiny/llama_f64");
    let cfg = format!(
        r#"{{{keys}, "anchor": {{"mode": "fixed"}}, "optimizer": {{"name": "sgd", "lr": 0.5}}}}"#
    );
    let mut t = Trainer::new(policy.clone(), Some(model("tiny/llama_f64")), &cfg).unwrap();
    let m = t.step(batch).unwrap();
    (weights(&policy), m)
}

fn assert_same(a: &[Tensor], b: &[Tensor], what: &str) {
    let d = max_rel_diff(a, b);
    assert!(d < 1e-12, "{what}: weights differ by {d}");
}

#[test]
fn filter_groups_trains_on_the_groups_with_signal_only() {
    let signal: Vec<usize> = all_rows().into_iter().filter(|r| r % 3 != 1).collect();
    for loss in ["listwise", "grpo"] {
        let keys = format!(r#""loss": "{loss}", "filter_groups": {{"min_std": 0}}"#);
        let (filtered, m) = step(&keys, &batch_of(&all_rows()));
        let (by_hand, _) = step(&format!(r#""loss": "{loss}""#), &batch_of(&signal));
        assert_same(&filtered, &by_hand, loss);
        assert_eq!(m.filters.groups_kept, 2);
        assert!((m.filters.frac_reward_zero_std - 1.0 / 3.0).abs() < 1e-15);
    }
    // ADPO's listwise loss learns from a group of equal rewards (a uniform target): without
    // the filter that group moves the weights.
    let (unfiltered, m) = step(r#""loss": "listwise""#, &batch_of(&all_rows()));
    let (signal_only, _) = step(r#""loss": "listwise""#, &batch_of(&signal));
    assert!(max_rel_diff(&unfiltered, &signal_only) > 1e-6);
    assert_eq!(m.filters.groups_kept, 3);
}

#[test]
fn filter_groups_by_mean_reward_and_refusal_when_none_is_kept() {
    // Group means: 4 (rows 0, 3, 6) -0.0856, 2 (rows 2, 5, 8) 0.0753, 9 0.5.
    let mean = |g: usize| (0..3).map(|i| row(g + 3 * i).3).sum::<f64>() / 3.0;
    assert!((mean(0) + 0.0856).abs() < 1e-4 && (mean(2) - 0.0753).abs() < 1e-4);
    let keys = r#""filter_groups": {"mean_range": [-0.2, 0.0]}"#;
    let (filtered, m) = step(keys, &batch_of(&all_rows()));
    let (by_hand, _) = step(r#""loss": "listwise""#, &batch_of(&[0, 3, 6]));
    assert_same(&filtered, &by_hand, "mean_range");
    assert_eq!(m.filters.groups_kept, 1);

    // Only the equal-reward group: nothing kept, refused, nothing changed.
    let policy = model("tiny/llama_f64");
    let before = weights(&policy);
    let cfg = r#"{"filter_groups": {"min_std": 0}, "optimizer": {"name": "sgd", "lr": 0.5}}"#;
    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
    let e = t.step(&batch_of(&[1, 4, 7])).unwrap_err();
    assert!(e.message.contains("kept none"), "{}", e.message);
    assert_same(&weights(&policy), &before, "refused step");
    assert_eq!(t.steps(), 0);
    for bad in [
        r#"{"filter_groups": {}}"#,
        r#"{"filter_groups": {"min_std": -1}}"#,
        r#"{"filter_groups": {"mean_range": [1, 0]}}"#,
        r#"{"filter_groups": {"min_std": 0, "typo": 1}}"#,
    ] {
        assert!(
            Trainer::new(model("tiny/llama_f64"), None, bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn the_sampler_records_truncated_rows_and_its_policy_version() {
    let policy = model("tiny/llama_f64");
    let cfg = r#"{"optimizer": {"name": "sgd", "lr": 0.1}, "seed": 5}"#;
    let mut t = Trainer::new(policy, None, cfg).unwrap();
    let sampling: adpo::sample::SamplingConfig =
        adpo::sample::SamplingConfig::from_json(r#"{"max_new_tokens": 4, "eos_id": [1, 2, 3]}"#)
            .unwrap();
    let prompts: [&[i64]; 3] = [&[4, 5], &[6, 7, 8], &[9]];
    let mut b = t.sample(&prompts, 4, &sampling).unwrap();
    let flags = b.truncated_values().unwrap().to_vec();
    let (mut ended, mut cut) = (0, 0);
    for (r, &f) in flags.iter().enumerate() {
        let c = b.completion(r).unwrap();
        let stopped = [1, 2, 3].contains(c.last().unwrap());
        assert_eq!(f, !stopped, "row {r}: {c:?}");
        assert!(c.len() == 4 || stopped, "row {r}: {c:?}");
        if f {
            cut += 1
        } else {
            ended += 1
        }
    }
    assert!(
        ended > 0 && cut > 0,
        "the seed gives both kinds ({ended} ended, {cut} cut)"
    );
    assert_eq!(b.policy_version, Some(0));
    // The sampler's log-probs are the batch's rollout log-probs and its old log-probs.
    let d = (b.rollout_logp_values().unwrap() - b.old_logp_values().unwrap())
        .abs()
        .max();
    assert_eq!(d.double_value(&[]), 0.0);
    b.set_rewards(&(0..12).map(|r| (r as f64 * 0.3).cos()).collect::<Vec<_>>())
        .unwrap();
    t.step(&b).unwrap();
    let b2 = t.sample(&prompts, 4, &sampling).unwrap();
    assert_eq!(b2.policy_version, Some(1));
}

#[test]
fn mask_truncated_completions_equals_the_batch_without_their_loss() {
    let truncated = [1u8, 0, 0, 0, 1, 0, 0, 0, 0];
    let cut: Vec<usize> = (0..N).filter(|&r| truncated[r] == 1).collect();
    let mut b = batch_of(&all_rows());
    b.set_truncated(&truncated).unwrap();
    // GRPO (TRL): the rows stay in their group's advantages, with no scored token.
    let (masked, m) = step(r#""loss": "grpo", "mask_truncated_completions": true"#, &b);
    let mut by_hand = {
        let (mut ids, mut loss, mut groups) = (vec![], vec![], vec![]);
        for r in 0..N {
            let (i, l, g, _) = row(r);
            ids.extend(i);
            loss.extend(l.iter().map(|&x| if cut.contains(&r) { 0 } else { x }));
            groups.push(g);
        }
        Batch::new(N, T, &ids, None, &loss, &groups).unwrap()
    };
    by_hand
        .set_rewards(&(0..N).map(|r| row(r).3).collect::<Vec<_>>())
        .unwrap();
    let (want, _) = step(r#""loss": "grpo""#, &by_hand);
    assert_same(&masked, &want, "grpo");
    assert_eq!(m.filters.truncated_rows, 2.0);
    // The sequence-level losses: the rows leave their groups.
    let kept: Vec<usize> = (0..N).filter(|r| !cut.contains(r)).collect();
    let (masked, _) = step(r#""mask_truncated_completions": true"#, &b);
    let (want, _) = step(r#""loss": "listwise""#, &batch_of(&kept));
    assert_same(&masked, &want, "listwise");
    // A batch that does not know its truncated rows is refused.
    let policy = model("tiny/llama_f64");
    let cfg = r#"{"mask_truncated_completions": true}"#;
    let mut t = Trainer::new(policy, None, cfg).unwrap();
    let e = t.step(&batch_of(&all_rows())).unwrap_err();
    assert!(e.message.contains("truncated"), "{}", e.message);
}

#[test]
fn max_staleness_refuses_old_batches_and_metrics_report_the_age() {
    let policy = model("tiny/llama_f64");
    let cfg = r#"{"max_staleness": 1, "optimizer": {"name": "sgd", "lr": 0.1}}"#;
    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
    let mut b = batch_of(&all_rows());
    b.set_policy_version(0);
    assert_eq!(t.step(&b).unwrap().filters.batch_age, 0.0);
    assert_eq!(t.step(&b).unwrap().filters.batch_age, 1.0);
    let before = weights(&policy);
    let e = t.step(&b).unwrap_err();
    assert!(e.message.contains("2 optimizer steps old"), "{}", e.message);
    assert_same(&weights(&policy), &before, "refused");
    b.set_policy_version(7);
    assert!(t.step(&b).unwrap_err().message.contains("ahead"));
    // No version: not checked, age null.
    assert!(t
        .step(&batch_of(&all_rows()))
        .unwrap()
        .filters
        .batch_age
        .is_nan());
}

/// verl's definitions, written out per token with f64 loops: the IS weight, the rejection and
/// the mismatch metrics of one batch. `old`, `rollout`, `mask` are row-major [n, t].
struct Reference {
    weights: Vec<f64>,
    keep: Vec<f64>,
    k3: f64,
    outside: f64,
    max_ratio: f64,
}

fn reference(
    cfg: &RolloutCorrection,
    old: &[f64],
    rollout: &[f64],
    mask: &[f64],
    t: usize,
) -> Reference {
    let n = old.len() / t;
    let hi = cfg.rollout_rs_threshold.unwrap_or(cfg.rollout_is_threshold);
    let lo = cfg.rollout_rs_threshold_lower.unwrap_or(1.0 / hi);
    let lr = |i: usize| {
        if mask[i] > 0.0 {
            old[i] - rollout[i]
        } else {
            0.0
        }
    };
    let (mut weights, mut keep) = (vec![0.0; n * t], vec![0.0; n * t]);
    let (mut k3, mut outside, mut max_ratio, mut tokens) = (0.0, 0.0, 0.0f64, 0.0);
    for r in 0..n {
        let row: Vec<usize> = (r * t..(r + 1) * t).collect();
        let sum: f64 = row.iter().map(|&i| lr(i)).sum();
        let count: f64 = row.iter().map(|&i| mask[i]).sum();
        let seq_ratio = sum.clamp(-20.0, 20.0).exp();
        let geo = (sum / count.max(1.0)).exp();
        for &i in &row {
            if mask[i] == 0.0 {
                continue;
            }
            let ratio = lr(i).clamp(-20.0, 20.0).exp();
            let w = match cfg.rollout_is {
                Some(adpo::trainer::rollout_correction::IsLevel::Token) => ratio,
                Some(adpo::trainer::rollout_correction::IsLevel::Sequence) => seq_ratio,
                None => 1.0,
            };
            weights[i] = w.min(cfg.rollout_is_threshold);
            let out = |x: f64| x < lo || x > hi;
            use adpo::trainer::rollout_correction::RsLevel;
            let rejected = match cfg.rollout_rs {
                Some(RsLevel::Token) => out(ratio),
                Some(RsLevel::Sequence) => out(seq_ratio),
                Some(RsLevel::Geometric) => out(geo),
                None => false,
            };
            keep[i] = if rejected { 0.0 } else { 1.0 };
            k3 += ratio - 1.0 - lr(i);
            outside += out(ratio) as u8 as f64;
            max_ratio = max_ratio.max(ratio);
            tokens += 1.0;
        }
    }
    Reference {
        weights,
        keep,
        k3: k3 / tokens,
        outside: outside / tokens,
        max_ratio,
    }
}

#[test]
fn rollout_correction_weights_rejection_and_metrics_follow_verl() {
    let (n, t) = (4usize, 5usize);
    let mask: Vec<f64> = (0..n * t)
        .map(|i| (i % t >= 1 + (i / t) % 2) as u8 as f64)
        .collect();
    let old: Vec<f64> = (0..n * t)
        .map(|i| -1.0 - (i as f64 * 0.37).sin().abs())
        .collect();
    // Ratios from about 0.3 to 2.7: some tokens and rows outside every band used below.
    let rollout: Vec<f64> = (0..n * t)
        .map(|i| old[i] + (i as f64 * 1.3).sin())
        .collect();
    let tensor = |v: &[f64]| Tensor::from_slice(v).view([n as i64, t as i64]);
    for json in [
        r#"{"rollout_is": "token"}"#,
        r#"{"rollout_is": "sequence", "rollout_is_threshold": 5.0}"#,
        r#"{"rollout_rs": "token", "rollout_rs_threshold": 5.0, "rollout_rs_threshold_lower": 0.5}"#,
        r#"{"rollout_is": "token", "rollout_rs": "sequence", "rollout_rs_threshold": 3.0}"#,
        r#"{"rollout_rs": "geometric", "rollout_rs_threshold": 1.2}"#,
    ] {
        let cfg: RolloutCorrection = serde_json::from_str(json).unwrap();
        let c = correct(Some(&cfg), &tensor(&old), &tensor(&rollout), &tensor(&mask));
        let want = reference(&cfg, &old, &rollout, &mask, t);
        let got = |x: &Option<Tensor>, ones: &[f64]| match x {
            Some(x) => Vec::<f64>::try_from(x.reshape([-1])).unwrap(),
            None => ones.to_vec(),
        };
        let close = |a: &[f64], b: &[f64], what: &str| {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() < 1e-12, "{json} {what}[{i}]: {x} vs {y}");
            }
        };
        let masked_ones: Vec<f64> = mask.clone();
        if cfg.rollout_is.is_some() {
            close(&got(&c.is_weights, &masked_ones), &want.weights, "weights");
        } else {
            assert!(c.is_weights.is_none());
        }
        close(&got(&c.keep, &masked_ones), &want.keep, "keep");
        let m = c.metrics;
        assert!((m.rollout_kl_k3 - want.k3).abs() < 1e-12, "{json} k3");
        assert!(
            (m.rollout_frac_outside - want.outside).abs() < 1e-12,
            "{json} outside"
        );
        assert!(
            (m.rollout_max_ratio - want.max_ratio).abs() < 1e-12,
            "{json} max"
        );
        if cfg.rollout_rs.is_some() {
            let rejected = 1.0 - want.keep.iter().sum::<f64>() / mask.iter().sum::<f64>();
            assert!((m.rollout_frac_rejected - rejected).abs() < 1e-12, "{json}");
            assert!(
                rejected > 0.0 && rejected < 1.0,
                "{json}: the band rejects some"
            );
        }
    }
}

/// GRPO with token TIS against autograd of verl's per-token loss: -min(r A, clip(r) A) times
/// the detached weight, over the kept tokens, GRPO's aggregation.
#[test]
fn grpo_with_importance_weights_and_rejection_equals_autograd_of_verls_loss() {
    let (n, t) = (4i64, 5i64);
    let opts = (Kind::Double, Device::Cpu);
    let logp = Tensor::from_slice(
        &(0..n * t)
            .map(|i| -0.5 - (i as f64 * 0.7).cos().abs())
            .collect::<Vec<_>>(),
    )
    .view([n, t]);
    let old = &logp
        + Tensor::from_slice(
            &(0..n * t)
                .map(|i| 0.3 * (i as f64 * 0.9).sin())
                .collect::<Vec<_>>(),
        )
        .view([n, t]);
    let weights = Tensor::from_slice(
        &(0..n * t)
            .map(|i| 0.5 + (i % 3) as f64 * 0.6)
            .collect::<Vec<_>>(),
    )
    .view([n, t]);
    let mask = Tensor::ones([n, t], opts);
    let _ = mask.get(1).get(0).fill_(0.0);
    let _ = mask.get(2).get(4).fill_(0.0); // a rejected token
    let rewards = Tensor::from_slice(&[1.0, 0.0, 0.5, 0.2]);
    let groups = adpo::objective::Groups::from_ids(&[0, 0, 1, 1]).unwrap();
    let obj = adpo::Objective::from_json(r#"{"loss": "grpo", "clip_eps": 0.2}"#).unwrap();
    let out = obj
        .eval_tokens(&adpo::objective::TokenInputs {
            logp: &logp,
            old_logp: &old,
            ref_logp: None,
            mask: &mask,
            rewards: &rewards,
            groups: &groups,
            is_weights: Some(&weights),
        })
        .unwrap();
    // Autograd of the same loss, written from verl's compute_policy_loss + agg_loss
    // ("token-mean", adpo's default dapo aggregation), with the advantages adpo computed.
    let x = logp.copy().set_requires_grad(true);
    let adv = out.scores.unsqueeze(1);
    let ratio = (&x - &old).exp();
    let pg = -(&ratio * &adv).minimum(&(ratio.clamp(0.8, 1.2) * &adv)) * &weights;
    let loss = (&pg * &mask).sum(Kind::Double) / mask.sum(Kind::Double);
    loss.backward();
    let d = (x.grad() - &out.grad_logp).abs().max().double_value(&[]);
    assert!(d < 1e-12, "gradient differs by {d}");
    assert!((loss.double_value(&[]) - out.loss).abs() < 1e-12);
}

#[test]
fn a_sequence_level_step_weights_each_tokens_gradient_by_its_importance_weight() {
    // Every token's ratio old / rollout is c, under the threshold: token TIS scales the whole
    // gradient by c, so one SGD step moves the weights c times as far.
    let c: f64 = 1.5;
    let mut b = batch_of(&all_rows());
    let old: Vec<f64> = (0..N * T).map(|i| -2.0 - (i as f64 * 0.1).sin()).collect();
    b.set_old_logp(&old).unwrap();
    b.set_rollout_logp(&old.iter().map(|x| x - c.ln()).collect::<Vec<_>>())
        .unwrap();
    let run = |correction: &str| {
        let policy = model("tiny/llama_f64");
        let start = weights(&policy);
        let cfg = format!(
            r#"{{"anchor": {{"mode": "on_policy"}}, "rollout_correction": {correction}, "optimizer": {{"name": "sgd", "lr": 0.5}}}}"#
        );
        let mut t = Trainer::new(policy.clone(), None, &cfg).unwrap();
        let m = t.step(&b).unwrap();
        let moved: Vec<Tensor> = weights(&policy)
            .iter()
            .zip(&start)
            .map(|(a, s)| a - s)
            .collect();
        (moved, m)
    };
    let (plain, m0) = run("null");
    let (weighted, m1) = run(r#"{"rollout_is": "token", "rollout_is_threshold": 2.0}"#);
    let scaled: Vec<Tensor> = plain.iter().map(|p| p * c).collect();
    let d = max_rel_diff(&weighted, &scaled);
    assert!(d < 1e-10, "weighted step vs c x plain: {d}");
    // Metrics without a correction too: every ratio is c.
    for m in [m0, m1] {
        assert!((m.rollout.rollout_max_ratio - c).abs() < 1e-12);
        assert!((m.rollout.rollout_kl_k3 - (c - 1.0 - c.ln())).abs() < 1e-12);
        assert_eq!(m.rollout.rollout_frac_outside, 0.0);
    }
    // Past the threshold the weight is truncated at it.
    let (truncated, _) = run(r#"{"rollout_is": "token", "rollout_is_threshold": 1.2}"#);
    let scaled: Vec<Tensor> = plain.iter().map(|p| p * 1.2).collect();
    assert!(max_rel_diff(&truncated, &scaled) < 1e-10);
    // A correction without rollout log-probs is refused.
    let policy = model("tiny/llama_f64");
    let cfg = r#"{"rollout_correction": {"rollout_is": "token"}}"#;
    let mut t = Trainer::new(policy, None, cfg).unwrap();
    let e = t.step(&batch_of(&all_rows())).unwrap_err();
    assert!(e.message.contains("rollout_logp"), "{}", e.message);
}

#[test]
fn concat_keeps_each_batchs_groups_apart_and_pads_to_the_longest() {
    let a = batch_of(&[0, 1, 2, 3]);
    // A second batch of t = 4: rows 4..9 cut to their first four positions.
    let (mut ids, mut loss, mut groups, mut rewards) = (vec![], vec![], vec![], vec![]);
    for r in 4..9 {
        let (i, l, g, w) = row(r);
        ids.extend(&i[..4]);
        loss.extend(&l[..4]);
        groups.push(g);
        rewards.push(w);
    }
    let mut b = Batch::new(5, 4, &ids, None, &loss, &groups).unwrap();
    b.set_rewards(&rewards).unwrap();
    b.set_policy_version(3);
    let mut a2 = batch_of(&[0, 1, 2, 3]);
    a2.set_policy_version(5);
    let c = Batch::concat(&[&a2, &b]).unwrap();
    assert_eq!((c.n, c.t), (9, T));
    // Groups [4, 9, 2, 4] -> [2, 7, 0, 2]; then [9, 2, 4, 9, 2] shifted past 7 -> [15, 8, 10, 15, 8].
    assert_eq!(c.group_ids, [2, 7, 0, 2, 15, 8, 10, 15, 8]);
    assert_eq!(c.groups.count(), 3); // groups of two or more: 2, 15, 8
    assert_eq!(c.policy_version, Some(3));
    let tail = c.ids.narrow(0, 4, 5).narrow(1, 4, 2);
    assert_eq!(
        tail.abs().sum(Kind::Int64).int64_value(&[]),
        0,
        "padded with 0"
    );
    let tail_attn = c.attention_mask.narrow(0, 4, 5).narrow(1, 4, 2);
    assert_eq!(tail_attn.sum(Kind::Int64).int64_value(&[]), 0);
    assert_eq!(
        Vec::<f64>::try_from(c.rewards.as_ref().unwrap()).unwrap(),
        (0..9).map(|r| row(r).3).collect::<Vec<_>>()
    );
    // Values some batches lack are refused.
    let mut with_old = batch_of(&[0, 1]);
    with_old.set_old_logp(&[-1.0, -2.0]).unwrap();
    let Err(e) = Batch::concat(&[&with_old, &a]) else {
        panic!("concat of batches with and without old_logp")
    };
    assert!(
        e.message.contains("1 of the 2 batches have old_logp"),
        "{}",
        e.message
    );
    assert!(Batch::concat(&[]).is_err());
}

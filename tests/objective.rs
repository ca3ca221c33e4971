//! The model-free objective through the Rust API: docs/MATH.md §10 vectors, closed-form
//! gradients against finite differences, invariances, edge cases, and every available device.

#[path = "common/objective_cases.rs"]
mod cases;

use adpo::{EvalInputs, Groups, Objective, Signal, TokenInputs};
use cases::{assert_close, close, random_batch, Rng, CONFIGS};
use tch::{Device, Kind, Tensor};

const ELL: [f64; 4] = [-12.0, -15.5, -9.8, -20.1];
const ELL_REF: [f64; 4] = [-12.5, -15.0, -10.4, -19.6];
const R1: [f64; 4] = [1.0, 0.0, 0.5, -0.1];

fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        d.push(Device::Cuda(0));
    }
    d
}

fn t(v: &[f64]) -> Tensor {
    Tensor::from_slice(v)
}

fn vec(x: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(x.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1])).unwrap()
}

struct Out {
    loss: f64,
    grad: Vec<f64>,
    scores: Vec<f64>,
    metrics: adpo::Metrics,
}

fn eval_on(
    obj: &Objective,
    logp: &[f64],
    anchor: &[f64],
    rewards: Option<&[f64]>,
    targets: Option<&[f64]>,
    ids: &[i64],
    device: Device,
) -> adpo::Result<Out> {
    let groups = Groups::from_ids(ids)?;
    let (l, a) = (t(logp).to_device(device), t(anchor).to_device(device));
    let sig = t(rewards.or(targets).unwrap()).to_device(device);
    let signal = if rewards.is_some() {
        Signal::Rewards(&sig)
    } else {
        Signal::Targets(&sig)
    };
    let out = obj.eval(&EvalInputs {
        logp: &l,
        anchor_logp: &a,
        signal,
        groups: &groups,
        policy_entropy: None,
    })?;
    Ok(Out {
        loss: out.loss,
        grad: vec(&out.grad_logp),
        scores: vec(&out.scores),
        metrics: out.metrics,
    })
}

fn eval(
    cfg: &str,
    logp: &[f64],
    anchor: &[f64],
    rewards: Option<&[f64]>,
    targets: Option<&[f64]>,
    ids: &[i64],
) -> Out {
    let obj = Objective::from_json(cfg).unwrap();
    eval_on(&obj, logp, anchor, rewards, targets, ids, Device::Cpu).unwrap()
}

const ONE_GROUP: [i64; 4] = [0, 0, 0, 0];
/// Spec values have 6 significant digits.
const SPEC: f64 = 2e-5;

#[test]
fn v1_listwise_raw_and_default_targets() {
    let o = eval(
        r#"{"reward_transform": "raw"}"#,
        &ELL,
        &ELL_REF,
        Some(&R1),
        None,
        &ONE_GROUP,
    );
    assert!(close(o.loss, 1.15766, SPEC), "{}", o.loss);
    assert_close(
        &o.grad,
        &[-0.312555, 0.0275269, 0.238502, 0.0465261],
        SPEC,
        "dL/dl",
    );
    assert_close(&o.scores, &[0.625, -0.625, 0.75, -0.625], 1e-12, "s");
    assert!(
        close(o.metrics.kl_target, 0.132279, SPEC),
        "{:?}",
        o.metrics
    );
    assert!(close(o.metrics.win_mass, 0.369528, SPEC));
    assert_eq!(o.metrics.groups, 1);
    // Section 0: the default z-score transform reproduces V1's "(A - mean A)/0.5" row.
    let d = eval("", &ELL, &ELL_REF, Some(&R1), None, &ONE_GROUP);
    assert!(close(d.loss, 1.0152, SPEC), "{}", d.loss);
    let q = [0.85375, 0.0164892, 0.118649, 0.0111119];
    let p = [0.369528, 0.105871, 0.41873, 0.105871];
    let want: Vec<f64> = p.iter().zip(q).map(|(p, q)| (p - q) / 0.8).collect();
    assert_close(&d.grad, &want, SPEC, "dL/dl zscore");
}

#[test]
fn v2_pairwise_and_dpo() {
    let (l, a, ids) = ([-12.0, -15.5], [-12.5, -15.0], [3, 3]);
    let o = eval(
        r#"{"loss": "pairwise"}"#,
        &l,
        &a,
        None,
        Some(&[0.7, 0.3]),
        &ids,
    );
    assert!(close(o.loss, 0.626929, SPEC));
    assert_close(&o.grad, &[0.0966248, -0.0966248], SPEC, "soft");
    let d = eval(r#"{"loss": "dpo"}"#, &l, &a, Some(&[1.0, 0.0]), None, &ids);
    assert!(close(d.loss, 0.251929, SPEC));
    assert_close(&d.grad, &[-0.278375, 0.278375], SPEC, "dpo");
    let e = Objective::from_json(r#"{"loss": "pairwise"}"#).unwrap();
    let err = eval_on(&e, &ELL, &ELL_REF, Some(&R1), None, &ONE_GROUP, Device::Cpu)
        .err()
        .unwrap();
    assert!(err.message.contains("exactly 2"), "{}", err.message);
}

#[test]
fn v3_v4_plackett_luce() {
    let r3 = [0.3, -1.2, 2.0, 0.7];
    let base = r#"{"loss": "plackett_luce", "pl_ties": "stable""#;
    let o = eval(
        &format!("{base}}}"),
        &ELL,
        &ELL_REF,
        Some(&r3),
        None,
        &ONE_GROUP,
    );
    assert!(close(o.loss, 2.82545, SPEC), "{}", o.loss);
    let ds: Vec<f64> = [0.782551, 0.51071, -0.58127, -0.711991]
        .iter()
        .map(|g| g / 0.8)
        .collect();
    assert_close(&o.grad, &ds, SPEC, "V3");
    // V4 gives verl's mean over positions; this library sums the kept stages.
    let o = eval(
        &format!(r#"{base}, "pl_label_smoothing": 0.1, "pl_poly_eps": 1.0}}"#),
        &ELL,
        &ELL_REF,
        Some(&r3),
        None,
        &ONE_GROUP,
    );
    assert!(close(o.loss, 3.0 * 1.53613, SPEC), "{}", o.loss);
    let ds: Vec<f64> = [0.298919, 0.196085, -0.23452, -0.260484]
        .iter()
        .map(|g| 3.0 * g / 0.8)
        .collect();
    assert_close(&o.grad, &ds, 1e-4, "V4 top3");
    let o = eval(
        &format!(r#"{base}, "pl_top_k": 2, "pl_label_smoothing": 0.1, "pl_poly_eps": 1.0}}"#),
        &ELL,
        &ELL_REF,
        Some(&r3),
        None,
        &ONE_GROUP,
    );
    assert!(close(o.loss, 2.0 * 2.01208, SPEC), "{}", o.loss);
    let ds: Vec<f64> = [0.597782, 0.144723, -0.351779, -0.390726]
        .iter()
        .map(|g| 2.0 * g / 0.8)
        .collect();
    assert_close(&o.grad, &ds, 1e-4, "V4 top2");
}

#[test]
fn v5_top1_and_v7_on_policy() {
    let o = eval(
        r#"{"loss": "top1"}"#,
        &ELL,
        &ELL_REF,
        Some(&R1),
        None,
        &ONE_GROUP,
    );
    assert!(close(o.loss, 0.99553, SPEC));
    let ds: Vec<f64> = [-0.630472, 0.105871, 0.41873, 0.105871]
        .iter()
        .map(|g| g / 0.8)
        .collect();
    assert_close(&o.grad, &ds, SPEC, "V5");
    let o = eval(
        r#"{"reward_transform": "raw"}"#,
        &ELL,
        &ELL,
        Some(&R1),
        None,
        &ONE_GROUP,
    );
    assert!(close(o.loss, 4f64.ln(), 1e-12));
    assert_close(
        &o.grad,
        &[-0.461965, 0.207688, 0.0275903, 0.226687],
        SPEC,
        "V7",
    );
}

#[test]
fn v6_kde_targets() {
    let r6 = [0.3, -1.2, 2.0, 40.0];
    let o = eval(
        r#"{"target": "kde"}"#,
        &ELL,
        &ELL_REF,
        Some(&r6),
        None,
        &ONE_GROUP,
    );
    assert!(close(o.loss, 2.03205, SPEC), "{}", o.loss);
    let ds: Vec<f64> = [0.302693, 0.0579675, 0.324228, -0.684888]
        .iter()
        .map(|g| g / 0.8)
        .collect();
    assert_close(&o.grad, &ds, SPEC, "V6");
    let o = eval(
        r#"{"target": "kde", "kde_bandwidth": 1.0}"#,
        &ELL,
        &ELL_REF,
        Some(&r6),
        None,
        &ONE_GROUP,
    );
    assert!(close(o.loss, 1.93325, SPEC), "{}", o.loss);
    // All-equal rewards: uniform target.
    let o = eval(
        r#"{"target": "kde"}"#,
        &ELL,
        &ELL,
        Some(&[2.0; 4]),
        None,
        &ONE_GROUP,
    );
    assert_close(&o.grad, &[0.0; 4], 1e-12, "uniform");
}

#[test]
fn v8_adaptive_tau() {
    for (json, tau) in [
        (
            r#"{"reward_transform": "raw", "adaptive_tau": {"rule": "target_entropy"}}"#,
            0.208273,
        ),
        (
            r#"{"reward_transform": "raw", "adaptive_tau": {"rule": "target_entropy", "alpha": 0.5, "tau_min": 0.05}}"#,
            0.504136,
        ),
    ] {
        let o = eval(json, &ELL, &ELL_REF, Some(&R1), None, &ONE_GROUP);
        assert!(close(o.metrics.tau, tau, SPEC), "{json}: {}", o.metrics.tau);
        assert!(close(o.scores[0], 0.5 / tau, SPEC));
    }
    // Rule (c): three groups with mean rewards 0, 0.2, 1 give the middle one R = 0.2; its
    // entropy input 0.3 gives tau = 0.8 (1 + 0.5*0.3 + 1.0*0.7*0.8) = 1.368.
    let obj = Objective::from_json(r#"{"adaptive_tau": {"rule": "smooth_hybrid"}}"#).unwrap();
    let ids = [0, 0, 1, 1, 2, 2];
    let rewards = t(&[0.0, 0.0, 0.1, 0.3, 1.0, 1.0]);
    let l = t(&[1.0; 6]);
    let a = t(&[0.0; 6]);
    let ent = t(&[0.3; 6]);
    let groups = Groups::from_ids(&ids).unwrap();
    let inputs = EvalInputs {
        logp: &l,
        anchor_logp: &a,
        signal: Signal::Rewards(&rewards),
        groups: &groups,
        policy_entropy: Some(&ent),
    };
    let s = vec(&obj.eval(&inputs).unwrap().scores);
    assert!(close(1.0 / s[2], 1.368, 1e-12), "{}", 1.0 / s[2]);
    let err = obj
        .eval(&EvalInputs {
            policy_entropy: None,
            ..inputs
        })
        .err()
        .unwrap();
    assert!(err.message.contains("policy_entropy"), "{}", err.message);
}

fn v9_run(cfg: &str, a_positive: bool) -> (f64, Vec<f64>) {
    // Four sequences of 3 tokens, rewards [1, 0, 1, 0] => A = +-0.865875. The V9 tokens sit in
    // row 0 (A > 0) or row 1 (A < 0); the other rows have ratio 1 and ref = logp.
    let (new, old, rf) = ([-1.0, -0.5, -2.0], [-1.2, -0.4, -2.5], [-1.1, -0.6, -2.2]);
    let row = if a_positive { 0 } else { 1 };
    let mut logp = vec![-1.0; 12];
    let mut oldv = vec![-1.0; 12];
    let mut refv = vec![-1.0; 12];
    logp[row * 3..row * 3 + 3].copy_from_slice(&new);
    oldv[row * 3..row * 3 + 3].copy_from_slice(&old);
    refv[row * 3..row * 3 + 3].copy_from_slice(&rf);
    let obj = Objective::from_json(cfg).unwrap();
    let groups = Groups::from_ids(&[5, 5, 5, 5]).unwrap();
    let (l, o, r) = (
        t(&logp).view([4, 3]),
        t(&oldv).view([4, 3]),
        t(&refv).view([4, 3]),
    );
    let m = Tensor::ones([4, 3], (Kind::Double, Device::Cpu));
    let rewards = t(&[1.0, 0.0, 1.0, 0.0]);
    let out = obj
        .eval_tokens(&TokenInputs {
            logp: &l,
            old_logp: &o,
            ref_logp: Some(&r),
            mask: &m,
            rewards: &rewards,
            groups: &groups,
            is_weights: None,
        })
        .unwrap();
    let adv = vec(&out.scores);
    assert_close(&adv, &[0.865875, -0.865875, 0.865875, -0.865875], SPEC, "A");
    // Rows other than `row` contribute -A each (ratio 1) to the mean over 4 sequences.
    let others: f64 = (0..4).filter(|&i| i != row).map(|i| -adv[i]).sum();
    let grad = vec(&out.grad_logp);
    (
        4.0 * out.loss - others,
        grad[row * 3..row * 3 + 3].iter().map(|g| 4.0 * g).collect(),
    )
}

#[test]
fn v9_grpo() {
    let g = r#"{"loss": "grpo", "aggregation": "grpo""#;
    let cases = [
        (format!("{g}}}"), true, -0.953859, [0.0, -0.261159, 0.0]),
        (
            format!(r#"{g}, "beta_kl": 0.04}}"#),
            true,
            -0.95348,
            [0.00126883, -0.25989, 0.00241692],
        ),
        (
            format!(r#"{g}, "ratio_level": "sequence"}}"#),
            true,
            -1.03905,
            [0.0, 0.0, 0.0],
        ),
        (
            format!("{g}}}"),
            false,
            1.08955,
            [0.352528, 0.261159, 0.475862],
        ),
        (
            format!(r#"{g}, "ratio_level": "sequence"}}"#),
            false,
            1.05758,
            [0.352528, 0.352528, 0.352528],
        ),
    ];
    for (cfg, pos, loss, grad) in cases {
        let (l, gr) = v9_run(&cfg, pos);
        assert!(close(l, loss, SPEC), "{cfg}: loss {l} want {loss}");
        for (a, b) in gr.iter().zip(grad) {
            assert!((a - b).abs() < 2e-6, "{cfg}: grad {gr:?} want {grad:?}");
        }
    }
}

#[test]
fn v10_optimum_has_zero_gradient_and_v11_distillation() {
    let q: Vec<f64> = {
        let e: Vec<f64> = R1.iter().map(|r| (r / 0.5f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    let pi_star = [0.213401, 0.00353663, 0.783032, 3.02934e-05];
    let pi_ref: Vec<f64> = {
        let z: f64 = ELL_REF.iter().map(|x| x.exp()).sum();
        ELL_REF.iter().map(|x| x.exp() / z).collect()
    };
    let l: Vec<f64> = pi_star.iter().map(|p: &f64| p.ln()).collect();
    let a: Vec<f64> = pi_ref.iter().map(|p| p.ln()).collect();
    let o = eval("", &l, &a, None, Some(&q), &ONE_GROUP);
    assert!(o.grad.iter().all(|g| g.abs() < 1e-5), "V10: {:?}", o.grad);
    // V11: uniform anchor, tau = T = 2, student logits as logp, teacher softmax(z/T) as target.
    let qt = {
        let e: Vec<f64> = [2.0f64, 1.0, 0.1].iter().map(|z| (z / 2.0).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect::<Vec<_>>()
    };
    let o = eval(
        r#"{"tau": 2.0}"#,
        &[1.5, 0.2, 0.3],
        &[0.0; 3],
        None,
        Some(&qt),
        &[1, 1, 1],
    );
    assert!(close(o.loss, 1.04216, SPEC));
    assert_close(&o.grad, &[-0.00939799, -0.0260987, 0.0354967], SPEC, "V11");
}

#[test]
fn closed_form_gradients_match_finite_differences() {
    let mut rng = Rng(0x1234_5678);
    for cfg in CONFIGS {
        let (logp, anchor, rewards, ids) = random_batch(&mut rng, 6, 6);
        let obj = Objective::from_json(cfg).unwrap();
        let base = eval_on(
            &obj,
            &logp,
            &anchor,
            Some(&rewards),
            None,
            &ids,
            Device::Cpu,
        )
        .unwrap();
        let h = 1e-6;
        for i in 0..logp.len() {
            let (mut up, mut down) = (logp.clone(), logp.clone());
            up[i] += h;
            down[i] -= h;
            // Random tie breaking cannot change the ranking of continuous rewards.
            let lu = eval_on(&obj, &up, &anchor, Some(&rewards), None, &ids, Device::Cpu)
                .unwrap()
                .loss;
            let ld = eval_on(
                &obj,
                &down,
                &anchor,
                Some(&rewards),
                None,
                &ids,
                Device::Cpu,
            )
            .unwrap()
            .loss;
            let fd = (lu - ld) / (2.0 * h);
            assert!(
                (fd - base.grad[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{cfg}: row {i}: fd {fd}, closed form {}",
                base.grad[i]
            );
        }
    }
}

#[test]
fn permutation_and_shift_invariance() {
    let mut rng = Rng(99);
    for cfg in CONFIGS.iter().filter(|c| !c.contains("random")) {
        let (logp, anchor, rewards, ids) = random_batch(&mut rng, 5, 5);
        let base = eval(cfg, &logp, &anchor, Some(&rewards), None, &ids);
        let n = logp.len();
        let perm: Vec<usize> = (0..n).rev().collect();
        let pick = |v: &[f64]| perm.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let pids: Vec<i64> = perm.iter().map(|&i| ids[i]).collect();
        let o = eval(
            cfg,
            &pick(&logp),
            &pick(&anchor),
            Some(&pick(&rewards)),
            None,
            &pids,
        );
        assert!(close(o.loss, base.loss, 1e-10), "{cfg}: permuted loss");
        assert_close(&o.grad, &pick(&base.grad), 1e-9, "permuted grad");
        if cfg.contains("clip") || cfg.contains("anchor_kl") {
            continue; // clamps and the k3 penalty look at the raw log-ratio, not only its group shape
        }
        // Add a constant per group to logp and another to anchor_logp.
        let shift = |v: &[f64], c: f64| {
            v.iter()
                .zip(&ids)
                .map(|(x, id)| x + c * (*id as f64 % 5.0))
                .collect::<Vec<_>>()
        };
        let o = eval(
            cfg,
            &shift(&logp, 0.7),
            &shift(&anchor, -1.3),
            Some(&rewards),
            None,
            &ids,
        );
        assert!(
            close(o.loss, base.loss, 1e-9),
            "{cfg}: shifted loss {} vs {}",
            o.loss,
            base.loss
        );
        assert_close(&o.grad, &base.grad, 1e-7, "shifted grad");
    }
}

#[test]
fn edge_cases() {
    // Only singletons: nothing counted, loss 0, zero gradient.
    let o = eval(
        "",
        &[1.0, 2.0],
        &[0.0, 0.0],
        Some(&[1.0, 2.0]),
        None,
        &[1, 2],
    );
    assert_eq!((o.loss, o.metrics.groups), (0.0, 0));
    assert_eq!(o.grad, vec![0.0, 0.0]);
    // Singletons beside a group change nothing.
    let a = eval("", &ELL, &ELL_REF, Some(&R1), None, &ONE_GROUP);
    let mut l = ELL.to_vec();
    l.push(3.0);
    let mut r = ELL_REF.to_vec();
    r.push(-1.0);
    let mut rw = R1.to_vec();
    rw.push(5.0);
    let b = eval("", &l, &r, Some(&rw), None, &[0, 0, 0, 0, 1]);
    assert!(close(a.loss, b.loss, 1e-14));
    assert_eq!(b.grad[4], 0.0);
    // All-equal rewards: q uniform.
    let o = eval("", &ELL, &ELL_REF, Some(&[0.5; 4]), None, &ONE_GROUP);
    let p = [0.369528, 0.105871, 0.41873, 0.105871];
    assert_close(&o.grad, &p.map(|p| (p - 0.25) / 0.8), SPEC, "uniform q");
    // Ties in top1 share the mass.
    let o = eval(
        r#"{"loss": "top1"}"#,
        &ELL,
        &ELL_REF,
        Some(&[1.0, 1.0, 0.0, 0.0]),
        None,
        &ONE_GROUP,
    );
    assert_close(
        &o.grad,
        &[
            (p[0] - 0.5) / 0.8,
            (p[1] - 0.5) / 0.8,
            p[2] / 0.8,
            p[3] / 0.8,
        ],
        SPEC,
        "tied top1",
    );
    // |s| up to 1e4: finite everything (the k3 anchor penalty exp(8000) overflows: an error).
    for cfg in CONFIGS.iter().filter(|c| !c.contains("anchor_kl")) {
        let o = eval(
            cfg,
            &[8000.0, -8000.0, 0.0, 1.0],
            &[0.0; 4],
            Some(&R1),
            None,
            &ONE_GROUP,
        );
        assert!(
            o.loss.is_finite() && o.grad.iter().all(|g| g.is_finite()),
            "{cfg}: {} {:?}",
            o.loss,
            o.grad
        );
        let clamped = cfg.contains("clip_score");
        assert!(
            o.metrics.max_abs_score >= 9999.0 || clamped && o.metrics.max_abs_score <= 1.5,
            "{cfg}"
        );
    }
    let obj = Objective::from_json(r#"{"beta_anchor_kl": 0.3}"#).unwrap();
    let e = eval_on(
        &obj,
        &[8000.0, -8000.0, 0.0, 1.0],
        &[0.0; 4],
        Some(&R1),
        None,
        &ONE_GROUP,
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert_eq!(e.status, adpo::Status::NonFinite, "{}", e.message);
    // One huge group, K = 4096.
    let mut rng = Rng(7);
    let k = 4096;
    let logp: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
    let rewards: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
    for cfg in ["", r#"{"target": "kde"}"#, r#"{"loss": "plackett_luce"}"#] {
        let o = eval(
            cfg,
            &logp,
            &vec![0.0; k],
            Some(&rewards),
            None,
            &vec![42; k],
        );
        assert!(
            o.loss.is_finite() && o.grad.iter().all(|g| g.is_finite()),
            "{cfg}"
        );
        let sum: f64 = o.grad.iter().sum();
        assert!(
            sum.abs() < 1e-9,
            "{cfg}: gradient of a softmax loss sums to 0 over a group, got {sum}"
        );
    }
}

#[test]
fn bad_input_is_rejected_with_named_arguments() {
    let obj = Objective::from_json("").unwrap();
    let e = eval_on(
        &obj,
        &ELL,
        &ELL_REF,
        Some(&[1.0, f64::NAN, 0.0, 0.0]),
        None,
        &ONE_GROUP,
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert_eq!(e.status, adpo::Status::NonFinite);
    assert!(e.message.contains("rewards"));
    let e = eval_on(
        &obj,
        &ELL,
        &ELL_REF,
        None,
        Some(&[0.5, 0.6, 0.0, 0.0]),
        &ONE_GROUP,
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(e.message.contains("sum to 1"), "{}", e.message);
    let e = eval_on(
        &obj,
        &ELL,
        &ELL_REF,
        None,
        Some(&[1.5, -0.5, 0.0, 0.0]),
        &ONE_GROUP,
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(e.message.contains(">= 0"), "{}", e.message);
    let e = eval_on(
        &obj,
        &ELL,
        &[0.0; 3],
        Some(&R1),
        None,
        &ONE_GROUP,
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert_eq!(e.status, adpo::Status::ShapeMismatch);
    assert!(e.message.contains("anchor_logp"));
    let grpo = Objective::from_json(r#"{"loss": "grpo"}"#).unwrap();
    assert!(eval_on(
        &grpo,
        &ELL,
        &ELL_REF,
        Some(&R1),
        None,
        &ONE_GROUP,
        Device::Cpu
    )
    .is_err());
}

#[test]
fn every_device_and_dtype_agrees_with_cpu_f64() {
    let mut rng = Rng(2024);
    let (logp, anchor, rewards, ids) = random_batch(&mut rng, 8, 5);
    for cfg in CONFIGS.iter().filter(|c| !c.contains("random")) {
        let obj = Objective::from_json(cfg).unwrap();
        let want = eval_on(
            &obj,
            &logp,
            &anchor,
            Some(&rewards),
            None,
            &ids,
            Device::Cpu,
        )
        .unwrap();
        for device in devices() {
            for kind in [Kind::Double, Kind::Float] {
                let groups = Groups::from_ids(&ids).unwrap();
                let l = t(&logp).to_kind(kind).to_device(device);
                let a = t(&anchor).to_kind(kind).to_device(device);
                let r = t(&rewards).to_kind(kind).to_device(device);
                let out = obj
                    .eval(&EvalInputs {
                        logp: &l,
                        anchor_logp: &a,
                        signal: Signal::Rewards(&r),
                        groups: &groups,
                        policy_entropy: None,
                    })
                    .unwrap();
                assert_eq!(out.grad_logp.device(), device);
                let tol = if kind == Kind::Double { 1e-9 } else { 2e-4 };
                assert!(
                    close(out.loss, want.loss, tol),
                    "{cfg} {device:?} {kind:?}: {} vs {}",
                    out.loss,
                    want.loss
                );
                let g = vec(&out.grad_logp);
                for (a, b) in g.iter().zip(&want.grad) {
                    assert!(
                        (a - b).abs() < tol * 10.0,
                        "{cfg} {device:?} {kind:?}: grad {a} vs {b}"
                    );
                }
            }
        }
    }
}

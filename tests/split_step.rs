//! A step in two calls (src/trainer/split_step.rs): forward_backward with the host's own
//! dL/d(token log-prob), then optim_step. A host gradient equal to the listwise loss's gives
//! the weights of adpo_trainer_step; gradients of three calls add up to one call on their union
//! (float64, 1e-10).

mod common;

use adpo::objective::{EvalInputs, Signal};
use adpo::{Batch, Objective, Trainer};
use common::{batch, max_rel_diff, model, weights};
use tch::{Kind, Tensor};

const CFG: &str =
    r#"{"anchor": {"mode": "fixed"}, "optimizer": {"name": "adamw", "lr": 0.01}, "seed": 1}"#;

/// A batch with fixed per-sequence anchor log-probs (so the loss needs no reference model).
fn anchored(seed: i64) -> Batch {
    let mut b = batch(seed);
    let anchor: Vec<f64> = (0..b.n).map(|r| -2.0 - 0.1 * r as f64).collect();
    b.set_anchor_logp(&anchor).unwrap();
    b
}

/// dL/d(token log-prob) of the listwise loss, by the objective on the policy's sequence
/// log-probs: dL/dl_i spread over row i's scored tokens (seq_logp mean: m_t / n_i).
fn listwise_token_grad(t: &Trainer, b: &Batch) -> Tensor {
    let tok = t.token_logp(b).unwrap();
    let mask = b.loss_mask.to_kind(Kind::Double);
    let n_i = mask.sum_dim_intlist(1, true, Kind::Double);
    let l = tok.sum_dim_intlist(1, false, Kind::Double) / n_i.squeeze_dim(1);
    let obj = Objective::from_json(r#"{"loss": "listwise"}"#).unwrap();
    let anchor = match b.anchor_logp.as_ref().unwrap() {
        adpo::batch::SuppliedLogp::Sequence(a) => a.to_kind(Kind::Double),
        _ => unreachable!(),
    };
    let rewards = b.rewards.as_ref().unwrap().to_kind(Kind::Double);
    let out = obj
        .eval(&EvalInputs {
            logp: &l,
            anchor_logp: &anchor,
            signal: Signal::Rewards(&rewards),
            groups: &b.groups,
            policy_entropy: None,
        })
        .unwrap();
    out.grad_logp.unsqueeze(1) * &mask / &n_i
}

#[test]
fn a_host_gradient_equal_to_the_listwise_losss_gives_the_steps_weights() {
    let (p1, p2) = (model("tiny/llama_f64"), model("tiny/llama_f64"));
    let mut stepped = Trainer::new(p1.clone(), None, CFG).unwrap();
    let mut split = Trainer::new(p2.clone(), None, CFG).unwrap();
    for seed in [1, 2] {
        let b = anchored(seed);
        stepped.step(&b).unwrap();
        let g = listwise_token_grad(&split, &b);
        let m = split.forward_backward(&b, Some(&g)).unwrap();
        assert!(m.objective.loss.is_nan() && m.grad_norm.is_nan());
        assert!(split.has_pending_gradients());
        let m = split.optim_step().unwrap();
        assert!(m.grad_norm > 0.0);
    }
    let d = max_rel_diff(&weights(&p2), &weights(&p1));
    assert!(d < 1e-10, "weights differ by {d}");
    // And the built-in loss through the two calls is the step too.
    let p3 = model("tiny/llama_f64");
    let mut builtin = Trainer::new(p3.clone(), None, CFG).unwrap();
    for seed in [1, 2] {
        builtin.forward_backward(&anchored(seed), None).unwrap();
        builtin.optim_step().unwrap();
    }
    let d = max_rel_diff(&weights(&p3), &weights(&p1));
    assert!(d < 1e-10, "built-in loss in two calls: {d}");
}

#[test]
fn gradients_of_three_calls_add_up_to_one_call_on_their_union() {
    let parts = [anchored(1), anchored(2), anchored(3)];
    let grad = |b: &Batch| {
        let v: Vec<f64> = (0..b.n * b.t).map(|i| (i as f64 * 0.37).sin()).collect();
        Tensor::from_slice(&v).view([b.n as i64, b.t as i64])
    };
    let sgd = r#"{"anchor": {"mode": "fixed"}, "optimizer": {"name": "sgd", "lr": 0.1}}"#;
    let (p1, p2) = (model("tiny/llama_f64"), model("tiny/llama_f64"));
    let mut three = Trainer::new(p1.clone(), None, sgd).unwrap();
    for b in &parts {
        three.forward_backward(b, Some(&grad(b))).unwrap();
    }
    three.optim_step().unwrap();
    let union = Batch::concat(&[&parts[0], &parts[1], &parts[2]]).unwrap();
    let g = Tensor::cat(&parts.iter().map(grad).collect::<Vec<_>>(), 0);
    let mut one = Trainer::new(p2.clone(), None, sgd).unwrap();
    one.forward_backward(&union, Some(&g)).unwrap();
    one.optim_step().unwrap();
    let d = max_rel_diff(&weights(&p1), &weights(&p2));
    assert!(d < 1e-10, "three calls vs their union: {d}");
}

#[test]
fn the_two_calls_refuse_what_would_lose_or_invent_gradients() {
    let p = model("tiny/llama_f64");
    let mut t = Trainer::new(p.clone(), None, CFG).unwrap();
    let e = t.optim_step().unwrap_err();
    assert!(
        e.message.contains("forward_backward first"),
        "{}",
        e.message
    );
    let b = anchored(1);
    // A gradient of the wrong shape: refused, nothing pending.
    let bad = Tensor::zeros([2, 2], (Kind::Double, tch::Device::Cpu));
    assert!(t.forward_backward(&b, Some(&bad)).is_err());
    assert!(!t.has_pending_gradients());
    // A step while gradients are pending would discard them: refused.
    t.forward_backward(&b, None).unwrap();
    let e = t.step(&b).unwrap_err();
    assert!(e.message.contains("optim_step"), "{}", e.message);
    let before = weights(&p);
    t.optim_step().unwrap();
    assert!(max_rel_diff(&weights(&p), &before) > 0.0);
    assert!(!t.has_pending_gradients());
}

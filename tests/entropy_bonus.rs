//! The entropy bonus (trainer key `entropy_coef`): the head's chunked backward adds the closed-form
//! entropy gradient dH/dz = -p (log p + H) per scored position, equal to autograd through full
//! logits; a trainer step moves the weights by lr * coef * grad(mean token entropy), which finite
//! differences of that entropy confirm; the step reports the entropy it used.

mod common;

use adpo::logprob::{chunked, from_logits};
use adpo::trainer::Trainer;
use adpo::Model;
use common::{batch, native_f64, weights};
use tch::{Device, Kind, Tensor};

fn zero_grads(model: &Model) {
    for (_, p) in model.params() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

fn grads(model: &Model) -> Vec<Tensor> {
    let params = model.params();
    params.iter().map(|(_, p)| p.grad().copy()).collect()
}

/// Next-token entropies [N, T] from full logits, at the predicted token's position (column 0: 0).
fn full_entropy(model: &Model, ids: &Tensor, attn: &Tensor) -> Tensor {
    let t = ids.size()[1];
    let logp = model
        .logits(ids, attn)
        .unwrap()
        .narrow(1, 0, t - 1)
        .log_softmax(2, Kind::Double);
    let h = -(logp.exp() * &logp).sum_dim_intlist(2, false, Kind::Double);
    Tensor::cat(&[h.zeros_like().narrow(1, 0, 1), h], 1)
}

/// Mean next-token entropy over the scored tokens, through the chunked head (no grad).
fn mean_entropy(model: &Model, ids: &Tensor, attn: &Tensor, mask: &Tensor) -> f64 {
    let hidden = tch::no_grad(|| model.forward(ids, attn).unwrap());
    let h = chunked::token_entropy(model, &hidden, ids, mask, 4).unwrap();
    let t = ids.size()[1];
    let n = mask.narrow(1, 1, t - 1).sum(Kind::Double).double_value(&[]);
    h.sum(Kind::Double).double_value(&[]) / n
}

#[test]
fn chunked_entropy_gradient_equals_autograd_on_full_logits() {
    for name in ["qwen3_gqa2_headdim16_tied", "llama_gqa2_untied_v97"] {
        let shared = native_f64(name);
        let mut model = shared.lock();
        model.set_trainable(true);
        let b = batch(3);
        let d = model.device();
        let (ids, attn, mask) = b.rows(0, b.n as i64, d);
        let mask = mask.to_kind(Kind::Double);
        let w = Tensor::randn(mask.size(), (Kind::Double, d)) * &mask;
        let e = Tensor::randn(mask.size(), (Kind::Double, d)) * &mask;
        // Autograd: sum(w * token log-probs) + sum(e * entropies) over the scored positions.
        let tok = from_logits(&model.logits(&ids, &attn).unwrap(), &ids, &mask);
        let h_full = full_entropy(&model, &ids, &attn);
        let surrogate = (&tok * &w).sum(Kind::Double) + (&h_full * &e * &mask).sum(Kind::Double);
        surrogate.backward();
        let want = grads(&model);
        let want_h = (h_full.detach() * &mask)
            .sum(Kind::Double)
            .double_value(&[]);
        zero_grads(&model);
        for rows in [1, 5, 1000] {
            let mut got_h = 0.0;
            let head = &mut |h: &Tensor| {
                let (g, s) = chunked::head_backward(&model, h, &ids, &mask, &w, Some(&e), rows)?;
                got_h = s.expect("entropy weights were given").double_value(&[]);
                Ok(g)
            };
            model
                .backward_through((&ids, &attn), None, false, head)
                .unwrap();
            let dh = (got_h - want_h).abs() / want_h;
            assert!(dh < 1e-12, "{name}, {rows} rows: entropy sum off by {dh}");
            let got = grads(&model);
            let d = common::max_rel_diff(&got, &want);
            assert!(d < 1e-10, "{name}, {rows} rows: gradients off by {d}");
            zero_grads(&model);
        }
    }
}

/// The weights after one SGD step (lr 1, no clipping) and its metrics, under `extra` keys.
fn step(extra: &str) -> (Vec<Tensor>, adpo::trainer::StepMetrics) {
    let policy = native_f64("qwen3_gqa2_headdim16_tied");
    let cfg = format!(r#"{{"optimizer": {{"name": "sgd", "lr": 1.0}}{extra}}}"#);
    let mut t = Trainer::new(policy.clone(), None, &cfg).unwrap();
    let m = t.step(&batch(3)).unwrap();
    (weights(&policy), m)
}

#[test]
fn a_step_adds_coef_times_the_entropy_gradient_checked_by_finite_differences() {
    let coef = 0.3;
    let (plain, m0) = step("");
    let (bonus, m) = step(&format!(r#", "entropy_coef": {coef}"#));
    let (split, m2) = step(&format!(
        r#", "entropy_coef": {coef}, "micro_batch_rows": 5, "logprob_chunk_rows": 3"#
    ));
    assert!(m0.policy_entropy.is_nan(), "no bonus: entropy not computed");
    let d = common::max_rel_diff(&split, &bonus);
    assert!(d < 1e-12, "micro-batches change the bonus step by {d}");
    // SGD with lr 1: bonus - plain = coef * grad(mean entropy).
    let model = native_f64("qwen3_gqa2_headdim16_tied");
    let model = model.lock();
    let b = batch(3);
    let (ids, attn, mask) = b.rows(0, b.n as i64, model.device());
    let h0 = mean_entropy(&model, &ids, &attn, &mask);
    assert!(
        (m.policy_entropy - h0).abs() < 1e-12 * h0,
        "{} vs {h0}",
        m.policy_entropy
    );
    assert!((m2.policy_entropy - h0).abs() < 1e-12 * h0);
    let params = model.params();
    let mut checked = 0;
    for (i, (name, p)) in params.iter().enumerate() {
        let step_grad = (&bonus[i] - &plain[i]) / coef;
        let flat = step_grad.reshape([-1]);
        // The entry of largest effect, and the first one.
        let biggest = flat.abs().argmax(0, false).int64_value(&[]);
        for at in [0, biggest] {
            let delta = 1e-6;
            let pf = p.detach().reshape([-1]);
            let orig = pf.double_value(&[at]);
            let at_value = |v: f64| {
                tch::no_grad(|| {
                    let _ = pf.narrow(0, at, 1).fill_(v);
                });
                mean_entropy(&model, &ids, &attn, &mask)
            };
            let fd = (at_value(orig + delta) - at_value(orig - delta)) / (2.0 * delta);
            at_value(orig);
            let got = flat.to_device(Device::Cpu).double_value(&[at]);
            let tol = 1e-6 * fd.abs().max(1e-2);
            assert!(
                (got - fd).abs() < tol,
                "{name}[{at}]: step {got}, finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4);
}

//! Trainer key `precision`: "bf16-mixed" trains a bfloat16 model through float32
//! master weights and optimizer state (src/model/masters.rs). Its update follows the float32
//! model's, where pure bfloat16 rounds most of it away; checkpoints hold the masters and resume
//! exactly; an EMA anchor averages in float32; what cannot work is refused.

mod common;

use adpo::model::{Dtype, LoadOptions, SharedModel};
use adpo::trainer::Trainer;
use adpo::{Batch, Model, Status};
use parking_lot::Mutex;
use std::sync::Arc;
use tch::{Kind, Tensor};

const FIXTURE: &str = "llama_gqa2_untied_v97";

fn policy(dtype: Dtype) -> SharedModel {
    let dir = common::fixtures_dir().join("hf").join(FIXTURE);
    let options = LoadOptions {
        device: common::device(),
        dtype,
        ..LoadOptions::default()
    };
    Arc::new(Mutex::new(Model::load_with(&dir, &options).unwrap()))
}

fn batch(seed: i64) -> Batch {
    let (n, t) = (6usize, 7usize);
    let ids: Vec<i64> = (0..n * t)
        .map(|i| (i as i64 * 37 + 11 + seed * 5) % 90)
        .collect();
    let loss: Vec<u8> = (0..n * t).map(|i| u8::from(i % t >= 3)).collect();
    let groups: Vec<i64> = (0..n).map(|r| (r / 3) as i64).collect();
    let mut b = Batch::new(n, t, &ids, None, &loss, &groups).unwrap();
    b.set_rewards(&[1.0, 0.0, 0.5, -1.0, 2.0, 0.3]).unwrap();
    b
}

fn config(precision: &str, optimizer: &str) -> String {
    format!(r#"{{"loss": "listwise", "optimizer": {optimizer}, "precision": "{precision}"}}"#)
}

/// The update of one step, flattened (f64), and the model afterwards.
fn update(dtype: Dtype, precision: &str, optimizer: &str) -> (Tensor, SharedModel) {
    let model = policy(dtype);
    let mut t = Trainer::new(model.clone(), None, &config(precision, optimizer)).unwrap();
    let before = Tensor::from_slice(&model.lock().flat_params().unwrap());
    t.step(&batch(0)).unwrap();
    let after = Tensor::from_slice(&model.lock().flat_params().unwrap());
    (after - before, model)
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
}

#[test]
fn the_mixed_update_follows_float32_where_pure_bfloat16_loses_it() {
    let sgd = r#"{"name": "sgd", "lr": 0.001}"#;
    let (full, _) = update(Dtype::Float32, "as_loaded", sgd);
    let (mixed, model) = update(Dtype::Bfloat16, "bf16-mixed", sgd);
    let (pure, _) = update(Dtype::Bfloat16, "as_loaded", sgd);
    let (rel_mixed, rel_pure) = (rel(&mixed, &full), rel(&pure, &full));
    // bfloat16 forward and backward: a few per cent of noise in the gradient.
    assert!(
        rel_mixed < 0.1,
        "mixed update is {rel_mixed} from float32's"
    );
    // Updates below half a bfloat16 ulp of their weight vanish in pure bfloat16.
    assert!(
        rel_pure > 0.5,
        "pure bf16 update is only {rel_pure} from float32's"
    );
    // The network holds the rounded masters.
    let m = model.lock();
    assert!(m.holds_masters());
    for ((name, p), (_, master)) in m.params().iter().zip(m.values()) {
        assert_eq!(
            (p.kind(), master.kind()),
            (Kind::BFloat16, Kind::Float),
            "{name}"
        );
        assert!(
            p.equal(&master.to_kind(Kind::BFloat16)),
            "{name} is not its rounded master"
        );
    }
}

#[test]
fn checkpoints_hold_the_float32_masters_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.safetensors");
    let cfg = config("bf16-mixed", r#"{"name": "adamw", "lr": 1e-3}"#);
    let model = policy(Dtype::Bfloat16);
    let mut t = Trainer::new(model.clone(), None, &cfg).unwrap();
    t.step(&batch(0)).unwrap();
    t.save(&path).unwrap();
    let file = Tensor::read_safetensors(&path).unwrap();
    let weight = file
        .iter()
        .find(|(n, _)| n == "model.layers.0.mlp.up_proj.weight")
        .map(|(_, w)| w)
        .unwrap();
    assert_eq!(
        weight.kind(),
        Kind::Float,
        "the checkpoint holds the float32 master"
    );
    let resumed_model = policy(Dtype::Bfloat16);
    let mut resumed = Trainer::new(resumed_model.clone(), None, &cfg).unwrap();
    resumed.load(&path).unwrap();
    for m in [&model, &resumed_model] {
        let m = m.lock();
        let (p, master) = (&m.params()[1].1, &m.values()[1].1);
        assert!(p.equal(&master.to_kind(Kind::BFloat16)));
    }
    t.step(&batch(1)).unwrap();
    resumed.step(&batch(1)).unwrap();
    let (a, b) = (
        model.lock().flat_params().unwrap(),
        resumed_model.lock().flat_params().unwrap(),
    );
    assert_eq!(a, b, "the resumed run's masters differ");
    // An as_loaded trainer on the same bf16 model does not take float32 masters.
    let mut plain = Trainer::new(
        policy(Dtype::Bfloat16),
        None,
        &config("as_loaded", r#"{"name": "adamw", "lr": 1e-3}"#),
    )
    .unwrap();
    assert_eq!(plain.load(&path).unwrap_err().status, Status::Checkpoint);
}

#[test]
fn an_ema_anchor_averages_the_float32_masters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ema.safetensors");
    let alpha = 0.9;
    let cfg = format!(
        r#"{{"anchor": {{"mode": "ema", "alpha": {alpha}}}, "optimizer": {{"name": "sgd", "lr": 0.01}}, "precision": "bf16-mixed"}}"#
    );
    let model = policy(Dtype::Bfloat16);
    let mut t = Trainer::new(model.clone(), None, &cfg).unwrap();
    let name = "model.layers.1.self_attn.o_proj.weight";
    let master = |m: &SharedModel| {
        let m = m.lock();
        let (_, v) = m.values().iter().find(|(n, _)| n == name).unwrap();
        v.to_kind(Kind::Double)
    };
    let mut expected = master(&model);
    for step in 0..4 {
        t.step(&batch(step)).unwrap();
        expected = &expected * alpha + master(&model) * (1.0 - alpha);
    }
    t.save(&path).unwrap();
    let anchor = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == &format!("__adpo__.anchor.{name}"))
        .map(|(_, w)| w)
        .unwrap();
    assert_eq!(anchor.kind(), Kind::Float);
    let d = rel(
        &(anchor.to_kind(Kind::Double) - master(&model)),
        &(&expected - master(&model)),
    );
    // float32 EMA: 1e-5 of the anchor's distance to the policy; a bfloat16 one is off by
    // about its ulp, comparable to that distance.
    assert!(
        d < 1e-3,
        "EMA anchor is {d} (relative to its drift) from the float32 formula"
    );
}

#[test]
fn what_mixed_precision_cannot_do_is_refused() {
    let sgd = r#"{"name": "sgd", "lr": 0.001}"#;
    let e = Trainer::new(policy(Dtype::Float32), None, &config("bf16-mixed", sgd))
        .err()
        .unwrap();
    assert_eq!(e.status, Status::InvalidArgument, "{e}");
    assert!(
        e.message.contains(r#"load it with {"dtype": "bfloat16"}"#),
        "{e}"
    );
    // A refused trainer changes nothing: a first trainer on the handle keeps stepping.
    let model = policy(Dtype::Float32);
    let part = r#"{"optimizer": {"name": "sgd", "lr": 0.001}, "trainable": ["*.mlp.*"]}"#;
    let mut first = Trainer::new(model.clone(), None, part).unwrap();
    let mixed_all = r#"{"precision": "bf16-mixed", "trainable": ["*"]}"#;
    assert!(Trainer::new(model.clone(), None, mixed_all).is_err());
    first.step(&batch(0)).unwrap();
    let e = Trainer::new(policy(Dtype::Float16), None, &config("fp16-mixed", sgd))
        .err()
        .unwrap();
    assert_eq!(e.status, Status::InvalidConfig, "{e}");
    assert!(e.message.contains("loss scaling"), "{e}");
    let e = Trainer::new(policy(Dtype::Bfloat16), None, &config("bf16", sgd))
        .err()
        .unwrap();
    assert_eq!(e.status, Status::InvalidConfig, "{e}");
}

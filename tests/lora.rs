//! LoRA adapters on native models (src/model/native/lora*.rs, adapters.rs, peft.rs): the base
//! as the fixed anchor without a reference handle, a frozen base, the refusals, trainer
//! checkpoints that hold the adapters only, and the adapter and merged saves read back. The
//! comparison with PEFT itself is tests/python/test_lora.py. Fixtures: `$ADPO_FIXTURES/hf`
//! (`make fixtures`).

mod common;

use adpo::checkpoint;
use adpo::model::{LoadOptions, SharedModel};
use adpo::trainer::Trainer;
use adpo::{Batch, Model, Status};
use common::device;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

const BASE: &str = "llama_gqa2_untied_v97";
const ALL: &str =
    r#"["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]"#;

fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
    });
    let p = PathBuf::from(dir).join("hf").join(name);
    assert!(
        p.join("config.json").is_file(),
        "{} missing: run `make fixtures`",
        p.display()
    );
    p
}

/// Loads with the JSON options (as adpo_model_load_options does) on the test device.
fn load(dir: &Path, json: &str) -> adpo::Result<Model> {
    let options = LoadOptions {
        device: device(),
        ..LoadOptions::from_json(json)?
    };
    Model::load_with(dir, &options)
}

fn shared(model: Model) -> SharedModel {
    Arc::new(Mutex::new(model))
}

/// LoRA r = 4 on every projection of the base, in `dtype`, with a gaussian A (larger updates).
fn lora_json(dtype: &str) -> String {
    format!(
        r#"{{"dtype": "{dtype}", "lora": {{"r": 4, "alpha": 8, "target_modules": {ALL}, "init": "gaussian", "seed": 3}}}}"#
    )
}

/// 2 groups x 3 candidates, T = 7, ids below 90.
fn batch(seed: i64) -> Batch {
    let (n, t) = (6usize, 7usize);
    let ids: Vec<i64> = (0..n * t)
        .map(|i| (i as i64 * 37 + 11 + seed * 5) % 90)
        .collect();
    let mut loss = vec![0u8; n * t];
    for r in 0..n {
        for j in (2 + r % 3)..t {
            loss[r * t + j] = 1;
        }
    }
    let groups: Vec<i64> = (0..n).map(|r| (r / 3) as i64).collect();
    let mut b = Batch::new(n, t, &ids, None, &loss, &groups).unwrap();
    let rewards: Vec<f64> = (0..n)
        .map(|r| ((r as i64 + seed) as f64 * 0.7).sin())
        .collect();
    b.set_rewards(&rewards).unwrap();
    b
}

fn copies(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect()
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            let d = ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double);
            d.abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn logits(m: &Model, b: &Batch) -> Tensor {
    let (ids, attn, _) = b.rows(0, b.n as i64, m.device());
    tch::no_grad(|| m.logits(&ids, &attn).unwrap())
}

/// GRPO with a KL term, float64: the LoRA policy's base as the KL reference (no reference
/// handle) equals the base loaded as a reference handle; without the KL term it differs.
#[test]
fn grpo_kl_against_the_base_equals_the_base_as_a_reference_handle() {
    let cfg = |beta: f64| {
        format!(
            r#"{{"loss": "grpo", "beta_kl": {beta}, "optimizer": {{"name": "sgd", "lr": 2.0}}}}"#
        )
    };
    let run = |reference: Option<SharedModel>, beta: f64| {
        let policy = shared(load(&fixture(BASE), &lora_json("float64")).unwrap());
        let mut t = Trainer::new(policy.clone(), reference, &cfg(beta)).unwrap();
        for i in 0..3 {
            t.step(&batch(i)).unwrap();
        }
        let p = policy.lock();
        copies(p.params())
    };
    let own = run(None, 0.5);
    let base = shared(load(&fixture(BASE), r#"{"dtype": "float64"}"#).unwrap());
    let handle = run(Some(base), 0.5);
    let d = max_diff(&own, &handle);
    assert!(d < 1e-10, "adapters differ by {d}");
    assert!(
        max_diff(&own, &run(None, 0.0)) > 1e-8,
        "the KL term against the base changed nothing"
    );
}

#[test]
fn params_are_the_adapters_and_the_base_is_frozen() {
    let m = load(&fixture(BASE), &lora_json("float32")).unwrap();
    // 2 layers x 7 projections x (A, B).
    assert_eq!(m.params().len(), 28);
    assert!(m.params().iter().all(|(n, _)| n.contains(".lora_")));
    assert_eq!(
        m.params()[0].0,
        "model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert!(m
        .frozen_params()
        .iter()
        .all(|(n, t)| !n.contains("lora_") && !t.requires_grad()));
    let base = load(&fixture(BASE), "{}").unwrap();
    assert_eq!(m.frozen_params().len(), base.params().len());
    // q_proj A [4, 32], B [32, 4]; ...: r * (in + out) per projection.
    let per_layer = 4 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 3 * (32 + 64));
    assert_eq!(m.num_params(), 2 * per_layer);
    // Fresh adapters (B = 0) compute the base model.
    let b = batch(0);
    assert!(logits(&m, &b).equal(&logits(&base, &b)));
}

/// Two SGD steps of listwise ADPO, anchor fixed, float64: the LoRA policy's base (no
/// reference handle) and the base loaded as a reference handle give the same adapters.
#[test]
fn fixed_anchor_on_the_base_equals_the_base_as_a_reference_handle() {
    let cfg = r#"{"anchor": {"mode": "fixed"}, "optimizer": {"name": "sgd", "lr": 2.0}}"#;
    let run = |reference: Option<SharedModel>| {
        let policy = shared(load(&fixture(BASE), &lora_json("float64")).unwrap());
        let mut t = Trainer::new(policy.clone(), reference, cfg).unwrap();
        let losses: Vec<f64> = (0..3)
            .map(|i| t.step(&batch(i)).unwrap().objective.loss)
            .collect();
        let p = policy.lock();
        (copies(p.params()), losses)
    };
    let (own, own_losses) = run(None);
    let base = shared(load(&fixture(BASE), r#"{"dtype": "float64"}"#).unwrap());
    let (handle, handle_losses) = run(Some(base));
    let d = max_diff(&own, &handle);
    assert!(d < 1e-10, "adapters differ by {d}");
    for (a, b) in own_losses.iter().zip(&handle_losses) {
        assert!(
            (a - b).abs() < 1e-10,
            "losses {own_losses:?} vs {handle_losses:?}"
        );
    }
    let fresh = load(&fixture(BASE), &lora_json("float64")).unwrap();
    assert!(
        max_diff(&own, fresh.params()) > 1e-3,
        "the steps did not move the adapters"
    );
    // The anchor matters: on-policy gives other adapters from the second step on.
    let policy = shared(load(&fixture(BASE), &lora_json("float64")).unwrap());
    let on_policy = r#"{"anchor": {"mode": "on_policy"}, "optimizer": {"name": "sgd", "lr": 2.0}}"#;
    let mut t = Trainer::new(policy.clone(), None, on_policy).unwrap();
    for i in 0..3 {
        t.step(&batch(i)).unwrap();
    }
    assert!(max_diff(&own, policy.lock().params()) > 1e-6);
}

#[test]
fn frozen_base_weights_are_bit_identical_after_training() {
    let policy = shared(load(&fixture(BASE), &lora_json("bfloat16")).unwrap());
    let before = copies(policy.lock().frozen_params());
    let adapters_before = copies(policy.lock().params());
    let cfg = r#"{"anchor": {"mode": "fixed"}, "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.1}}"#;
    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
    for i in 0..2 {
        t.step(&batch(i)).unwrap();
    }
    let p = policy.lock();
    assert_eq!(p.kind(), Kind::BFloat16);
    for ((name, now), (_, then)) in p.frozen_params().iter().zip(&before) {
        assert_eq!(now.kind(), Kind::BFloat16, "{name}");
        assert!(now.equal(then), "{name} changed");
        assert!(!now.grad().defined(), "{name} has a gradient");
    }
    assert!(p.params().iter().all(|(_, a)| a.kind() == Kind::Float));
    assert!(
        max_diff(p.params(), &adapters_before) > 1e-4,
        "the adapters did not train"
    );
}

fn refused(dir: &Path, json: &str, status: Status, needles: &[&str]) {
    let e = load(dir, json)
        .err()
        .unwrap_or_else(|| panic!("{json} loaded"));
    assert_eq!(e.status, status, "{json}: {e}");
    for needle in needles {
        assert!(e.message.contains(needle), "{json}: {e}");
    }
}

#[test]
fn refusals_name_what_is_wrong() {
    let dir = fixture(BASE);
    let lora = |body: &str| format!(r#"{{"lora": {{{body}}}}}"#);
    refused(
        &dir,
        &lora(r#""target_modules": ["q_proj", "qproj"]"#),
        Status::InvalidConfig,
        &["\"qproj\"", "matches no module"],
    );
    refused(
        &dir,
        &lora(r#""target_modules": ["lm_head"]"#),
        Status::Unsupported,
        &["lm_head", "does not adapt"],
    );
    refused(
        &dir,
        &lora(r#""target_modules": ["self_attn"]"#),
        Status::Unsupported,
        &["model.layers.0.self_attn"],
    );
    refused(
        &dir,
        &lora(r#""r": 0"#),
        Status::InvalidConfig,
        &["r must be >= 1"],
    );
    refused(
        &dir,
        &lora(r#""dropout": 0.05"#),
        Status::Unsupported,
        &["dropout"],
    );
    let e = load(&dir, "{}")
        .unwrap()
        .save_adapter(&std::env::temp_dir().join("x"))
        .unwrap_err();
    assert_eq!(e.status, Status::Unsupported, "{e}");
}

#[test]
fn an_adapter_for_another_base_is_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    let json = r#"{"lora": {"r": 2, "target_modules": ["k_proj"]}}"#;
    load(&fixture(BASE), json)
        .unwrap()
        .save_adapter(&adapter)
        .unwrap();
    let on = format!(r#"{{"adapter": "{}"}}"#, adapter.display());
    // Hidden 32 as the base, but one key/value head: k_proj is [8, 32], not [16, 32].
    refused(
        &fixture("llama_mqa_tied_llama3"),
        &on,
        Status::Checkpoint,
        &["k_proj.lora_B.weight", "has shape [16, 2]", "needs [8, 2]"],
    );
    // Another hidden size (48).
    refused(
        &fixture("llama_mha_linear_bias"),
        &on,
        Status::Checkpoint,
        &["k_proj.lora_", "has shape"],
    );
    // An adapter asking for what adpo does not compute.
    let config = adapter.join("adapter_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    refused(&fixture(BASE), &on, Status::Unsupported, &["use_dora"]);
    // What PEFT 0.21 writes for adapters whose meaning adpo does not implement, and a key a
    // later PEFT might add: refused by name when on, accepted when off.
    let plain: serde_json::Value = serde_json::from_str(&text).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = plain.clone();
        c[key] = value;
        std::fs::write(&config, c.to_string()).unwrap();
    };
    for (key, value) in [
        ("init_lora_weights", serde_json::json!("pissa")),
        ("init_lora_weights", serde_json::json!("olora")),
        ("loftq_config", serde_json::json!({"loftq_bits": 4})),
        ("use_bdlora", serde_json::json!(true)),
        ("arrow_config", serde_json::json!({"top_k": 3})),
        ("kasa_config", serde_json::json!({"a": 1})),
        ("velora_config", serde_json::json!({"a": 1})),
        ("monteclora_config", serde_json::json!({"a": 1})),
        ("a_future_peft_feature", serde_json::json!(1)),
    ] {
        with(key, value.clone());
        refused(
            &fixture(BASE),
            &on,
            Status::Unsupported,
            &[key, &value.to_string()],
        );
    }
    for (key, value) in [
        ("init_lora_weights", serde_json::json!("gaussian")),
        ("init_lora_weights", serde_json::json!(false)),
        ("a_future_peft_feature", serde_json::json!(null)),
        ("loftq_config", serde_json::json!({})),
        ("peft_version", serde_json::json!("0.99.0")),
    ] {
        with(key, value);
        assert!(load(&fixture(BASE), &on).is_ok(), "{key} refused");
    }
}

/// The adapter directory loads back to the same adapters and logits; the merged save loads as
/// a plain checkpoint to the adapted model's logits; the base stays reachable with adapters off.
#[test]
fn adapter_and_merged_saves_read_back_to_the_same_model() {
    let policy = shared(load(&fixture(BASE), &lora_json("float32")).unwrap());
    let cfg = r#"{"optimizer": {"name": "sgd", "lr": 1.0}}"#;
    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
    t.step(&batch(1)).unwrap();
    let p = policy.lock();
    let tmp = tempfile::tempdir().unwrap();
    let (adapter, merged) = (tmp.path().join("adapter"), tmp.path().join("merged"));
    p.save_adapter(&adapter).unwrap();
    p.save_pretrained(&merged).unwrap();
    let b = batch(2);
    let want = logits(&p, &b);
    let on = format!(r#"{{"adapter": "{}"}}"#, adapter.display());
    let again = load(&fixture(BASE), &on).unwrap();
    assert_eq!(max_diff(again.params(), p.params()), 0.0);
    assert!(logits(&again, &b).equal(&want));
    let plain = load(&merged, "{}").unwrap();
    let d = (logits(&plain, &b) - &want).abs().max().double_value(&[]);
    assert!(d < 1e-5, "merged logits differ by {d}");
    let base = load(&fixture(BASE), "{}").unwrap();
    let off = p.with_adapters_off(|m| Ok(logits(m, &b))).unwrap();
    assert!(off.equal(&logits(&base, &b)));
    assert!((&off - &want).abs().max().double_value(&[]) > 1e-4);
    assert!(
        logits(&p, &b).equal(&want),
        "the adapters did not come back on"
    );
}

/// A checkpoint holds the adapters, their AdamW moments and the EMA anchor's adapters, nothing
/// of the base; a new trainer that loads it continues exactly as the one that saved it.
#[test]
fn trainer_checkpoints_hold_only_adapters_and_resume() {
    let cfg =
        r#"{"anchor": {"mode": "ema", "alpha": 0.5}, "optimizer": {"name": "adamw", "lr": 0.01}}"#;
    let new = || {
        let policy = shared(load(&fixture(BASE), &lora_json("float64")).unwrap());
        (Trainer::new(policy.clone(), None, cfg).unwrap(), policy)
    };
    let (mut first, policy) = new();
    let anchor = first.anchor().copy.as_ref().unwrap();
    let shares = |name: &str| {
        let find = |m: &Model| {
            m.frozen_params()
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .data_ptr()
        };
        find(anchor) == find(&policy.lock())
    };
    assert!(
        shares("model.embed_tokens.weight"),
        "the EMA anchor copied the frozen base"
    );
    for i in 0..2 {
        first.step(&batch(i)).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ckpt.safetensors");
    first.save(&path).unwrap();
    // One file: the weights under their names, the trainer state under STATE_PREFIX.
    let (state, weights): (Vec<_>, Vec<_>) = checkpoint::load(&path)
        .unwrap()
        .into_iter()
        .partition(|(n, _)| n.starts_with(checkpoint::STATE_PREFIX));
    let state: Vec<(String, tch::Tensor)> = state
        .into_iter()
        .map(|(n, t)| (n[checkpoint::STATE_PREFIX.len()..].to_string(), t))
        .collect();
    assert_eq!(weights.len(), 28);
    assert!(
        weights.iter().all(|(n, _)| n.contains(".lora_")),
        "{:?}",
        weights.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let tensors: Vec<&String> = state
        .iter()
        .map(|(n, _)| n)
        .filter(|n| {
            ![
                "optimizer.steps",
                "anchor.window",
                "anchor.hard_copies",
                "sampler.rng",
            ]
            .contains(&n.as_str())
        })
        .collect();
    assert_eq!(tensors.len(), 3 * 28, "{tensors:?}");
    assert!(tensors.iter().all(|n| n.contains(".lora_")), "{tensors:?}");

    let (mut resumed, resumed_policy) = new();
    resumed.load(&path).unwrap();
    for i in 2..4 {
        let a = first.step(&batch(i)).unwrap();
        let b = resumed.step(&batch(i)).unwrap();
        assert_eq!(a.objective.loss, b.objective.loss, "step {i}");
    }
    let d = max_diff(policy.lock().params(), resumed_policy.lock().params());
    assert_eq!(d, 0.0, "resumed adapters differ by {d}");
}

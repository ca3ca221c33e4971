//! Trainer key `trainable`: frozen parameters get no gradient, no optimizer state,
//! are not in checkpoints, and stay bit-identical; the trained ones take exactly the update they
//! take when everything trains (SGD steps each tensor by its own gradient, which does not
//! depend on what else trains).

mod common;

use adpo::model::{Dtype, LoadOptions, SharedModel};
use adpo::trainer::Trainer;
use adpo::{Batch, Model, Status};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tch::Tensor;

fn policy(name: &str) -> SharedModel {
    let dir = common::fixtures_dir().join("hf").join(name);
    let options = LoadOptions {
        device: common::device(),
        dtype: Dtype::Float64,
        ..LoadOptions::default()
    };
    Arc::new(Mutex::new(Model::load_with(&dir, &options).unwrap()))
}

/// 2 groups x 3 candidates, T = 7, ids below 90.
fn batch() -> Batch {
    let (n, t) = (6usize, 7usize);
    let ids: Vec<i64> = (0..n * t).map(|i| (i as i64 * 37 + 11) % 90).collect();
    let loss: Vec<u8> = (0..n * t).map(|i| u8::from(i % t >= 3)).collect();
    let groups: Vec<i64> = (0..n).map(|r| (r / 3) as i64).collect();
    let mut b = Batch::new(n, t, &ids, None, &loss, &groups).unwrap();
    b.set_rewards(&[1.0, 0.0, 0.5, -1.0, 2.0, 0.3]).unwrap();
    b
}

/// Every parameter (trainable and frozen) by name, as host copies.
fn all_weights(m: &SharedModel) -> HashMap<String, Tensor> {
    let m = m.lock();
    m.params()
        .iter()
        .chain(m.frozen_params())
        .map(|(n, t)| (n.clone(), t.detach().to_device(tch::Device::Cpu).copy()))
        .collect()
}

fn config(trainable: &str) -> String {
    format!(
        r#"{{"loss": "listwise", "optimizer": {{"name": "sgd", "lr": 0.5}}, "trainable": {trainable}}}"#
    )
}

#[test]
fn frozen_parameters_stay_and_trained_ones_take_the_full_update() {
    let name = "llama_gqa2_untied_v97";
    let start = all_weights(&policy(name));
    let full = policy(name);
    Trainer::new(full.clone(), None, &config("null"))
        .unwrap()
        .step(&batch())
        .unwrap();
    let part = policy(name);
    let patterns = r#"["!model.embed_tokens.*", "!model.layers.0.*"]"#;
    let mut trainer = Trainer::new(part.clone(), None, &config(patterns)).unwrap();
    trainer.step(&batch()).unwrap();
    {
        let p = part.lock();
        assert!(p.params().iter().all(|(n, t)| t.requires_grad()
            && !n.starts_with("model.embed_tokens")
            && !n.starts_with("model.layers.0.")));
        assert!(p.frozen_params().iter().all(|(_, t)| !t.requires_grad()));
        assert!(p.frozen_params().iter().all(|(_, t)| !t.grad().defined()));
    }
    let (full, part) = (all_weights(&full), all_weights(&part));
    let mut frozen = 0;
    for (name, w) in &part {
        let is_frozen =
            name.starts_with("model.embed_tokens") || name.starts_with("model.layers.0.");
        if is_frozen {
            frozen += 1;
            assert!(w.equal(&start[name]), "{name} is frozen but changed");
        } else {
            assert!(!w.equal(&start[name]), "{name} trains but did not move");
            let d = (w - &full[name]).abs().max().double_value(&[]);
            assert!(d < 1e-12, "{name}: {d} from the full fine-tuning update");
        }
    }
    assert!(frozen >= 2, "the patterns froze {frozen} tensors");
}

#[test]
fn checkpoints_hold_only_what_trains_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.safetensors");
    let patterns = r#"["*.mlp.*"]"#;
    let adamw =
        |p: &str| format!(r#"{{"optimizer": {{"name": "adamw", "lr": 1e-3}}, "trainable": {p}}}"#);
    let model = policy("qwen3_gqa2_headdim16_tied");
    let mut t = Trainer::new(model.clone(), None, &adamw(patterns)).unwrap();
    t.step(&batch()).unwrap();
    t.save(&path).unwrap();
    let names: Vec<String> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let trained: Vec<String> = model
        .lock()
        .params()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert!(!trained.is_empty() && trained.iter().all(|n| n.contains(".mlp.")));
    for n in &names {
        let bare = n
            .strip_prefix("__adpo__.")
            .map(|s| {
                s.trim_start_matches("optimizer.first.")
                    .trim_start_matches("optimizer.second.")
            })
            .unwrap_or(n);
        assert!(
            !bare.starts_with("model.") || bare.contains(".mlp."),
            "{n}: a frozen parameter or its optimizer state is in the checkpoint"
        );
    }
    // Resume: a fresh trainer with the same patterns takes the state and continues as the
    // first one does.
    let resumed_model = policy("qwen3_gqa2_headdim16_tied");
    let mut resumed = Trainer::new(resumed_model.clone(), None, &adamw(patterns)).unwrap();
    resumed.load(&path).unwrap();
    assert_eq!(resumed.steps(), 1);
    t.step(&batch()).unwrap();
    resumed.step(&batch()).unwrap();
    let (a, b) = (all_weights(&model), all_weights(&resumed_model));
    for (n, w) in &a {
        assert!(w.equal(&b[n]), "{n} differs after resuming");
    }
    // A trainer that trains everything does not take this checkpoint.
    let mut all = Trainer::new(policy("qwen3_gqa2_headdim16_tied"), None, &adamw("null")).unwrap();
    let e = all.load(&path).unwrap_err();
    assert_eq!(e.status, Status::Checkpoint, "{e}");
}

#[test]
fn bad_patterns_are_config_errors_naming_the_pattern() {
    for (patterns, words) in [
        (r#"["*.mpl.*"]"#, "\"*.mpl.*\" matches no parameter"),
        (r#"[]"#, "empty list"),
        (r#"["!*"]"#, "leaves no parameter"),
        (r#""*""#, "expected a sequence"),
        (r#"[["*"]]"#, "trainable"),
    ] {
        let e = Trainer::new(policy("qwen2_gqa2_tied"), None, &config(patterns))
            .err()
            .unwrap_or_else(|| panic!("{patterns} was accepted"));
        assert_eq!(e.status, Status::InvalidConfig, "{patterns}: {e}");
        assert!(e.message.contains(words), "{patterns}: {e}");
    }
}

#[test]
fn a_second_trainer_that_changes_the_trainable_set_stops_the_first() {
    let model = policy("qwen2_gqa2_tied");
    let mut first = Trainer::new(model.clone(), None, &config(r#"["*.mlp.*"]"#)).unwrap();
    let mut second = Trainer::new(model.clone(), None, &config("null")).unwrap();
    let e = first.step(&batch()).unwrap_err();
    assert!(e.message.contains("changed which parameters train"), "{e}");
    second.step(&batch()).unwrap();
}

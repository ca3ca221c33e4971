//! Trainer key `activation_checkpointing` on native checkpoints: the layers' forward runs
//! without grad and each layer is recomputed with grad in the backward, one at a time. The
//! steps must be those of the whole graph (which test_native.py checks against PyTorch):
//! tied and untied heads, one pass and micro-batches, sequence and token losses, LoRA, a frozen
//! embedding, several AdamW steps (the embedding's sparse backward from the second on).

mod common;

use adpo::model::{LoadOptions, SharedModel};
use adpo::trainer::Trainer;
use adpo::Model;
use common::{batch, device, native_f64, weights};
use parking_lot::Mutex;
use std::sync::Arc;
use tch::Tensor;

fn lora() -> SharedModel {
    let mut options = LoadOptions::from_json(
        r#"{"dtype": "float64", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "down_proj"], "init": "gaussian"}}"#,
    )
    .unwrap();
    options.device = device();
    let dir = common::fixtures_dir()
        .join("hf")
        .join("qwen3_gqa2_headdim16_tied");
    Arc::new(Mutex::new(Model::load_with(&dir, &options).unwrap()))
}

/// The policy's weights before and after `steps` steps under `config`.
fn train(load: &dyn Fn() -> SharedModel, config: &str, steps: i64) -> (Vec<Tensor>, Vec<Tensor>) {
    let policy = load();
    let mut t = Trainer::new(policy.clone(), None, config).unwrap();
    let before = weights(&policy); // the trained ones
    for s in 0..steps {
        t.step(&batch(s)).unwrap();
    }
    (before, weights(&policy))
}

fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn checkpointed_steps_equal_the_whole_graph() {
    let models: [(&str, &dyn Fn() -> SharedModel); 3] = [
        ("qwen3 tied", &|| native_f64("qwen3_gqa2_headdim16_tied")),
        ("llama untied", &|| native_f64("llama_gqa2_untied_v97")),
        ("qwen3 LoRA", &lora),
    ];
    let configs = [
        r#""loss": "listwise", "optimizer": {"name": "adamw", "lr": 0.01}"#,
        r#""loss": "listwise", "micro_batch_rows": 5, "logprob_chunk_rows": 7, "optimizer": {"name": "sgd", "lr": 0.5}"#,
        r#""loss": "grpo", "aggregation": "bnpo", "optimizer": {"name": "sgd", "lr": 0.5}"#,
        r#""loss": "listwise", "trainable": ["!model.embed_tokens.*"], "optimizer": {"name": "sgd", "lr": 0.5}"#,
    ];
    for (what, load) in models {
        for (k, cfg) in configs.iter().enumerate() {
            if what.contains("LoRA") && cfg.contains("trainable") {
                continue; // the adapters are what trains under LoRA
            }
            let (before, whole) = train(load, &format!("{{{cfg}}}"), 3);
            let (_, recomputed) = train(
                load,
                &format!("{{{cfg}, \"activation_checkpointing\": true}}"),
                3,
            );
            let moved = max_diff(&before, &whole);
            assert!(
                moved > 1e-4,
                "{what}, config {k}: the steps must move the weights ({moved})"
            );
            let d = max_diff(&whole, &recomputed);
            assert!(
                d < 1e-10,
                "{what}, config {k}: checkpointed weights differ by {d}"
            );
        }
    }
}

/// The float32 masters of a bf16-mixed policy after `steps` SGD steps under `config`.
fn masters_after(config: &str, steps: i64) -> Vec<Tensor> {
    let mut options = LoadOptions::from_json(r#"{"dtype": "bfloat16"}"#).unwrap();
    options.device = device();
    let dir = common::fixtures_dir()
        .join("hf")
        .join("qwen3_gqa2_headdim16_tied");
    let policy: SharedModel = Arc::new(Mutex::new(Model::load_with(&dir, &options).unwrap()));
    let mut t = Trainer::new(policy.clone(), None, config).unwrap();
    for s in 0..steps {
        t.step(&batch(s)).unwrap();
    }
    let p = policy.lock();
    p.values()
        .iter()
        .map(|(_, v)| v.detach().to_device(tch::Device::Cpu).copy())
        .collect()
}

#[test]
fn checkpointed_bf16_mixed_steps_equal_the_whole_graph() {
    let cfg = r#""precision": "bf16-mixed", "optimizer": {"name": "sgd", "lr": 0.5}"#;
    let start = masters_after(&format!("{{{cfg}}}"), 0);
    let whole = masters_after(&format!("{{{cfg}}}"), 2);
    let recomputed = masters_after(&format!("{{{cfg}, \"activation_checkpointing\": true}}"), 2);
    let moved = max_diff(&start, &whole);
    assert!(moved > 1e-3, "the steps must move the masters ({moved})");
    // The recomputed layers are the same bfloat16 operations in the same order (equal here on
    // the CPU; 1e-3 leaves room for a device's atomics). A 16-bit embedding backward that
    // rounded each row into the gradient was 1.3% off.
    let d = max_diff(&whole, &recomputed);
    assert!(
        d < 1e-3 * moved,
        "checkpointed masters differ by {d} (update {moved})"
    );
}

//! Log-probs by chunks on native checkpoints: the head runs over a few scored positions at a
//! time, in the forward and in the backward, and gives the same log-probs and the same
//! gradients as full logits with autograd; a trainer step gives the same update whatever the
//! chunk and micro-batch sizes.

mod common;

use adpo::logprob::{chunked, from_logits};
use adpo::model::{Dtype, LoadOptions, SharedModel};
use adpo::trainer::Trainer;
use adpo::{Batch, Model};
use common::device;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
    }))
    .join("hf")
    .join(name)
}

fn load(name: &str, dtype: Dtype) -> Model {
    let options = LoadOptions {
        device: device(),
        dtype,
        ..LoadOptions::default()
    };
    Model::load_with(&fixture(name), &options).unwrap()
}

/// Ids [6, 9] below 90, a loss mask on the last 4-6 positions, right padding on one row.
fn inputs() -> (Tensor, Tensor, Tensor) {
    let (b, t) = (6i64, 9i64);
    let ids = Tensor::from_slice(&(0..b * t).map(|i| (i * 37 + 11) % 90).collect::<Vec<i64>>())
        .view([b, t]);
    let mut attn = vec![1i64; (b * t) as usize];
    let mut loss = vec![0f32; (b * t) as usize];
    for r in 0..b as usize {
        for c in (3 + r % 3)..t as usize {
            loss[r * t as usize + c] = 1.0;
        }
    }
    for c in 7..9 {
        attn[2 * t as usize + c] = 0;
        loss[2 * t as usize + c] = 0.0;
    }
    let d = device();
    (
        ids.to_device(d),
        Tensor::from_slice(&attn).view([b, t]).to_device(d),
        Tensor::from_slice(&loss).view([b, t]).to_device(d),
    )
}

fn grads(model: &Model) -> Vec<Tensor> {
    model
        .params()
        .iter()
        .map(|(_, p)| p.grad().copy())
        .collect()
}

fn zero_grads(model: &Model) {
    for (_, p) in model.params() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

#[test]
fn chunked_log_probs_and_gradients_equal_full_logits_with_autograd() {
    for name in [
        "qwen3_gqa2_headdim16_tied",
        "llama_gqa2_untied_v97",
        "qwen2_gqa2_tied",
    ] {
        let mut model = load(name, Dtype::Float32);
        model.set_trainable(true);
        let (ids, attn, mask) = inputs();
        let weights = Tensor::randn([6, 9], (Kind::Float, device())) * &mask;
        // Full logits with autograd.
        let full_tok = from_logits(&model.logits(&ids, &attn).unwrap(), &ids, &mask);
        (&full_tok * &weights).sum(Kind::Double).backward();
        let want = grads(&model);
        zero_grads(&model);
        for rows in [1, 3, 7, 1000] {
            let hidden = model.forward(&ids, &attn).unwrap();
            let tok = chunked::token_logp(&model, &hidden.detach(), &ids, &mask, rows).unwrap();
            let d = (&tok - full_tok.detach()).abs().max().double_value(&[]);
            assert!(
                d < 1e-6,
                "{name}, {rows} rows per chunk: log-probs differ by {d}"
            );
            let head = &mut |h: &Tensor| {
                Ok(chunked::head_backward(&model, h, &ids, &mask, &weights, None, rows)?.0)
            };
            model
                .backward_through((&ids, &attn), None, false, head)
                .unwrap();
            for ((n, _), (g, w)) in model.params().iter().zip(grads(&model).iter().zip(&want)) {
                let scale = w.abs().max().double_value(&[]).max(1e-6);
                let d = (g - w).abs().max().double_value(&[]) / scale;
                assert!(
                    d < 1e-5,
                    "{name}, {rows} rows per chunk: gradient of {n} off by {d}"
                );
            }
            zero_grads(&model);
        }
    }
}

fn batch() -> Batch {
    let (ids, attn, mask) = inputs();
    let to_vec_i =
        |t: &Tensor| Vec::<i64>::try_from(t.to_device(tch::Device::Cpu).reshape([-1])).unwrap();
    let mask_u8: Vec<u8> = Vec::<f32>::try_from(mask.to_device(tch::Device::Cpu).reshape([-1]))
        .unwrap()
        .iter()
        .map(|&x| x as u8)
        .collect();
    let attn_u8: Vec<u8> = to_vec_i(&attn).iter().map(|&x| x as u8).collect();
    let mut b = Batch::new(
        6,
        9,
        &to_vec_i(&ids),
        Some(&attn_u8),
        &mask_u8,
        &[0, 0, 0, 1, 1, 1],
    )
    .unwrap();
    b.set_rewards(&[0.5, -1.0, 2.0, 0.1, 0.3, -0.7]).unwrap();
    b
}

/// The float64 policy's weights after one listwise SGD step under `config`.
fn step_weights(config: &str) -> Vec<Tensor> {
    let name = "qwen3_gqa2_headdim16_tied";
    let policy: SharedModel = Arc::new(Mutex::new(load(name, Dtype::Float64)));
    let mut t = Trainer::new(policy.clone(), None, config).unwrap();
    t.step(&batch()).unwrap();
    let p = policy.lock();
    p.params().iter().map(|(_, w)| w.detach().copy()).collect()
}

#[test]
fn a_step_is_the_same_for_any_chunk_and_micro_batch_size() {
    let base = r#""optimizer": {"name": "sgd", "lr": 0.5}, "seq_logp": "sum""#;
    let one = step_weights(&format!("{{{base}, \"logprob_chunk_rows\": 1000000}}"));
    let before: Vec<Tensor> = load("qwen3_gqa2_headdim16_tied", Dtype::Float64)
        .params()
        .iter()
        .map(|(_, w)| w.detach().copy())
        .collect();
    let moved: f64 = one
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-4, "the step must move the weights ({moved})");
    for cfg in [
        format!("{{{base}, \"logprob_chunk_rows\": 2}}"),
        format!("{{{base}, \"logprob_chunk_rows\": 5, \"micro_batch_rows\": 2}}"),
        format!("{{{base}, \"micro_batch_rows\": 4}}"),
    ] {
        let w = step_weights(&cfg);
        for (a, b) in w.iter().zip(&one) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d < 1e-10, "{cfg}: weights differ by {d}");
        }
    }
}

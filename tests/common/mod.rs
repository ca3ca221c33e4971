//! What the integration tests on the fixture models share. Each test crate uses a part of it.
#![allow(dead_code)]

use adpo::model::SharedModel;
use adpo::{Batch, Model};
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// A fixture model: `tiny/NAME`, a small checkpoint of tests/fixtures/make_hf_models.py, or a
/// TorchScript file of tests/fixtures/make_models.py (`make fixtures`; ADPO_FIXTURES overrides
/// the directory).
pub fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
    });
    let p = PathBuf::from(dir).join(name);
    assert!(p.exists(), "{} missing: run `make fixtures`", p.display());
    p
}

/// ADPO_TEST_DEVICE=cuda:0 (scripts/gpu-check) runs the tests on the GPU.
pub fn device() -> Device {
    match std::env::var("ADPO_TEST_DEVICE").as_deref() {
        Ok("cuda") | Ok("cuda:0") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// A fixture model on the test device, as a trainer takes it.
pub fn model(name: &str) -> SharedModel {
    Arc::new(Mutex::new(Model::load(&fixture(name), device()).unwrap()))
}

/// 3 groups x 4 candidates, T = 6, varying loss masks, ids in [0, 16), groups interleaved.
pub fn batch(seed: i64) -> Batch {
    let (n, t) = (12usize, 6usize);
    let ids: Vec<i64> = (0..n * t)
        .map(|i| ((i as i64 * 7 + seed * 13) * 31 % 16).abs())
        .collect();
    let mut loss = vec![0u8; n * t];
    for r in 0..n {
        for j in (2 + r % 2)..t {
            loss[r * t + j] = 1;
        }
    }
    let groups: Vec<i64> = (0..n).map(|r| [5, 9, 2][r % 3]).collect();
    let mut b = Batch::new(n, t, &ids, None, &loss, &groups).unwrap();
    let rewards: Vec<f64> = (0..n)
        .map(|r| ((r as f64 + seed as f64) * 0.37).sin())
        .collect();
    b.set_rewards(&rewards).unwrap();
    b
}

/// Host copies of the model's parameters.
pub fn weights(m: &SharedModel) -> Vec<Tensor> {
    m.lock()
        .params()
        .iter()
        .map(|(_, p)| p.detach().to_device(Device::Cpu).copy())
        .collect()
}

/// The fixtures directory (`make fixtures`; ADPO_FIXTURES overrides it).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
    }))
}

/// Every Hugging Face checkpoint tests/fixtures/make_hf_models.py made, sorted.
pub fn hf_dirs() -> Vec<PathBuf> {
    let root = fixtures_dir().join("hf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make fixtures`", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// A Hugging Face fixture checkpoint (hf/NAME) loaded in float64 on the test device.
pub fn native_f64(name: &str) -> SharedModel {
    let options = adpo::model::LoadOptions {
        device: device(),
        dtype: adpo::model::Dtype::Float64,
        ..adpo::model::LoadOptions::default()
    };
    let dir = fixtures_dir().join("hf").join(name);
    Arc::new(Mutex::new(Model::load_with(&dir, &options).unwrap()))
}

/// The normalised entropy by an independent formula: softmax of the full logits that predict
/// tokens 1..T, entropy per position, mean over the loss mask, divided by ln V.
pub fn normalised_entropy_reference(
    p: &Model,
    ids: &Tensor,
    attn: &Tensor,
    mask: &Tensor,
) -> Tensor {
    let t = ids.size()[1];
    let probs = p
        .logits(ids, attn)
        .unwrap()
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Double)
        .softmax(2, Kind::Double);
    let h = -(&probs * probs.log()).sum_dim_intlist(2, false, Kind::Double);
    let m = mask.narrow(1, 1, t - 1).to_kind(Kind::Double);
    (h * &m).sum_dim_intlist(1, false, Kind::Double)
        / m.sum_dim_intlist(1, false, Kind::Double)
        / (p.vocab() as f64).ln()
}

/// The largest difference between paired tensors, each relative to the largest magnitude in the
/// tensor of `b`.
pub fn max_rel_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            ((x - y).abs().max().double_value(&[])) / (y.abs().max().double_value(&[]) + 1e-12)
        })
        .fold(0.0, f64::max)
}

/// One row of a prompt batch: group, left padding, prompt, completion (scored).
pub struct Row(pub i64, pub usize, pub &'static [i64], pub &'static [i64]);

/// A batch of `rows`, right-padded to `t` with id 0, the completions loss-masked, row r's
/// reward `reward(r)`.
pub fn rows_batch(rows: &[Row], t: usize, reward: impl Fn(usize) -> f64) -> Batch {
    let n = rows.len();
    let (mut ids, mut attn, mut loss) = (vec![0i64; n * t], vec![0u8; n * t], vec![0u8; n * t]);
    for (r, Row(_, left, prompt, completion)) in rows.iter().enumerate() {
        for (j, &id) in prompt.iter().chain(completion.iter()).enumerate() {
            let at = r * t + left + j;
            ids[at] = id;
            attn[at] = 1;
            loss[at] = (j >= prompt.len()) as u8;
        }
    }
    let groups: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut b = Batch::new(n, t, &ids, Some(&attn), &loss, &groups).unwrap();
    b.set_rewards(&(0..n).map(reward).collect::<Vec<_>>())
        .unwrap();
    b
}

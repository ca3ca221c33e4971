//! Batched, KV-cached sampling on native checkpoints (tests/fixtures/make_hf_models.py):
//! greedy decoding follows transformers' generate(), the recorded old_logp is what a full
//! forward of the finished batch gives, seeds are per row, bad requests are refused.

mod common;

use adpo::batch::SuppliedLogp;
use adpo::logprob::token_logp;
use adpo::model::{Dtype, LoadOptions, SharedModel};
use adpo::sample::{EosIds, SamplingConfig};
use adpo::trainer::Trainer;
use adpo::{Batch, Model, Status};
use common::device;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

fn hf_dirs() -> Vec<PathBuf> {
    let dirs = common::hf_dirs();
    assert!(
        dirs.len() >= 8,
        "expected the native fixtures (make fixtures)"
    );
    dirs
}

fn trainer(dir: &Path) -> (Trainer, SharedModel) {
    let options = LoadOptions {
        device: device(),
        dtype: Dtype::Float32,
        ..LoadOptions::default()
    };
    let m: SharedModel = Arc::new(Mutex::new(Model::load_with(dir, &options).unwrap()));
    (Trainer::new(m.clone(), None, "{}").unwrap(), m)
}

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn to_vec(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(tch::Device::Cpu).reshape([-1])).unwrap()
}

/// Each row's generated tokens (its loss-masked ids).
fn completions(b: &Batch) -> Vec<Vec<i64>> {
    let ids = to_vec(&b.ids);
    let lm = to_vec(&b.loss_mask.to_kind(Kind::Int64));
    (0..b.n)
        .map(|r| {
            (r * b.t..(r + 1) * b.t)
                .filter(|&i| lm[i] == 1)
                .map(|i| ids[i])
                .collect()
        })
        .collect()
}

fn no_eos(max_new_tokens: usize, seed: u64) -> SamplingConfig {
    SamplingConfig {
        max_new_tokens,
        seed: Some(seed),
        eos_id: Some(EosIds::Many(vec![])),
        ..SamplingConfig::default()
    }
}

#[test]
fn greedy_sampling_gives_transformers_generate_tokens_for_prompts_of_different_lengths() {
    for dir in hf_dirs() {
        let r = reference(&dir);
        let prompts: Vec<Vec<i64>> = (0..3)
            .map(|i| to_vec(&r[&format!("gen{i}_prompt")]))
            .collect();
        let refs: Vec<&[i64]> = prompts.iter().map(|p| p.as_slice()).collect();
        let (mut t, _) = trainer(&dir);
        let cfg = SamplingConfig {
            top_k: 1,
            ..no_eos(64, 1)
        };
        let got = completions(&t.sample(&refs, 2, &cfg).unwrap());
        for (row, tokens) in got.iter().enumerate() {
            let i = row / 2;
            let want = to_vec(&r[&format!("gen{i}_tokens")]);
            let logits = &r[&format!("gen{i}_logits")];
            assert_eq!(tokens.len(), 64);
            // Equal, unless the top two logits tie (then the rest of the row may differ).
            if let Some(s) = (0..64).find(|&s| tokens[s] != want[s]) {
                let top = logits.get(s as i64).topk(2, 0, true, true).0;
                let gap = (top.double_value(&[0]) - top.double_value(&[1])).abs();
                assert!(
                    gap < 1e-4,
                    "{}: row {row} differs at step {s} (gap {gap})",
                    dir.display()
                );
            }
        }
    }
}

#[test]
fn old_logp_equals_a_full_forward_of_the_finished_batch_including_rows_that_ended_early() {
    for dir in hf_dirs() {
        let (mut t, model) = trainer(&dir);
        let vocab = model.lock().vocab();
        // A third of the vocabulary ends rows: most rows end early, at different steps.
        let eos: Vec<i64> = (0..vocab).filter(|v| v % 3 == 0).collect();
        let prompts: &[&[i64]] = &[&[5, 6, 7, 8, 9], &[3], &[11, 12]];
        let cfg = SamplingConfig {
            eos_id: Some(EosIds::Many(eos)),
            ..no_eos(24, 7)
        };
        let b = t.sample(prompts, 4, &cfg).unwrap();
        let lengths: Vec<usize> = completions(&b).iter().map(Vec::len).collect();
        assert!(
            lengths.iter().any(|&l| l < 24) && lengths.iter().any(|&l| l > 1),
            "{lengths:?}"
        );
        let Some(SuppliedLogp::Tokens(old)) = &b.old_logp else {
            panic!("per-token old_logp")
        };
        let m = model.lock();
        let (ids, attn, mask) = b.rows(0, b.n as i64, m.device());
        let full = tch::no_grad(|| token_logp(&m, &ids, &attn, &mask)).unwrap();
        let d = ((full - old.to_device(m.device())) * &mask)
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            d < 1e-5,
            "{}: old_logp differs from a full forward by {d}",
            dir.display()
        );
    }
}

#[test]
fn a_seed_gives_the_same_rows_whatever_order_and_company_the_prompts_have() {
    let dir = &hf_dirs()[0];
    let (mut t, _) = trainer(dir);
    let (a, b, c): (&[i64], &[i64], &[i64]) = (&[4, 5, 6, 7], &[9], &[2, 3]);
    let first = completions(&t.sample(&[a, b], 3, &no_eos(20, 99)).unwrap());
    let second = completions(&t.sample(&[c, b, c, a], 3, &no_eos(20, 99)).unwrap());
    assert_eq!(first[0..3], second[9..12], "prompt a");
    assert_eq!(first[3..6], second[3..6], "prompt b");
    assert_ne!(first[0..3], first[3..6]);
}

#[test]
fn prompts_too_long_for_the_model_and_bad_tokens_are_refused() {
    let dir = &hf_dirs()[0];
    let (mut t, model) = trainer(dir);
    let max = model.lock().lm().max_positions().unwrap() as usize;
    let long = vec![1i64; max - 3];
    let e = t.sample(&[&long], 2, &no_eos(4, 1)).err().unwrap();
    assert_eq!(e.status, Status::InvalidArgument);
    assert!(e.message.contains("max_position_embeddings"), "{e}");
    assert!(
        t.sample(&[&long], 2, &no_eos(3, 1)).is_ok(),
        "exactly at the limit"
    );
    let vocab = model.lock().vocab();
    let e = t.sample(&[&[1, vocab]], 2, &no_eos(3, 1)).err().unwrap();
    assert!(e.message.contains("outside the vocabulary"), "{e}");
    assert!(t.sample(&[&[]], 2, &no_eos(3, 1)).is_err());
}

#[test]
fn non_finite_logits_are_refused_instead_of_drawing_past_the_vocabulary() {
    // 97 tokens: the draw's last block is partial, where NaN probabilities used to pick slot 255.
    let dir = common::fixtures_dir().join("hf/llama_gqa2_untied_v97");
    let (mut t, model) = trainer(&dir);
    tch::no_grad(|| {
        let m = model.lock();
        let (_, w) = m
            .params()
            .iter()
            .find(|(n, _)| n == "model.norm.weight")
            .unwrap();
        let _ = w.narrow(0, 0, 1).fill_(f64::NAN);
    });
    let e = t.sample(&[&[1, 2, 3]], 2, &no_eos(4, 1)).err().unwrap();
    assert_eq!(e.status, Status::NonFinite, "{e}");
    assert!(e.message.contains("NaN or Inf"), "{e}");
}

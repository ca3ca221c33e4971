//! Sampling through the Rust API on a tiny checkpoint (tiny/llama_f64, KV-cached): per-row
//! streams, stop conditions, refusals.

mod common;

use adpo::model::SharedModel;
use adpo::sample::{EosIds, SamplingConfig};
use adpo::trainer::Trainer;
use adpo::{Batch, Model, Status};
use common::{device, fixture};
use parking_lot::Mutex;
use std::sync::Arc;

fn trainer() -> Trainer {
    let m: SharedModel = Arc::new(Mutex::new(
        Model::load(&fixture("tiny/llama_f64"), device()).unwrap(),
    ));
    Trainer::new(m, None, "{}").unwrap()
}

/// Rows of a batch: (tokens up to the end of the attention mask, loss mask, old_logp).
fn rows(b: &Batch) -> Vec<(Vec<i64>, Vec<f64>)> {
    let ids = Vec::<i64>::try_from(b.ids.reshape([-1])).unwrap();
    let attn =
        Vec::<i64>::try_from(b.attention_mask.reshape([-1]).to_kind(tch::Kind::Int64)).unwrap();
    let old = match b.old_logp.as_ref().unwrap() {
        adpo::batch::SuppliedLogp::Tokens(t) => {
            Vec::<f64>::try_from(t.reshape([-1]).to_kind(tch::Kind::Double)).unwrap()
        }
        _ => panic!("sampled batches carry per-token old_logp"),
    };
    (0..b.n)
        .map(|r| {
            let row = r * b.t..(r + 1) * b.t;
            let len = attn[row.clone()].iter().filter(|&&a| a == 1).count();
            (ids[row.start..row.start + len].to_vec(), old[row].to_vec())
        })
        .collect()
}

fn assert_same_rows(a: &[(Vec<i64>, Vec<f64>)], b: &[(Vec<i64>, Vec<f64>)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for ((ids_a, logp_a), (ids_b, logp_b)) in a.iter().zip(b) {
        assert_eq!(ids_a, ids_b, "{what}");
        assert_eq!(logp_a.len(), logp_b.len(), "{what}");
        for (x, y) in logp_a.iter().zip(logp_b) {
            assert!((x - y).abs() <= 1e-12, "{what}: log-prob {x} vs {y}");
        }
    }
}

fn cfg(max_new_tokens: usize, seed: u64) -> SamplingConfig {
    SamplingConfig {
        max_new_tokens,
        seed: Some(seed),
        ..SamplingConfig::default()
    }
}

#[test]
fn a_seed_gives_a_prompt_the_same_samples_whatever_is_beside_it() {
    let mut t = trainer();
    let (a, b, c): (&[i64], &[i64], &[i64]) = (&[1, 2, 3], &[4], &[5, 6]);
    let alone = rows(&t.sample(&[a], 3, &cfg(8, 42)).unwrap());
    let mixed = rows(&t.sample(&[c, b, a, c], 3, &cfg(8, 42)).unwrap());
    // The same tokens; the log-probs up to rounding (other rows change the batched sums).
    assert_same_rows(
        &alone,
        &mixed[6..9],
        "prompt a's rows differ beside other prompts",
    );
    // the two copies of c draw from different streams
    let ids = |rows: &[(Vec<i64>, Vec<f64>)]| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    assert_ne!(ids(&mixed[0..3]), ids(&mixed[9..12]));
    // and another seed gives other samples
    assert_ne!(
        ids(&alone),
        ids(&rows(&t.sample(&[a], 3, &cfg(8, 43)).unwrap()))
    );
}

#[test]
fn rows_end_at_any_eos_id_and_at_stop_sequences() {
    let mut t = trainer();
    let prompts: &[&[i64]] = &[&[1, 2], &[3]];
    let free = rows(&t.sample(prompts, 6, &cfg(12, 5)).unwrap());
    // Pick stop conditions from what the free run generated, so they do fire.
    let (gen0, gen1) = (&free[0].0[2..], &free[1].0[2..]);
    let eos = vec![gen0[3], gen1[2]];
    let stopped = rows(
        &t.sample(
            prompts,
            6,
            &SamplingConfig {
                eos_id: Some(EosIds::Many(eos.clone())),
                ..cfg(12, 5)
            },
        )
        .unwrap(),
    );
    for ((f, _), (s, _)) in free.iter().zip(&stopped) {
        let plen = if f[0] == 3 { 1 } else { 2 };
        let cut = f[plen..]
            .iter()
            .position(|t| eos.contains(t))
            .map_or(f.len(), |i| plen + i + 1);
        assert_eq!(
            s,
            &f[..cut].to_vec(),
            "a row ends after its first EOS id, which is kept"
        );
    }
    let seq = gen0[1..3].to_vec();
    let by_seq = rows(
        &t.sample(
            prompts,
            6,
            &SamplingConfig {
                stop_sequences: vec![seq.clone()],
                ..cfg(12, 5)
            },
        )
        .unwrap(),
    );
    assert_eq!(
        by_seq[0].0,
        free[0].0[..2 + 3].to_vec(),
        "row 0 ends with the stop sequence"
    );
    for (r, (ids, _)) in by_seq.iter().enumerate() {
        let plen = if r >= 6 { 1 } else { 2 };
        let generated = &ids[plen..];
        let ends = generated.ends_with(&seq);
        let full = generated.len() == 12;
        assert!(
            ends || full,
            "row {r}: ended early without the stop sequence"
        );
        // no earlier occurrence
        let earlier = generated
            .windows(seq.len())
            .take(generated.len().saturating_sub(seq.len()))
            .any(|w| w == seq);
        assert!(!earlier, "row {r} ran past a stop sequence");
    }
}

#[test]
fn bad_sampling_requests_are_refused() {
    let mut t = trainer();
    let ok: &[&[i64]] = &[&[1, 2]];
    let status = |r: Result<Batch, adpo::Error>| r.err().map(|e| (e.status, e.message));
    let (s, m) = status(t.sample(
        ok,
        2,
        &SamplingConfig {
            stop_sequences: vec![vec![99]],
            ..cfg(4, 1)
        },
    ))
    .unwrap();
    assert_eq!(s, Status::InvalidArgument);
    assert!(m.contains("stop token 99"), "{m}");
    let (s, _) = status(t.sample(
        ok,
        2,
        &SamplingConfig {
            eos_id: Some(EosIds::One(16)),
            ..cfg(4, 1)
        },
    ))
    .unwrap();
    assert_eq!(s, Status::InvalidArgument);
    let (s, _) = status(t.sample(ok, 0, &cfg(4, 1))).unwrap();
    assert_eq!(s, Status::InvalidArgument);
    for json in [
        r#"{"stop_sequences": [[]]}"#,
        r#"{"stop_sequences": [[1, -2]]}"#,
        r#"{"max_new_tokens": 18446744073709551615}"#,
        r#"{"eos_id": [1, -1]}"#,
    ] {
        let e = SamplingConfig::from_json(json).unwrap_err();
        assert_eq!(e.status, Status::InvalidConfig, "{json}: {}", e.message);
    }
    assert_eq!(
        SamplingConfig::from_json(r#"{"eos_id": [3, 4]}"#)
            .unwrap()
            .eos_id,
        Some(EosIds::Many(vec![3, 4]))
    );
}

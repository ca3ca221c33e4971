//! criterion: adpo_objective_eval (the C entry point, host float64 buffers) on 4096 groups x K = 8,
//! listwise (default config) and Plackett-Luce. The PyTorch side of the comparison is
//! benches/objective_torch.py (same sizes, same run).

use adpo::ffi::objective::{adpo_objective_eval, adpo_objective_free, adpo_objective_new};
use criterion::{criterion_group, criterion_main, Criterion};
use std::ptr::{null, null_mut};

const GROUPS: usize = 4096;
const K: usize = 8;

fn inputs() -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<i64>) {
    let n = GROUPS * K;
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let logp = (0..n).map(|_| -20.0 + 5.0 * next()).collect();
    let anchor = (0..n).map(|_| -20.0 + 5.0 * next()).collect();
    let rewards = (0..n).map(|_| next()).collect();
    let ids = (0..n).map(|i| (i / K) as i64).collect();
    (logp, anchor, rewards, ids)
}

fn bench(c: &mut Criterion) {
    let (logp, anchor, rewards, ids) = inputs();
    let n = logp.len();
    let mut grad = vec![0.0; n];
    for (name, cfg) in [
        ("listwise", c"{}"),
        ("plackett_luce", c"{\"loss\": \"plackett_luce\"}"),
    ] {
        let mut obj = null_mut();
        assert_eq!(
            adpo_objective_new(cfg.as_ptr(), &mut obj, null_mut()),
            adpo::Status::Ok
        );
        let mut loss = 0.0;
        c.bench_function(&format!("adpo_objective_eval {name} 4096x8"), |b| {
            b.iter(|| {
                let st = adpo_objective_eval(
                    obj,
                    n,
                    logp.as_ptr(),
                    anchor.as_ptr(),
                    rewards.as_ptr(),
                    null(),
                    ids.as_ptr(),
                    &mut loss,
                    grad.as_mut_ptr(),
                    null_mut(),
                    null_mut(),
                );
                assert_eq!(st, adpo::Status::Ok);
            })
        });
        adpo_objective_free(obj);
    }
}

/// Fixed cost of one call through the C ABI: one group of two candidates.
fn call_overhead(c: &mut Criterion) {
    let (logp, anchor, rewards, ids) = ([-1.0, -2.0], [-1.5, -1.5], [1.0, 0.0], [0i64, 0]);
    let mut grad = [0.0; 2];
    let mut obj = null_mut();
    assert_eq!(
        adpo_objective_new(c"{}".as_ptr(), &mut obj, null_mut()),
        adpo::Status::Ok
    );
    let mut loss = 0.0;
    c.bench_function("adpo_objective_eval 1 group x 2 (per-call overhead)", |b| {
        b.iter(|| {
            let st = adpo_objective_eval(
                obj,
                2,
                logp.as_ptr(),
                anchor.as_ptr(),
                rewards.as_ptr(),
                null(),
                ids.as_ptr(),
                &mut loss,
                grad.as_mut_ptr(),
                null_mut(),
                null_mut(),
            );
            assert_eq!(st, adpo::Status::Ok);
        })
    });
    adpo_objective_free(obj);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench, call_overhead
}
criterion_main!(benches);

//! Data-parallel training through the Rust API, with an in-process communicator (threads that
//! sum through shared memory), so these run in every build, MPI or not: ranks holding unequal
//! shares of the groups make the same update as one process holding all of them, for every
//! loss and its normaliser; failures are agreed; metrics are global.

mod common;

use adpo::distributed::Communicator;
use adpo::model::{LoadOptions, SharedModel};
use adpo::trainer::Trainer;
use adpo::{Batch, Model, Result, Status};
use common::{device, fixture};
use parking_lot::Mutex;
use std::sync::{Arc, Barrier};
use tch::{Device, Kind, Tensor};

fn model() -> SharedModel {
    let m = Model::load(&fixture("tiny/llama_f64"), device()).unwrap();
    Arc::new(Mutex::new(m))
}

/// Ranks are threads; a sum is: every rank posts its buffer, waits, adds all posts in rank
/// order (so every rank gets bit-identical results), waits again.
struct Shared {
    posts: Mutex<Vec<Vec<f64>>>,
    barrier: Barrier,
}

struct ThreadComm {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "threads"
    }
    fn all_reduce_sum(&mut self, buf: &mut Tensor) -> Result<()> {
        let mine = Vec::<f64>::try_from(buf.to_device(Device::Cpu).to_kind(Kind::Double)).unwrap();
        self.shared.posts.lock()[self.rank] = mine;
        self.shared.barrier.wait();
        let sum: Vec<f64> = {
            let posts = self.shared.posts.lock();
            (0..posts[0].len())
                .map(|i| posts.iter().map(|p| p[i]).sum())
                .collect()
        };
        self.shared.barrier.wait();
        buf.copy_(&Tensor::from_slice(&sum).to_kind(buf.kind()));
        Ok(())
    }
}

fn communicators(size: usize) -> Vec<ThreadComm> {
    let shared = Arc::new(Shared {
        posts: Mutex::new(vec![Vec::new(); size]),
        barrier: Barrier::new(size),
    });
    (0..size)
        .map(|rank| ThreadComm {
            rank,
            size,
            shared: shared.clone(),
        })
        .collect()
}

const T: usize = 7;
/// Group sizes of the global batch: unequal, so the normalisers (groups, rows, tokens) differ.
const SIZES: [usize; 5] = [4, 3, 4, 2, 3];

/// The global batch restricted to `groups`, plus one singleton group when `singleton`. Loss
/// masks differ per row, so token counts differ per group and per rank.
fn batch(groups: &[usize], singleton: bool, seed: i64) -> Batch {
    let (mut ids, mut mask, mut gid, mut rewards) = (vec![], vec![], vec![], vec![]);
    let mut row_of = |g: usize, k: usize, gid_value: i64| {
        let global = (SIZES[..g].iter().sum::<usize>() + k) as i64;
        for j in 0..T {
            ids.push((global * 5 + j as i64 * 3 + seed) % 16);
            mask.push(u8::from(j >= 2 + (global as usize % 3)));
        }
        gid.push(gid_value);
        rewards.push(((global + seed) as f64 * 0.61).sin());
    };
    for &g in groups {
        for k in 0..SIZES[g] {
            row_of(g, k, g as i64);
        }
    }
    if singleton {
        row_of(0, 0, 99);
    }
    let mut b = Batch::new(gid.len(), T, &ids, None, &mask, &gid).unwrap();
    b.set_rewards(&rewards).unwrap();
    b
}

fn weights(m: &SharedModel) -> Vec<f64> {
    m.lock().flat_params().unwrap()
}

fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Two steps on rank shares `shares` (one thread per rank); returns each rank's weights and
/// last metrics.
fn run_ranks(
    cfg: &str,
    shares: &[(Vec<usize>, bool)],
) -> Vec<Result<(Vec<f64>, adpo::StepMetrics)>> {
    run_ranks_on(model, cfg, shares)
}

/// [`run_ranks`] with each rank's policy from `load`.
fn run_ranks_on(
    load: fn() -> SharedModel,
    cfg: &str,
    shares: &[(Vec<usize>, bool)],
) -> Vec<Result<(Vec<f64>, adpo::StepMetrics)>> {
    let comms = communicators(shares.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .zip(shares)
            .map(|(comm, (groups, singleton))| {
                s.spawn(move || {
                    let policy = load();
                    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
                    t.use_communicator(Box::new(comm)).unwrap();
                    assert_eq!(t.world().1, shares.len());
                    let mut last = None;
                    for seed in 0..2 {
                        last = Some(t.step(&batch(groups, *singleton, seed))?);
                    }
                    Ok((weights(&policy), last.unwrap()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn one_process(cfg: &str) -> (Vec<f64>, adpo::StepMetrics) {
    one_process_on(model, cfg)
}

fn one_process_on(load: fn() -> SharedModel, cfg: &str) -> (Vec<f64>, adpo::StepMetrics) {
    let policy = load();
    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
    let mut last = None;
    for seed in 0..2 {
        last = Some(t.step(&batch(&[0, 1, 2, 3, 4], false, seed)).unwrap());
    }
    (weights(&policy), last.unwrap())
}

/// A native checkpoint (tied Qwen3, float64), plain and with LoRA adapters.
fn native() -> SharedModel {
    native_with("{\"dtype\": \"float64\"}")
}

fn native_lora() -> SharedModel {
    native_with(
        r#"{"dtype": "float64", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "init": "gaussian"}}"#,
    )
}

fn native_with(options: &str) -> SharedModel {
    let dir = common::fixtures_dir()
        .join("hf")
        .join("qwen3_gqa2_headdim16_tied");
    let mut options = LoadOptions::from_json(options).unwrap();
    options.device = device();
    Arc::new(Mutex::new(Model::load_with(&dir, &options).unwrap()))
}

#[test]
fn native_models_on_unequal_shares_make_the_single_process_update() {
    let configs = [
        r#"{"loss": "listwise", "micro_batch_rows": 3, "optimizer": {"name": "adamw", "lr": 0.01}}"#,
        r#"{"loss": "listwise", "trainable": ["!*v_proj*"], "optimizer": {"name": "sgd", "lr": 0.5}}"#,
    ];
    for (load, what) in [
        (native as fn() -> SharedModel, "native"),
        (native_lora, "LoRA"),
    ] {
        for cfg in configs {
            let (expected, _) = one_process_on(load, cfg);
            let ranks = run_ranks_on(load, cfg, &[(vec![0, 3], false), (vec![1, 2, 4], true)]);
            for (rank, r) in ranks.into_iter().enumerate() {
                let (w, _) = r.unwrap();
                let d = rel_diff(&w, &expected);
                assert!(d < 1e-10, "{what} {cfg}: rank {rank} weights off by {d}");
            }
        }
    }
}

#[test]
fn unequal_shares_make_the_single_process_update() {
    let configs = [
        r#"{"loss": "listwise", "epochs_per_batch": 2, "optimizer": {"name": "adamw", "lr": 0.01}}"#,
        r#"{"loss": "listwise", "micro_batch_rows": 3, "optimizer": {"name": "sgd", "lr": 0.5}, "distributed": {"bucket_mb": 0.0001}}"#,
        r#"{"loss": "plackett_luce", "pl_ties": "stable", "optimizer": {"name": "adamw", "lr": 0.01}}"#,
        r#"{"loss": "grpo", "aggregation": "grpo", "optimizer": {"name": "sgd", "lr": 0.5}}"#,
        r#"{"loss": "grpo", "aggregation": "bnpo", "optimizer": {"name": "sgd", "lr": 0.5}}"#,
        r#"{"loss": "grpo", "aggregation": "dr_grpo", "optimizer": {"name": "sgd", "lr": 0.5}}"#,
    ];
    for cfg in configs {
        let (expected, expected_m) = one_process(cfg);
        // Rank 0: 2 groups (7 rows); rank 1: 3 groups (9 rows) and a singleton.
        let ranks = run_ranks(cfg, &[(vec![0, 3], false), (vec![1, 2, 4], true)]);
        for (rank, r) in ranks.into_iter().enumerate() {
            let (w, m) = r.unwrap();
            let d = rel_diff(&w, &expected);
            assert!(d < 1e-10, "{cfg}: rank {rank} weights off by {d}");
            let o = (&m.objective, &expected_m.objective);
            assert!(
                (o.0.loss - o.1.loss).abs() < 1e-10,
                "{cfg}: loss {} vs {}",
                o.0.loss,
                o.1.loss
            );
            assert_eq!(o.0.groups, o.1.groups, "{cfg}");
            assert_eq!(
                m.tokens,
                expected_m.tokens + 5.0,
                "{cfg}: tokens (+ the singleton's 5)"
            );
            for (name, a, b) in [
                ("win_mass", o.0.win_mass, o.1.win_mass),
                ("entropy", o.0.entropy, o.1.entropy),
                ("mean_abs_score", o.0.mean_abs_score, o.1.mean_abs_score),
                ("max_abs_score", o.0.max_abs_score, o.1.max_abs_score),
                ("clip_fraction", o.0.clip_fraction, o.1.clip_fraction),
            ] {
                assert!(
                    (a - b).abs() < 1e-10 || (a.is_nan() && b.is_nan()),
                    "{cfg}: {name} {a} vs {b}"
                );
            }
            assert!((m.grad_norm - expected_m.grad_norm).abs() < 1e-9 * expected_m.grad_norm);
        }
    }
}

#[test]
fn weighting_by_group_counts_is_what_the_test_above_can_tell() {
    // SGD is linear in the gradient, so one step on all groups equals the sum of steps on each
    // share with lr scaled by the share's fraction of the groups (2/5 and 3/5): the weighting
    // the distributed trainer uses. Equal weights (1/2, 1/2) land far outside the 1e-10 above.
    let step = |groups: &[usize], lr: f64| -> Vec<f64> {
        let policy = model();
        let cfg = format!(r#"{{"loss": "listwise", "optimizer": {{"name": "sgd", "lr": {lr}}}}}"#);
        let mut t = Trainer::new(policy.clone(), None, &cfg).unwrap();
        t.step(&batch(groups, false, 0)).unwrap();
        weights(&policy)
    };
    let start = weights(&model());
    let all = step(&[0, 1, 2, 3, 4], 0.5);
    let combine = |w0: f64, w1: f64| -> Vec<f64> {
        let (a, b) = (step(&[0, 3], 0.5 * w0), step(&[1, 2, 4], 0.5 * w1));
        start
            .iter()
            .zip(a.iter().zip(&b))
            .map(|(s, (a, b))| a + b - s)
            .collect()
    };
    assert!(rel_diff(&combine(0.4, 0.6), &all) < 1e-10);
    assert!(rel_diff(&combine(0.5, 0.5), &all) > 1e-4);
}

#[test]
fn a_failure_on_one_rank_is_every_ranks_error() {
    let cfg = r#"{"loss": "listwise"}"#;
    let comms = communicators(2);
    let results: Vec<(Result<adpo::StepMetrics>, Vec<f64>, Vec<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    let policy = model();
                    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
                    t.use_communicator(Box::new(comm)).unwrap();
                    let before = weights(&policy);
                    let rank = t.world().0;
                    let mut b = batch(&[rank], false, 0);
                    if rank == 1 {
                        // No rewards and no targets: found when the step starts.
                        b = Batch::new(
                            2,
                            T,
                            &[1; 2 * T],
                            None,
                            &[0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1],
                            &[0, 0],
                        )
                        .unwrap();
                    }
                    let out = t.step(&b);
                    let after = weights(&policy);
                    (out, before, after)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let errors: Vec<_> = results
        .iter()
        .map(|(r, _, _)| r.as_ref().unwrap_err().clone())
        .collect();
    assert_eq!(errors[0], errors[1], "both ranks return the same error");
    assert_eq!(errors[0].status, Status::InvalidArgument);
    assert!(
        errors[0]
            .message
            .starts_with("rank 1 of 2: the batch has neither rewards nor targets"),
        "{}",
        errors[0].message
    );
    for (_, before, after) in &results {
        assert_eq!(before, after, "no weight changed");
    }
}

#[test]
fn ranks_with_different_state_are_refused_on_every_rank() {
    // An EMA anchor keeps a copy of the policy: its state would not line up with a rank that
    // has none. Both ranks must refuse, with the same message, instead of mixing buffers.
    let comms = communicators(2);
    let errors: Vec<adpo::Error> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                s.spawn(move || {
                    let cfg = if rank == 0 {
                        r#"{"anchor": {"mode": "on_policy"}}"#
                    } else {
                        r#"{"anchor": {"mode": "ema", "alpha": 0.9}}"#
                    };
                    let mut t = Trainer::new(model(), None, cfg).unwrap();
                    let err = t.use_communicator(Box::new(comm)).unwrap_err();
                    assert_eq!(t.world(), (0, 1), "left training alone");
                    err
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(errors[0], errors[1]);
    assert!(
        errors[0]
            .message
            .contains("the trainer state differs across ranks"),
        "{}",
        errors[0].message
    );
}

/// A host gradient per rank (forward_backward, then optim_step on every rank) makes the update
/// of one process holding both batches with the mean of the ranks' gradients: each rank counts
/// one unit of the host's loss. A rank with nothing accumulated fails every rank's optim_step.
#[test]
fn forward_backward_and_optim_step_across_ranks() {
    let cfg = r#"{"optimizer": {"name": "sgd", "lr": 0.3}}"#;
    let shares: [&[usize]; 2] = [&[0, 3], &[1, 2, 4]];
    let grad = |b: &Batch, scale: f64| {
        let v: Vec<f64> = (0..b.n * b.t)
            .map(|i| scale * (i as f64 * 0.41).cos())
            .collect();
        Tensor::from_slice(&v).view([b.n as i64, b.t as i64])
    };
    let ranks = |fail_rank: Option<usize>| {
        let comms = communicators(2);
        std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .zip(shares)
                .map(|(comm, groups)| {
                    s.spawn(move || {
                        let rank = comm.rank;
                        let policy = model();
                        let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
                        t.use_communicator(Box::new(comm)).unwrap();
                        let b = batch(groups, false, 0);
                        if fail_rank != Some(rank) {
                            t.forward_backward(&b, Some(&grad(&b, 1.0)))?;
                        }
                        t.optim_step()?;
                        Ok(weights(&policy))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<Result<Vec<f64>>>>()
        })
    };
    let got = ranks(None);
    let (b0, b1) = (batch(shares[0], false, 0), batch(shares[1], false, 0));
    let union = Batch::concat(&[&b0, &b1]).unwrap();
    let g = Tensor::cat(&[grad(&b0, 0.5), grad(&b1, 0.5)], 0);
    let policy = model();
    let mut t = Trainer::new(policy.clone(), None, cfg).unwrap();
    t.forward_backward(&union, Some(&g)).unwrap();
    t.optim_step().unwrap();
    let want = weights(&policy);
    for (rank, w) in got.into_iter().enumerate() {
        let d = rel_diff(&w.unwrap(), &want);
        assert!(d < 1e-10, "rank {rank}: {d}");
    }
    for r in ranks(Some(1)) {
        let e = r.unwrap_err();
        assert!(
            e.message.contains("forward_backward first"),
            "{}",
            e.message
        );
    }
}

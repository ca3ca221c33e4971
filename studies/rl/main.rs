//! Reasoning-style online RL, listwise ADPO against GRPO (docs/MATH.md
//! §6, §8, §11.7).
//!
//! A tiny Llama, first trained by SFT on 3-digit addition to a low accuracy (scripts/rl_sft.py
//! writes the checkpoint directory DIR/policy and DIR/task.json), is trained online with the
//! library's trainer: every step samples K = 8 completions for each of P prompts
//! (`Trainer::sample`), scores them here (exact match 1/0) and takes one `Trainer::step`. Both
//! methods share the optimizer, learning rate, schedule, steps, prompts, samples and seeds:
//!
//!   ADPO  listwise anchored CE, on-policy anchor, tau 0.8, beta_r 0.5, adaptive tau
//!         (target entropy, alpha 1.0, tau_min 0.1) — the paper's LLM settings
//!   GRPO  clip eps 0.2, beta_KL 0 (library defaults otherwise: token ratios, dapo aggregation)
//!
//! Held-out exact-match accuracy (greedy, and one temperature-1 sample per prompt) is measured
//! every `eval_every` steps on the fixed test pairs of task.json.
//!
//!     cargo run --release --example rl -- [--quick] [--out DIR] [--sft DIR] [--seeds N]
//!                                         [--steps N] [--threads N] [--epochs N] [--lr X]
//!                                         [--no-grad-clip]
//!
//! Writes DIR/steps.csv (every step), DIR/eval.csv (every evaluation), DIR/runs.csv (final
//! numbers per run) and DIR/results.md (tables); `scripts/plot_rl.py DIR` draws the curves.
//! Ends with checks (exit 1 when one fails); `--quick` (1 seed, 40 steps, and a repeat of the
//! first run that must give identical numbers) is the CI run.

mod report;
#[allow(dead_code)]
#[path = "../bandit/stats.rs"]
mod stats;
mod task;

use adpo::model::SharedModel;
use adpo::sample::SamplingConfig;
use adpo::{Model, Trainer};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use task::{Rng, Task};
use tch::{Device, Kind, Tensor};

/// Every fixed parameter of the study (chosen once, the same for both methods).
#[derive(Clone, Debug)]
pub struct Params {
    pub quick: bool,
    pub seeds: usize,
    pub steps: usize,
    pub prompts_per_step: usize,
    pub k: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    /// Maximum global gradient norm (None: no clipping).
    pub grad_clip: Option<f64>,
    pub temperature: f64,
    pub epochs_per_batch: u32,
    pub eval_every: usize,
    pub threads: usize,
    pub sft_dir: PathBuf,
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Adpo,
    Grpo,
}

pub const METHODS: [Method; 2] = [Method::Adpo, Method::Grpo];

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Adpo => "adpo",
            Method::Grpo => "grpo",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Method::Adpo => "ADPO listwise",
            Method::Grpo => "GRPO",
        }
    }
    /// The method's own keys of the trainer config (docs/MATH.md §0, §9, §11.7).
    pub fn objective_json(self) -> &'static str {
        match self {
            Method::Adpo => {
                r#""loss":"listwise","tau":0.8,"beta_reward":0.5,"adaptive_tau":{"rule":"target_entropy","alpha":1.0,"tau_min":0.1},"anchor":{"mode":"on_policy"},"seq_logp":"mean""#
            }
            Method::Grpo => r#""loss":"grpo","clip_eps":0.2,"beta_kl":0.0"#,
        }
    }
    /// The whole trainer config: the method's keys plus the shared ones.
    pub fn trainer_json(self, p: &Params, seed: u64) -> String {
        format!(
            r#"{{{},"optimizer":{{"name":"adamw","lr":{},"weight_decay":{}}},"schedule":{{"name":"cosine","warmup_steps":{},"total_steps":{},"min_lr":0.0}},"grad_clip":{},"epochs_per_batch":{},"seed":{}}}"#,
            self.objective_json(),
            p.lr,
            p.weight_decay,
            // The schedule counts optimizer updates: epochs_per_batch of them per step.
            p.warmup_steps * p.epochs_per_batch as usize,
            p.steps * p.epochs_per_batch as usize,
            p.grad_clip.map_or("null".to_string(), |c| c.to_string()),
            p.epochs_per_batch,
            seed
        )
    }
}

/// What one training step measured.
#[derive(Clone, Debug)]
pub struct StepRow {
    pub step: usize,
    /// Mean exact-match reward of the step's P * K samples (before the update).
    pub reward: f64,
    /// Fraction of the step's prompts with at least one correct sample.
    pub solved_any: f64,
    /// Fraction of groups whose K rewards are all equal (no learning signal).
    pub flat_groups: f64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tau: f64,
    pub mean_abs_score: f64,
    pub clip_fraction: f64,
    pub completion_len: f64,
    pub ms: f64,
}

/// One held-out evaluation.
#[derive(Clone, Debug)]
pub struct EvalRow {
    pub step: usize,
    pub acc_greedy: f64,
    pub acc_sampled: f64,
}

#[derive(Clone, Debug)]
pub struct Run {
    pub method: Method,
    pub seed: u64,
    pub steps: Vec<StepRow>,
    pub evals: Vec<EvalRow>,
    /// L2 norm of (final - initial) parameters.
    pub param_change: f64,
    pub seconds: f64,
}

/// Random streams (the seed is the other key).
const PROMPTS: u64 = 1;
const EVAL: u64 = 2;

fn params_snapshot(model: &SharedModel) -> Vec<Tensor> {
    model
        .lock()
        .params()
        .iter()
        .map(|(_, t)| t.detach().copy())
        .collect()
}

fn evaluate(task: &Task, policy: &SharedModel, seed: u64, step: usize) -> EvalRow {
    let model = policy.lock();
    let acc_greedy = task.accuracy(&model, None);
    // The same random numbers for both methods at a given (seed, step).
    let acc_sampled = task.accuracy(&model, Some(&mut Rng::new(&[seed, EVAL, step as u64])));
    EvalRow {
        step,
        acc_greedy,
        acc_sampled,
    }
}

/// One (method, seed) run from the SFT policy.
fn run(
    method: Method,
    seed: u64,
    task: &Task,
    p: &Params,
    t0: Instant,
    tag: &str,
) -> Result<Run, String> {
    let start = Instant::now();
    let model = Model::load(&p.sft_dir.join("policy"), Device::Cpu).map_err(|e| e.to_string())?;
    let policy: SharedModel = Arc::new(Mutex::new(model));
    let initial = params_snapshot(&policy);
    let mut trainer = Trainer::new(policy.clone(), None, &method.trainer_json(p, seed))
        .map_err(|e| format!("{}: {e}", method.name()))?;
    let scfg = SamplingConfig::from_json(&format!(
        r#"{{"temperature":{},"max_new_tokens":{},"eos_id":{},"pad_id":{}}}"#,
        p.temperature, task.answer_len, task.eos_id, task.pad_id
    ))
    .map_err(|e| e.to_string())?;
    let mut prompt_rng = Rng::new(&[seed, PROMPTS]);
    let (mut steps, mut evals) = (Vec::new(), vec![evaluate(task, &policy, seed, 0)]);
    let (k, plen) = (p.k, task.prompt_len);
    for step in 1..=p.steps {
        let pairs = task.train_pairs(&mut prompt_rng, p.prompts_per_step);
        let prompts: Vec<Vec<i64>> = pairs.iter().map(|&(a, b)| task.prompt(a, b)).collect();
        let refs: Vec<&[i64]> = prompts.iter().map(|v| v.as_slice()).collect();
        let mut batch = trainer.sample(&refs, k, &scfg).map_err(|e| e.to_string())?;
        let t = batch.t;
        let ids = Vec::<i64>::try_from(batch.ids.reshape([-1])).map_err(|e| e.to_string())?;
        let rewards: Vec<f64> = (0..batch.n)
            .map(|r| {
                let (a, b) = pairs[r / k];
                task.reward(a, b, &ids[r * t + plen..(r + 1) * t])
            })
            .collect();
        batch.set_rewards(&rewards).map_err(|e| e.to_string())?;
        let m = trainer.step(&batch).map_err(|e| e.to_string())?;
        let groups: Vec<&[f64]> = rewards.chunks(k).collect();
        let gsum = |g: &[f64]| g.iter().sum::<f64>();
        steps.push(StepRow {
            step,
            reward: rewards.iter().sum::<f64>() / rewards.len() as f64,
            solved_any: groups.iter().filter(|g| gsum(g) > 0.0).count() as f64
                / groups.len() as f64,
            flat_groups: groups
                .iter()
                .filter(|g| g.iter().all(|&x| x == g[0]))
                .count() as f64
                / groups.len() as f64,
            loss: m.objective.loss,
            grad_norm: m.grad_norm,
            lr: m.lr,
            tau: m.objective.tau,
            mean_abs_score: m.objective.mean_abs_score,
            clip_fraction: m.objective.clip_fraction,
            completion_len: batch.tokens() / batch.n as f64,
            ms: m.step_time_ms,
        });
        if step % p.eval_every == 0 || step == p.steps {
            let e = evaluate(task, &policy, seed, step);
            let window = &steps[steps.len().saturating_sub(p.eval_every)..];
            let rw = window.iter().map(|s| s.reward).sum::<f64>() / window.len() as f64;
            println!(
                "  [{:>6.1} s] {:<13} seed {seed}{tag} step {step:>4}/{}: train reward {rw:.3} (last {} steps), held-out accuracy greedy {:.3}, sampled {:.3}",
                t0.elapsed().as_secs_f64(),
                method.label(),
                p.steps,
                window.len(),
                e.acc_greedy,
                e.acc_sampled
            );
            evals.push(e);
        }
    }
    let param_change = {
        let now = params_snapshot(&policy);
        now.iter()
            .zip(&initial)
            .map(|(a, b)| (a - b).square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt()
    };
    Ok(Run {
        method,
        seed,
        steps,
        evals,
        param_change,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn parse_args() -> Params {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut p = Params {
        quick,
        seeds: if quick { 1 } else { 5 },
        steps: if quick { 40 } else { 1000 },
        prompts_per_step: 16,
        k: 8,
        lr: 3e-4,
        weight_decay: 0.01,
        warmup_steps: 0,
        grad_clip: Some(1.0),
        temperature: 1.0,
        epochs_per_batch: 1,
        eval_every: if quick { 10 } else { 25 },
        threads: 2,
        sft_dir: PathBuf::from("target/rl/sft"),
        out: PathBuf::from(if quick {
            "target/rl-quick"
        } else {
            "target/rl"
        }),
    };
    let mut it = args.iter();
    let num = |v: Option<&String>, name: &str| -> usize {
        v.and_then(|s| s.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| panic!("{name} needs a positive integer"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--out" => p.out = PathBuf::from(it.next().expect("--out needs a directory")),
            "--sft" => p.sft_dir = PathBuf::from(it.next().expect("--sft needs a directory")),
            "--seeds" => p.seeds = num(it.next(), "--seeds"),
            "--steps" => p.steps = num(it.next(), "--steps"),
            "--threads" => p.threads = num(it.next(), "--threads"),
            "--epochs" => p.epochs_per_batch = num(it.next(), "--epochs") as u32,
            "--no-grad-clip" => p.grad_clip = None,
            "--lr" => {
                p.lr = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|x: &f64| x.is_finite() && *x > 0.0)
                    .expect("--lr needs a positive number")
            }
            "-h" | "--help" => {
                println!(
                    "usage: rl [--quick] [--out DIR] [--sft DIR] [--seeds N] [--steps N] [--threads N] [--epochs N] [--lr X] [--no-grad-clip]\n\
                     (--epochs, --lr and --no-grad-clip change the value for both methods: sensitivity runs only)"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    // Warmup: 10 % of the steps, as in the paper's recipe (warmup ratio 0.1).
    p.warmup_steps = p.steps / 10;
    p
}

fn main() {
    let p = parse_args();
    let task = Task::load(&p.sft_dir).unwrap_or_else(|e| {
        eprintln!("rl: {e}");
        std::process::exit(2);
    });
    if let Err(e) = task.self_test() {
        eprintln!("rl: reward self-test failed: {e}");
        std::process::exit(1);
    }
    // One intra-op thread per worker; the workers give the parallelism (deterministic results).
    tch::set_num_threads(1);
    std::fs::create_dir_all(&p.out).expect("create output directory");
    let mut jobs: VecDeque<(Method, u64, bool)> = (0..p.seeds as u64)
        .flat_map(|s| METHODS.map(|m| (m, s, false)))
        .collect();
    // Quick mode repeats the first run: the results must be bit-identical (determinism check).
    if p.quick {
        jobs.push_back((METHODS[0], 0, true));
    }
    let total = jobs.len();
    println!(
        "rl: {} mode, {} seeds x {} methods, {} steps of {} prompts x K = {} samples, {} held-out prompts, on {} threads -> {}",
        if p.quick { "quick" } else { "full" },
        p.seeds,
        METHODS.len(),
        p.steps,
        p.prompts_per_step,
        p.k,
        task.test_pairs.len(),
        p.threads,
        p.out.display()
    );
    println!(
        "rl: SFT policy {} (stamp {}): {} SFT steps, held-out greedy accuracy {:.3} (Python)",
        p.sft_dir.join("policy").display(),
        task.sft.stamp,
        task.sft.steps,
        task.sft.test_acc
    );
    for m in METHODS {
        println!("rl: {} config {}", m.label(), m.trainer_json(&p, 0));
    }
    let t0 = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(jobs));
    let results = Arc::new(std::sync::Mutex::new(Vec::<Run>::new()));
    let repeats = Arc::new(std::sync::Mutex::new(Vec::<Run>::new()));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let handles: Vec<_> = (0..p.threads.min(total))
        .map(|_| {
            let (queue, results, repeats, failed, task, p) = (
                queue.clone(),
                results.clone(),
                repeats.clone(),
                failed.clone(),
                task.clone(),
                p.clone(),
            );
            std::thread::spawn(move || loop {
                let job = queue.lock().expect("queue").pop_front();
                let Some((m, seed, repeat)) = job else { break };
                let tag = if repeat { " (repeat)" } else { "" };
                match run(m, seed, &task, &p, t0, tag) {
                    Ok(r) => {
                        println!(
                            "rl: done {} seed {seed}{tag} in {:.1} s",
                            m.label(),
                            r.seconds
                        );
                        if repeat {
                            repeats.lock().expect("repeats").push(r);
                        } else {
                            results.lock().expect("results").push(r);
                        }
                    }
                    Err(e) => {
                        eprintln!("rl: {} seed {seed} failed: {e}", m.label());
                        failed.lock().expect("failed").push(e);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
    if !failed.lock().expect("failed").is_empty() {
        std::process::exit(1);
    }
    let mut runs = std::mem::take(&mut *results.lock().expect("results"));
    runs.sort_by_key(|r| (r.method.name(), r.seed));
    let secs = t0.elapsed().as_secs_f64();
    println!("rl: {} runs in {secs:.1} s", runs.len());
    report::write_all(&p, &task, &runs, secs).expect("write outputs");
    println!(
        "wrote {}/{{steps.csv,eval.csv,runs.csv,results.md}}",
        p.out.display()
    );
    print!("{}", report::final_table(&p, &task, &runs));
    let repeats = std::mem::take(&mut *repeats.lock().expect("repeats"));
    let failures = report::checks(&p, &task, &runs, &repeats);
    if failures.is_empty() {
        println!("checks: all passed");
    } else {
        for f in &failures {
            println!("CHECK FAILED: {f}");
        }
        std::process::exit(1);
    }
}

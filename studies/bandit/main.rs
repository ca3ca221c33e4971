//! Contextual-bandit benchmark (docs/MATH.md §11.1, §11.2, §11.6, §12).
//!
//! Rebuilds the paper's synthetic contextual bandit as in docs/MATH.md §12.3 and trains an MLP policy with
//! DPO (hard / soft) and ADPO (pairwise, listwise raw, listwise KDE) through the library's
//! objective (`adpo::Objective`), each with a fixed anchor (the reference) and a dynamic (EMA)
//! anchor. Metric: WinMass = mean over held-out clean contexts of pi(i* | x).
//!
//!     cargo run --release --example bandit -- [--quick] [--out DIR] [--seeds N] [--steps N]
//!                                             [--threads N] [--all-widths] [--tau X] [--beta-r X]
//!
//! Writes DIR/runs.csv (one row per run), DIR/summary.csv (means and 95 % CIs), DIR/curves.csv
//! (WinMass during training), DIR/results.md (tables); `scripts/plot_bandit.py DIR` draws PNGs.
//! `--quick` (2 seeds, clean + light severities, h = 64, 300 steps) ends with checks and exits
//! non-zero when one fails (the full mode runs the same checks).

mod report;
mod stats;
mod world;

use adpo::{EvalInputs, Groups, Objective, Signal};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};
use world::{stream, Noise, Rng, Scenario, World, D, K};

/// Every fixed parameter of the benchmark (chosen once, the same for every method).
#[derive(Clone, Debug)]
pub struct Params {
    pub seeds: usize,
    pub widths: Vec<i64>,
    /// Width of the main table; the other widths run only the scaling scenario unless all_widths.
    pub main_width: i64,
    pub all_widths: bool,
    pub scaling: Scenario,
    pub scenarios: Vec<Scenario>,
    pub n_train: usize,
    pub batch: usize,
    pub steps: usize,
    pub ref_steps: usize,
    pub ref_batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub tau: f64,
    pub beta_r: f64,
    pub ema_alpha: f64,
    pub n_test: usize,
    pub eval_every: usize,
    pub threads: usize,
    pub quick: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    DpoHard,
    DpoSoft,
    AdpoPairwise,
    AdpoListRaw,
    AdpoListKde,
}

pub const METHODS: [Method; 5] = [
    Method::DpoHard,
    Method::DpoSoft,
    Method::AdpoPairwise,
    Method::AdpoListRaw,
    Method::AdpoListKde,
];

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::DpoHard => "dpo_hard",
            Method::DpoSoft => "dpo_soft",
            Method::AdpoPairwise => "adpo_pairwise",
            Method::AdpoListRaw => "adpo_listwise_raw",
            Method::AdpoListKde => "adpo_listwise_kde",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Method::DpoHard => "DPO (hard)",
            Method::DpoSoft => "DPO-soft",
            Method::AdpoPairwise => "ADPO pairwise",
            Method::AdpoListRaw => "ADPO listwise-raw",
            Method::AdpoListKde => "ADPO listwise-KDE",
        }
    }
    pub fn is_adpo(self) -> bool {
        !matches!(self, Method::DpoHard | Method::DpoSoft)
    }
    pub fn is_listwise(self) -> bool {
        matches!(self, Method::AdpoListRaw | Method::AdpoListKde)
    }
    fn pairwise(self) -> bool {
        !self.is_listwise()
    }
    /// The library objective of this method.
    pub fn config_json(self, p: &Params) -> String {
        let (tau, br) = (p.tau, p.beta_r);
        match self {
            Method::DpoHard => format!(r#"{{"loss":"dpo","tau":{tau}}}"#),
            Method::DpoSoft | Method::AdpoPairwise => {
                format!(r#"{{"loss":"pairwise","tau":{tau}}}"#)
            }
            Method::AdpoListRaw => format!(
                r#"{{"loss":"listwise","tau":{tau},"beta_reward":{br},"reward_transform":"raw"}}"#
            ),
            Method::AdpoListKde => format!(r#"{{"loss":"listwise","tau":{tau},"target":"kde"}}"#),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnchorKind {
    Fixed,
    Ema,
}

pub const ANCHORS: [AnchorKind; 2] = [AnchorKind::Fixed, AnchorKind::Ema];

impl AnchorKind {
    pub fn name(self) -> &'static str {
        match self {
            AnchorKind::Fixed => "fixed",
            AnchorKind::Ema => "ema",
        }
    }
}

/// One finished run (a method, or the reference when `method` is None).
#[derive(Clone, Debug)]
pub struct Record {
    pub h: i64,
    pub scenario: Scenario,
    pub method: Option<Method>,
    pub anchor: Option<AnchorKind>,
    pub seed: u64,
    pub winmass: f64,
    pub winmass_ref: f64,
    pub final_loss: f64,
    pub curve: Vec<(usize, f64)>,
    pub seconds: f64,
}

struct Mlp {
    l1: nn::Linear,
    l2: nn::Linear,
}

impl Mlp {
    fn new(vs: &nn::VarStore, h: i64) -> Self {
        let root = vs.root();
        let c = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        Mlp {
            l1: nn::linear(&root / "l1", D as i64, h, c),
            l2: nn::linear(&root / "l2", h, K as i64, c),
        }
    }

    /// PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and
    /// biases, drawn from our own generator (libtorch's global one is shared by the threads).
    fn init(&self, rng: &mut Rng) {
        for l in [&self.l1, &self.l2] {
            let size = l.ws.size();
            let bound = 1.0 / (size[1] as f64).sqrt();
            let mut draw = |n: i64| -> Tensor {
                let v: Vec<f32> = (0..n)
                    .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                    .collect();
                Tensor::from_slice(&v)
            };
            let w = draw(size[0] * size[1]).view([size[0], size[1]]);
            let b = draw(size[0]);
            tch::no_grad(|| {
                let mut ws = l.ws.shallow_clone();
                ws.copy_(&w);
                let mut bs = l.bs.as_ref().expect("bias").shallow_clone();
                bs.copy_(&b);
            });
        }
    }

    fn log_probs(&self, x: &Tensor) -> Tensor {
        x.apply(&self.l1)
            .relu()
            .apply(&self.l2)
            .log_softmax(-1, Kind::Float)
    }
}

/// A policy network with its own variable store.
struct Net {
    vs: nn::VarStore,
    mlp: Mlp,
}

impl Net {
    fn new(h: i64) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = Mlp::new(&vs, h);
        Net { vs, mlp }
    }
    fn clone_of(src: &Net, h: i64) -> Self {
        let mut n = Net::new(h);
        n.vs.copy(&src.vs).expect("same architecture");
        n
    }
}

fn to_tensor_2d(v: &[f64], rows: usize, cols: usize) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&a| a as f32).collect();
    Tensor::from_slice(&f).view([rows as i64, cols as i64])
}

/// Held-out clean contexts and their true best items.
struct TestSet {
    x: Tensor,
    best: Tensor,
}

impl TestSet {
    fn new(world: &World, seed: u64, shift_level: u64, shift: f64, n: usize) -> Self {
        let mut rng = Rng::new(&[seed, stream::TEST_X, shift_level]);
        let x = world.contexts(&mut rng, n, shift);
        let best: Vec<i64> = x.chunks(D).map(|c| world.best(c)).collect();
        TestSet {
            x: to_tensor_2d(&x, n, D),
            best: Tensor::from_slice(&best),
        }
    }

    fn winmass(&self, mlp: &Mlp) -> f64 {
        tch::no_grad(|| {
            mlp.log_probs(&self.x)
                .gather(1, &self.best.unsqueeze(1), false)
                .exp()
                .mean(Kind::Double)
                .double_value(&[])
        })
    }
}

fn test_set_for(world: &World, seed: u64, sc: &Scenario, n: usize) -> TestSet {
    match sc.noise {
        Noise::Shift => TestSet::new(
            world,
            seed,
            1 + sc.severity as u64,
            world::SHIFT_NORM[sc.severity],
            n,
        ),
        _ => TestSet::new(world, seed, 0, 0.0, n),
    }
}

/// Reference = initial policy: ref_steps AdamW steps of cross-entropy on the clean best item of
/// fresh training-distribution contexts.
fn train_reference(world: &World, seed: u64, h: i64, p: &Params) -> Net {
    let net = Net::new(h);
    net.mlp.init(&mut Rng::new(&[seed, stream::INIT, h as u64]));
    let mut opt = nn::AdamW {
        wd: p.weight_decay,
        ..Default::default()
    }
    .build(&net.vs, p.lr)
    .expect("optimizer");
    let mut rng = Rng::new(&[seed, stream::REF_DATA]);
    for _ in 0..p.ref_steps {
        let x = world.contexts(&mut rng, p.ref_batch, 0.0);
        let best: Vec<i64> = x.chunks(D).map(|c| world.best(c)).collect();
        let loss = net
            .mlp
            .log_probs(&to_tensor_2d(&x, p.ref_batch, D))
            .nll_loss(&Tensor::from_slice(&best));
        opt.backward_step(&loss);
    }
    net
}

/// The noisy training set of one (seed, scenario): contexts (shared by all scenarios of a seed)
/// and one noisy reward vector per context (drawn once: an offline preference data set).
struct TrainSet {
    x: Tensor,
    r: Vec<[f64; K]>,
}

impl TrainSet {
    fn new(world: &World, seed: u64, sc: &Scenario, n: usize) -> Self {
        let mut rx = Rng::new(&[seed, stream::TRAIN_X]);
        let x = world.contexts(&mut rx, n, 0.0);
        let mut rn = Rng::new(&[seed, stream::NOISE, sc.noise.id(), sc.severity as u64]);
        let r = x
            .chunks(D)
            .map(|c| world::observe(sc, &world.utilities(c), &mut rn))
            .collect();
        TrainSet {
            x: to_tensor_2d(&x, n, D),
            r,
        }
    }
}

/// Mini-batch indices for every step: epochs of a seeded permutation (the same for all methods).
fn batch_plan(seed: u64, sc: &Scenario, p: &Params) -> Vec<Vec<i64>> {
    let mut rng = Rng::new(&[seed, stream::BATCHES, sc.noise.id(), sc.severity as u64]);
    let mut perm: Vec<i64> = (0..p.n_train as i64).collect();
    let mut pos = perm.len();
    (0..p.steps)
        .map(|_| {
            let mut b = Vec::with_capacity(p.batch);
            while b.len() < p.batch {
                if pos == perm.len() {
                    rng.shuffle(&mut perm);
                    pos = 0;
                }
                b.push(perm[pos]);
                pos += 1;
            }
            b
        })
        .collect()
}

/// Fixed index structures for a batch of B contexts.
struct Layouts {
    /// Rows (b*K+i, b*K+j) for every context b and pair i < j: [B * P * 2].
    pair_rows: Tensor,
    pair_list: Vec<(usize, usize)>,
    pair_groups: Groups,
    list_groups: Groups,
}

impl Layouts {
    fn new(b: usize) -> Self {
        let mut pair_list = Vec::new();
        for i in 0..K {
            for j in i + 1..K {
                pair_list.push((i, j));
            }
        }
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        for c in 0..b {
            for (pi, &(i, j)) in pair_list.iter().enumerate() {
                rows.push((c * K + i) as i64);
                rows.push((c * K + j) as i64);
                let g = (c * pair_list.len() + pi) as i64;
                ids.push(g);
                ids.push(g);
            }
        }
        let list_ids: Vec<i64> = (0..b * K).map(|r| (r / K) as i64).collect();
        Layouts {
            pair_rows: Tensor::from_slice(&rows),
            pair_list,
            pair_groups: Groups::from_ids(&ids).expect("pair groups"),
            list_groups: Groups::from_ids(&list_ids).expect("list groups"),
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Explicit pair targets [B * P * 2] for the pairwise methods.
fn pair_targets(m: Method, r: &[&[f64; K]], lay: &Layouts, beta_r: f64) -> Vec<f64> {
    let mut t = Vec::with_capacity(r.len() * lay.pair_list.len() * 2);
    for rc in r {
        // ADPO pairwise: per-context standardised rewards (the library's default zscore
        // transform: (r - mean) / (unbiased std + 1e-4)).
        let z: [f64; K] = if m == Method::AdpoPairwise {
            let mean = rc.iter().sum::<f64>() / K as f64;
            let sd = (rc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (K - 1) as f64).sqrt();
            let mut z = [0.0; K];
            z.iter_mut()
                .zip(rc.iter())
                .for_each(|(zk, rk)| *zk = (rk - mean) / (sd + 1e-4));
            z
        } else {
            **rc
        };
        for &(i, j) in &lay.pair_list {
            let q = match m {
                Method::DpoHard => {
                    if z[i] > z[j] {
                        1.0
                    } else if z[i] < z[j] {
                        0.0
                    } else {
                        0.5
                    }
                }
                _ => sigmoid((z[i] - z[j]) / beta_r),
            };
            t.push(q);
            t.push(1.0 - q);
        }
    }
    t
}

/// Trains one method from the reference and returns (final WinMass, final loss, curve).
#[allow(clippy::too_many_arguments)]
fn train_method(
    m: Method,
    anchor: AnchorKind,
    h: i64,
    reference: &Net,
    data: &TrainSet,
    test: &TestSet,
    plan: &[Vec<i64>],
    lay: &Layouts,
    p: &Params,
) -> (f64, f64, Vec<(usize, f64)>) {
    let obj = Objective::from_json(&m.config_json(p)).expect("objective config");
    let policy = Net::clone_of(reference, h);
    let ema = (anchor == AnchorKind::Ema).then(|| Net::clone_of(reference, h));
    let anchor_mlp = ema.as_ref().map(|n| &n.mlp).unwrap_or(&reference.mlp);
    let mut opt = nn::AdamW {
        wd: p.weight_decay,
        ..Default::default()
    }
    .build(&policy.vs, p.lr)
    .expect("optimizer");
    let pol_vars = policy.vs.trainable_variables();
    let ema_vars = ema.as_ref().map(|n| n.vs.trainable_variables());
    let mut curve = vec![(0, test.winmass(&policy.mlp))];
    let mut last_loss = f64::NAN;
    for (step, idx) in plan.iter().enumerate() {
        let xb = data.x.index_select(0, &Tensor::from_slice(idx));
        let rb: Vec<&[f64; K]> = idx.iter().map(|&i| &data.r[i as usize]).collect();
        let l = policy.mlp.log_probs(&xb).view([-1]);
        let la = tch::no_grad(|| anchor_mlp.log_probs(&xb).view([-1]));
        let (rows, anchor_rows, signal, groups) = if m.pairwise() {
            let t = pair_targets(m, &rb, lay, p.beta_r);
            (
                l.index_select(0, &lay.pair_rows),
                la.index_select(0, &lay.pair_rows),
                Tensor::from_slice(&t),
                &lay.pair_groups,
            )
        } else {
            let flat: Vec<f64> = rb.iter().flat_map(|r| r.iter().copied()).collect();
            (l, la, Tensor::from_slice(&flat), &lay.list_groups)
        };
        let logp = rows.detach().to_kind(Kind::Double);
        let anchor_logp = anchor_rows.to_kind(Kind::Double);
        let sig = if m.pairwise() {
            Signal::Targets(&signal)
        } else {
            Signal::Rewards(&signal)
        };
        let out = obj
            .eval(&EvalInputs {
                logp: &logp,
                anchor_logp: &anchor_logp,
                signal: sig,
                groups,
                policy_entropy: None,
            })
            .unwrap_or_else(|e| panic!("{} eval failed: {e}", m.name()));
        last_loss = out.loss;
        // One backward of sum(dL/dl * l) through the MLP.
        let surrogate = (&rows * out.grad_logp.to_kind(Kind::Float)).sum(Kind::Float);
        opt.zero_grad();
        surrogate.backward();
        opt.step();
        if let Some(ev) = &ema_vars {
            let a = p.ema_alpha;
            tch::no_grad(|| {
                for (e, w) in ev.iter().zip(&pol_vars) {
                    let mut e = e.shallow_clone();
                    let new = &e * a + w * (1.0 - a);
                    e.copy_(&new);
                }
            });
        }
        if (step + 1) % p.eval_every == 0 || step + 1 == plan.len() {
            curve.push((step + 1, test.winmass(&policy.mlp)));
        }
    }
    let wm = curve.last().expect("curve").1;
    (wm, last_loss, curve)
}

/// One job = (seed, width): the reference, then every scenario × method × anchor.
fn run_job(seed: u64, h: i64, scenarios: &[Scenario], p: &Params, tx: &mpsc::Sender<Record>) {
    let world = World::new(seed);
    let t0 = Instant::now();
    let reference = train_reference(&world, seed, h, p);
    let lay = Layouts::new(p.batch);
    let mut pending: Vec<Record> = Vec::new();
    for sc in scenarios {
        let test = test_set_for(&world, seed, sc, p.n_test);
        let wm_ref = test.winmass(&reference.mlp);
        let data = TrainSet::new(&world, seed, sc, p.n_train);
        let plan = batch_plan(seed, sc, p);
        pending.push(Record {
            h,
            scenario: *sc,
            method: None,
            anchor: None,
            seed,
            winmass: wm_ref,
            winmass_ref: wm_ref,
            final_loss: f64::NAN,
            curve: vec![],
            seconds: t0.elapsed().as_secs_f64(),
        });
        for m in METHODS {
            for a in ANCHORS {
                let t = Instant::now();
                let (wm, loss, curve) =
                    train_method(m, a, h, &reference, &data, &test, &plan, &lay, p);
                pending.push(Record {
                    h,
                    scenario: *sc,
                    method: Some(m),
                    anchor: Some(a),
                    seed,
                    winmass: wm,
                    winmass_ref: wm_ref,
                    final_loss: loss,
                    curve,
                    seconds: t.elapsed().as_secs_f64(),
                });
            }
        }
        for r in pending.drain(..) {
            tx.send(r).expect("collector alive");
        }
    }
}

fn all_scenarios(quick: bool) -> Vec<Scenario> {
    let mut v = vec![Scenario {
        noise: Noise::Clean,
        severity: 0,
    }];
    let sevs: &[usize] = if quick { &[0] } else { &[0, 1, 2] };
    for n in [
        Noise::GaussOutliers,
        Noise::Cauchy,
        Noise::Flips,
        Noise::Shift,
    ] {
        for &s in sevs {
            v.push(Scenario {
                noise: n,
                severity: s,
            });
        }
    }
    v
}

fn parse_args() -> (Params, PathBuf) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut p = Params {
        seeds: if quick { 2 } else { 10 },
        widths: if quick { vec![64] } else { vec![64, 128, 256] },
        main_width: if quick { 64 } else { 128 },
        all_widths: false,
        scaling: Scenario {
            noise: Noise::Cauchy,
            severity: 1,
        },
        scenarios: all_scenarios(quick),
        n_train: 1024,
        batch: 64,
        steps: if quick { 300 } else { 1000 },
        ref_steps: 30,
        ref_batch: 64,
        lr: 5e-4,
        weight_decay: 0.01,
        tau: 0.8,
        beta_r: 0.5,
        ema_alpha: 0.99,
        n_test: 1000,
        eval_every: 25,
        threads: 2,
        quick,
    };
    let mut out = PathBuf::from(if quick {
        "target/bandit-quick"
    } else {
        "target/bandit"
    });
    let mut it = args.iter();
    let num = |v: Option<&String>, name: &str| -> usize {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a positive integer"))
    };
    let flt = |v: Option<&String>, name: &str| -> f64 {
        v.and_then(|s| s.parse().ok())
            .filter(|x: &f64| x.is_finite() && *x > 0.0)
            .unwrap_or_else(|| panic!("{name} needs a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--out" => out = PathBuf::from(it.next().expect("--out needs a directory")),
            "--seeds" => p.seeds = num(it.next(), "--seeds"),
            "--steps" => p.steps = num(it.next(), "--steps"),
            "--threads" => p.threads = num(it.next(), "--threads").max(1),
            "--all-widths" => p.all_widths = true,
            "--tau" => p.tau = flt(it.next(), "--tau"),
            "--beta-r" => p.beta_r = flt(it.next(), "--beta-r"),
            "-h" | "--help" => {
                println!(
                    "usage: bandit [--quick] [--out DIR] [--seeds N] [--steps N] [--threads N] [--all-widths] [--tau X] [--beta-r X]\n\
                     (--tau/--beta-r change the value for every method: for sensitivity runs only)"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    (p, out)
}

fn main() {
    let (p, out) = parse_args();
    // One intra-op thread per worker; the workers give the parallelism (deterministic results).
    tch::set_num_threads(1);
    std::fs::create_dir_all(&out).expect("create output directory");
    let mut jobs: VecDeque<(u64, i64, Vec<Scenario>)> = VecDeque::new();
    // Widest first: the longest jobs start first.
    let mut widths = p.widths.clone();
    widths.sort_unstable_by(|a, b| b.cmp(a));
    for &h in &widths {
        for seed in 0..p.seeds as u64 {
            let sc = if h == p.main_width || p.all_widths {
                p.scenarios.clone()
            } else {
                vec![p.scaling]
            };
            jobs.push_back((seed, h, sc));
        }
    }
    let total_runs: usize = jobs
        .iter()
        .map(|j| j.2.len() * METHODS.len() * ANCHORS.len())
        .sum();
    println!(
        "bandit: {} mode, {} seeds, widths {:?} (main {}), {} scenarios, {} steps, {} runs on {} threads -> {}",
        if p.quick { "quick" } else { "full" },
        p.seeds,
        p.widths,
        p.main_width,
        p.scenarios.len(),
        p.steps,
        total_runs,
        p.threads,
        out.display()
    );
    println!("{}", report::params_text(&p));
    let t0 = Instant::now();
    let queue = Arc::new(Mutex::new(jobs));
    let (tx, rx) = mpsc::channel::<Record>();
    let mut handles = Vec::new();
    for _ in 0..p.threads {
        let (queue, tx, p) = (queue.clone(), tx.clone(), p.clone());
        handles.push(std::thread::spawn(move || loop {
            let job = queue.lock().expect("queue").pop_front();
            match job {
                Some((seed, h, sc)) => run_job(seed, h, &sc, &p, &tx),
                None => break,
            }
        }));
    }
    drop(tx);
    let mut records: Vec<Record> = Vec::new();
    let mut done = 0usize;
    let mut next_report = 1usize;
    for r in rx {
        if r.method.is_some() {
            done += 1;
        }
        records.push(r);
        if done >= next_report {
            let el = t0.elapsed().as_secs_f64();
            let eta = if done > 0 {
                el / done as f64 * (total_runs - done) as f64
            } else {
                f64::NAN
            };
            let last = records.last().expect("pushed");
            println!(
                "  [{:>5.0} s] {done}/{total_runs} runs (eta {eta:.0} s); last: h={} seed={} {}",
                el,
                last.h,
                last.seed,
                last.scenario.name()
            );
            next_report = done + (total_runs / 20).max(1);
        }
    }
    for h in handles {
        h.join().expect("worker panicked");
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("bandit: {done} runs in {secs:.1} s");
    report::write_all(&out, &p, &records, secs).expect("write outputs");
    println!(
        "wrote {}/{{runs.csv,summary.csv,curves.csv,results.md}}",
        out.display()
    );
    let failures = report::checks(&p, &records);
    if failures.is_empty() {
        println!("checks: all passed");
    } else {
        for f in &failures {
            println!("CHECK FAILED: {f}");
        }
        std::process::exit(1);
    }
}

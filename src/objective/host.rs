//! Fused CPU kernel for the listwise family (listwise, pairwise, top1, dpo with softmax or top-1
//! targets, fixed or target-entropy tau, clamps, k3 penalty) on contiguous float64 host data:
//! one pass per group instead of ~60 tensor ops, which dominate at these sizes.
//! `kernels_agree.rs` checks that it matches the tensor kernel exactly for every configuration
//! it accepts; everything else (Plackett-Luce, KDE, smooth-hybrid tau, other devices/dtypes)
//! runs on the tensor kernel.

use super::fast_exp::exp_nonpositive;
use super::groups::{Groups, Rows};
use super::metrics::Metrics;
use super::targets::TargetRule;
use crate::config::{AdaptiveTau, LossKind, ObjectiveConfig, RewardTransform};

/// Whether this kernel computes `cfg` (given the target rule chosen for the loss).
pub fn supports(cfg: &ObjectiveConfig, rule: TargetRule) -> bool {
    matches!(
        cfg.loss,
        LossKind::Listwise | LossKind::Pairwise | LossKind::Top1 | LossKind::Dpo
    ) && rule != TargetRule::Kde
        && !matches!(cfg.adaptive_tau, Some(AdaptiveTau::SmoothHybrid { .. }))
}

/// A group's inputs when its rows are not contiguous (gathered), reused across groups.
#[derive(Default)]
struct Gathered {
    keys: Vec<f64>,
    logp: Vec<f64>,
    anchor: Vec<f64>,
}

/// Per-group work buffers, reused across groups.
#[derive(Default)]
struct Scratch {
    q: Vec<f64>,
    s: Vec<f64>,
    pass: Vec<f64>,
    e: Vec<f64>,
    grad: Vec<f64>,
}

/// The anchored score of one row and ds/dl (0 where a clamp is active).
fn score(cfg: &ObjectiveConfig, ratio: f64, tau: f64) -> (f64, f64) {
    let mut ratio = ratio;
    let mut pass = 1.0 / tau;
    if let Some(c) = cfg.clip_log_ratio {
        if ratio.abs() > c {
            pass = 0.0;
        }
        ratio = ratio.clamp(-c, c);
    }
    let mut s = ratio / tau;
    if let Some(c) = cfg.clip_score {
        if s.abs() > c {
            pass = 0.0;
        }
        s = s.clamp(-c, c);
    }
    (s, pass)
}

/// q over one group from its keys (rewards, or explicit targets when `explicit`); returns
/// sum q ln q (for KL(q || p~)) without a logarithm per candidate where the form allows.
fn target(
    cfg: &ObjectiveConfig,
    rule: TargetRule,
    keys: &[f64],
    explicit: bool,
    q: &mut Vec<f64>,
) -> f64 {
    q.clear();
    let k = keys.len() as f64;
    let xlnx = |x: f64| if x > 0.0 { x * x.ln() } else { 0.0 };
    match rule {
        TargetRule::Top1 { smoothing } => {
            let best = keys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let n_top = keys.iter().filter(|&&x| x == best).count() as f64;
            if n_top == k {
                q.extend(keys.iter().map(|_| 1.0 / k));
                return -k.ln();
            }
            let (q_top, q_rest) = ((1.0 - smoothing) / n_top, smoothing / (k - n_top));
            q.extend(keys.iter().map(|&x| if x == best { q_top } else { q_rest }));
            n_top * xlnx(q_top) + (k - n_top) * xlnx(q_rest)
        }
        _ if explicit => {
            q.extend_from_slice(keys);
            keys.iter().map(|&x| xlnx(x)).sum()
        }
        _ => {
            let mean = keys.iter().sum::<f64>() / k;
            let (shift, scale) = match cfg.reward_transform {
                RewardTransform::Raw => (0.0, 1.0),
                RewardTransform::Center => (mean, 1.0),
                RewardTransform::Zscore => {
                    let var = keys.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (k - 1.0);
                    (mean, 1.0 / (var.sqrt() + 1e-4))
                }
            };
            let scale = scale / cfg.beta_reward;
            let x = sized(q, keys.len());
            for (x, r) in x.iter_mut().zip(keys) {
                *x = (r - shift) * scale;
            }
            softmax_in_place(x)
        }
    }
}

/// `v` as a slice of `k` values (contents unspecified): no per-group allocation or push.
#[inline(always)]
fn sized(v: &mut Vec<f64>, k: usize) -> &mut [f64] {
    v.resize(k, 0.0);
    &mut v[..k]
}

/// x <- softmax(x); returns sum q ln q = sum q (x - m) - ln z, with z = sum e^(x - m).
#[inline(always)]
fn softmax_in_place(x: &mut [f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mut z, mut weighted) = (0.0, 0.0);
    for v in x.iter_mut() {
        let d = *v - m;
        let e = exp_nonpositive(d);
        z += e;
        weighted += e * d;
        *v = e;
    }
    let inv_z = 1.0 / z;
    x.iter_mut().for_each(|v| *v *= inv_z);
    weighted * inv_z - z.ln()
}

/// Read-only inputs of one evaluation.
struct Batch<'a> {
    cfg: &'a ObjectiveConfig,
    rule: TargetRule,
    logp: &'a [f64],
    anchor: &'a [f64],
    signal: &'a [f64],
    explicit: bool,
    groups: &'a Groups,
}

/// Per-group sums, added up in group order afterwards so results do not depend on threading.
#[derive(Default, Clone, Copy)]
struct GroupStats {
    loss: f64,
    entropy: f64,
    kl: f64,
    win: f64,
    tau: f64,
    abs_sum: f64,
    abs_max: f64,
    k3_sum: f64,
}

impl GroupStats {
    fn plus(self, o: &GroupStats) -> GroupStats {
        GroupStats {
            loss: self.loss + o.loss,
            entropy: self.entropy + o.entropy,
            kl: self.kl + o.kl,
            win: self.win + o.win,
            tau: self.tau + o.tau,
            abs_sum: self.abs_sum + o.abs_sum,
            abs_max: self.abs_max.max(o.abs_max),
            k3_sum: self.k3_sum + o.k3_sum,
        }
    }

    /// The metrics from the sums over `g_count` groups of `rows` rows in all.
    fn metrics(&self, cfg: &ObjectiveConfig, rows: usize, g_count: usize) -> Metrics {
        let inv_g = 1.0 / g_count as f64;
        let anchor_kl = if cfg.beta_anchor_kl > 0.0 {
            self.k3_sum / rows as f64
        } else {
            f64::NAN
        };
        let mut loss = self.loss * inv_g;
        if cfg.beta_anchor_kl > 0.0 {
            loss += cfg.beta_anchor_kl * anchor_kl;
        }
        Metrics {
            loss,
            entropy: self.entropy * inv_g,
            kl_target: self.kl * inv_g,
            win_mass: self.win * inv_g,
            mean_abs_score: self.abs_sum / rows as f64,
            max_abs_score: self.abs_max,
            tau: self.tau * inv_g,
            groups: g_count as u64,
            clip_fraction: f64::NAN,
            anchor_kl,
        }
    }
}

/// Where workers write each row's gradient and score: straight into the outputs, with no
/// per-call staging buffer (fresh large allocations cost page faults on every call).
#[derive(Clone, Copy)]
struct RowSink {
    grad: *mut f64,
    scores: *mut f64,
    len: usize,
}

// SAFETY: each row belongs to at most one group and each group to exactly one worker, so
// concurrent writes through a RowSink never touch the same element.
unsafe impl Send for RowSink {}
unsafe impl Sync for RowSink {}

impl RowSink {
    /// Writes one group's gradient and scores to its rows.
    fn put_group(&self, members: Rows, grad: &[f64], scores: &[f64]) {
        match members {
            Rows::Range(start, end) => {
                assert!(
                    end <= self.len && end - start == grad.len(),
                    "rows out of range"
                );
                // SAFETY: in bounds (checked); the rows belong to this worker only (see above).
                unsafe {
                    std::ptr::copy_nonoverlapping(grad.as_ptr(), self.grad.add(start), grad.len());
                    std::ptr::copy_nonoverlapping(
                        scores.as_ptr(),
                        self.scores.add(start),
                        grad.len(),
                    );
                }
            }
            Rows::List(_) => {
                for (j, row) in members.iter().enumerate() {
                    assert!(row < self.len, "row {row} out of range");
                    // SAFETY: as above.
                    unsafe {
                        *self.grad.add(row) = grad[j];
                        *self.scores.add(row) = scores[j];
                    }
                }
            }
        }
    }
}

/// A group's keys, logp and anchor: contiguous rows are borrowed as they are, others gathered.
#[inline(always)]
fn group_inputs<'a>(
    b: &Batch<'a>,
    members: Rows,
    gathered: &'a mut Gathered,
) -> (&'a [f64], &'a [f64], &'a [f64]) {
    match members {
        Rows::Range(start, end) => (
            &b.signal[start..end],
            &b.logp[start..end],
            &b.anchor[start..end],
        ),
        Rows::List(_) => {
            let gather = |out: &mut Vec<f64>, from: &[f64]| {
                out.clear();
                out.extend(members.iter().map(|r| from[r]));
            };
            gather(&mut gathered.keys, b.signal);
            gather(&mut gathered.logp, b.logp);
            gather(&mut gathered.anchor, b.anchor);
            (&gathered.keys, &gathered.logp, &gathered.anchor)
        }
    }
}

/// The group's tau: fixed, or lowered by the normalised entropy of its targets q.
#[inline(always)]
fn group_tau(cfg: &ObjectiveConfig, q: &[f64]) -> f64 {
    match cfg.adaptive_tau {
        Some(AdaptiveTau::TargetEntropy { alpha, tau_min }) => {
            let h: f64 = -q.iter().map(|q| q * (q + 1e-8).ln()).sum::<f64>();
            (cfg.tau * (1.0 - alpha * h / (q.len() as f64).ln())).max(tau_min)
        }
        _ => cfg.tau,
    }
}

/// Scores into `sc.s`, and ds/dl into `sc.pass` only when a clamp can zero it (else it is
/// 1/tau everywhere); returns whether it can.
#[inline(always)]
fn anchored_scores(
    cfg: &ObjectiveConfig,
    logp: &[f64],
    anchor: &[f64],
    tau: f64,
    sc: &mut Scratch,
) -> bool {
    let k = logp.len();
    let clamped = cfg.clip_log_ratio.is_some() || cfg.clip_score.is_some();
    let scores = sized(&mut sc.s, k);
    if clamped {
        let pass = sized(&mut sc.pass, k);
        for (((s, p), l), a) in scores.iter_mut().zip(pass.iter_mut()).zip(logp).zip(anchor) {
            (*s, *p) = score(cfg, l - a, tau);
        }
    } else {
        for ((s, l), a) in scores.iter_mut().zip(logp).zip(anchor) {
            *s = (l - a) / tau;
        }
    }
    clamped
}

fn eval_group(
    b: &Batch,
    g: usize,
    gathered: &mut Gathered,
    sc: &mut Scratch,
    sink: RowSink,
    inv_g: f64,
) -> GroupStats {
    let cfg = b.cfg;
    let members = b.groups.group_rows(g);
    let (keys, logp, anchor) = group_inputs(b, members, gathered);
    let k = keys.len();
    let q_lnq = target(cfg, b.rule, keys, b.explicit, &mut sc.q);
    let tau = group_tau(cfg, &sc.q);
    let clamped = anchored_scores(cfg, logp, anchor, tau, sc);
    let scores = &sc.s[..k];
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e = sized(&mut sc.e, k);
    for (e, s) in e.iter_mut().zip(scores.iter()) {
        *e = exp_nonpositive(s - m);
    }
    let z: f64 = e.iter().sum();
    let lse = m + z.ln();
    let best = keys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut st = GroupStats {
        tau,
        ..GroupStats::default()
    };
    let (mut qs, mut ps) = (0.0, 0.0);
    let inv_z = 1.0 / z;
    let scale = inv_g / tau;
    let grad = sized(&mut sc.grad, k);
    for ((g, e), q) in grad.iter_mut().zip(e.iter()).zip(&sc.q) {
        *g = (e * inv_z - q) * scale;
    }
    if clamped {
        // pass is 1/tau or 0: rescale the rows a clamp holds.
        for (g, pass) in grad.iter_mut().zip(&sc.pass) {
            *g *= pass * tau;
        }
    }
    for (((e, q), s), key) in e.iter().zip(&sc.q).zip(scores.iter()).zip(keys) {
        let p = e * inv_z;
        qs += q * s;
        ps += p * s;
        if *key == best {
            st.win += p;
        }
        st.abs_sum += s.abs();
        st.abs_max = st.abs_max.max(s.abs());
    }
    if cfg.beta_anchor_kl > 0.0 {
        for (l, a) in logp.iter().zip(anchor) {
            let d = a - l;
            st.k3_sum += d.exp() - d - 1.0;
        }
    }
    sink.put_group(members, grad, scores);
    st.loss = lse - qs;
    // H(p~) = LSE(s) - sum p s; KL(q || p~) = sum q ln q - sum q s + LSE(s).
    st.entropy = lse - ps;
    st.kl = q_lnq - qs + lse;
    st
}

/// Evaluates groups `range` on one thread.
fn eval_groups(
    b: &Batch,
    range: std::ops::Range<usize>,
    sink: RowSink,
    inv_g: f64,
) -> Vec<GroupStats> {
    let (mut gathered, mut sc) = (Gathered::default(), Scratch::default());
    let mut stats = Vec::with_capacity(range.len());
    for g in range {
        stats.push(eval_group(b, g, &mut gathered, &mut sc, sink, inv_g));
    }
    stats
}

/// Groups are independent: large batches are split over the available cores.
fn worker_count(rows: usize, groups: usize) -> usize {
    const MIN_ROWS_PER_THREAD: usize = 8192;
    let cores = std::thread::available_parallelism()
        .map_or(1, |c| c.get())
        .min(8);
    cores.min(rows / MIN_ROWS_PER_THREAD).min(groups).max(1)
}

/// `signal` holds rewards, or explicit targets when `explicit`. Writes d loss / d logp and the
/// scores into `grad` and `scores` (resized to N; their capacity is reused) and returns the
/// loss and metrics.
#[allow(clippy::too_many_arguments)]
pub fn eval(
    cfg: &ObjectiveConfig,
    rule: TargetRule,
    logp: &[f64],
    anchor: &[f64],
    signal: &[f64],
    explicit: bool,
    groups: &Groups,
    grad: &mut Vec<f64>,
    scores: &mut Vec<f64>,
) -> (f64, Metrics) {
    let n = logp.len();
    let g_count = groups.count();
    let b = Batch {
        cfg,
        rule,
        logp,
        anchor,
        signal,
        explicit,
        groups,
    };
    let inv_g = 1.0 / g_count as f64;
    // Rows outside counted groups get gradient 0 and the base-tau score; when every row is in
    // a counted group all are written below, and the buffers (reused across calls) need no fill.
    let rows: usize = groups.sizes().iter().map(|&k| k as usize).sum();
    if rows < n || grad.len() != n {
        grad.clear();
        grad.resize(n, 0.0);
        scores.clear();
        scores.extend((0..n).map(|i| score(cfg, logp[i] - anchor[i], cfg.tau).0));
    }
    let sink = RowSink {
        grad: grad.as_mut_ptr(),
        scores: scores.as_mut_ptr(),
        len: n,
    };
    let workers = worker_count(n, g_count);
    let parts: Vec<Vec<GroupStats>> = if workers == 1 {
        vec![eval_groups(&b, 0..g_count, sink, inv_g)]
    } else {
        // Rayon's pool keeps its threads (spawning them per call cost more than the work);
        // the shares come back in group order, so sums do not depend on the thread count.
        use rayon::prelude::*;
        let bounds: Vec<usize> = (0..=workers).map(|w| w * g_count / workers).collect();
        let batch = &b;
        bounds
            .par_windows(2)
            .map(|w| eval_groups(batch, w[0]..w[1], sink, inv_g))
            .collect()
    };
    let total = parts
        .iter()
        .flatten()
        .fold(GroupStats::default(), GroupStats::plus);
    if cfg.beta_anchor_kl > 0.0 {
        add_anchor_penalty(&b, grad, cfg.beta_anchor_kl / rows as f64);
    }
    let metrics = total.metrics(cfg, rows, g_count);
    (metrics.loss, metrics)
}

/// d/dlogp of the k3 anchor penalty, `w` = beta / rows per counted row.
fn add_anchor_penalty(b: &Batch, grad: &mut [f64], w: f64) {
    for g in 0..b.groups.count() {
        for row in b.groups.group_rows(g).iter() {
            grad[row] += w * (1.0 - (b.anchor[row] - b.logp[row]).exp());
        }
    }
}

//! Cases and checks the objective's tests share: tests/objective.rs and the kernel agreement
//! test inside the crate (src/objective/kernels_agree.rs). Standard library only.
#![allow(dead_code)]

pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-3)
}

pub fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*g, *w, rel),
            "{what}[{i}]: got {g}, want {w} (all: {got:?})"
        );
    }
}

/// Deterministic pseudo-random numbers for the property tests.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Random groups of random sizes (some singletons), ids shuffled.
pub fn random_batch(
    rng: &mut Rng,
    groups: usize,
    max_k: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<i64>) {
    let mut ids = Vec::new();
    for g in 0..groups {
        let k = 1 + (rng.next() * max_k as f64) as usize;
        ids.extend(std::iter::repeat_n(1000 - 7 * g as i64, k));
    }
    for i in (1..ids.len()).rev() {
        let j = (rng.next() * (i + 1) as f64) as usize;
        ids.swap(i, j);
    }
    let n = ids.len();
    let logp = (0..n).map(|_| -5.0 + rng.normal()).collect();
    let anchor = (0..n).map(|_| -5.0 + rng.normal()).collect();
    let rewards = (0..n).map(|_| rng.normal()).collect();
    (logp, anchor, rewards, ids)
}

pub const CONFIGS: [&str; 12] = [
    "",
    r#"{"reward_transform": "raw", "tau": 0.3}"#,
    r#"{"reward_transform": "center", "beta_reward": 2.0}"#,
    r#"{"target": "kde"}"#,
    r#"{"target": "top1", "top1_smoothing": 0.1}"#,
    r#"{"loss": "top1"}"#,
    r#"{"loss": "plackett_luce", "pl_ties": "stable"}"#,
    r#"{"loss": "plackett_luce", "pl_ties": "stable", "pl_top_k": 2, "pl_label_smoothing": 0.1, "pl_poly_eps": 1.0}"#,
    r#"{"adaptive_tau": {"rule": "target_entropy"}}"#,
    r#"{"beta_anchor_kl": 0.3}"#,
    r#"{"clip_log_ratio": 0.8, "clip_score": 1.5}"#,
    r#"{"loss": "plackett_luce", "pl_ties": "random", "seed": 3}"#,
];

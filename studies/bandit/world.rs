//! The synthetic contextual bandit of docs/MATH.md §12.3: contexts, item utilities, noise models.
//! All randomness comes from SplitMix64 streams keyed by (seed, purpose), so results do not
//! depend on thread scheduling or on libtorch's global generator.

pub const D: usize = 16;
pub const K: usize = 8;

/// SplitMix64 with Box-Muller normals.
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    /// A stream determined by a list of keys (seed, purpose, ...).
    pub fn new(keys: &[u64]) -> Self {
        let mut r = Rng {
            state: 0x0AD9_0BA7_D175_2025,
            spare: None,
        };
        for &k in keys {
            r.state ^= k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            r.next_u64();
        }
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    pub fn cauchy(&mut self, gamma: f64) -> f64 {
        gamma * (std::f64::consts::PI * (self.uniform() - 0.5)).tan()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Stream purposes (second key of `Rng::new`).
pub mod stream {
    pub const WORLD: u64 = 1;
    pub const TRAIN_X: u64 = 2;
    pub const TEST_X: u64 = 3;
    pub const NOISE: u64 = 4;
    pub const REF_DATA: u64 = 5;
    pub const INIT: u64 = 6;
    pub const BATCHES: u64 = 7;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noise {
    Clean,
    GaussOutliers,
    Cauchy,
    Flips,
    Shift,
}

impl Noise {
    pub fn name(self) -> &'static str {
        match self {
            Noise::Clean => "clean",
            Noise::GaussOutliers => "gauss_outliers",
            Noise::Cauchy => "cauchy",
            Noise::Flips => "adv_flips",
            Noise::Shift => "dist_shift",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Noise::Clean => "Clean (control)",
            Noise::GaussOutliers => "Gaussian + outliers",
            Noise::Cauchy => "Heavy-tailed (Cauchy)",
            Noise::Flips => "Adversarial ranking flips",
            Noise::Shift => "Distribution shift",
        }
    }
    pub fn id(self) -> u64 {
        self as u64
    }
}

pub const SEVERITIES: [&str; 3] = ["light", "medium", "heavy"];

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub noise: Noise,
    /// 0, 1, 2 = light, medium, heavy (ignored for Clean).
    pub severity: usize,
}

impl Scenario {
    pub fn name(&self) -> String {
        match self.noise {
            Noise::Clean => "clean".to_string(),
            n => format!("{}-{}", n.name(), SEVERITIES[self.severity]),
        }
    }
    pub fn severity_name(&self) -> &'static str {
        match self.noise {
            Noise::Clean => "none",
            _ => SEVERITIES[self.severity],
        }
    }
    /// Parameters of the severity, for the docs and the log.
    pub fn describe(&self) -> String {
        let s = self.severity;
        match self.noise {
            Noise::Clean => "no noise".into(),
            Noise::GaussOutliers => format!(
                "eps ~ N(0, {}^2), plus +-{} outlier w.p. {}",
                GAUSS_SIGMA[s], OUTLIER_SIZE, OUTLIER_P[s]
            ),
            Noise::Cauchy => format!("eps ~ Cauchy(0, {})", CAUCHY_GAMMA[s]),
            Noise::Flips => format!("ranking of the context reversed w.p. {}", FLIP_P[s]),
            Noise::Shift => format!("test contexts x ~ N(m d, I), m = {}", SHIFT_NORM[s]),
        }
    }
}

pub const GAUSS_SIGMA: [f64; 3] = [0.5, 1.0, 2.0];
pub const OUTLIER_P: [f64; 3] = [0.05, 0.10, 0.20];
pub const OUTLIER_SIZE: f64 = 10.0;
pub const CAUCHY_GAMMA: [f64; 3] = [0.5, 1.0, 2.0];
pub const FLIP_P: [f64; 3] = [0.10, 0.20, 0.30];
pub const SHIFT_NORM: [f64; 3] = [1.0, 2.0, 3.0];

/// One seed's world: u_k(x) = x^T W e_k / c = x . v_k, with c chosen so that
/// mean_k Var_{x ~ N(0, I)}[u_k] = 1.
pub struct World {
    /// v_k = W e_k / c, row-major [K][D].
    pub v: Vec<[f64; D]>,
    /// Unit direction of the distribution shift.
    pub shift_dir: [f64; D],
}

impl World {
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(&[seed, stream::WORLD]);
        let w: Vec<f64> = (0..D * D).map(|_| rng.normal()).collect();
        let e: Vec<f64> = (0..K * D).map(|_| rng.normal()).collect();
        let mut v = vec![[0.0; D]; K];
        for (k, vk) in v.iter_mut().enumerate() {
            for (i, vi) in vk.iter_mut().enumerate() {
                *vi = (0..D).map(|j| w[i * D + j] * e[k * D + j]).sum();
            }
        }
        let c = (v
            .iter()
            .map(|vk| vk.iter().map(|a| a * a).sum::<f64>())
            .sum::<f64>()
            / K as f64)
            .sqrt();
        v.iter_mut()
            .for_each(|vk| vk.iter_mut().for_each(|a| *a /= c));
        let mut shift_dir = [0.0; D];
        shift_dir.iter_mut().for_each(|a| *a = rng.normal());
        let n = shift_dir.iter().map(|a| a * a).sum::<f64>().sqrt();
        shift_dir.iter_mut().for_each(|a| *a /= n);
        World { v, shift_dir }
    }

    pub fn utilities(&self, x: &[f64]) -> [f64; K] {
        let mut u = [0.0; K];
        for (k, uk) in u.iter_mut().enumerate() {
            *uk = self.v[k].iter().zip(x).map(|(a, b)| a * b).sum();
        }
        u
    }

    /// n contexts [n * D]: N(0, I), shifted by `shift` * shift_dir.
    pub fn contexts(&self, rng: &mut Rng, n: usize, shift: f64) -> Vec<f64> {
        let mut x = Vec::with_capacity(n * D);
        for _ in 0..n {
            for i in 0..D {
                x.push(rng.normal() + shift * self.shift_dir[i]);
            }
        }
        x
    }

    pub fn best(&self, x: &[f64]) -> i64 {
        argmax(&self.utilities(x)) as i64
    }
}

pub fn argmax(v: &[f64]) -> usize {
    let mut b = 0;
    for (i, &a) in v.iter().enumerate() {
        if a > v[b] {
            b = i;
        }
    }
    b
}

/// Observed rewards r = u + noise for one context (Shift and Clean: r = u).
pub fn observe(sc: &Scenario, u: &[f64; K], rng: &mut Rng) -> [f64; K] {
    let s = sc.severity;
    let mut r = *u;
    match sc.noise {
        Noise::Clean | Noise::Shift => {}
        Noise::GaussOutliers => {
            for rk in r.iter_mut() {
                *rk += GAUSS_SIGMA[s] * rng.normal();
                if rng.uniform() < OUTLIER_P[s] {
                    *rk += if rng.uniform() < 0.5 {
                        OUTLIER_SIZE
                    } else {
                        -OUTLIER_SIZE
                    };
                }
            }
        }
        Noise::Cauchy => {
            for rk in r.iter_mut() {
                *rk += rng.cauchy(CAUCHY_GAMMA[s]);
            }
        }
        Noise::Flips => {
            // Reverse the ranking, keep the set of values: r_k = max + min - u_k.
            if rng.uniform() < FLIP_P[s] {
                let mx = u.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mn = u.iter().cloned().fold(f64::INFINITY, f64::min);
                for (rk, uk) in r.iter_mut().zip(u) {
                    *rk = mx + mn - uk;
                }
            }
        }
    }
    r
}

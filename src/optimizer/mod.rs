//! Optimizers over the policy's own parameters, with PyTorch's update rules (torch.optim.SGD
//! and torch.optim.AdamW), so a step here equals a step there; and global-norm clipping.

mod fused;
mod in_place;

use crate::error::{Error, Result, Status};
use in_place::AdamwStep;
use serde::Deserialize;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Adamw {
        #[serde(default = "default_lr")]
        lr: f64,
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_weight_decay")]
        weight_decay: f64,
    },
}

fn default_lr() -> f64 {
    1e-5
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    0.01
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adamw {
            lr: default_lr(),
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: default_weight_decay(),
        }
    }
}

impl OptimizerConfig {
    /// Its keys whose values are arrays (the strict reader refuses arrays elsewhere).
    pub const LISTS: &'static [&'static str] = &["betas"];

    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adamw { lr, .. } => *lr,
        }
    }

    /// Bounds (README "Trainer configuration"): lr in (0, MAX_LR]; momentum and betas in
    /// [0, 1); eps in (0, 1]; weight_decay >= 0 with lr * weight_decay <= 1 (a decay step
    /// never overshoots zero); every value finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config(m));
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0 && lr <= MAX_LR) {
            // {lr:?}: 1e300 as "1e300", not 301 digits.
            return bad(format!(
                "optimizer.lr must be in (0, {MAX_LR:e}], got {lr:?}"
            ));
        }
        let unit = |x: f64| (0.0..1.0).contains(&x);
        let weight_decay = match *self {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                if !unit(momentum) {
                    return bad(format!(
                        "optimizer.momentum must be in [0, 1), got {momentum}"
                    ));
                }
                weight_decay
            }
            OptimizerConfig::Adamw {
                betas,
                eps,
                weight_decay,
                ..
            } => {
                if !betas.iter().all(|&b| unit(b)) {
                    return bad(format!("optimizer.betas must be in [0, 1), got {betas:?}"));
                }
                if !(eps > 0.0 && eps <= 1.0) {
                    return bad(format!("optimizer.eps must be in (0, 1], got {eps}"));
                }
                weight_decay
            }
        };
        if !(weight_decay >= 0.0 && lr * weight_decay <= 1.0) {
            return bad(format!(
                "optimizer.weight_decay must be >= 0 with lr * weight_decay <= 1, got \
                 weight_decay {weight_decay} at lr {lr}"
            ));
        }
        Ok(())
    }
}

/// Largest learning rate accepted: anything above is a typo (1e300 made the first step write
/// Inf weights).
pub const MAX_LR: f64 = 1e3;

/// A parameter's new value and moments, before they are written.
struct Updated {
    param: Tensor,
    first: Tensor,
    second: Option<Tensor>,
}

impl Updated {
    fn all(&self) -> impl Iterator<Item = &Tensor> {
        [&self.param, &self.first].into_iter().chain(&self.second)
    }
}

/// Aligned views of one piece of a parameter, its gradient and its two moments.
struct Piece {
    param: Tensor,
    grad: Tensor,
    first: Tensor,
    second: Tensor,
}

impl Piece {
    fn all(&self) -> [&Tensor; 4] {
        [&self.param, &self.grad, &self.first, &self.second]
    }
}

impl From<[Tensor; 4]> for Piece {
    /// A piece from its views, in `Piece`'s field order.
    fn from([param, grad, first, second]: [Tensor; 4]) -> Self {
        Piece {
            param,
            grad,
            first,
            second,
        }
    }
}

/// Elements per piece in an update or a norm: 2^18 (1 MiB of float32). With 8 MiB pieces the
/// update's dozen temporaries per piece grew glibc's heap by about 1 GB during a step (RSS of
/// native_step.py at 16 x 512, micro-batched: 5,578 MB; 5,033 MB with 1 MiB pieces, and no slower).
const PIECE: i64 = 1 << 18;

/// Equal-sized tensors cut into aligned flat views of at most `PIECE` elements each (writing
/// into a view writes into the tensor); one piece of each when any of them is not contiguous.
fn pieces<const K: usize>(tensors: [&Tensor; K]) -> Vec<[Tensor; K]> {
    let n = tensors[0].numel() as i64;
    if n <= PIECE || !tensors.iter().all(|t| t.is_contiguous()) {
        return vec![tensors.map(|t| t.shallow_clone())];
    }
    let flat = tensors.map(|t| t.view([-1]));
    (0..n)
        .step_by(PIECE as usize)
        .map(|start| {
            let len = PIECE.min(n - start);
            std::array::from_fn(|k| flat[k].narrow(0, start, len))
        })
        .collect()
}

/// Most optimizer steps a trainer takes: AdamW's bias correction raises the betas to the step
/// count as an i32. A checkpoint with more is refused as corrupt.
pub const MAX_STEPS: u64 = i32::MAX as u64;

/// Optimizer state for a list of parameters (in the policy's parameter order).
pub struct Optimizer {
    cfg: OptimizerConfig,
    /// sgd: momentum buffers; adamw: first moments.
    first: Vec<Tensor>,
    /// adamw: second moments.
    second: Vec<Tensor>,
    steps: u64,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, params: &[(String, Tensor)]) -> Self {
        let zeros = || {
            params
                .iter()
                .map(|(_, p)| p.zeros_like().set_requires_grad(false))
                .collect()
        };
        Optimizer {
            cfg,
            first: zeros(),
            second: zeros(),
            steps: 0,
        }
    }

    /// One update with learning rate `lr`, using each parameter's .grad (a parameter without
    /// one is not stepped).
    /// An update that would leave a weight or a moment NaN or Inf is refused with
    /// `Status::NonFinite` and changes nothing: the new values are computed out of place and
    /// checked first, then computed again and written (the optimizer's element-wise work
    /// twice). Both passes go a piece of each parameter at a time (`pieces`), so the update's
    /// temporaries are a few pieces, not several copies of a 155 M-value embedding.
    ///
    /// AdamW skips the check and updates in place when a bound shows that the update cannot
    /// overflow (`in_place`), which is almost always: a quarter of the element-wise work.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<()> {
        let t = i32::try_from(self.steps + 1).unwrap_or(i32::MAX);
        tch::no_grad(|| {
            if let Some(adamw) = self.adamw_step(lr, t) {
                let mut pieces = self.pieces_of(params);
                if adamw.surely_finite(&pieces) {
                    adamw.apply(&mut pieces)?;
                    self.steps += 1;
                    return Ok(());
                }
            }
            let mut flags = Vec::new();
            self.for_each_piece(params, |piece| {
                let new = self.update(&piece, lr, t);
                flags.extend(new.all().map(|x| x.isfinite().all()));
            });
            let finite = flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) != 0;
            if !finite {
                return Err(Error::new(
                    Status::NonFinite,
                    format!(
                        "optimizer step {}: the update would make weights or optimizer moments \
                         NaN or Inf (learning rate {lr}); it was not applied, nothing changed",
                        self.steps + 1
                    ),
                ));
            }
            self.for_each_piece(params, |mut piece| {
                let new = self.update(&piece, lr, t);
                piece.param.copy_(&new.param);
                piece.first.copy_(&new.first);
                if let Some(v) = &new.second {
                    piece.second.copy_(v);
                }
            });
            self.steps += 1;
            Ok(())
        })
    }

    /// Calls `f` on every piece of every parameter that has a gradient: views of at most
    /// `PIECE` elements of the parameter, its gradient and its two moments, in place.
    fn for_each_piece(&self, params: &[(String, Tensor)], f: impl FnMut(Piece)) {
        self.pieces_of(params).into_iter().for_each(f)
    }

    /// The pieces `for_each_piece` visits, in its order.
    fn pieces_of(&self, params: &[(String, Tensor)]) -> Vec<Piece> {
        let mut out = Vec::new();
        for (i, (_, p)) in params.iter().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let all = [p, &g, &self.first[i], &self.second[i]];
            out.extend(pieces(all).into_iter().map(Piece::from));
        }
        out
    }

    /// AdamW's settings for update number `t`; None for SGD (always the exact path: its
    /// update is a few passes either way).
    fn adamw_step(&self, lr: f64, t: i32) -> Option<AdamwStep> {
        match self.cfg {
            OptimizerConfig::Adamw {
                betas,
                eps,
                weight_decay,
                ..
            } => Some(AdamwStep {
                lr,
                betas,
                eps,
                weight_decay,
                t,
            }),
            OptimizerConfig::Sgd { .. } => None,
        }
    }

    /// A piece's values after update number `t`, out of place (PyTorch's rules, the same
    /// operations in the same order).
    fn update(&self, piece: &Piece, lr: f64, t: i32) -> Updated {
        let (p, g, m, v) = (&piece.param, &piece.grad, &piece.first, &piece.second);
        match self.cfg {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                let d = if weight_decay > 0.0 {
                    g + p * weight_decay
                } else {
                    g.shallow_clone()
                };
                let first = match (momentum > 0.0, t) {
                    (false, _) => m.shallow_clone(),
                    (true, 1) => d.shallow_clone(),
                    (true, _) => m * momentum + &d,
                };
                let d = if momentum > 0.0 { &first } else { &d };
                Updated {
                    param: p - d * lr,
                    first,
                    second: None,
                }
            }
            OptimizerConfig::Adamw {
                betas: [b1, b2],
                eps,
                weight_decay,
                ..
            } => {
                let decayed = p * (1.0 - lr * weight_decay);
                let first = m * b1 + g * (1.0 - b1);
                let second = v * b2 + g * g * (1.0 - b2);
                let bc1 = 1.0 - b1.powi(t);
                let bc2 = 1.0 - b2.powi(t);
                let denom = second.sqrt() / bc2.sqrt() + eps;
                Updated {
                    param: decayed - &first / denom * (lr / bc1),
                    first,
                    second: Some(second),
                }
            }
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The step count (bias correction and schedules depend on it): rank 0's, in data-parallel
    /// training.
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// Named state tensors for a checkpoint.
    pub fn state(&self, params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (name, _)) in params.iter().enumerate() {
            out.push((
                format!("optimizer.first.{name}"),
                self.first[i].shallow_clone(),
            ));
            out.push((
                format!("optimizer.second.{name}"),
                self.second[i].shallow_clone(),
            ));
        }
        out.push((
            "optimizer.steps".into(),
            Tensor::from_slice(&[self.steps as i64]),
        ));
        out
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. A NaN or Inf gradient is `Status::NonFinite`, with nothing scaled.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: Option<f64>) -> Result<f64> {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    let norm = sum_squares(&grads)?.sqrt();
    if !norm.is_finite() {
        return Err(Error::new(
            Status::NonFinite,
            format!("the gradient is NaN or Inf (global norm {norm}): no update was applied"),
        ));
    }
    if let Some(max) = max_norm {
        let scale = max / (norm + 1e-6);
        if scale < 1.0 {
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
    }
    Ok(norm)
}

/// The sum of the squares of every gradient element, in float64: one fused pass per contiguous
/// CPU float32/float64 gradient; for the others a float64 copy squared and summed a piece at a
/// time (a float64 copy of a whole embedding's gradient would be 1.2 GB at V = 151,936).
fn sum_squares(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0.0;
    let mut squares = Vec::new();
    for g in grads {
        if fused::takes(&[g]) {
            total += fused::sum_squares(g)?;
        } else {
            squares.extend(
                pieces([g])
                    .into_iter()
                    .map(|[piece]| piece.to_kind(Kind::Double).square().sum(Kind::Double)),
            );
        }
    }
    if !squares.is_empty() {
        total += Tensor::stack(&squares, 0)
            .sum(Kind::Double)
            .double_value(&[]);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parameter of three and a bit pieces with a gradient: the piecewise update must equal
    /// the whole-tensor formulas exactly.
    fn big_param(seed: i64) -> Tensor {
        tch::manual_seed(seed);
        let p = Tensor::randn([3 * PIECE + 5], (Kind::Float, tch::Device::Cpu));
        let p = p.set_requires_grad(true);
        let g = Tensor::randn([3 * PIECE + 5], (Kind::Float, tch::Device::Cpu));
        (&p * &g).sum(Kind::Float).backward(); // p.grad = g
        p
    }

    /// `steps` AdamW updates of a copy of `p` (gradient `p.grad`) with this eps; returns the
    /// weights and the moments.
    fn adamw_steps(p: &Tensor, eps: f64, steps: usize) -> (Tensor, Tensor, Tensor) {
        let w = p.detach().copy().set_requires_grad(true);
        (&w * p.grad()).sum(Kind::Float).backward(); // w.grad = p.grad
        let cfg = format!(r#"{{"name": "adamw", "lr": 0.1, "eps": {eps}}}"#);
        let cfg: OptimizerConfig = serde_json::from_str(&cfg).unwrap();
        let params = vec![("w".to_string(), w.shallow_clone())];
        let mut opt = Optimizer::new(cfg, &params);
        for _ in 0..steps {
            opt.step(&params, 0.1).unwrap();
        }
        assert_eq!(opt.steps(), steps as u64);
        (w.detach(), opt.first[0].copy(), opt.second[0].copy())
    }

    /// torch.optim.AdamW's single-tensor update written out on whole tensors, in its order
    /// (the in-place path must equal it exactly, piece by piece).
    fn adamw_in_place_reference(p: &Tensor, steps: i32) -> (Tensor, Tensor, Tensor) {
        let (b1, b2, eps, wd, lr) = (0.9f64, 0.999f64, 1e-8, 0.01, 0.1);
        let g = p.grad();
        let (mut w, mut m, mut v) = (p.detach().copy(), g.zeros_like(), g.zeros_like());
        for t in 1..=steps {
            let step_size = lr / (1.0 - b1.powi(t));
            let _ = w.g_mul_scalar_(1.0 - lr * wd);
            let _ = m.lerp_(&g, 1.0 - b1);
            let _ = v.g_mul_scalar_(b2);
            let _ = v.addcmul_(&g, &(&g * (1.0 - b2)));
            let denom = (v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps) * (-1.0 / step_size);
            let _ = w.addcdiv_(&m, &denom);
        }
        (w, m, v)
    }

    /// torch.optim.AdamW's formulas, out of place (the exact path's).
    fn adamw_formula(p: &Tensor, eps: f64, steps: i32) -> (Tensor, Tensor, Tensor) {
        let (b1, b2, wd, lr) = (0.9f64, 0.999f64, 0.01, 0.1);
        let g = p.grad();
        let (mut w, mut m, mut v) = (p.detach().copy(), g.zeros_like(), g.zeros_like());
        for t in 1..=steps {
            w = &w * (1.0 - lr * wd);
            m = &m * b1 + &g * (1.0 - b1);
            v = &v * b2 + &g * &g * (1.0 - b2);
            let denom = v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
            w = &w - &m / denom * (lr / (1.0 - b1.powi(t)));
        }
        (w, m, v)
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).abs().max().double_value(&[]);
        d / b.abs().max().double_value(&[])
    }

    /// The optimizer's in-place AdamW (the fused kernel here: contiguous float32 on the CPU)
    /// against the composed update on whole tensors. The moments are equal bit for bit. The
    /// weights are equal within what libtorch's sqrt allows (MKL's vsSqrt is not correctly
    /// rounded, the fused kernel's is): 2^-20 (|p| + 2 |p'|) per step from p to p'
    /// (fused.rs: the_fused_update_is_the_composed_one_in_float32), summed over the steps.
    #[test]
    fn piecewise_adamw_in_place_equals_the_whole_tensor_update() {
        let p = big_param(1);
        let (w, m, v) = adamw_steps(&p, 1e-8, 2);
        let (rw, rm, rv) = adamw_in_place_reference(&p, 2);
        assert!(
            m.equal(&rm) && v.equal(&rv),
            "piecewise in-place AdamW moments differ"
        );
        let (rw1, _, _) = adamw_in_place_reference(&p, 1);
        let bound = (p.detach().abs() + rw1.abs() * 3.0 + rw.abs() * 2.0) * 2f64.powi(-20);
        let excess = ((&w - &rw).abs() - bound).max().double_value(&[]);
        assert!(
            excess <= 0.0,
            "piecewise in-place AdamW weights off by {excess} past the bound"
        );
        // and it is the formulas, to float32 rounding
        let (fw, fm, fv) = adamw_formula(&p, 1e-8, 2);
        for (a, b) in [(&w, &fw), (&m, &fm), (&v, &fv)] {
            assert!(max_rel_diff(a, b) < 1e-6, "off by {}", max_rel_diff(a, b));
        }
    }

    /// The composed in-place update (what runs where the fused kernel does not) piece by piece
    /// is the whole-tensor update bit for bit.
    #[test]
    fn the_composed_update_piecewise_is_the_whole_tensor_update() {
        let p = big_param(6);
        let g = p.grad();
        let (w, m, v) = (p.detach().copy(), g.zeros_like(), g.zeros_like());
        for t in 1..=2 {
            let step = in_place::AdamwStep {
                lr: 0.1,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: 0.01,
                t,
            };
            for views in pieces([&w, &g, &m, &v]) {
                let mut piece = Piece::from(views);
                in_place::composed(&mut piece, &step.scalars());
            }
        }
        let (rw, rm, rv) = adamw_in_place_reference(&p, 2);
        assert!(
            w.equal(&rw) && m.equal(&rm) && v.equal(&rv),
            "piecewise composed AdamW differs"
        );
    }

    /// With eps 1e-30 no bound can show the update finite (a step could be lr / eps times a
    /// moment): the checked out-of-place path runs, and it is the formulas exactly.
    #[test]
    fn adamw_without_a_bound_takes_the_checked_path() {
        let p = big_param(4);
        let (w, m, v) = adamw_steps(&p, 1e-30, 2);
        let (fw, fm, fv) = adamw_formula(&p, 1e-30, 2);
        assert!(
            w.equal(&fw) && m.equal(&fm) && v.equal(&fv),
            "checked AdamW differs"
        );
        let (iw, _, _) = adamw_steps(&p, 1e-8, 2);
        assert!(!w.equal(&iw), "eps had no effect: the test shows nothing");
    }

    /// A finite gradient whose square overflows float32 (1e20) defeats the bound; the checked
    /// path then refuses the update and changes nothing.
    #[test]
    fn an_adamw_update_that_would_overflow_is_refused() {
        let p = big_param(5);
        let _ = p.grad().narrow(0, 3 * PIECE + 4, 1).fill_(1e20);
        let opt = refused_step(&p, r#"{"name": "adamw", "lr": 0.1}"#);
        assert!(opt.second[0].equal(&opt.second[0].zeros_like()));
    }

    /// A NaN gradient in the last piece, or an Inf second moment in the first, fails the fused
    /// bound; the checked path then refuses the update with nothing changed.
    #[test]
    fn adamw_refuses_a_nan_gradient_or_an_inf_moment() {
        let p = big_param(7);
        let _ = p.grad().narrow(0, 3 * PIECE + 4, 1).fill_(f64::NAN);
        refused_step(&p, r#"{"name": "adamw", "lr": 0.1}"#);

        let p = big_param(8);
        let cfg: OptimizerConfig = serde_json::from_str(r#"{"name": "adamw"}"#).unwrap();
        let params = vec![("w".to_string(), p.shallow_clone())];
        let mut opt = Optimizer::new(cfg, &params);
        let _ = opt.second[0].narrow(0, 0, 1).fill_(f64::INFINITY);
        let before = [p.detach().copy(), opt.first[0].copy(), opt.second[0].copy()];
        let e = opt.step(&params, 0.1).unwrap_err();
        assert_eq!(e.status, Status::NonFinite);
        let after = [p.detach(), opt.first[0].copy(), opt.second[0].copy()];
        for (a, b) in after.iter().zip(&before) {
            assert!(a.equal(b), "an Inf moment: something was written");
        }
        assert_eq!(opt.steps(), 0);
    }

    /// One step of the optimizer `cfg` on `p`, which must be refused as non-finite with `p` and
    /// the step count unchanged; returns the optimizer.
    fn refused_step(p: &Tensor, cfg: &str) -> Optimizer {
        let before = p.detach().copy();
        let cfg: OptimizerConfig = serde_json::from_str(cfg).unwrap();
        let params = vec![("w".to_string(), p.shallow_clone())];
        let mut opt = Optimizer::new(cfg, &params);
        let e = opt.step(&params, 0.1).unwrap_err();
        assert_eq!(e.status, Status::NonFinite);
        assert!(
            p.detach().equal(&before),
            "a piece was written before the check"
        );
        assert_eq!(opt.steps(), 0);
        opt
    }

    #[test]
    fn a_non_finite_value_in_the_last_piece_leaves_every_piece_unchanged() {
        let p = big_param(2);
        let g = p.grad();
        let _ = g.narrow(0, 3 * PIECE + 4, 1).fill_(f64::INFINITY);
        refused_step(&p, r#"{"name": "sgd", "lr": 0.1}"#);
    }

    #[test]
    fn the_piecewise_norm_is_the_norm() {
        let p = big_param(3);
        let whole = p
            .grad()
            .to_kind(Kind::Double)
            .square()
            .sum(Kind::Double)
            .sqrt();
        let params = vec![("w".to_string(), p.shallow_clone())];
        let norm = clip_grad_norm(&params, None).unwrap();
        let rel = (norm - whole.double_value(&[])).abs() / norm;
        assert!(rel < 1e-13, "norm off by {rel}");
    }
}

//! The fused CPU ops of csrc/fused_*.cpp, called through their C entry points on tch's tensor
//! handles: RMSNorm (alone, or with the residual add before it), the SwiGLU gate and RoPE as
//! autograd nodes whose forward and backward are each one pass over the activations (where
//! libtorch's composed ops make many), and the output head's log-softmax and its gradient for
//! logprob/chunked.rs (no autograd: that backward is by hand). `None` where an op does not
//! apply (another device, mixed dtypes, an integer dtype): the caller composes the op from
//! libtorch's. Attention's node (csrc/fused_attention.cpp) takes the query heads of each
//! key/value head together, in blocks of positions, both ways.

use crate::error::{torch_message, Error, Result, Status};
use std::ffi::{c_char, CStr};
use tch::{Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn adpo_fused_rms_norm(
        x: *const C_tensor,
        w: *const C_tensor,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn adpo_fused_add_rms_norm(
        x: *const C_tensor,
        delta: *const C_tensor,
        w: *const C_tensor,
        eps: f64,
        sum: *mut *mut C_tensor,
        normed: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn adpo_fused_swiglu(
        gate: *const C_tensor,
        up: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn adpo_fused_token_logp(
        logits: *const C_tensor,
        next: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn adpo_fused_logp_grad(
        logits: *const C_tensor,
        next: *const C_tensor,
        weights: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn adpo_fused_attention(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        mask: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn adpo_fused_swiglu_joint(gate_up: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn adpo_fused_rope(
        x: *const C_tensor,
        cos: *const C_tensor,
        sin: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn adpo_fused_free_error(message: *mut c_char);
}

/// The fused op's result where `on` and the op applies (`fused` returns Some), else the
/// composed one: the one decision every caller of these ops makes.
pub fn or_composed<T>(
    on: bool,
    fused: impl FnOnce() -> Option<Result<T>>,
    composed: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match on.then(fused).flatten() {
        Some(result) => result,
        None => composed(),
    }
}

/// Whether the fused ops take these operands: CPU tensors of one float dtype.
fn applies(a: &Tensor, b: &Tensor) -> bool {
    a.device() == tch::Device::Cpu
        && b.device() == tch::Device::Cpu
        && a.kind() == b.kind()
        && matches!(
            a.kind(),
            Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half
        )
}

/// RMSNorm of x over its last axis times `weight` (decoder.rs: rms_norm), as one node.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Option<Result<Tensor>> {
    if !applies(x, weight) || weight.dim() != 1 || !weight.is_contiguous() {
        return None;
    }
    // SAFETY: both handles are live tch tensors.
    Some(call(|out| unsafe {
        adpo_fused_rms_norm(x.as_ptr(), weight.as_ptr(), eps, out)
    }))
}

/// (s, RMSNorm(s) * weight) for the residual sum s = x + delta, or s = x itself where delta is
/// None (decoder.rs: add_rms_norm), as one node: the sum rounded as libtorch's add rounds it,
/// and x's and delta's gradient the one tensor, the sum's gradient plus the norm's, formed in
/// the norm's backward pass (for 16-bit dtypes in float32, rounded once: the composed ops'
/// may differ in the last bit).
pub fn add_rms_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    weight: &Tensor,
    eps: f64,
) -> Option<Result<(Tensor, Tensor)>> {
    let delta_fits = delta.is_none_or(|d| applies(x, d) && d.size() == x.size());
    if !applies(x, weight) || !delta_fits || weight.dim() != 1 || !weight.is_contiguous() {
        return None;
    }
    let delta = delta.map_or(std::ptr::null(), |d| d.as_ptr());
    // SAFETY: the handles are live tch tensors, or NULL for an absent delta (which the entry
    // point takes).
    Some(call_pair(|sum, normed| unsafe {
        adpo_fused_add_rms_norm(x.as_ptr(), delta, weight.as_ptr(), eps, sum, normed)
    }))
}

/// The SwiGLU gate silu(gate) * up (decoder.rs: Mlp), as one node.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Option<Result<Tensor>> {
    if !applies(gate, up) || gate.size() != up.size() {
        return None;
    }
    // SAFETY: both handles are live tch tensors.
    Some(call(|out| unsafe {
        adpo_fused_swiglu(gate.as_ptr(), up.as_ptr(), out)
    }))
}

/// The SwiGLU gate of the joint gate and up projection [.., 2 I] (gate first), as one node whose
/// gradient comes back joint.
pub fn swiglu_joint(gate_up: &Tensor) -> Option<Result<Tensor>> {
    if !applies(gate_up, gate_up) {
        return None;
    }
    // SAFETY: a live tch tensor.
    Some(call(|out| unsafe {
        adpo_fused_swiglu_joint(gate_up.as_ptr(), out)
    }))
}

/// x [B, H, T, D] rotated by cos and sin [B, 1, T, D] (rope.rs: apply), as one node.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Option<Result<Tensor>> {
    let tables_fit = cos.size() == sin.size() && !cos.requires_grad() && !sin.requires_grad();
    if !applies(x, cos) || !applies(x, sin) || !tables_fit {
        return None;
    }
    // SAFETY: the three handles are live tch tensors.
    Some(call(|out| unsafe {
        adpo_fused_rope(x.as_ptr(), cos.as_ptr(), sin.as_ptr(), out)
    }))
}

/// Grouped-query attention of q [B, H, T, D] over k, v [B, H_kv, K, D] under a boolean mask
/// [B, 1, T, K] (attention.rs), as one node whose forward and backward each go through whole
/// blocks of queries (csrc/fused_attention.cpp). Below `FEW_QUERIES` positions (a decoding
/// step) the node's forward is libtorch's flash attention, and a pass without a gradient is
/// left to libtorch's op (the same values, without the node's preparations for a backward).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Option<Result<Tensor>> {
    const FEW_QUERIES: i64 = 16; // kFewQueries in csrc/fused_attention.cpp
    let wants_grad = q.requires_grad() || k.requires_grad() || v.requires_grad();
    let decoding = !wants_grad && q.size().get(2).is_some_and(|&t| t < FEW_QUERIES);
    if decoding || !applies(q, k) || !applies(q, v) || mask.kind() != Kind::Bool {
        return None;
    }
    // SAFETY: the four handles are live tch tensors.
    Some(call(|out| unsafe {
        adpo_fused_attention(q.as_ptr(), k.as_ptr(), v.as_ptr(), mask.as_ptr(), out)
    }))
}

/// Whether the head's fused log-softmax takes these logits [rows, V]: on the CPU, a float dtype.
fn takes_logits(logits: &Tensor) -> bool {
    applies(logits, logits) && logits.dim() == 2
}

/// log softmax(logits)[next] per row [rows], in float32 (float64 for float64 logits), from
/// logits [rows, V] in any float dtype and next ids [rows, 1] (logprob/chunked.rs).
pub fn token_logp(logits: &Tensor, next: &Tensor) -> Option<Result<Tensor>> {
    if !takes_logits(logits) {
        return None;
    }
    // SAFETY: both handles are live tch tensors.
    Some(call(|out| unsafe {
        adpo_fused_token_logp(logits.as_ptr(), next.as_ptr(), out)
    }))
}

/// d(w * log softmax(z)[next]) / dz = w * (onehot(next) - softmax(z)) [rows, V] in the logits'
/// dtype, from logits z [rows, V], next ids [rows, 1] and weights w [rows, 1].
pub fn logp_grad(logits: &Tensor, next: &Tensor, weights: &Tensor) -> Option<Result<Tensor>> {
    if !takes_logits(logits) || weights.device() != tch::Device::Cpu {
        return None;
    }
    // SAFETY: the three handles are live tch tensors.
    Some(call(|out| unsafe {
        adpo_fused_logp_grad(logits.as_ptr(), next.as_ptr(), weights.as_ptr(), out)
    }))
}

/// Runs an op's C entry point, which either returns an error string (a C++ exception's
/// message; it wrote nothing) or writes a new tensor handle into `out`, which the returned
/// Tensor owns (and frees) from then on.
fn call(op: impl FnOnce(*mut *mut C_tensor) -> *mut c_char) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    checked(op(&mut out))?;
    // SAFETY: no error: `out` is the op's new handle.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// [`call`] for an entry point that writes two tensor handles (both, or on an error neither).
fn call_pair(
    op: impl FnOnce(*mut *mut C_tensor, *mut *mut C_tensor) -> *mut c_char,
) -> Result<(Tensor, Tensor)> {
    let mut second: *mut C_tensor = std::ptr::null_mut();
    let first = call(|out| op(out, &mut second))?;
    // SAFETY: no error: `second` is the op's other new handle.
    Ok((first, unsafe { Tensor::from_ptr(second) }))
}

/// Ok for a fused op's NULL return, else its error string (which this frees) as
/// `Status::Torch`: for any csrc/fused_*.cpp entry point (src/optimizer/fused.rs too).
pub(crate) fn checked(error: *mut c_char) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a NUL-terminated string from strdup, freed once, here.
    let text = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { adpo_fused_free_error(error) };
    Err(Error::new(
        Status::Torch,
        format!("libtorch: {}", torch_message(&text)),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::decoder::{composed_rms_norm, composed_swiglu};
    use super::*;

    const EPS: f64 = 1e-6;

    /// Output and gradients (dx, dw) of `norm` at (x, w) against upstream gradient dy.
    fn run(
        norm: impl Fn(&Tensor, &Tensor) -> Tensor,
        x: &Tensor,
        w: &Tensor,
        w_grad: bool,
        dy: &Tensor,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        let x = x.detach().set_requires_grad(true);
        let w = w.detach().set_requires_grad(w_grad);
        let y = norm(&x, &w);
        (&y * dy).sum(y.kind()).backward(); // d(y · dy)/dy = dy exactly
        (y.detach(), x.grad(), w_grad.then(|| w.grad()))
    }

    fn fused(x: &Tensor, w: &Tensor) -> Tensor {
        rms_norm(x, w, EPS).expect("fused RMSNorm applies").unwrap()
    }

    fn composed(x: &Tensor, w: &Tensor) -> Tensor {
        composed_rms_norm(x, w, EPS).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    }

    #[test]
    fn float64_matches_the_composed_ops_and_their_autograd() {
        tch::manual_seed(7);
        // hidden sizes below, at and off the kernels' 16-lane blocks; a non-contiguous input
        for (shape, hidden) in [(vec![3, 5], 37i64), (vec![2], 64), (vec![4, 1], 7)] {
            let full: Vec<i64> = shape.iter().copied().chain([hidden]).collect();
            let x = Tensor::randn(full.as_slice(), (Kind::Double, tch::Device::Cpu)) * 3.0;
            let w = Tensor::randn([hidden], (Kind::Double, tch::Device::Cpu));
            let dy = Tensor::randn(full.as_slice(), (Kind::Double, tch::Device::Cpu));
            for w_grad in [true, false] {
                let (y1, dx1, dw1) = run(fused, &x, &w, w_grad, &dy);
                let (y2, dx2, dw2) = run(composed, &x, &w, w_grad, &dy);
                assert!(max_diff(&y1, &y2) < 1e-12, "{full:?}: output");
                assert!(max_diff(&dx1, &dx2) < 1e-12, "{full:?}: input gradient");
                if let (Some(a), Some(b)) = (dw1, dw2) {
                    assert!(max_diff(&a, &b) < 1e-12, "{full:?}: weight gradient");
                }
            }
        }
        let x = Tensor::randn([6, 9], (Kind::Double, tch::Device::Cpu)).transpose(0, 1);
        let w = Tensor::randn([6], (Kind::Double, tch::Device::Cpu));
        let dy = Tensor::randn([9, 6], (Kind::Double, tch::Device::Cpu));
        let (y1, dx1, _) = run(fused, &x, &w, true, &dy);
        let (y2, dx2, _) = run(composed, &x, &w, true, &dy);
        assert!(max_diff(&y1, &y2) < 1e-12 && max_diff(&dx1, &dx2) < 1e-12);
    }

    #[test]
    fn sixteen_bit_inputs_agree_with_float64_to_their_rounding() {
        tch::manual_seed(8);
        for kind in [Kind::BFloat16, Kind::Half, Kind::Float] {
            let opts = (Kind::Double, tch::Device::Cpu);
            let x = (Tensor::randn([4, 8, 576], opts) * 2.0).to_kind(kind);
            let w = (Tensor::randn([576], opts) * 0.5 + 1.0).to_kind(kind);
            let dy = Tensor::randn([4, 8, 576], opts).to_kind(kind);
            let (y, dx, dw) = run(fused, &x, &w, true, &dy);
            let [x64, w64, dy64] = [&x, &w, &dy].map(|t| t.to_kind(Kind::Double));
            let (y64, dx64, dw64) = run(composed, &x64, &w64, true, &dy64);
            assert_eq!(y.kind(), kind);
            let rel = |a: &Tensor, b: &Tensor| max_diff(a, b) / max_diff(b, &b.zeros_like());
            let tol = if kind == Kind::Float { 1e-5 } else { 2e-2 };
            assert!(rel(&y, &y64) < tol, "{kind:?} output");
            assert!(rel(&dx, &dx64) < tol, "{kind:?} input gradient");
            assert!(
                rel(&dw.unwrap(), &dw64.unwrap()) < tol,
                "{kind:?} weight gradient"
            );
        }
    }

    #[test]
    fn other_dtypes_and_devices_compose_and_bad_shapes_are_errors() {
        let x = Tensor::ones([2, 4], (Kind::Float, tch::Device::Cpu));
        let w64 = Tensor::ones([4], (Kind::Double, tch::Device::Cpu));
        assert!(rms_norm(&x, &w64, EPS).is_none(), "mixed dtypes compose");
        let ints = Tensor::ones([2, 4], (Kind::Int64, tch::Device::Cpu));
        assert!(rms_norm(&ints, &ints.get(0), EPS).is_none());
        let short = Tensor::ones([3], (Kind::Float, tch::Device::Cpu));
        let err = rms_norm(&x, &short, EPS).unwrap().unwrap_err();
        assert_eq!(err.status, Status::Torch);
        assert!(err.to_string().contains("does not match input"), "{err}");
    }

    /// Output and gradients (d gate, d up) of `gate_fn` against dy; None for an input that
    /// does not require grad.
    fn run_gate(
        gate_fn: impl Fn(&Tensor, &Tensor) -> Tensor,
        g: &Tensor,
        u: &Tensor,
        wants: (bool, bool),
        dy: &Tensor,
    ) -> (Tensor, Option<Tensor>, Option<Tensor>) {
        let g = g.detach().set_requires_grad(wants.0);
        let u = u.detach().set_requires_grad(wants.1);
        let y = gate_fn(&g, &u);
        (&y * dy).sum(y.kind()).backward(); // d(y · dy)/dy = dy exactly
        (
            y.detach(),
            wants.0.then(|| g.grad()),
            wants.1.then(|| u.grad()),
        )
    }

    fn fused_gate(g: &Tensor, u: &Tensor) -> Tensor {
        swiglu(g, u).expect("fused SwiGLU applies").unwrap()
    }

    fn composed_gate(g: &Tensor, u: &Tensor) -> Tensor {
        composed_swiglu(g, u).unwrap()
    }

    #[test]
    fn swiglu_matches_the_composed_ops_in_every_dtype() {
        tch::manual_seed(9);
        let opts = (Kind::Double, tch::Device::Cpu);
        // gates from deep negative (sigmoid underflow) to large positive, odd length
        let g = Tensor::randn([5, 3, 101], opts) * 8.0;
        let u = Tensor::randn([5, 3, 101], opts);
        let dy = Tensor::randn([5, 3, 101], opts);
        for (kind, tol) in [
            (Kind::Double, 1e-12),
            (Kind::Float, 1e-5),
            (Kind::BFloat16, 2e-2),
            (Kind::Half, 2e-2),
        ] {
            let [g, u, dy] = [&g, &u, &dy].map(|t| t.to_kind(kind));
            for wants in [(true, true), (true, false), (false, true)] {
                let (y1, dg1, du1) = run_gate(fused_gate, &g, &u, wants, &dy);
                // the reference: the composed ops on the same values in float64
                let [g64, u64, dy64] = [&g, &u, &dy].map(|t| t.to_kind(Kind::Double));
                let (y2, dg2, du2) = run_gate(composed_gate, &g64, &u64, wants, &dy64);
                let scale = |t: &Tensor| max_diff(t, &t.zeros_like()).max(1.0);
                let close = |a: &Tensor, b: &Tensor| max_diff(a, b) / scale(b) < tol;
                assert_eq!(y1.kind(), kind);
                assert!(close(&y1, &y2), "{kind:?} output");
                for (a, b) in [(dg1, dg2), (du1, du2)] {
                    match (a, b) {
                        (Some(a), Some(b)) => assert!(close(&a, &b), "{kind:?} {wants:?}"),
                        (None, None) => {}
                        _ => unreachable!(),
                    }
                }
            }
        }
        let nan = Tensor::from_slice(&[f32::NAN, 1.0]);
        let y = fused_gate(&nan, &Tensor::from_slice(&[1.0f32, 1.0]));
        assert!(y.double_value(&[0]).is_nan(), "NaN propagates");
    }

    /// The composed log-softmax in float64: log-probs of `next` and the gradient of w * them.
    fn composed_logp(z: &Tensor, next: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
        let z = z.to_kind(Kind::Double);
        let logp = z.log_softmax(1, Kind::Double);
        let picked = logp.gather(1, next, false).squeeze_dim(1);
        let onehot = z.zeros_like().scatter_value(1, next, 1.0);
        (picked, w.to_kind(Kind::Double) * (onehot - logp.exp()))
    }

    #[test]
    fn head_log_softmax_matches_the_composed_ops_in_every_dtype() {
        tch::manual_seed(10);
        let opts = (Kind::Double, tch::Device::Cpu);
        // a vocabulary off the 16-lane blocks; logits spread wide enough to underflow exp
        let z = Tensor::randn([7, 1003], opts) * 30.0;
        let next = Tensor::from_slice(&[0i64, 1002, 5, 17, 999, 500, 3]).unsqueeze(1);
        let w = Tensor::randn([7, 1], opts);
        for (kind, tol) in [
            (Kind::Double, 1e-12),
            (Kind::Float, 1e-5),
            (Kind::BFloat16, 1e-2),
            (Kind::Half, 1e-2),
        ] {
            let zk = if kind == Kind::Half {
                (&z / 10.0).to_kind(kind)
            } else {
                z.to_kind(kind)
            };
            let (logp64, grad64) = composed_logp(&zk, &next, &w);
            let logp = token_logp(&zk, &next).expect("applies").unwrap();
            let wk = w.to_kind(crate::dtype::compute_kind(kind));
            let grad = logp_grad(&zk, &next, &wk).expect("applies").unwrap();
            assert_eq!(grad.kind(), kind, "the gradient comes in the logits' dtype");
            let rel =
                |a: &Tensor, b: &Tensor| max_diff(a, b) / max_diff(b, &b.zeros_like()).max(1.0);
            assert!(
                rel(&logp, &logp64) < tol,
                "{kind:?} log-probs: {}",
                rel(&logp, &logp64)
            );
            assert!(
                rel(&grad, &grad64) < tol,
                "{kind:?} gradient: {}",
                rel(&grad, &grad64)
            );
        }
        let nan = Tensor::zeros([2, 5], (Kind::Float, tch::Device::Cpu));
        let _ = nan.get(1).get(2).fill_(f64::NAN);
        let ids = Tensor::from_slice(&[1i64, 1]).unsqueeze(1);
        let logp = token_logp(&nan, &ids).unwrap().unwrap();
        assert!(!logp.double_value(&[0]).is_nan() && logp.double_value(&[1]).is_nan());
        let outside = Tensor::from_slice(&[1i64, 5]).unsqueeze(1);
        let err = token_logp(&nan, &outside).unwrap().unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    }
}

#[cfg(test)]
mod add_rms_norm_tests;
#[cfg(test)]
mod attention_tests;
#[cfg(test)]
mod rope_tests;
#[cfg(test)]
mod swiglu_joint_tests;

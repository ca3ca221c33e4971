//! One token per row from last-position logits, on the device: temperature, top-k, top-p, then
//! the inverse-CDF draw with the row's uniform. The recorded log-prob is the policy's own
//! (temperature 1, no truncation), from the same logits, so an on-policy anchor starts at s = 0.

use super::config::SamplingConfig;
use tch::{Kind, Tensor};

/// Probabilities of the sampling distribution from logits [B, V].
fn sampling_probs(logits: &Tensor, cfg: &SamplingConfig) -> Tensor {
    let mut z = logits / cfg.temperature;
    let v = z.size()[1];
    if cfg.top_k > 0 && cfg.top_k < v {
        let kth = z
            .topk(cfg.top_k, 1, true, true)
            .0
            .narrow(1, cfg.top_k - 1, 1);
        z = z.masked_fill(&z.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if cfg.top_p < 1.0 {
        let (sorted, order) = z.sort(1, true);
        let p = sorted.softmax(1, sorted.kind());
        // Drop a token when the mass before it already reaches top_p (the first always stays).
        let before = p.cumsum(1, p.kind()) - &p;
        let drop_sorted = before.ge(cfg.top_p);
        let drop = drop_sorted.zeros_like().scatter(1, &order, &drop_sorted);
        z = z.masked_fill(&drop, f64::NEG_INFINITY);
    }
    z.softmax(1, z.kind())
}

/// (token [B] int64, its log-prob under the policy [B]) for logits [B, V] and uniforms [B].
/// float64 logits give float64 log-probs; others float32.
pub fn draw(logits: &Tensor, cfg: &SamplingConfig, u: &Tensor) -> (Tensor, Tensor) {
    let kind = match logits.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    };
    let logits = logits.to_kind(kind);
    let v = logits.size()[1];
    let log_p = logits.log_softmax(1, kind);
    // Untempered, untruncated sampling draws from the policy itself: reuse its log-softmax.
    let plain = cfg.temperature == 1.0 && cfg.top_k == 0 && cfg.top_p >= 1.0;
    let probs = if plain {
        log_p.exp()
    } else {
        sampling_probs(&logits, cfg)
    };
    let cdf = probs.cumsum(1, kind);
    // Scale the draw by the CDF's total so rounding (a total slightly below 1) can never push
    // it past the last token with mass; the token is the number of CDF entries below it.
    let target = u.to_kind(kind).unsqueeze(1) * cdf.narrow(1, v - 1, 1);
    let token = target
        .searchsorted(&cdf, false, false, "left", None::<Tensor>)
        .squeeze_dim(1)
        .clamp_max(v - 1);
    let logp = log_p.gather(1, &token.unsqueeze(1), false).squeeze_dim(1);
    (token, logp)
}

//! One token per row from last-position logits, on the device: temperature, top-k, top-p, then
//! the inverse-CDF draw with the row's uniform. The recorded log-prob is the policy's own
//! (temperature 1, no truncation), from the same logits, so an on-policy anchor starts at s = 0.
//!
//! The draw never builds a [B, V] CDF: it sums blocks of the vocabulary, finds the block the
//! uniform falls in, then the token inside that block, so the only full passes over the
//! vocabulary are the softmax and one reduction.

use super::config::SamplingConfig;
use tch::{Kind, Tensor};

/// Tokens per block of the two-level inverse CDF.
const BLOCK: i64 = 256;

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

/// Sums of `probs` [B, V] over blocks of `BLOCK` tokens (the last one may be shorter): [B, n].
fn block_sums(probs: &Tensor) -> Tensor {
    let v = probs.size()[1];
    let full = v / BLOCK;
    let mut parts = Vec::new();
    if full > 0 {
        let blocks = probs.narrow(1, 0, full * BLOCK).unfold(1, BLOCK, BLOCK);
        parts.push(blocks.sum_dim_intlist(2, false, probs.kind()));
    }
    if v % BLOCK != 0 {
        let tail = probs.narrow(1, full * BLOCK, v - full * BLOCK);
        parts.push(tail.sum_dim_intlist(1, true, probs.kind()));
    }
    Tensor::cat(&parts, 1)
}

/// Per row, the first entry of the increasing `cdf` [B, n] that reaches `target` [B, 1], as
/// [B, 1] (n - 1 at most).
fn first_reaching(cdf: &Tensor, target: &Tensor) -> Tensor {
    let n = cdf.size()[1];
    target
        .searchsorted(cdf, false, false, "left", None::<Tensor>)
        .clamp_max(n - 1)
}

/// Inverse-CDF draw from `probs` [B, V] with uniforms `u` [B]: the token [B, 1] whose CDF
/// interval holds u times the row's total mass (scaling by the total, rather than trusting it
/// to be 1, means rounding can never push the draw past the last token with mass).
fn inverse_cdf(probs: &Tensor, u: &Tensor) -> Tensor {
    let (b, v) = (probs.size()[0], probs.size()[1]);
    let kind = probs.kind();
    let device = probs.device();
    let sums = block_sums(probs);
    let cdf = sums.cumsum(1, kind);
    let total = cdf.narrow(1, cdf.size()[1] - 1, 1);
    let target = u.to_kind(kind).unsqueeze(1) * total;
    let block = first_reaching(&cdf, &target);
    // The mass before the block, exactly as the block CDF has it (0 for the first block).
    let before = cdf
        .gather(1, &(&block - 1).clamp_min(0), false)
        .where_self(&block.gt(0), &target.zeros_like());
    // The block's tokens (past the vocabulary: no mass), their CDF, the remainder within it,
    // at most the block's own total (its sum rounds on its own).
    let offsets = Tensor::arange(BLOCK, (Kind::Int64, device)).unsqueeze(0);
    let ids = &block * BLOCK + offsets;
    let inside = ids.lt(v);
    let mass = probs.gather(1, &ids.clamp_max(v - 1), false) * inside.to_kind(kind);
    let local = mass.cumsum(1, kind);
    let rest = (target - before).minimum(&local.narrow(1, BLOCK - 1, 1));
    // NaN probabilities (non-finite logits) reach nothing and would pick the block's last
    // slot, past the vocabulary in a partial block: an index error, a device assert on CUDA.
    let token = (block * BLOCK + first_reaching(&local, &rest)).clamp_max(v - 1);
    token.view([b, 1])
}

/// (token [B] int64, its log-prob under the policy [B]) for logits [B, V] and uniforms [B].
/// float64 logits give float64 log-probs; others float32.
pub fn draw(logits: &Tensor, cfg: &SamplingConfig, u: &Tensor) -> (Tensor, Tensor) {
    let kind = crate::dtype::compute_kind(logits.kind());
    let logits = logits.to_kind(kind);
    // Untempered, untruncated sampling draws from the policy itself: its log-prob at the
    // token is log_softmax there, (x - max) - log(sum exp(x - max)), where the sum's log is
    // minus the log of the largest probability (exp(0) / sum): no [B, V] log-softmax.
    let plain = cfg.temperature == 1.0 && cfg.top_k == 0 && cfg.top_p >= 1.0;
    if plain {
        let probs = logits.softmax(1, kind);
        let token = inverse_cdf(&probs, u);
        let (max, argmax) = logits.max_dim(1, true);
        let log_sum = -probs.gather(1, &argmax, false).log();
        let logp = (logits.gather(1, &token, false) - max) - log_sum;
        return (token.squeeze_dim(1), logp.squeeze_dim(1));
    }
    let token = inverse_cdf(&sampling_probs(&logits, cfg), u);
    let logp = logits.log_softmax(1, kind).gather(1, &token, false);
    (token.squeeze_dim(1), logp.squeeze_dim(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The token a full float64 CDF gives for each row.
    fn full_cdf_token(probs: &Tensor, u: &Tensor) -> Vec<i64> {
        let p = probs.to_kind(Kind::Double);
        let cdf = p.cumsum(1, Kind::Double);
        let total = cdf.narrow(1, p.size()[1] - 1, 1);
        let target = u.to_kind(Kind::Double).unsqueeze(1) * total;
        let t = target.searchsorted(&cdf, false, false, "left", None::<Tensor>);
        Vec::<i64>::try_from(t.reshape([-1])).unwrap()
    }

    #[test]
    fn the_block_draw_picks_the_token_of_the_full_cdf_and_never_one_without_mass() {
        tch::manual_seed(3);
        for v in [1, 5, 255, 256, 257, 1000, 32000] {
            let rows = 64;
            let raw = Tensor::rand([rows, v], (Kind::Float, Device::Cpu));
            // a third of the tokens without mass, and the last ones always (rounding at u -> 1)
            let probs = raw.where_self(&raw.gt(0.33), &raw.zeros_like());
            if v > 3 {
                let _ = probs.narrow(1, v - 3, 3).fill_(0.0);
            }
            let _ = probs.narrow(1, 0, 1).fill_(0.5);
            let probs = &probs / probs.sum_dim_intlist(1, true, Kind::Float);
            let u = Tensor::rand([rows], (Kind::Float, Device::Cpu));
            let _ = u.narrow(0, 0, 1).fill_(1.0);
            let _ = u.narrow(0, 1, 1).fill_(0.999_999_9);
            let token = inverse_cdf(&probs, &u);
            let got = Vec::<i64>::try_from(token.reshape([-1])).unwrap();
            let want = full_cdf_token(&probs, &u);
            let mass = Vec::<f32>::try_from(probs.gather(1, &token, false).reshape([-1])).unwrap();
            for r in 0..rows as usize {
                assert!(
                    mass[r] > 0.0,
                    "V = {v}, row {r}: token {} has no mass",
                    got[r]
                );
                // rounding may move a draw that sits on a boundary to its neighbour with mass
                if r >= 2 {
                    assert_eq!(got[r], want[r], "V = {v}, row {r}");
                }
            }
        }
    }

    #[test]
    fn non_finite_logits_never_draw_past_the_vocabulary() {
        for v in [5, 300, 513] {
            let logits = Tensor::zeros([4, v], (Kind::Float, Device::Cpu));
            let _ = logits.get(0).fill_(f64::NAN);
            let _ = logits.get(1).narrow(0, 0, 1).fill_(f64::INFINITY);
            let _ = logits.get(2).narrow(0, v - 1, 1).fill_(f64::NAN);
            let u = Tensor::from_slice(&[0.5f32, 0.999, 1.0, 0.0]);
            let top_k = SamplingConfig {
                top_k: 3,
                ..SamplingConfig::default()
            };
            for cfg in [SamplingConfig::default(), top_k] {
                let (token, _) = draw(&logits, &cfg, &u);
                let got = Vec::<i64>::try_from(token).unwrap();
                assert!(got.iter().all(|&t| (0..v).contains(&t)), "V = {v}: {got:?}");
            }
        }
    }

    #[test]
    fn the_recorded_log_prob_is_the_policys_log_softmax_at_the_token() {
        tch::manual_seed(4);
        let logits = Tensor::randn([16, 1000], (Kind::Float, Device::Cpu)) * 8.0;
        let u = Tensor::rand([16], (Kind::Float, Device::Cpu));
        let tempered = SamplingConfig {
            temperature: 0.7,
            top_k: 50,
            ..SamplingConfig::default()
        };
        for cfg in [SamplingConfig::default(), tempered] {
            let (token, logp) = draw(&logits, &cfg, &u);
            let want = logits
                .to_kind(Kind::Double)
                .log_softmax(1, Kind::Double)
                .gather(1, &token.unsqueeze(1), false)
                .squeeze_dim(1);
            let d = (logp.to_kind(Kind::Double) - want)
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-5, "{cfg:?}: {d}");
        }
    }
}

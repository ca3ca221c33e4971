//! The fused attention node against libtorch's scaled_dot_product_attention and its autograd.

use super::attention;
use crate::model::native::mask;
use tch::{Device, Kind, Tensor};

/// Output and gradients (dq, dk, dv) of attention at (q, k, v) against upstream gradient dout.
fn run(fused: bool, qkv: [&Tensor; 3], mask: &Tensor, dout: &Tensor) -> [Tensor; 4] {
    let [q, k, v] = qkv.map(|x| x.detach().set_requires_grad(true));
    let out = if fused {
        attention(&q, &k, &v, mask).expect("applies").unwrap()
    } else {
        let gqa = q.size()[1] != k.size()[1];
        Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, gqa)
    };
    (&out * dout).sum(out.kind()).backward(); // d(out · dout)/dout = dout exactly
    [out.detach(), q.grad(), k.grad(), v.grad()]
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// q [B, H, T, D], k and v [B, H_kv, K, D] and dout, float64, and the mask of a padding mask
/// [B, K] whose queries are its last T columns.
fn case(h: i64, kv: i64, t: i64, pad: &Tensor, d: i64) -> ([Tensor; 3], Tensor, Tensor) {
    let (b, keys) = (pad.size()[0], pad.size()[1]);
    let o = (Kind::Double, Device::Cpu);
    let qkv = [
        Tensor::randn([b, t, h, d], o).transpose(1, 2), // as the projections lay it out
        Tensor::randn([b, kv, keys, d], o),
        Tensor::randn([b, kv, keys, d], o),
    ];
    let m = mask::attention(pad, keys - t).unwrap();
    (qkv, m, Tensor::randn([b, h, t, d], o))
}

fn padding(rows: &[&[i64]]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

#[test]
fn float64_matches_scaled_dot_product_attention_and_its_autograd() {
    tch::manual_seed(11);
    let left_padded = padding(&[&[0, 0, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1, 1]]);
    let right_padded = padding(&[&[1, 1, 1, 1, 1, 0, 0, 0, 0]]);
    let long = Tensor::ones([1, 300], (Kind::Int64, Device::Cpu));
    // (query heads, key/value heads, queries, padding mask, head dim): grouped and not; queries
    // after cached keys; 300 positions x 3 heads, several blocks of query rows
    let cases = [
        (6, 2, 7, &left_padded, 5),
        (4, 4, 7, &left_padded, 8),
        (6, 3, 3, &right_padded, 4),
        (3, 1, 300, &long, 4),
    ];
    for (h, kv, t, pad, d) in cases {
        let (qkv, m, dout) = case(h, kv, t, pad, d);
        let qkv = [&qkv[0], &qkv[1], &qkv[2]];
        let fused = run(true, qkv, &m, &dout);
        let composed = run(false, qkv, &m, &dout);
        for (name, a, b) in ["output", "dq", "dk", "dv"]
            .iter()
            .zip(&fused)
            .zip(&composed)
            .map(|((n, a), b)| (n, a, b))
        {
            assert_eq!(a.size(), b.size(), "{name}");
            let diff = max_diff(a, b);
            assert!(diff < 1e-12, "h {h} kv {kv} t {t}: {name} off by {diff}");
        }
    }
}

#[test]
fn a_mask_shared_by_the_batch_gives_the_same_gradients() {
    tch::manual_seed(12);
    let pad = Tensor::ones([3, 6], (Kind::Int64, Device::Cpu));
    let (qkv, m, dout) = case(4, 2, 6, &pad, 4);
    let qkv = [&qkv[0], &qkv[1], &qkv[2]];
    let one = m.narrow(0, 0, 1);
    let (a, b) = (run(true, qkv, &one, &dout), run(false, qkv, &m, &dout));
    for (x, y) in a.iter().zip(&b) {
        assert!(max_diff(x, y) < 1e-12);
    }
}

#[test]
fn bfloat16_is_as_close_to_float64_as_libtorchs_own_backward() {
    tch::manual_seed(13);
    let pad = padding(&[&[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], &[1; 12]]);
    let (qkv, m, dout) = case(9, 3, 12, &pad, 64);
    let exact = run(false, [&qkv[0], &qkv[1], &qkv[2]], &m, &dout);
    let half = qkv.each_ref().map(|x| x.to_kind(Kind::BFloat16));
    let half = [&half[0], &half[1], &half[2]];
    let dout16 = dout.to_kind(Kind::BFloat16);
    let fused = run(true, half, &m, &dout16);
    let composed = run(false, half, &m, &dout16);
    for (i, name) in ["output", "dq", "dk", "dv"].iter().enumerate() {
        assert_eq!(
            fused[i].kind(),
            Kind::BFloat16,
            "{name} comes in the inputs' dtype"
        );
        let (ours, theirs) = (
            max_diff(&fused[i], &exact[i]),
            max_diff(&composed[i], &exact[i]),
        );
        let scale = max_diff(&exact[i], &exact[i].zeros_like());
        assert!(
            ours <= 1.5 * theirs + 1e-3 * scale,
            "{name}: {ours} from float64, libtorch's {theirs}"
        );
    }
}

#[test]
fn misfit_operands_are_errors_and_no_gradient_means_libtorchs_op() {
    let o = (Kind::Float, Device::Cpu);
    let q = Tensor::randn([1, 4, 3, 8], o).set_requires_grad(true);
    let k = Tensor::randn([1, 2, 3, 8], o);
    let bad_mask = Tensor::ones([1, 1, 3, 5], (Kind::Bool, Device::Cpu));
    let err = attention(&q, &k, &k, &bad_mask).unwrap().unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let three_heads = Tensor::randn([1, 3, 3, 8], o);
    let mask = Tensor::ones([1, 1, 3, 3], (Kind::Bool, Device::Cpu));
    let err = attention(&q, &three_heads, &three_heads, &mask)
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("not a multiple"), "{err}");
    assert!(attention(&q.detach(), &k, &k, &mask).is_none());
}

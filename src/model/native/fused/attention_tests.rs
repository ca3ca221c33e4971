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
        sdpa([&q, &k, &v], mask)
    };
    (&out * dout).sum(out.kind()).backward(); // d(out · dout)/dout = dout exactly
    [out.detach(), q.grad(), k.grad(), v.grad()]
}

/// libtorch's scaled_dot_product_attention of (q, k, v) under the boolean mask (grouped query
/// heads where k and v have fewer).
fn sdpa([q, k, v]: [&Tensor; 3], mask: &Tensor) -> Tensor {
    let gqa = q.size()[1] != k.size()[1];
    Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, gqa)
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
    let mut rows = [[1i64; 24]; 2];
    rows[0][..5].fill(0);
    rows[1][19..].fill(0);
    let padded_24 = padding(&[&rows[0], &rows[1]]);
    // (query heads, key/value heads, queries, padding mask, head dim): grouped and not; queries
    // after cached keys; 300 positions x 3 heads, several blocks of query rows. Fewer than 16
    // queries take libtorch's forward, more the node's own (csrc/fused_attention.cpp).
    let cases = [
        (6, 2, 7, &left_padded, 5),
        (4, 4, 7, &left_padded, 8),
        (6, 3, 3, &right_padded, 4),
        (3, 1, 300, &long, 4),
        (6, 2, 20, &padded_24, 5),
        (4, 4, 24, &padded_24, 8),
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
    let mut rows = [[1i64; 40]; 2];
    rows[0][..3].fill(0);
    let pad = padding(&[&rows[0], &rows[1]]);
    let (qkv, m, dout) = case(9, 3, 40, &pad, 64);
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
fn keys_and_values_read_in_place_from_a_cache_like_buffer() {
    // the filled prefix of a [B, H_kv, capacity, D] buffer, as a KV cache hands them over
    tch::manual_seed(16);
    let pad = padding(&[&[0, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1]]);
    let (qkv, m, dout) = case(6, 2, 2, &pad, 8);
    let o = (Kind::Double, Device::Cpu);
    let cached = |x: &Tensor| {
        let buffer = Tensor::randn([2, 2, 9, 8], o);
        buffer.narrow(2, 0, 6).copy_(x);
        buffer.narrow(2, 0, 6)
    };
    let (k, v) = (cached(&qkv[1]), cached(&qkv[2]));
    assert!(!k.is_contiguous());
    let fused = run(true, [&qkv[0], &k, &v], &m, &dout);
    let composed = run(false, [&qkv[0], &qkv[1], &qkv[2]], &m, &dout);
    for (a, b) in fused.iter().zip(&composed) {
        assert!(max_diff(a, b) < 1e-12);
    }
}

#[test]
fn a_query_that_attends_to_no_key_gets_zeros_and_no_gradient() {
    tch::manual_seed(14);
    let pad = Tensor::ones([2, 5], (Kind::Int64, Device::Cpu));
    let (qkv, m, dout) = case(4, 2, 5, &pad, 8);
    let m = m.copy();
    let _ = m.get(1).get(0).get(2).fill_(0); // row 1, position 2 sees nothing
    let [out, dq, dk, dv] = run(true, [&qkv[0], &qkv[1], &qkv[2]], &m, &dout);
    let alone = out.get(1).narrow(1, 2, 1);
    assert_eq!(alone.abs().max().double_value(&[]), 0.0);
    assert_eq!(dq.get(1).narrow(1, 2, 1).abs().max().double_value(&[]), 0.0);
    for g in [&dq, &dk, &dv] {
        assert!(bool::try_from(g.isfinite().all()).unwrap());
    }
    // every other query as libtorch's
    let expected = sdpa([&qkv[0], &qkv[1], &qkv[2]], &m);
    let seen = m.squeeze_dim(1).any_dim(-1, false).view([2, 1, 5, 1]);
    let diff = (out - expected).where_self(&seen, &Tensor::zeros([1], (Kind::Double, Device::Cpu)));
    assert!(max_diff(&diff, &diff.zeros_like()) < 1e-12);
}

#[test]
fn bfloat16_output_over_600_keys_is_as_close_to_float64_as_libtorchs() {
    // beyond libtorch's blocks of 512 keys, where its forward rescales running sums
    tch::manual_seed(15);
    let pad = Tensor::ones([1, 600], (Kind::Int64, Device::Cpu));
    let (qkv, m, _) = case(9, 3, 600, &pad, 64);
    let half = qkv.each_ref().map(|x| x.to_kind(Kind::BFloat16));
    // the exact attention of the rounded inputs: what remains is the kernels' own rounding
    let wide = half.each_ref().map(|x| x.to_kind(Kind::Double));
    let exact = sdpa([&wide[0], &wide[1], &wide[2]], &m);
    let ours = attention(&half[0], &half[1], &half[2], &m)
        .unwrap()
        .unwrap();
    let ours = max_diff(&ours, &exact);
    // the output's own rounding is half a bf16 ulp (2^-9 of the largest value); the rounded
    // probabilities add about as much
    let largest = max_diff(&exact, &exact.zeros_like());
    assert!(
        ours <= largest / 128.0,
        "{ours} from float64 (largest value {largest})"
    );
    // libtorch's bf16 flash attention refuses 600 keys with its kernels held below AVX-512 on
    // an AVX-512 CPU (tests/lower-isa: "pack_vnni2 is only supported when avx512 is
    // supported"); where it runs, no farther from float64 than it
    let gqa = true;
    let theirs = Tensor::f_scaled_dot_product_attention(
        &half[0],
        &half[1],
        &half[2],
        Some(&m),
        0.0,
        false,
        None,
        gqa,
    );
    if let Ok(theirs) = theirs {
        let theirs = max_diff(&theirs, &exact);
        assert!(
            ours <= 1.5 * theirs,
            "{ours} from float64, libtorch's {theirs}"
        );
    }
}

#[test]
fn misfit_operands_are_errors() {
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
}

/// Not a test: times the forward (no gradient) and forward + backward at the SmolLM2 step's
/// shapes [16, 9, 320, 64] (3 key/value heads, causal, bf16), fused against libtorch's
/// flash attention, one thread:
/// `cargo test --release --features mpi --lib attention_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn attention_timing() {
    use std::time::Instant;
    tch::set_num_threads(1);
    let pad = Tensor::ones([16, 320], (Kind::Int64, Device::Cpu));
    let (qkv, m, dout) = case(9, 3, 320, &pad, 64);
    let half = qkv.each_ref().map(|x| x.to_kind(Kind::BFloat16));
    let dout = dout.to_kind(Kind::BFloat16);
    let time = |what: &str, f: &dyn Fn()| {
        f();
        let start = Instant::now();
        for _ in 0..10 {
            f();
        }
        println!("  {what}: {:.2} ms", start.elapsed().as_secs_f64() * 100.0);
    };
    for fused in [false, true] {
        let side = if fused { "fused" } else { "libtorch" };
        time(&format!("{side} forward"), &|| {
            let _ = tch::no_grad(|| {
                if fused {
                    attention(&half[0], &half[1], &half[2], &m)
                        .unwrap()
                        .unwrap()
                } else {
                    sdpa([&half[0], &half[1], &half[2]], &m)
                }
            });
        });
        time(&format!("{side} forward + backward"), &|| {
            let _ = run(fused, [&half[0], &half[1], &half[2]], &m, &dout);
        });
    }
    // one decoding step of 32 rows: a query each over 200 cached keys of a 300-key buffer
    let o = (Kind::BFloat16, Device::Cpu);
    let q = Tensor::randn([32, 9, 1, 64], o);
    let buffer = Tensor::randn([32, 3, 300, 64], o);
    let kv = buffer.narrow(2, 0, 200);
    let m = Tensor::ones([32, 1, 1, 200], (Kind::Bool, Device::Cpu));
    for fused in [false, true] {
        let side = if fused { "fused" } else { "libtorch" };
        time(&format!("{side} decoding step"), &|| {
            let _ = match fused {
                true => attention(&q.set_requires_grad(true), &kv, &kv, &m)
                    .unwrap()
                    .unwrap(),
                false => sdpa([&q, &kv, &kv], &m),
            };
        });
    }
}

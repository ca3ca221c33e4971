//! Group layouts a host may send, however hostile: one huge group beside many pairs evaluates in
//! O(n) memory on every path, a lopsided layout (several padded blocks) gives what each group
//! alone gives, and ids crafted to collide in a fixed hash do not slow grouping down.

use adpo::objective::{HostInputs, HostSignal};
use adpo::{EvalInputs, Groups, Objective, Signal};
use std::time::Duration;
use tch::{Kind, Tensor};

/// Peak resident memory of this process in bytes (VmHWM), after resetting it to the current
/// resident size when the kernel allows (clear_refs 5).
fn peak_rss(reset: bool) -> u64 {
    if reset {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// `half` rows in one group, the other `half` in pairs, ids shuffled or not.
fn lopsided_ids(half: usize, shuffled: bool) -> Vec<i64> {
    let mut ids: Vec<i64> = (0..half).map(|_| 0).collect();
    ids.extend((0..half).map(|i| 1 + (i / 2) as i64));
    if shuffled {
        // A fixed permutation (multiplication by a unit modulo n).
        let n = ids.len();
        let step = (0..).map(|k| 7919 + k).find(|s| gcd(*s, n) == 1).unwrap();
        ids = (0..n).map(|i| ids[(i * step) % n]).collect();
    }
    ids
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn inputs(n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let logp = (0..n)
        .map(|i| -5.0 - ((i * 37) % 101) as f64 / 50.0)
        .collect();
    let anchor = (0..n)
        .map(|i| -5.0 - ((i * 53) % 97) as f64 / 50.0)
        .collect();
    let rewards = (0..n).map(|i| ((i * 29) % 89) as f64 / 89.0).collect();
    (logp, anchor, rewards)
}

fn eval_tensors(cfg: &str, ids: &[i64], kind: Kind) -> (f64, Vec<f64>) {
    let obj = Objective::from_json(cfg).unwrap();
    let groups = Groups::from_ids(ids).unwrap();
    let (l, a, r) = inputs(ids.len());
    let t = |v: &[f64]| Tensor::from_slice(v).to_kind(kind);
    let (l, a, r) = (t(&l), t(&a), t(&r));
    let out = obj
        .eval(&EvalInputs {
            logp: &l,
            anchor_logp: &a,
            signal: Signal::Rewards(&r),
            groups: &groups,
            policy_entropy: None,
        })
        .unwrap();
    let grad = Vec::<f64>::try_from(out.grad_logp.to_kind(Kind::Double)).unwrap();
    (out.loss, grad)
}

#[test]
fn one_huge_group_beside_many_pairs_evaluates_in_bounded_memory() {
    // 200,000 rows: one group of 100,000 and 50,000 pairs. One table padded to the largest
    // group would hold 50,001 x 100,000 slots (40 GB of row indices alone).
    let half = 100_000;
    for shuffled in [false, true] {
        let ids = lopsided_ids(half, shuffled);
        let (logp, anchor, rewards) = inputs(ids.len());
        let start = peak_rss(true);
        let groups = Groups::from_ids(&ids).unwrap();
        assert_eq!((groups.count(), groups.kmax()), (half / 2 + 1, half));
        // The fused host kernel (listwise on float64).
        let obj = Objective::from_json(r#"{"loss": "listwise"}"#).unwrap();
        let mut grad = vec![0.0; ids.len()];
        let host = HostInputs {
            logp: &logp,
            anchor_logp: &anchor,
            signal: HostSignal::Rewards(&rewards),
            groups: &groups,
            policy_entropy: None,
        };
        let (loss, _) = obj.eval_slices(&host, Some(&mut grad), None).unwrap();
        assert!(loss.is_finite());
        // The tensor path: Plackett-Luce, and listwise on float32.
        for (cfg, kind) in [
            (
                r#"{"loss": "plackett_luce", "pl_ties": "stable"}"#,
                Kind::Double,
            ),
            (r#"{"loss": "listwise"}"#, Kind::Float),
        ] {
            let (loss, grad) = eval_tensors(cfg, &ids, kind);
            assert!(
                loss.is_finite() && grad.iter().all(|g| g.is_finite()),
                "{cfg}"
            );
        }
        let grown = peak_rss(false).saturating_sub(start);
        assert!(grown < 2 << 30, "peak memory grew by {} MiB", grown >> 20);
    }
}

#[test]
fn a_lopsided_layout_gives_what_each_group_alone_gives() {
    // One group of 40 and 30 pairs, interleaved: padded blocks by size class.
    let mut pairs = 0;
    let ids: Vec<i64> = (0..100)
        .map(|i| {
            if i % 4 == 0 || i >= 80 {
                0
            } else {
                pairs += 1;
                (pairs + 1) / 2
            }
        })
        .collect();
    let groups = Groups::from_ids(&ids).unwrap();
    assert!(
        groups.count() * groups.kmax() > 2 * groups.rows(),
        "not lopsided"
    );
    for cfg in [
        r#"{"loss": "listwise"}"#,
        r#"{"loss": "plackett_luce", "pl_ties": "stable", "pl_top_k": 3}"#,
        r#"{"target": "kde"}"#,
        r#"{"adaptive_tau": {"rule": "target_entropy"}, "clip_score": 1.0}"#,
    ] {
        let (loss, grad) = eval_tensors(cfg, &ids, Kind::Double);
        // Each group alone (the others made singletons): loss = mean of the group losses,
        // gradient = the sum of the per-group gradients scaled by 1/G.
        let distinct: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
        let g = distinct.len() as f64;
        let (mut sum_loss, mut sum_grad) = (0.0, vec![0.0; ids.len()]);
        for &id in &distinct {
            let alone: Vec<i64> = ids
                .iter()
                .enumerate()
                .map(|(r, &x)| if x == id { -1 } else { 1000 + r as i64 })
                .collect();
            let (l, gr) = eval_tensors(cfg, &alone, Kind::Double);
            sum_loss += l;
            sum_grad.iter_mut().zip(&gr).for_each(|(s, x)| *s += x);
        }
        assert!(
            (loss - sum_loss / g).abs() < 1e-10,
            "{cfg}: {loss} vs {}",
            sum_loss / g
        );
        for (a, b) in grad.iter().zip(&sum_grad) {
            assert!(
                (a - b / g).abs() < 1e-10,
                "{cfg}: gradient {a} vs {}",
                b / g
            );
        }
    }
}

/// Ids whose hashes under the multiplicative hasher adpo used to group ids with
/// (h = rotl((id ^ C) * M, 29)) agree in their low 21 and top 7 bits: in a hash table of
/// 2^20 of them, every insert walks every key before it.
fn colliding_ids(count: u64) -> Vec<i64> {
    const C: u64 = 0x9E37_79B9_7F4A_7C15;
    const M: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    // M^-1 modulo 2^64 (Newton: each step doubles the correct low bits).
    let mut inv: u64 = 1;
    for _ in 0..7 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(M.wrapping_mul(inv)));
    }
    assert_eq!(M.wrapping_mul(inv), 1);
    (0..count)
        .map(|i| ((i << 21).rotate_right(29).wrapping_mul(inv) ^ C) as i64)
        .collect()
}

#[test]
fn ids_crafted_against_a_fixed_hash_group_quickly() {
    let ids = colliding_ids(1 << 20);
    // Every id twice, unsorted: 2^20 groups of two.
    let rows: Vec<i64> = ids.iter().chain(&ids).copied().collect();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(Groups::from_ids(&rows).map(|g| (g.count(), g.kmax())));
    });
    // Sorting takes well under a second; the old hash table would take hours.
    let got = wait
        .recv_timeout(Duration::from_secs(60))
        .expect("grouping 2^21 crafted ids did not finish in 60 s");
    assert_eq!(got.unwrap(), (1 << 20, 2));
}

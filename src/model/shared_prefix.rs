//! Shared-prefix groups. The K rows of a group (one prompt's candidates) start with the same
//! tokens, the prompt: the model can run those once and let the K completions attend to their
//! keys and values, instead of running the prompt K times. A group costs P + K·R token-passes
//! instead of K·(P + R).
//!
//! The prefix is found from the ids, so that batches built by the host benefit as much as sampled
//! ones: in each group, the longest run of ids common to every row, within each row's leading
//! run of attended positions and before its first scored token (position 0 is never scored).
//! Each group has its own length; a group whose rows share nothing (or a row alone) runs whole.
//!
//! The plan holds what the two passes need: the prefixes, one row per shared group, right-padded
//! to the longest; every row's rest (its suffix), left-aligned and right-padded; the mask the
//! suffix pass attends with (its group's prefix columns, then its own); and where each of the
//! row's T hidden states lies in the two passes' outputs, so one `index_select` gives the
//! [N, T, H] hidden states that the plain forward would give. Autograd through that gather sums
//! the K rows' gradients into their shared prefix.

use tch::{Device, Kind, Tensor};

/// How one micro-batch's rows share prefixes (see the module doc); tensors on the model's device.
pub struct SharedPrefix {
    /// The shared prefixes [G, P] (P the longest), right-padded with id 0.
    pub prefix_ids: Tensor,
    /// 1 on each prefix's real columns [G, P].
    pub prefix_mask: Tensor,
    /// The prefix row each row attends to [N] (a row sharing nothing: any, masked off).
    pub prefix_of_row: Tensor,
    /// Each row after its prefix [N, S], left-aligned, right-padded with id 0.
    pub suffix_ids: Tensor,
    /// What the suffix pass attends with [N, P + S]: the row's prefix columns (zeros for a row
    /// that shares nothing), then its suffix's attention mask.
    pub mask: Tensor,
    /// Flat index [N * T] into cat(prefix hidden [G * P], suffix hidden [N * S]) of each row's
    /// hidden state at each position.
    pub gather: Tensor,
}

/// Host copies of one micro-batch's inputs, row-major.
struct Rows {
    n: usize,
    t: usize,
    ids: Vec<i64>,
    attn: Vec<i64>,
    scored: Vec<f32>,
}

impl Rows {
    /// How many leading positions of row `r` may be shared: attended, before the first scored
    /// token.
    fn shareable(&self, r: usize) -> usize {
        let row = r * self.t..(r + 1) * self.t;
        let attended = self.attn[row.clone()]
            .iter()
            .take_while(|&&a| a != 0)
            .count();
        let first_scored = (1..self.t)
            .find(|&i| self.scored[row.start + i] != 0.0)
            .unwrap_or(self.t);
        attended.min(first_scored)
    }

    /// The length of the common prefix of rows `a` and `b`, at most `limit`.
    fn common(&self, a: usize, b: usize, limit: usize) -> usize {
        let (ra, rb) = (&self.ids[a * self.t..], &self.ids[b * self.t..]);
        (0..limit).take_while(|&i| ra[i] == rb[i]).count()
    }
}

/// Each row's group index (into the returned list of groups' rows), groups in order of first row.
fn groups(group_ids: &[i64]) -> Vec<Vec<usize>> {
    let mut out: Vec<(i64, Vec<usize>)> = Vec::new();
    for (r, &g) in group_ids.iter().enumerate() {
        match out.iter_mut().find(|(id, _)| *id == g) {
            Some((_, rows)) => rows.push(r),
            None => out.push((g, vec![r])),
        }
    }
    out.into_iter().map(|(_, rows)| rows).collect()
}

/// The shared prefix length of each group of two rows or more (0: nothing shared).
fn prefix_lengths(rows: &Rows, groups: &[Vec<usize>]) -> Vec<usize> {
    groups
        .iter()
        .map(|g| {
            if g.len() < 2 {
                return 0;
            }
            let limit = g.iter().map(|&r| rows.shareable(r)).min().unwrap_or(0);
            g[1..]
                .iter()
                .map(|&r| rows.common(g[0], r, limit))
                .min()
                .unwrap_or(0)
        })
        .collect()
}

/// The plan for rows `ids`, `attention_mask` [N, T] (int64) and `loss_mask` [N, T] (float)
/// on the host, grouped by `group_ids` [N]; None when no group shares a prefix.
pub fn plan(
    ids: &Tensor,
    attention_mask: &Tensor,
    loss_mask: &Tensor,
    group_ids: &[i64],
    device: Device,
) -> Option<SharedPrefix> {
    let (n, t) = (ids.size()[0] as usize, ids.size()[1] as usize);
    let host = |x: &Tensor, k: Kind| x.to_device(Device::Cpu).to_kind(k).reshape([-1]);
    let rows = Rows {
        n,
        t,
        ids: Vec::<i64>::try_from(host(ids, Kind::Int64)).ok()?,
        attn: Vec::<i64>::try_from(host(attention_mask, Kind::Int64)).ok()?,
        scored: Vec::<f32>::try_from(host(loss_mask, Kind::Float)).ok()?,
    };
    let groups = groups(group_ids);
    let lengths = prefix_lengths(&rows, &groups);
    // Nothing shared, or nothing left after the prefixes (no row has a scored token).
    if lengths.iter().all(|&l| l == 0) || lengths.iter().all(|&l| l == t) {
        return None;
    }
    Some(build(&rows, &groups, &lengths, device))
}

/// Lays the plan's tensors out (see [`SharedPrefix`]).
fn build(rows: &Rows, groups: &[Vec<usize>], lengths: &[usize], device: Device) -> SharedPrefix {
    let (n, t) = (rows.n, rows.t);
    let shared: Vec<usize> = (0..groups.len()).filter(|&g| lengths[g] > 0).collect();
    let p = shared.iter().map(|&g| lengths[g]).max().unwrap_or(0);
    // Each row's prefix row (in `shared`) and length.
    let mut of_row = vec![(0usize, 0usize); n];
    for (slot, &g) in shared.iter().enumerate() {
        for &r in &groups[g] {
            of_row[r] = (slot, lengths[g]);
        }
    }
    let s = of_row.iter().map(|&(_, len)| t - len).max().unwrap_or(t);
    let (mut prefix_ids, mut prefix_mask) =
        (vec![0i64; shared.len() * p], vec![0i64; shared.len() * p]);
    for (slot, &g) in shared.iter().enumerate() {
        let first = groups[g][0] * t;
        for i in 0..lengths[g] {
            prefix_ids[slot * p + i] = rows.ids[first + i];
            prefix_mask[slot * p + i] = 1;
        }
    }
    let (mut suffix_ids, mut mask) = (vec![0i64; n * s], vec![0i64; n * (p + s)]);
    let mut gather = Vec::with_capacity(n * t);
    let suffix_base = shared.len() * p;
    for r in 0..n {
        let (slot, len) = of_row[r];
        for i in 0..len {
            mask[r * (p + s) + i] = 1;
            gather.push((slot * p + i) as i64);
        }
        for i in len..t {
            let j = i - len;
            suffix_ids[r * s + j] = rows.ids[r * t + i];
            mask[r * (p + s) + p + j] = rows.attn[r * t + i];
            gather.push((suffix_base + r * s + j) as i64);
        }
    }
    let on = |v: &[i64], shape: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
    let (g, p, s, n) = (shared.len() as i64, p as i64, s as i64, n as i64);
    SharedPrefix {
        prefix_ids: on(&prefix_ids, &[g, p]),
        prefix_mask: on(&prefix_mask, &[g, p]),
        prefix_of_row: on(
            &of_row
                .iter()
                .map(|&(slot, _)| slot as i64)
                .collect::<Vec<_>>(),
            &[n],
        ),
        suffix_ids: on(&suffix_ids, &[n, s]),
        mask: on(&mask, &[n, p + s]),
        gather: on(&gather, &[n * t as i64]),
    }
}

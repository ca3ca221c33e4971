//! Group structure on the host: candidates carry arbitrary int64 group ids, in any order, of
//! any size. The counted groups (size >= 2) are kept as one list of rows plus offsets, O(n) for
//! any layout; singleton groups contribute nothing and are not counted. Unsorted ids are
//! grouped by sorting (O(n log n) whatever the ids: no hash table an adversary can flood).
//! The padded device tables the math runs on are built from this in `layout.rs`.

use crate::error::{Error, Result};

/// The rows of one counted group: a range of consecutive rows, or a list.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    Range(usize, usize),
    List(&'a [i64]),
}

impl<'a> Rows<'a> {
    pub fn len(&self) -> usize {
        match *self {
            Rows::Range(a, b) => b - a,
            Rows::List(l) => l.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Row indices in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + 'a {
        let (range, list) = match *self {
            Rows::Range(a, b) => (a..b, &[][..]),
            Rows::List(l) => (0..0, l),
        };
        range.chain(list.iter().map(|&r| r as usize))
    }
}

/// Sizes of the runs of sorted ids (each run is one group, no sorting needed); None when the
/// ids are not sorted. One pass.
fn sorted_run_sizes(ids: &[i64]) -> Option<Vec<usize>> {
    let mut counts = Vec::new();
    let mut start = 0;
    for i in 1..ids.len() {
        if ids[i] != ids[i - 1] {
            if ids[i] < ids[i - 1] {
                return None;
            }
            counts.push(i - start);
            start = i;
        }
    }
    counts.push(ids.len() - start);
    Some(counts)
}

/// The counted groups of unsorted ids, in order of first appearance, each with its rows in
/// order: (sizes, rows of all counted groups one after another).
fn group_unsorted(ids: &[i64]) -> (Vec<i64>, Vec<i64>) {
    // Rows sorted by (id, row): each group is a run, its rows ascending.
    let mut by_id: Vec<usize> = (0..ids.len()).collect();
    by_id.sort_unstable_by_key(|&r| (ids[r], r));
    let mut runs = Vec::new(); // (first row, start in by_id, size)
    let mut start = 0;
    for i in 1..=by_id.len() {
        if i == by_id.len() || ids[by_id[i]] != ids[by_id[start]] {
            if i - start >= 2 {
                runs.push((by_id[start], start, i - start));
            }
            start = i;
        }
    }
    runs.sort_unstable_by_key(|&(first, _, _)| first);
    let sizes = runs.iter().map(|&(_, _, k)| k as i64).collect();
    let rows = runs
        .iter()
        .flat_map(|&(_, s, k)| by_id[s..s + k].iter().map(|&r| r as i64))
        .collect();
    (sizes, rows)
}

/// Host-side description of the groups, built once from the ids.
#[derive(Debug, Clone)]
pub struct Groups {
    n: usize,
    kmax: usize,
    /// Sizes of the counted groups, in order of first appearance.
    sizes: Vec<i64>,
    /// Where each counted group starts in `rows` ([G + 1]).
    offsets: Vec<usize>,
    /// The rows of every counted group, one group after another. Empty when they are exactly
    /// 0 .. n in order (`identity`): then group g is the range offsets[g] .. offsets[g + 1].
    rows: Vec<i64>,
    identity: bool,
}

impl Groups {
    pub fn from_ids(ids: &[i64]) -> Result<Self> {
        let n = ids.len();
        if n == 0 {
            return Err(Error::invalid("n must be > 0 (no candidates given)"));
        }
        let (sizes, rows) = match sorted_run_sizes(ids) {
            Some(runs) => Self::counted_runs(&runs),
            None => group_unsorted(ids),
        };
        let mut offsets = Vec::with_capacity(sizes.len() + 1);
        offsets.push(0);
        for &k in &sizes {
            offsets.push(offsets.last().copied().unwrap_or(0) + k as usize);
        }
        // Unsorted ids can still form consecutive groups covering every row ([5, 5, 1, 1]).
        let identity = rows.len() == n && rows.iter().enumerate().all(|(i, &r)| r == i as i64);
        Ok(Groups {
            n,
            kmax: sizes.iter().copied().max().unwrap_or(0) as usize,
            sizes,
            offsets,
            rows: if identity { Vec::new() } else { rows },
            identity,
        })
    }

    /// Sorted ids: groups are runs of consecutive rows; (sizes, rows) of the counted ones.
    fn counted_runs(runs: &[usize]) -> (Vec<i64>, Vec<i64>) {
        let (mut sizes, mut rows, mut row) = (Vec::new(), Vec::new(), 0usize);
        for &c in runs {
            if c >= 2 {
                sizes.push(c as i64);
                rows.extend(row as i64..(row + c) as i64);
            }
            row += c;
        }
        (sizes, rows)
    }

    pub fn rows(&self) -> usize {
        self.n
    }
    /// Number of counted groups (size >= 2).
    pub fn count(&self) -> usize {
        self.sizes.len()
    }
    pub fn kmax(&self) -> usize {
        self.kmax
    }
    pub fn sizes(&self) -> &[i64] {
        &self.sizes
    }
    /// Rows in counted groups.
    pub fn counted_rows(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }
    /// True when the counted groups are the rows 0 .. n in order (no gather needed).
    pub fn is_identity(&self) -> bool {
        self.identity
    }
    /// Rows of counted group `g`, in order of appearance.
    pub fn group_rows(&self, g: usize) -> Rows<'_> {
        let (start, end) = (self.offsets[g], self.offsets[g + 1]);
        if self.identity {
            Rows::Range(start, end)
        } else {
            Rows::List(&self.rows[start..end])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(g: &Groups) -> Vec<Vec<usize>> {
        (0..g.count())
            .map(|i| g.group_rows(i).iter().collect())
            .collect()
    }

    #[test]
    fn any_order_and_singletons() {
        let g = Groups::from_ids(&[7, 3, 7, 9, 3, 3]).unwrap();
        assert_eq!(g.count(), 2);
        assert_eq!(g.kmax(), 3);
        assert_eq!(g.sizes(), &[2, 3]);
        assert!(!g.is_identity());
        assert_eq!(rows_of(&g), vec![vec![0, 2], vec![1, 4, 5]]);
    }

    #[test]
    fn consecutive_groups_need_no_row_list() {
        let g = Groups::from_ids(&[5, 5, 1, 1, 1]).unwrap();
        assert!(g.is_identity());
        assert_eq!(rows_of(&g), vec![vec![0, 1], vec![2, 3, 4]]);
        let sorted = Groups::from_ids(&[1, 1, 2, 3, 3]).unwrap();
        assert!(!sorted.is_identity());
        assert_eq!(rows_of(&sorted), vec![vec![0, 1], vec![3, 4]]);
    }

    #[test]
    fn reappearing_id_joins_its_group() {
        let g = Groups::from_ids(&[1, 1, 2, 2, 1]).unwrap();
        assert_eq!(g.sizes(), &[3, 2]);
        assert_eq!(rows_of(&g), vec![vec![0, 1, 4], vec![2, 3]]);
    }

    #[test]
    fn empty_is_an_error() {
        assert!(Groups::from_ids(&[]).is_err());
    }
}

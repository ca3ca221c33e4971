//! Group structure: candidates carry arbitrary int64 group ids, in any order, of any size.
//! The math runs on a padded [G, Kmax] layout of the counted groups (size >= 2); singleton
//! groups contribute nothing and are not counted.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplicative hash for int64 ids: the ids are not attacker-chosen keys, and SipHash was a
/// visible share of an evaluation's time.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_i64(&mut self, id: i64) {
        self.0 = (id as u64 ^ 0x9E37_79B9_7F4A_7C15)
            .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
            .rotate_left(29);
    }
}
use tch::{Device, Kind, Tensor};

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

/// Dense group index per row and group sizes, for ids in any order (first appearance order).
fn dense_any_order(ids: &[i64]) -> (Vec<usize>, Vec<usize>) {
    let runs = 1 + ids.windows(2).filter(|w| w[0] != w[1]).count();
    let mut dense: HashMap<i64, usize, BuildHasherDefault<IdHasher>> =
        HashMap::with_capacity_and_hasher(runs, Default::default());
    let mut group_of_row = Vec::with_capacity(ids.len());
    let mut counts: Vec<usize> = Vec::new();
    let mut prev: Option<(i64, usize)> = None;
    for &id in ids {
        // Consecutive equal ids skip the hash lookup.
        let g = match prev {
            Some((p, g)) if p == id => g,
            _ => {
                let next = counts.len();
                let g = *dense.entry(id).or_insert(next);
                if g == next {
                    counts.push(0);
                }
                g
            }
        };
        counts[g] += 1;
        group_of_row.push(g);
        prev = Some((id, g));
    }
    (group_of_row, counts)
}

/// Sizes of the runs of sorted ids (each run is one group, no hashing); None when the ids are
/// not sorted. One pass.
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

/// Host-side description of the groups, built once from the ids.
#[derive(Debug, Clone)]
pub struct Groups {
    n: usize,
    kmax: usize,
    /// Sizes of the counted groups, in order of first appearance.
    sizes: Vec<i64>,
    /// Row of each padded slot, [G * kmax]; padding slots point at row 0 and are masked.
    /// Empty when `contiguous`: then slot i is row i and no per-row array is kept.
    slots: Vec<i64>,
    /// True when rows are already laid out as G consecutive blocks of kmax: no gather needed.
    contiguous: bool,
}

impl Groups {
    pub fn from_ids(ids: &[i64]) -> Result<Self> {
        let n = ids.len();
        if n == 0 {
            return Err(Error::invalid("n must be > 0 (no candidates given)"));
        }
        if let Some(runs) = sorted_run_sizes(ids) {
            return Ok(Self::from_sorted(n, runs));
        }
        let (group_of_row, counts) = dense_any_order(ids);
        // Slot of each counted group, and its size.
        let mut slot_of_group = vec![usize::MAX; counts.len()];
        let mut sizes = Vec::new();
        for (g, &c) in counts.iter().enumerate() {
            if c >= 2 {
                slot_of_group[g] = sizes.len();
                sizes.push(c as i64);
            }
        }
        let kmax = sizes.iter().copied().max().unwrap_or(0) as usize;
        let mut slots = vec![0i64; sizes.len() * kmax];
        let mut fill = vec![0usize; sizes.len()];
        for (row, &g) in group_of_row.iter().enumerate() {
            let s = slot_of_group[g];
            if s != usize::MAX {
                slots[s * kmax + fill[s]] = row as i64;
                fill[s] += 1;
            }
        }
        // Unsorted ids can still form consecutive equal-size blocks ([5, 5, 1, 1]).
        let contiguous = sizes.len() * kmax == n
            && sizes.iter().all(|&k| k as usize == kmax)
            && slots.iter().enumerate().all(|(i, &r)| r == i as i64);
        let slots = if contiguous { Vec::new() } else { slots };
        Ok(Groups {
            n,
            kmax,
            sizes,
            slots,
            contiguous,
        })
    }

    /// Sorted ids: groups are runs of consecutive rows. Equal-size runs with no singleton (the
    /// usual batch of prompts x K) need no per-row bookkeeping at all.
    fn from_sorted(n: usize, runs: Vec<usize>) -> Groups {
        let sizes: Vec<i64> = runs
            .iter()
            .filter(|&&c| c >= 2)
            .map(|&c| c as i64)
            .collect();
        let kmax = sizes.iter().copied().max().unwrap_or(0) as usize;
        if sizes.len() * kmax == n {
            return Groups {
                n,
                kmax,
                sizes,
                slots: Vec::new(),
                contiguous: true,
            };
        }
        let mut slots = vec![0i64; sizes.len() * kmax];
        let (mut row, mut slot) = (0usize, 0usize);
        for c in runs {
            if c >= 2 {
                for (j, r) in (row..row + c).enumerate() {
                    slots[slot * kmax + j] = r as i64;
                }
                slot += 1;
            }
            row += c;
        }
        Groups {
            n,
            kmax,
            sizes,
            slots,
            contiguous: false,
        }
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
    /// Rows of counted group `g`, in order of appearance.
    pub fn group_rows(&self, g: usize) -> Rows<'_> {
        let (start, size) = (g * self.kmax, self.sizes[g] as usize);
        if self.contiguous {
            Rows::Range(start, start + size)
        } else {
            Rows::List(&self.slots[start..start + size])
        }
    }

    /// Device tensors of the layout.
    pub fn layout(&self, device: Device) -> Layout {
        let g = self.count() as i64;
        let k = self.kmax as i64;
        let sizes = Tensor::from_slice(&self.sizes).to_device(device);
        let mask = Tensor::arange(k, (Kind::Int64, device))
            .unsqueeze(0)
            .lt_tensor(&sizes.unsqueeze(1));
        let slots = if self.contiguous {
            None
        } else {
            Some(Tensor::from_slice(&self.slots).to_device(device))
        };
        Layout {
            n: self.n as i64,
            g,
            k,
            slots,
            mask,
            sizes,
        }
    }
}

/// The padded layout on a device.
pub struct Layout {
    pub n: i64,
    pub g: i64,
    pub k: i64,
    /// None when rows are already G consecutive blocks of K.
    slots: Option<Tensor>,
    /// [G, K] bool, true on real slots.
    pub mask: Tensor,
    /// [G] int64 group sizes.
    pub sizes: Tensor,
}

impl Layout {
    /// [N] -> [G, K], padding filled with `fill`.
    pub fn gather(&self, x: &Tensor, fill: f64) -> Tensor {
        match &self.slots {
            None => x.view([self.g, self.k]),
            Some(slots) => x
                .index_select(0, slots)
                .view([self.g, self.k])
                .masked_fill(&self.mask.logical_not(), fill),
        }
    }

    /// [G, K] -> [N]; rows of uncounted (singleton) groups get 0. Padding entries must be 0.
    pub fn scatter(&self, y: &Tensor) -> Tensor {
        match &self.slots {
            None => y.reshape([self.n]),
            Some(slots) => Tensor::zeros([self.n], (y.kind(), y.device())).index_add(
                0,
                slots,
                &y.reshape([-1]),
            ),
        }
    }

    /// Per-group values [G] -> per-row [N]; rows of uncounted groups get `default`.
    pub fn broadcast(&self, v: &Tensor, default: f64) -> Tensor {
        let per_slot = v.unsqueeze(1).expand([self.g, self.k], false);
        match &self.slots {
            None => per_slot.reshape([self.n]),
            Some(slots) => {
                let rows = slots.masked_select(&self.mask.reshape([-1]));
                let vals = per_slot.masked_select(&self.mask);
                Tensor::full([self.n], default, (v.kind(), v.device())).index_copy(0, &rows, &vals)
            }
        }
    }

    /// Group sizes as a float tensor of `kind`.
    pub fn sizes_as(&self, kind: Kind) -> Tensor {
        self.sizes.to_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_order_and_singletons() {
        let g = Groups::from_ids(&[7, 3, 7, 9, 3, 3]).unwrap();
        assert_eq!(g.count(), 2);
        assert_eq!(g.kmax(), 3);
        assert_eq!(g.sizes(), &[2, 3]);
        assert!(!g.contiguous);
        let l = g.layout(Device::Cpu);
        let x = Tensor::from_slice(&[0.0f64, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let p = l.gather(&x, -1.0);
        assert_eq!(
            Vec::<f64>::try_from(p.reshape([-1])).unwrap(),
            vec![0.0, 2.0, -1.0, 1.0, 4.0, 5.0]
        );
        let back = l.scatter(&p.masked_fill(&l.mask.logical_not(), 0.0));
        assert_eq!(
            Vec::<f64>::try_from(back).unwrap(),
            vec![0.0, 1.0, 2.0, 0.0, 4.0, 5.0]
        );
        let b = l.broadcast(&Tensor::from_slice(&[10.0f64, 20.0]), -5.0);
        assert_eq!(
            Vec::<f64>::try_from(b).unwrap(),
            vec![10.0, 20.0, 10.0, -5.0, 20.0, 20.0]
        );
    }

    #[test]
    fn contiguous_blocks_need_no_gather() {
        let g = Groups::from_ids(&[5, 5, 1, 1]).unwrap();
        assert!(g.contiguous);
        assert_eq!(g.count(), 2);
    }

    #[test]
    fn reappearing_id_joins_its_group() {
        let g = Groups::from_ids(&[1, 1, 2, 2, 1]).unwrap();
        assert_eq!(g.sizes(), &[3, 2]);
        assert!(!g.contiguous);
    }

    #[test]
    fn empty_is_an_error() {
        assert!(Groups::from_ids(&[]).is_err());
    }
}

//! The groups on a device as padded tables, memory O(n) for any layout. The per-group math
//! (targets, softmax, Plackett-Luce, ...) runs on a [G, K] table per block; one table of every
//! group padded to the largest would be G x K_max (40 GB for 100,000 pairs beside one group of
//! 100,000), so when padding would more than double the rows, groups are split into blocks by
//! size class (sizes in (2^(c-1), 2^c]): each block is padded to at most twice its rows.

use super::groups::Groups;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// One padded block: `g` groups of at most `k` candidates as a [g, k] table.
pub struct Layout {
    /// Rows of the whole input.
    pub n: i64,
    pub g: i64,
    pub k: i64,
    /// Row of each slot, [g * k]; padding slots point at row 0 and are masked. None when the
    /// block is every row, as g consecutive groups of k.
    slots: Option<Tensor>,
    /// [g, k] bool, true on real slots.
    pub mask: Tensor,
    /// [g] int64 group sizes.
    pub sizes: Tensor,
}

impl Layout {
    /// [N] -> [g, k], padding filled with `fill`.
    pub fn gather(&self, x: &Tensor, fill: f64) -> Tensor {
        match &self.slots {
            None => x.view([self.g, self.k]),
            Some(slots) => x
                .index_select(0, slots)
                .view([self.g, self.k])
                .masked_fill(&self.mask.logical_not(), fill),
        }
    }

    /// Group sizes as a float tensor of `kind`.
    pub fn sizes_as(&self, kind: Kind) -> Tensor {
        self.sizes.to_kind(kind)
    }

    fn new(n: i64, sizes: &[i64], slots: Option<Vec<i64>>, device: Device) -> Layout {
        let k = sizes.iter().copied().max().unwrap_or(0);
        let sizes = Tensor::from_slice(sizes).to_device(device);
        let mask = Tensor::arange(k, (Kind::Int64, device))
            .unsqueeze(0)
            .lt_tensor(&sizes.unsqueeze(1));
        Layout {
            n,
            g: sizes.size()[0],
            k,
            slots: slots.map(|s| Tensor::from_slice(&s).to_device(device)),
            mask,
            sizes,
        }
    }
}

/// Every counted group, in one or more padded blocks.
pub struct Blocks {
    pub n: i64,
    /// Counted groups over all blocks.
    pub g: i64,
    pub blocks: Vec<Layout>,
}

/// The counted groups of each block: all in one when padding to K_max at most doubles the
/// rows, else one block per size class.
fn partition(groups: &Groups) -> Vec<Vec<usize>> {
    let all: Vec<usize> = (0..groups.count()).collect();
    if groups.count() * groups.kmax() <= 2 * groups.counted_rows() {
        return vec![all];
    }
    let mut classes: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for g in all {
        let class = (groups.sizes()[g] as u64)
            .next_power_of_two()
            .trailing_zeros();
        classes.entry(class).or_default().push(g);
    }
    classes.into_values().collect()
}

impl Blocks {
    pub fn of(groups: &Groups, device: Device) -> Blocks {
        let n = groups.rows() as i64;
        let uniform = groups.count() * groups.kmax() == groups.rows();
        let blocks = if groups.is_identity() && uniform {
            // Every row, as G consecutive groups of K: the table is a view.
            vec![Layout::new(n, groups.sizes(), None, device)]
        } else {
            partition(groups)
                .into_iter()
                .map(|members| Self::block(groups, &members, device))
                .collect()
        };
        Blocks {
            n,
            g: groups.count() as i64,
            blocks,
        }
    }

    fn block(groups: &Groups, members: &[usize], device: Device) -> Layout {
        let sizes: Vec<i64> = members.iter().map(|&g| groups.sizes()[g]).collect();
        let k = sizes.iter().copied().max().unwrap_or(0) as usize;
        let mut slots = vec![0i64; members.len() * k];
        for (i, &g) in members.iter().enumerate() {
            for (j, r) in groups.group_rows(g).iter().enumerate() {
                slots[i * k + j] = r as i64;
            }
        }
        Layout::new(groups.rows() as i64, &sizes, Some(slots), device)
    }

    /// Per-block [g, k] values -> [N]; rows of uncounted groups get 0. Padding entries must be 0.
    pub fn scatter(&self, ys: &[Tensor]) -> Tensor {
        let (kind, device) = (ys[0].kind(), ys[0].device());
        let mut out = Tensor::zeros([self.n], (kind, device));
        for (l, y) in self.blocks.iter().zip(ys) {
            match &l.slots {
                None => return y.reshape([self.n]),
                Some(slots) => {
                    let _ = out.index_add_(0, slots, &y.reshape([-1]));
                }
            }
        }
        out
    }

    /// Per-block per-group values [g] -> per row [N]; rows of uncounted groups get `default`.
    pub fn broadcast(&self, vs: &[Tensor], default: f64) -> Tensor {
        let (kind, device) = (vs[0].kind(), vs[0].device());
        let mut out = Tensor::full([self.n], default, (kind, device));
        for (l, v) in self.blocks.iter().zip(vs) {
            let per_slot = v.unsqueeze(1).expand([l.g, l.k], false);
            match &l.slots {
                None => return per_slot.reshape([self.n]),
                Some(slots) => {
                    let rows = slots.masked_select(&l.mask.reshape([-1]));
                    let _ = out.index_copy_(0, &rows, &per_slot.masked_select(&l.mask));
                }
            }
        }
        out
    }

    /// 1 on rows of counted groups, else 0, [N].
    pub fn counted_rows(&self, kind: Kind, device: Device) -> Tensor {
        let ones: Vec<Tensor> = self
            .blocks
            .iter()
            .map(|l| Tensor::ones([l.g], (kind, device)))
            .collect();
        self.broadcast(&ones, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.reshape([-1])).unwrap()
    }

    #[test]
    fn gather_scatter_broadcast_in_any_order() {
        let g = Groups::from_ids(&[7, 3, 7, 9, 3, 3]).unwrap();
        let b = Blocks::of(&g, Device::Cpu);
        assert_eq!(b.blocks.len(), 1);
        let l = &b.blocks[0];
        let x = Tensor::from_slice(&[0.0f64, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let p = l.gather(&x, -1.0);
        assert_eq!(vec(&p), vec![0.0, 2.0, -1.0, 1.0, 4.0, 5.0]);
        let back = b.scatter(&[p.masked_fill(&l.mask.logical_not(), 0.0)]);
        assert_eq!(vec(&back), vec![0.0, 1.0, 2.0, 0.0, 4.0, 5.0]);
        let v = b.broadcast(&[Tensor::from_slice(&[10.0f64, 20.0])], -5.0);
        assert_eq!(vec(&v), vec![10.0, 20.0, 10.0, -5.0, 20.0, 20.0]);
    }

    #[test]
    fn lopsided_groups_are_split_by_size() {
        // One group of 9 and four pairs: one table would be 5 x 9 = 45 slots for 17 rows.
        let ids = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4];
        let b = Blocks::of(&Groups::from_ids(&ids).unwrap(), Device::Cpu);
        let shapes: Vec<(i64, i64)> = b.blocks.iter().map(|l| (l.g, l.k)).collect();
        assert_eq!(shapes, vec![(4, 2), (1, 9)]);
        let x = Tensor::arange(17, (Kind::Double, Device::Cpu));
        let ys: Vec<Tensor> = b.blocks.iter().map(|l| l.gather(&x, 0.0)).collect();
        assert_eq!(vec(&b.scatter(&ys)), vec(&x));
    }

    #[test]
    fn consecutive_equal_groups_are_a_view() {
        let b = Blocks::of(&Groups::from_ids(&[5, 5, 1, 1]).unwrap(), Device::Cpu);
        assert!(b.blocks[0].slots.is_none());
    }
}

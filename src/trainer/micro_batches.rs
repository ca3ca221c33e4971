//! How the trainer cuts a batch into micro-batches: `micro_batch_rows` consecutive rows at the
//! batch's full width, or, with `micro_batch_tokens`, rows packed by length so that each piece
//! holds at most that many positions (rows × its own width) and little padding.
//!
//! A row's span is its attended columns, first to last. A piece keeps only the columns some of
//! its rows attend, which is exact: positions follow the attention mask (model/native/mask.rs),
//! and columns no row of the piece attends change nothing. Packing sorts the units (rows, or
//! whole groups when prefix sharing is on, so a group's prompt still runs once) by width,
//! longest first, and fills each piece while rows × width fits; a group too big for one piece
//! is first packed row by row (its prompt then runs once per piece), and a row wider than the
//! budget gets a piece of its own. Rows keep their batch order inside a piece, so a group's
//! rows stay together and one piece holding everything is the batch itself.

use tch::{Kind, Tensor};

/// One micro-batch: its rows (ascending batch indices) and its columns [start, start + width).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Piece {
    pub rows: Vec<i64>,
    pub start: i64,
    pub width: i64,
}

impl Piece {
    /// (first row, count) when the rows are consecutive.
    pub fn consecutive(&self) -> Option<(i64, i64)> {
        let first = *self.rows.first()?;
        let n = self.rows.len() as i64;
        (self.rows.last() == Some(&(first + n - 1))).then_some((first, n))
    }

    /// Rows of `t` [N, ...] in this piece, then, for [N, T] tensors, its columns.
    pub fn select(&self, t: &Tensor) -> Tensor {
        let rows = match self.consecutive() {
            Some((s, l)) => t.narrow(0, s, l),
            None => t.index_select(0, &Tensor::from_slice(&self.rows).to_device(t.device())),
        };
        match rows.dim() {
            2 if self.start != 0 || self.width != rows.size()[1] => {
                rows.narrow(1, self.start, self.width)
            }
            _ => rows,
        }
    }

    /// Writes `part` (this piece's rows, selected as by `select`) into `whole`.
    pub fn scatter_into(&self, whole: &mut Tensor, part: &Tensor) {
        let mut target = match whole.dim() {
            2 => whole.narrow(1, self.start, self.width),
            _ => whole.shallow_clone(),
        };
        let index = Tensor::from_slice(&self.rows).to_device(whole.device());
        let _ = target.index_copy_(0, &index, part);
    }
}

/// `size` consecutive rows at a time (the last piece may be shorter), at full width `t`.
pub(super) fn by_rows(n: usize, t: i64, size: Option<usize>) -> Vec<Piece> {
    let size = size.unwrap_or(n).clamp(1, n.max(1));
    (0..n)
        .step_by(size)
        .map(|s| Piece {
            rows: (s..(s + size).min(n)).map(|r| r as i64).collect(),
            start: 0,
            width: t,
        })
        .collect()
}

/// Each row's attended span [first, last + 1) from the attention mask [N, T] (a row attending
/// nothing: (0, 0)).
fn spans(attention_mask: &Tensor) -> Vec<(i64, i64)> {
    let t = attention_mask.size()[1];
    let flags: Vec<i64> = attention_mask
        .ne(0.0)
        .to_kind(Kind::Int64)
        .flatten(0, -1)
        .try_into()
        .expect("an int64 mask converts");
    flags
        .chunks(t.max(1) as usize)
        .map(|row| {
            let first = row.iter().position(|&f| f != 0);
            let last = row.iter().rposition(|&f| f != 0);
            match (first, last) {
                (Some(a), Some(b)) => (a as i64, b as i64 + 1),
                _ => (0, 0),
            }
        })
        .collect()
}

/// Units to pack: each row alone, or runs of consecutive rows of one group.
fn units(group_ids: &[i64], whole_groups: bool) -> Vec<Vec<i64>> {
    let mut out: Vec<Vec<i64>> = Vec::new();
    for (r, g) in group_ids.iter().enumerate() {
        match out.last_mut() {
            Some(unit) if whole_groups && group_ids[*unit.last().unwrap() as usize] == *g => {
                unit.push(r as i64)
            }
            _ => out.push(vec![r as i64]),
        }
    }
    out
}

/// Pieces of at most `budget` positions (rows × width), whole groups together when
/// `whole_groups`, at most `max_rows` rows each when given.
pub(super) fn by_tokens(
    attention_mask: &Tensor,
    group_ids: &[i64],
    whole_groups: bool,
    budget: usize,
    max_rows: Option<usize>,
) -> Vec<Piece> {
    let spans = spans(attention_mask);
    let span_of = |rows: &[i64]| {
        let start = rows.iter().map(|&r| spans[r as usize].0).min().unwrap_or(0);
        let end = rows.iter().map(|&r| spans[r as usize].1).max().unwrap_or(0);
        (start, end.max(start))
    };
    let widest_first = |units: &mut Vec<Vec<i64>>| {
        units.sort_by_key(|u| {
            let (s, e) = span_of(u);
            std::cmp::Reverse(e - s)
        })
    };
    // Fills pieces in order while rows × width fits (a unit alone always does).
    let pack = |units: Vec<Vec<i64>>| {
        let mut pieces: Vec<Vec<i64>> = Vec::new();
        let mut current: Vec<i64> = Vec::new();
        for unit in units {
            let mut joined = current.clone();
            joined.extend(&unit);
            let (s, e) = span_of(&joined);
            let too_many = max_rows.is_some_and(|m| joined.len() > m);
            let too_big = joined.len() as u64 * (e - s) as u64 > budget as u64;
            if !current.is_empty() && (too_big || too_many) {
                pieces.push(std::mem::replace(&mut current, unit));
            } else {
                current = joined;
            }
        }
        if !current.is_empty() {
            pieces.push(current);
        }
        pieces
    };
    // A group too big for one piece is packed row by row (its prompt runs once per piece).
    let mut units: Vec<Vec<i64>> = units(group_ids, whole_groups)
        .into_iter()
        .flat_map(|unit| {
            let (s, e) = span_of(&unit);
            let fits = unit.len() as u64 * (e - s) as u64 <= budget as u64
                && max_rows.map_or(true, |m| unit.len() <= m);
            if fits {
                return vec![unit];
            }
            let mut rows: Vec<Vec<i64>> = unit.into_iter().map(|r| vec![r]).collect();
            widest_first(&mut rows);
            pack(rows)
        })
        .collect();
    widest_first(&mut units);
    let pieces = pack(units);
    pieces
        .into_iter()
        .map(|mut rows| {
            rows.sort_unstable();
            let (start, end) = span_of(&rows);
            Piece {
                rows,
                start,
                width: (end - start).max(1),
            }
        })
        .collect()
}

/// The share of the pieces' positions (rows × width) that no row attends.
pub(super) fn padded_fraction(pieces: &[Piece], attention_mask: &Tensor) -> f64 {
    let positions: i64 = pieces.iter().map(|p| p.rows.len() as i64 * p.width).sum();
    let attended = attention_mask.ne(0.0).sum(Kind::Int64).int64_value(&[]);
    match positions {
        0 => 0.0,
        _ => 1.0 - attended as f64 / positions as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of rows attending [start, end) of width 8.
    fn mask(spans: &[(i64, i64)]) -> Tensor {
        let m = Tensor::zeros([spans.len() as i64, 8], (Kind::Float, tch::Device::Cpu));
        for (r, &(s, e)) in spans.iter().enumerate() {
            let _ = m.get(r as i64).narrow(0, s, e - s).fill_(1.0);
        }
        m
    }

    #[test]
    fn rows_are_packed_by_length_within_the_budget() {
        // Right-padded rows of lengths 8, 2, 7, 3, 2.
        let m = mask(&[(0, 8), (0, 2), (0, 7), (0, 3), (0, 2)]);
        let pieces = by_tokens(&m, &[0, 1, 2, 3, 4], false, 16, None);
        let got: Vec<(Vec<i64>, i64, i64)> = pieces
            .iter()
            .map(|p| (p.rows.clone(), p.start, p.width))
            .collect();
        // 8 + 7 fit 2 × 8 = 16; then 3, 2, 2: 3 × 3 = 9 ≤ 16.
        assert_eq!(got, vec![(vec![0, 2], 0, 8), (vec![1, 3, 4], 0, 3)]);
        let padded = padded_fraction(&pieces, &m);
        assert!((padded - (1.0 - 22.0 / 25.0)).abs() < 1e-12, "{padded}");
        // The full-width split pads 1 − 22 / 40.
        let rows = by_rows(5, 8, Some(2));
        assert!((padded_fraction(&rows, &m) - (1.0 - 22.0 / 40.0)).abs() < 1e-12);
        assert_eq!(rows.last().unwrap().rows, vec![4]);
    }

    #[test]
    fn groups_stay_whole_and_left_padding_is_cut() {
        // Two groups of two rows: left-padded prompts, right-padded completions.
        let m = mask(&[(2, 6), (2, 8), (5, 7), (5, 6)]);
        let pieces = by_tokens(&m, &[7, 7, 9, 9], true, 12, None);
        assert_eq!(pieces.len(), 2);
        assert_eq!(
            (pieces[0].rows.clone(), pieces[0].start, pieces[0].width),
            (vec![0, 1], 2, 6)
        );
        assert_eq!(
            (pieces[1].rows.clone(), pieces[1].start, pieces[1].width),
            (vec![2, 3], 5, 2)
        );
        // A group too big for the budget is split; a row wider than it gets its own piece.
        assert_eq!(by_tokens(&m, &[7, 7, 9, 9], true, 1, None).len(), 4);
        let split = by_tokens(&m, &[7, 7, 9, 9], true, 7, None);
        let rows: Vec<Vec<i64>> = split.iter().map(|p| p.rows.clone()).collect();
        assert_eq!(rows, vec![vec![1], vec![0], vec![2, 3]]);
        // max_rows caps a piece.
        assert_eq!(by_tokens(&m, &[0, 1, 2, 3], false, 1000, Some(3)).len(), 2);
        // Everything in one piece is the batch in its order.
        let one = by_tokens(&m, &[7, 7, 9, 9], true, 1000, None);
        assert_eq!(
            (one[0].rows.clone(), one[0].start, one[0].width),
            (vec![0, 1, 2, 3], 2, 6)
        );
    }

    #[test]
    fn select_and_scatter_are_inverse() {
        let x = Tensor::arange(32, (Kind::Double, tch::Device::Cpu)).view([4, 8]);
        let piece = Piece {
            rows: vec![0, 2],
            start: 2,
            width: 5,
        };
        let part = piece.select(&x);
        assert_eq!(
            Vec::<f64>::try_from(part.flatten(0, -1)).unwrap(),
            vec![2.0, 3.0, 4.0, 5.0, 6.0, 18.0, 19.0, 20.0, 21.0, 22.0]
        );
        let mut whole = Tensor::zeros([4, 8], (Kind::Double, tch::Device::Cpu));
        piece.scatter_into(&mut whole, &part);
        assert_eq!(whole.sum(Kind::Double).double_value(&[]), 20.0 + 100.0);
    }
}

//! A batch: the rows of a slice that one step trains on, copied into contiguous buffers that
//! are allocated once for the largest batch.

use crate::data::slice::{Slice, TargetStore};
use crate::engine::loss::Targets;
use crate::engine::parallel::{Disjoint, Parallel};

/// The rows of one step gathered from a slice into contiguous buffers, allocated once for
/// `max_rows` rows.
pub struct Batch {
    /// Rows gathered by the last gather (<= max_rows).
    pub rows: usize,
    features: usize,
    width: usize,
    /// (max_rows, features)
    pub x: Vec<f32>,
    /// (max_rows,) when the slice has labels.
    labels: Vec<u32>,
    /// (max_rows, width) when the slice has target values.
    values: Vec<f32>,
    /// Global row index of each row (keys for dropout masks): (max_rows,).
    pub row_ids: Vec<u64>,
    has_labels: bool,
}

impl Batch {
    /// Buffers for up to `max_rows` rows of `slice`'s widths.
    pub fn new(slice: &Slice, max_rows: usize) -> Batch {
        let (labels, values) = match slice.targets {
            TargetStore::Labels(_) => (vec![0; max_rows], Vec::new()),
            TargetStore::Values(_) => (Vec::new(), vec![0.0; max_rows * slice.target_width]),
        };
        Batch {
            rows: 0,
            features: slice.features,
            width: slice.target_width,
            x: vec![0.0; max_rows * slice.features],
            labels,
            values,
            row_ids: vec![0; max_rows],
            has_labels: matches!(slice.targets, TargetStore::Labels(_)),
        }
    }

    /// Copies the rows `idx` (local indices into the slice) into the batch, the features
    /// split by rows over `pool`'s threads when they are many (the rows are scattered over
    /// the slice, and one core's outstanding memory reads bound a lone copy).
    pub fn gather(&mut self, slice: &Slice, idx: &[u32], pool: &Parallel) {
        let (d, w) = (self.features, self.width);
        let rows = idx.len();
        let x = Disjoint::new(&mut self.x[..rows * d]);
        pool.run_by_rows(rows, d, 16, &|r| {
            // SAFETY: the pieces are disjoint rows.
            let x = unsafe { x.piece(r.start * d..r.end * d) };
            for (row, &i) in x.chunks_exact_mut(d.max(1)).zip(&idx[r]) {
                row.copy_from_slice(&slice.x[i as usize * d..][..d]);
            }
        });
        for (b, &i) in idx.iter().enumerate() {
            let i = i as usize;
            match &slice.targets {
                TargetStore::Labels(l) => self.labels[b] = l[i],
                TargetStore::Values(v) => self.values[b * w..(b + 1) * w].copy_from_slice(&v[i * w..(i + 1) * w]),
            }
            self.row_ids[b] = (slice.first_row + i) as u64;
        }
        self.rows = idx.len();
    }

    /// Copies `count` consecutive rows starting at local row `start` (evaluation, prediction).
    pub fn gather_range(&mut self, slice: &Slice, start: usize, count: usize) {
        let (d, w) = (self.features, self.width);
        self.x[..count * d].copy_from_slice(&slice.x[start * d..(start + count) * d]);
        match &slice.targets {
            TargetStore::Labels(l) => self.labels[..count].copy_from_slice(&l[start..start + count]),
            TargetStore::Values(v) => self.values[..count * w].copy_from_slice(&v[start * w..(start + count) * w]),
        }
        for (b, id) in self.row_ids[..count].iter_mut().enumerate() {
            *id = (slice.first_row + start + b) as u64;
        }
        self.rows = count;
    }

    /// The gathered features: (rows, features).
    pub fn x(&self) -> &[f32] {
        &self.x[..self.rows * self.features]
    }

    /// The gathered targets: (rows,) labels or (rows, width) values.
    pub fn targets(&self) -> Targets<'_> {
        if self.has_labels {
            Targets::Labels(&self.labels[..self.rows])
        } else {
            Targets::Values(&self.values[..self.rows * self.width])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows a gather copies, and their targets and ids, are those the indices name, on one
    /// thread and split over several (a batch large enough to be split, and a small one).
    #[test]
    fn gather_copies_the_indexed_rows_on_any_number_of_threads() {
        let (rows, features) = (1000, 97);
        let labels: Vec<u32> = (0..rows as u32).map(|r| r * 7 % 10).collect();
        let slice = Slice {
            first_row: 5000,
            rows,
            features,
            x: (0..rows * features).map(|i| i as f32).collect(),
            targets: TargetStore::Labels(labels.clone()),
            target_width: 1,
        };
        for pool in [Parallel::single(), Parallel::openmp(2), Parallel::openmp(3)] {
            for n in [3, 700] {
                let idx: Vec<u32> = (0..n as u32).map(|b| (b * 389 + 11) % rows as u32).collect();
                let mut batch = Batch::new(&slice, 700);
                batch.gather(&slice, &idx, &pool);
                assert_eq!(batch.rows, n);
                for (b, &i) in idx.iter().enumerate() {
                    let i = i as usize;
                    assert_eq!(batch.x()[b * features..(b + 1) * features], slice.x[i * features..(i + 1) * features]);
                    assert_eq!(batch.labels[b], labels[i]);
                    assert_eq!(batch.row_ids[b], (5000 + i) as u64);
                }
            }
        }
    }
}

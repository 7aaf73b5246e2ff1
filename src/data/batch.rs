//! A batch: the rows of a slice that one step trains on, copied into contiguous buffers that
//! are allocated once for the largest batch.

use crate::data::slice::{Slice, TargetStore};
use crate::engine::loss::Targets;

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

    /// Copies the rows `idx` (local indices into the slice) into the batch.
    pub fn gather(&mut self, slice: &Slice, idx: &[u32]) {
        let (d, w) = (self.features, self.width);
        for (b, &i) in idx.iter().enumerate() {
            let i = i as usize;
            self.x[b * d..(b + 1) * d].copy_from_slice(&slice.x[i * d..(i + 1) * d]);
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

//! Which rows each rank trains on at each step of an epoch.
//!
//! `--batch-size` is the GLOBAL batch. With `--shuffle global` the N rows are cut into B
//! strata, B runs of the file of near-equal length, every rank shuffles each stratum with the
//! same seeded generator, and global batch s takes the s-th row of every stratum (the last,
//! ragged batch those of the longer strata); a rank trains on the members of a batch that lie
//! in its slice. The batches, and so the model, are the same for any number of ranks, every
//! row is trained once per epoch, and, because the ranks' slices are runs of the file too,
//! every rank gets the same share of every batch (exactly, when the rank count divides B; else
//! within a row per slice boundary). A plain permutation of all rows would give each rank a
//! binomial share instead: on 2 ranks with B = 256, 128 +- 8 rows a step, and the rank with
//! more sets the step's pace (9% of a W3 bf16 step spent waiting for it). `--shuffle none`
//! takes the batches in file order. `--shuffle local` shuffles within each slice and cuts
//! it into as many near-equal chunks as there are steps (balanced work per rank, as Horovod
//! and DDP do; the batches then depend on the rank count).

use crate::engine::rng;
use rand::seq::SliceRandom;
use std::ops::Range;

/// Rank r of p holds rows [r*n/p, (r+1)*n/p) of n: balanced within one row, in order,
/// covering 0..n exactly. The same split gives each rank its slice of a data file.
pub fn slice_range(n: usize, p: usize, r: usize) -> Range<usize> {
    let (n, p, r) = (n as u128, p as u128, r as u128);
    (r * n / p) as usize..((r + 1) * n / p) as usize
}

/// How the rows are ordered each epoch (`--shuffle`; see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Shuffle {
    /// A seeded order of all rows, each batch one row of each of B runs of the file: the same
    /// batches on any number of ranks, and an equal share of each for every rank.
    Global,
    /// Shuffle within each rank's slice.
    Local,
    /// File order.
    None,
}

crate::flag_value_display!(Shuffle);

/// One rank's view of an epoch. Buffers are allocated once and refilled every epoch.
pub struct EpochPlan {
    shuffle: Shuffle,
    n: usize,
    batch: usize,
    ranks: usize,
    rank: usize,
    /// This rank's slice of the N rows.
    lo: usize,
    hi: usize,
    /// Local row indices (0-based within the slice) in training order: (local rows,).
    order: Vec<u32>,
    /// Step s trains on order[ends[s]..ends[s + 1]]: (steps + 1,).
    ends: Vec<usize>,
    /// Samples in each GLOBAL batch, summed over ranks: (steps,).
    global_counts: Vec<u32>,
    /// Scratch: all N rows, each stratum shuffled in place (global only): (N,).
    perm: Vec<u32>,
}

impl EpochPlan {
    /// Steps per epoch: ceil(N / B), the same on every rank.
    pub fn steps_for(n: usize, batch: usize) -> usize {
        n.div_ceil(batch)
    }

    /// A plan for `n` training rows in global batches of `batch` split over `ranks`, as
    /// rank `rank` sees it; filled per epoch.
    pub fn new(shuffle: Shuffle, n: usize, batch: usize, ranks: usize, rank: usize) -> EpochPlan {
        let r = slice_range(n, ranks, rank);
        let steps = Self::steps_for(n, batch);
        let global_counts: Vec<u32> = match shuffle {
            Shuffle::Global | Shuffle::None => (0..steps).map(|s| (batch.min(n - s * batch)) as u32).collect(),
            Shuffle::Local => (0..steps)
                .map(|s| (0..ranks).map(|q| slice_range(slice_range(n, ranks, q).len(), steps, s).len() as u32).sum())
                .collect(),
        };
        let perm = match shuffle {
            Shuffle::Global => Vec::with_capacity(n),
            _ => Vec::new(),
        };
        EpochPlan {
            shuffle,
            n,
            batch,
            ranks,
            rank,
            lo: r.start,
            hi: r.end,
            order: Vec::with_capacity(r.len()),
            ends: Vec::with_capacity(steps + 1),
            global_counts,
            perm,
        }
    }

    /// Steps per epoch (the same on every rank).
    pub fn steps(&self) -> usize {
        self.global_counts.len()
    }

    /// Local row indices for step s.
    pub fn batch(&self, step: usize) -> &[u32] {
        &self.order[self.ends[step]..self.ends[step + 1]]
    }

    /// Samples in global batch s (all ranks together).
    pub fn global_count(&self, step: usize) -> u32 {
        self.global_counts[step]
    }

    /// The most rows this rank can get in one step, for sizing buffers.
    pub fn max_local_batch(&self) -> usize {
        let local = self.hi - self.lo;
        match self.shuffle {
            Shuffle::Global | Shuffle::None => local.min(self.batch),
            Shuffle::Local => (0..self.steps()).map(|s| slice_range(local, self.steps(), s).len()).max().unwrap_or(0),
        }
    }

    /// Fills the plan for `epoch` (0-based). Allocation-free after the first call.
    pub fn fill(&mut self, seed: u64, epoch: u64) {
        self.order.clear();
        self.ends.clear();
        self.ends.push(0);
        match self.shuffle {
            Shuffle::Global => {
                let (n, b) = (self.n, self.batch);
                self.perm.clear();
                self.perm.extend(0..n as u32);
                // Only the strata that overlap this rank's slice matter to it; each has a
                // generator of its own, so that skipping the others changes nothing.
                let first = (self.lo * b / n.max(1)).saturating_sub(1);
                let strata = || (first..b).map(|j| slice_range(n, b, j)).take_while(|r| r.start < self.hi);
                for (j, r) in (first..).zip(strata()) {
                    if r.end > self.lo {
                        self.perm[r].shuffle(&mut rng::stream(seed, &[rng::SHUFFLE, epoch, j as u64]));
                    }
                }
                let (lo, hi) = (self.lo as u32, self.hi as u32);
                for s in 0..self.global_counts.len() {
                    for r in strata().filter(|r| r.end > self.lo && s < r.len()) {
                        let i = self.perm[r.start + s];
                        if lo <= i && i < hi {
                            self.order.push(i - lo);
                        }
                    }
                    self.ends.push(self.order.len());
                }
            }
            Shuffle::None => {
                let (lo, hi) = (self.lo as u32, self.hi as u32);
                for s in 0..self.global_counts.len() {
                    let batch = (s * self.batch) as u32..((s + 1) * self.batch).min(self.n) as u32;
                    self.order.extend(batch.filter(|&i| lo <= i && i < hi).map(|i| i - lo));
                    self.ends.push(self.order.len());
                }
            }
            Shuffle::Local => {
                let local = self.hi - self.lo;
                self.order.extend(0..local as u32);
                let mut stream = rng::stream(seed, &[rng::LOCAL_SHUFFLE, epoch, self.rank as u64, self.ranks as u64]);
                self.order.shuffle(&mut stream);
                let steps = self.global_counts.len();
                for s in 0..steps {
                    self.ends.push(slice_range(local, steps, s).end);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_row_once_and_differ_by_at_most_one() {
        for n in [0, 1, 7, 10, 1437, 1000003] {
            for p in 1..=9 {
                let ranges: Vec<_> = (0..p).map(|r| slice_range(n, p, r)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[p - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<_> = ranges.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{n} {p} {lens:?}");
            }
        }
    }

    /// Every row is trained exactly once per epoch, and the union over ranks of each step's
    /// rows (as global indices) is the same set for 1, 2, 3 and 4 ranks.
    #[test]
    fn global_batches_do_not_depend_on_rank_count() {
        let (n, batch) = (103, 10);
        let batches_for = |ranks: usize| -> Vec<Vec<usize>> {
            let mut steps: Vec<Vec<usize>> = vec![Vec::new(); EpochPlan::steps_for(n, batch)];
            for rank in 0..ranks {
                let mut plan = EpochPlan::new(Shuffle::Global, n, batch, ranks, rank);
                plan.fill(7, 3);
                let lo = slice_range(n, ranks, rank).start;
                for (s, rows) in steps.iter_mut().enumerate() {
                    rows.extend(plan.batch(s).iter().map(|&i| lo + i as usize));
                    assert!(plan.batch(s).len() <= plan.max_local_batch());
                }
            }
            steps.iter_mut().for_each(|b| b.sort());
            steps
        };
        let one = batches_for(1);
        let mut all: Vec<usize> = one.concat();
        all.sort();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        assert_eq!(one.last().unwrap().len(), 3, "ragged last batch");
        for ranks in 2..=4 {
            assert_eq!(batches_for(ranks), one, "{ranks} ranks");
        }
    }

    /// Every global batch holds one row of each stratum (B runs of the file), so each rank's
    /// share is B / ranks rows when the rank count divides B, and within a row per slice
    /// boundary of it otherwise; a plain permutation would spread it binomially.
    #[test]
    fn global_batches_give_every_rank_an_equal_share() {
        let (n, batch) = (1003, 16);
        let steps = EpochPlan::steps_for(n, batch);
        for ranks in 1..=6 {
            let plans: Vec<EpochPlan> = (0..ranks)
                .map(|rank| {
                    let mut plan = EpochPlan::new(Shuffle::Global, n, batch, ranks, rank);
                    plan.fill(11, 2);
                    plan
                })
                .collect();
            for s in 0..steps - 1 {
                let counts: Vec<usize> = plans.iter().map(|p| p.batch(s).len()).collect();
                assert_eq!(counts.iter().sum::<usize>(), batch);
                let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
                let bound = if batch % ranks == 0 { 0 } else { 2 };
                assert!(spread <= bound, "{ranks} ranks, step {s}: {counts:?}");
            }
            // One row of each stratum per batch.
            let mut strata_seen = vec![0; batch];
            for (rank, plan) in plans.iter().enumerate() {
                let lo = slice_range(n, ranks, rank).start;
                for &i in plan.batch(3) {
                    let j = (0..batch).find(|&j| slice_range(n, batch, j).contains(&(lo + i as usize))).unwrap();
                    strata_seen[j] += 1;
                }
            }
            assert_eq!(strata_seen, vec![1; batch], "{ranks} ranks");
        }
    }

    #[test]
    fn epochs_differ_and_repeat_with_the_seed() {
        let mut a = EpochPlan::new(Shuffle::Global, 50, 8, 1, 0);
        let mut b = EpochPlan::new(Shuffle::Global, 50, 8, 1, 0);
        a.fill(1, 0);
        b.fill(1, 0);
        assert_eq!(a.batch(0), b.batch(0));
        b.fill(1, 1);
        assert_ne!(a.order, b.order);
    }

    #[test]
    fn local_shuffle_balances_and_counts_globally() {
        let (n, batch, ranks) = (101, 16, 3);
        let steps = EpochPlan::steps_for(n, batch);
        let mut totals = vec![0u32; steps];
        for rank in 0..ranks {
            let mut plan = EpochPlan::new(Shuffle::Local, n, batch, ranks, rank);
            plan.fill(5, 0);
            let mut seen: Vec<u32> = (0..steps).flat_map(|s| plan.batch(s).to_vec()).collect();
            seen.sort();
            assert_eq!(seen, (0..slice_range(n, ranks, rank).len() as u32).collect::<Vec<_>>());
            for (s, total) in totals.iter_mut().enumerate() {
                *total += plan.batch(s).len() as u32;
                assert_eq!(plan.global_count(s), EpochPlan::new(Shuffle::Local, n, batch, ranks, 0).global_count(s));
            }
        }
        let plan = EpochPlan::new(Shuffle::Local, n, batch, ranks, 0);
        assert_eq!(totals, (0..steps).map(|s| plan.global_count(s)).collect::<Vec<_>>());
        assert_eq!(totals.iter().sum::<u32>(), n as u32);
    }

    #[test]
    fn none_keeps_file_order() {
        let mut plan = EpochPlan::new(Shuffle::None, 10, 4, 1, 0);
        plan.fill(0, 0);
        assert_eq!(plan.batch(0), &[0, 1, 2, 3]);
        assert_eq!(plan.batch(2), &[8, 9]);
    }
}

//! Seeded train/test splits of a table's rows: stratified by class for labels (each class
//! is split in the requested proportion, within one row), plain random for targets.
//! Each part comes out in a seeded random order, so that the contiguous row ranges that
//! nn-train's ranks read hold a mix of classes even when the input was sorted by class.

use crate::engine::rng;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use std::collections::BTreeMap;

/// Row indices of the two parts; together they hold every row exactly once.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Row indices of the training part.
    pub train: Vec<usize>,
    /// Row indices of the test part.
    pub test: Vec<usize>,
}

/// Rows in the test part: round(fraction * n), which must leave at least one row in each part.
fn test_rows(n: usize, fraction: f64) -> Result<usize> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::flag(
            "split",
            format!("must be a fraction between 0 and 1 (the test part), got {fraction}"),
        ));
    }
    let t = (fraction * n as f64).round() as usize;
    if t == 0 || t == n {
        let part = if t == 0 { "test" } else { "train" };
        return Err(Error::flag("split", format!("{fraction} of {n} rows leaves the {part} part empty")));
    }
    Ok(t)
}

/// Stratified: class c with n_c rows puts floor or ceil of fraction * n_c rows in the test
/// part (largest remainders get the ceiling), so the test part has round(fraction * n) rows.
/// Which rows of a class go to test is a seeded shuffle of that class's rows.
pub fn stratified(labels: &[i64], fraction: f64, seed: u64) -> Result<Split> {
    let total_test = test_rows(labels.len(), fraction)?;
    let mut classes = BTreeMap::<i64, Vec<usize>>::new();
    for (i, &l) in labels.iter().enumerate() {
        classes.entry(l).or_default().push(i);
    }
    let ideal: Vec<f64> = classes.values().map(|rows| fraction * rows.len() as f64).collect();
    let mut take: Vec<usize> = ideal.iter().map(|v| v.floor() as usize).collect();
    let mut by_remainder: Vec<usize> = (0..take.len()).collect();
    // Largest fractional part first; ties go to the earlier class (stable sort).
    by_remainder.sort_by(|&a, &b| (ideal[b] - ideal[b].floor()).total_cmp(&(ideal[a] - ideal[a].floor())));
    let missing = total_test - take.iter().sum::<usize>();
    for &c in by_remainder.iter().take(missing) {
        take[c] += 1;
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for ((&label, rows), &t) in classes.iter().zip(&take) {
        let mut rows = rows.clone();
        rows.shuffle(&mut rng::stream(seed, &[rng::SPLIT, label as u64]));
        test.extend_from_slice(&rows[..t]);
        train.extend_from_slice(&rows[t..]);
    }
    Ok(shuffled_parts(train, test, seed))
}

/// Random: a seeded permutation of the rows, the first round(fraction * n) to test.
pub fn random(n: usize, fraction: f64, seed: u64) -> Result<Split> {
    let t = test_rows(n, fraction)?;
    let mut rows: Vec<usize> = (0..n).collect();
    rows.shuffle(&mut rng::stream(seed, &[rng::SPLIT]));
    let train = rows.split_off(t);
    Ok(shuffled_parts(train, rows, seed))
}

fn shuffled_parts(mut train: Vec<usize>, mut test: Vec<usize>, seed: u64) -> Split {
    train.shuffle(&mut rng::stream(seed, &[rng::SPLIT, u64::MAX - 1]));
    test.shuffle(&mut rng::stream(seed, &[rng::SPLIT, u64::MAX]));
    Split { train, test }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_partition(s: &Split, n: usize) {
        let mut all: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn stratified_is_within_one_row_per_class_and_exact_in_total() {
        // Class sizes 1, 2, 7, 50, 101: awkward remainders.
        let mut labels = Vec::new();
        for (c, n) in [(3i64, 1usize), (0, 2), (1, 7), (2, 50), (9, 101)] {
            labels.extend(std::iter::repeat_n(c, n));
        }
        for fraction in [0.1, 0.2, 0.25, 0.5, 0.9] {
            let s = stratified(&labels, fraction, 42).unwrap();
            check_partition(&s, labels.len());
            assert_eq!(s.test.len(), (fraction * labels.len() as f64).round() as usize);
            for c in [3, 0, 1, 2, 9] {
                let n_c = labels.iter().filter(|&&l| l == c).count() as f64;
                let t_c = s.test.iter().filter(|&&i| labels[i] == c).count() as f64;
                assert!((t_c - fraction * n_c).abs() < 1.0, "class {c}: {t_c} of {n_c} at {fraction}");
            }
        }
    }

    #[test]
    fn splits_are_seeded() {
        let labels: Vec<i64> = (0..100).map(|i| i % 3).collect();
        assert_eq!(stratified(&labels, 0.2, 1).unwrap(), stratified(&labels, 0.2, 1).unwrap());
        assert_ne!(stratified(&labels, 0.2, 1).unwrap(), stratified(&labels, 0.2, 2).unwrap());
        let r = random(100, 0.3, 5).unwrap();
        check_partition(&r, 100);
        assert_eq!(r.test.len(), 30);
        assert_eq!(r, random(100, 0.3, 5).unwrap());
    }

    #[test]
    fn bad_fractions_are_refused() {
        assert!(random(10, 0.0, 0).is_err());
        assert!(random(10, 1.0, 0).is_err());
        assert!(random(10, 0.01, 0).is_err());
        assert!(random(10, f64::NAN, 0).is_err());
    }
}

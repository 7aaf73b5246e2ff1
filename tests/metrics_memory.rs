//! The per-rank memory fields of the `--metrics` lines (`rss_mb`, `peak_rss_mb`), which
//! `make bench` reads for its memory figures. About 3 s.

mod common;

use common::*;

#[test]
fn metrics_lines_carry_each_ranks_resident_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("wide.h5");
    // 10,000 x 1,000 f32 = 40 MB: each of the 2 ranks holds a 20 MB slice, so its resident
    // memory must be above that.
    write_classification(&data, 10_000, 1_000, 3, 5);
    let metrics = dir.path().join("m.jsonl");
    mpirun(
        2,
        "nn-train",
        &[
            "--data",
            data.to_str().unwrap(),
            "--layers",
            "4:relu,3:softmax",
            "--epochs",
            "2",
            "--batch-size",
            "500",
            "--threads",
            "1",
            "--metrics",
            metrics.to_str().unwrap(),
        ],
        120,
    )
    .expect_ok();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&metrics).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let per_rank = |line: &serde_json::Value, key: &str| -> Vec<f64> {
        line[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let mut last_peak = vec![0.0; 2];
    for line in &lines {
        let (rss, peak) = (per_rank(line, "rss_mb"), per_rank(line, "peak_rss_mb"));
        assert_eq!((rss.len(), peak.len()), (2, 2), "one value per rank: {line}");
        for r in 0..2 {
            assert!(rss[r] > 20.0 && rss[r] < 4000.0, "rank {r} resident {} MB holds a 20 MB slice: {line}", rss[r]);
            assert!(peak[r] >= rss[r], "rank {r}: peak {} below current {}", peak[r], rss[r]);
            assert!(peak[r] >= last_peak[r], "rank {r}: a peak never falls");
        }
        last_peak = peak;
    }
}

//! This process's memory, as the kernel counts it (/proc/self/status): for the per-rank
//! figures in the summary and the metrics lines.

/// Peak resident set size of this process (VmHWM from /proc/self/status), in bytes.
pub fn peak_rss_bytes() -> u64 {
    proc_status_bytes("VmHWM:")
}

/// Resident set size of this process now (VmRSS from /proc/self/status), in bytes.
pub fn rss_bytes() -> u64 {
    proc_status_bytes("VmRSS:")
}

/// A "Key:   123 kB" field of /proc/self/status, in bytes; 0 where there is none.
fn proc_status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

//! The vector peaks of one core: how many GFLOP/s the CPU's float32 FMA instruction and its
//! bf16 dot-product instruction (AVX512-BF16's VDPBF16PS) can retire, measured with inline
//! assembly on this machine, now. `make bench` prints them next to the mixed-precision targets:
//! a bf16 speed-up over float32 on the AVX512-BF16 path can be no larger than the ratio of
//! these two peaks, and that ratio differs between CPUs (on Intel Sapphire Rapids VDPBF16PS
//! retires half the FLOPs of the f32 FMA; on Cooper Lake and Zen 4 it is expected to retire
//! about twice as many), so the target "bf16 at least 1.6x float32" is only reachable where the
//! measured ratio is at least 1.6.
//!
//! Each probe is a loop of 24 independent instructions (24 accumulators, enough to hide the
//! latency of two instructions per cycle) on registers only, no memory:
//!   f32 FMA     `vfmadd231ps zmm` (32 FLOP: 16 lanes x multiply-add), or `ymm` (16 FLOP, 12
//!               accumulators) where the CPU has FMA and AVX2 but no AVX-512
//!   bf16 dot    `vdpbf16ps zmm` (64 FLOP: 16 f32 lanes x 2 bf16 products added), only where
//!               the CPU has AVX512-BF16
//! After one untimed trial each (the AVX-512 units power up, the clock settles), `--trials` timed
//! trials each, alternating between the two; the best is reported (a peak is a maximum, and
//! another process can only lower a trial). One thread: a register-only loop loses nothing
//! when the scheduler moves it, so it is not pinned (pinned, it could not leave a busy core).
//!
//! Prints one JSON line; a figure the CPU cannot measure (no AVX512-BF16, not x86-64) is null:
//!   {"fp32_fma_gflops":234.1,"fp32_fma_width":512,"bf16_dot_gflops":117.2,"bf16_to_fp32":0.50,...}
//!
//!     cargo run --release --example vector_peak -- --trials 5 --trial-s 0.2

use clap::Parser;
use serde::Serialize;
use std::time::Instant;

/// Measure one core's f32 FMA and bf16 dot-product peaks (GFLOP/s).
#[derive(Parser)]
struct Args {
    /// Timed trials per instruction (alternating); the best is reported.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Seconds per trial (after one untimed trial of the same length).
    #[arg(long, default_value_t = 0.2)]
    trial_s: f64,
}

/// What the probes measured (the JSON line). GFLOP/s of one core; None where not measurable.
#[derive(Serialize, Debug, Default)]
struct Peaks {
    /// Best trial of the f32 FMA loop.
    fp32_fma_gflops: Option<f64>,
    /// Register width of that loop in bits: 512 (zmm) or 256 (ymm).
    fp32_fma_width: Option<u32>,
    /// Best trial of the VDPBF16PS zmm loop (each instruction 64 FLOP).
    bf16_dot_gflops: Option<f64>,
    /// bf16_dot_gflops / fp32_fma_gflops: the most a bf16 product can gain over f32 on the
    /// AVX512-BF16 path of this CPU.
    bf16_to_fp32: Option<f64>,
    /// Every timed trial, GFLOP/s.
    fp32_fma_trials: Vec<f64>,
    bf16_dot_trials: Vec<f64>,
}

/// A probe ready to time: its loop, the iterations that take one trial, its FLOPs per iteration.
struct Timed {
    run: x86::Run,
    iterations: u64,
    flops_per_iteration: f64,
}

impl Timed {
    /// Calibrates `run` to `trial_s` seconds per call: doubles the iterations until a call
    /// takes a tenth of that, then scales.
    fn new(run: x86::Run, flops_per_iteration: f64, trial_s: f64) -> Timed {
        let mut n: u64 = 1 << 12;
        let per_iteration_s = loop {
            let start = Instant::now();
            run(n);
            let t = start.elapsed().as_secs_f64();
            if t >= trial_s / 10.0 || n >= 1 << 40 {
                break t / n as f64;
            }
            n *= 2;
        };
        let iterations = ((trial_s / per_iteration_s) as u64).max(1);
        Timed { run, iterations, flops_per_iteration }
    }

    /// One trial: GFLOP/s.
    fn trial(&self) -> f64 {
        let start = Instant::now();
        (self.run)(self.iterations);
        self.iterations as f64 * self.flops_per_iteration / start.elapsed().as_secs_f64() / 1e9
    }
}

fn best(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

/// Both peaks on this CPU, or nulls where an instruction is absent. The two probes' trials
/// alternate (after one untimed trial each), so a change in what else runs on the core hits
/// both alike.
fn measure(n_trials: usize, trial_s: f64) -> Peaks {
    let fma = x86::fma_probe().map(|(width, run, flops)| (width, Timed::new(run, flops, trial_s)));
    let dot = x86::bf16_dot_probe().map(|(run, flops)| Timed::new(run, flops, trial_s));
    let mut p = Peaks { fp32_fma_width: fma.as_ref().map(|(w, _)| *w), ..Peaks::default() };
    for trial in 0..=n_trials {
        let f = fma.as_ref().map(|(_, t)| t.trial());
        let d = dot.as_ref().map(Timed::trial);
        if trial > 0 {
            p.fp32_fma_trials.extend(f);
            p.bf16_dot_trials.extend(d);
        }
    }
    p.fp32_fma_gflops = best(&p.fp32_fma_trials);
    p.bf16_dot_gflops = best(&p.bf16_dot_trials);
    p.bf16_to_fp32 = p.bf16_dot_gflops.zip(p.fp32_fma_gflops).map(|(b, f)| b / f);
    p
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::asm;

    /// A probe: runs its loop for the given number of iterations.
    pub type Run = Box<dyn Fn(u64)>;

    /// `$iterations` x 24 independent `$op zmmK, zmm30, zmm31` (K = 0..23, zmm30 and zmm31
    /// zeroed first: no denormals, nothing slow). Registers only: every one written is
    /// declared clobbered, no memory, no stack.
    macro_rules! zmm_loop {
        ($op:literal, $iterations:expr) => {
            asm!(
                "vpxord zmm30, zmm30, zmm30",
                "vpxord zmm31, zmm31, zmm31",
                "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "vpxord zmm2, zmm2, zmm2",
                "vpxord zmm3, zmm3, zmm3", "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5",
                "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7", "vpxord zmm8, zmm8, zmm8",
                "vpxord zmm9, zmm9, zmm9", "vpxord zmm10, zmm10, zmm10", "vpxord zmm11, zmm11, zmm11",
                "vpxord zmm12, zmm12, zmm12", "vpxord zmm13, zmm13, zmm13", "vpxord zmm14, zmm14, zmm14",
                "vpxord zmm15, zmm15, zmm15", "vpxord zmm16, zmm16, zmm16", "vpxord zmm17, zmm17, zmm17",
                "vpxord zmm18, zmm18, zmm18", "vpxord zmm19, zmm19, zmm19", "vpxord zmm20, zmm20, zmm20",
                "vpxord zmm21, zmm21, zmm21", "vpxord zmm22, zmm22, zmm22", "vpxord zmm23, zmm23, zmm23",
                "2:",
                concat!($op, " zmm0, zmm30, zmm31"), concat!($op, " zmm1, zmm30, zmm31"),
                concat!($op, " zmm2, zmm30, zmm31"), concat!($op, " zmm3, zmm30, zmm31"),
                concat!($op, " zmm4, zmm30, zmm31"), concat!($op, " zmm5, zmm30, zmm31"),
                concat!($op, " zmm6, zmm30, zmm31"), concat!($op, " zmm7, zmm30, zmm31"),
                concat!($op, " zmm8, zmm30, zmm31"), concat!($op, " zmm9, zmm30, zmm31"),
                concat!($op, " zmm10, zmm30, zmm31"), concat!($op, " zmm11, zmm30, zmm31"),
                concat!($op, " zmm12, zmm30, zmm31"), concat!($op, " zmm13, zmm30, zmm31"),
                concat!($op, " zmm14, zmm30, zmm31"), concat!($op, " zmm15, zmm30, zmm31"),
                concat!($op, " zmm16, zmm30, zmm31"), concat!($op, " zmm17, zmm30, zmm31"),
                concat!($op, " zmm18, zmm30, zmm31"), concat!($op, " zmm19, zmm30, zmm31"),
                concat!($op, " zmm20, zmm30, zmm31"), concat!($op, " zmm21, zmm30, zmm31"),
                concat!($op, " zmm22, zmm30, zmm31"), concat!($op, " zmm23, zmm30, zmm31"),
                "dec {n}",
                "jnz 2b",
                n = inout(reg) $iterations => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
                out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
                out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                out("zmm30") _, out("zmm31") _,
                options(nomem, nostack),
            )
        };
    }

    /// `iterations` x 24 independent `vfmadd231ps zmm` (zmm0..23 += zmm30 * zmm31, all zero).
    /// 24 x 32 FLOP per iteration.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_zmm(iterations: u64) {
        // SAFETY: registers only (see zmm_loop); the caller checked avx512f.
        unsafe { zmm_loop!("vfmadd231ps", iterations) };
    }

    /// `iterations` x 12 independent `vfmadd231ps ymm` (ymm0..11 += ymm14 * ymm15), for CPUs
    /// without AVX-512 (16 ymm registers). 12 x 16 FLOP per iteration.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_ymm(iterations: u64) {
        // SAFETY: registers only (every one written is declared clobbered), no memory, no
        // stack; the caller checked avx2 and fma.
        unsafe {
            asm!(
                "vxorps ymm14, ymm14, ymm14",
                "vxorps ymm15, ymm15, ymm15",
                "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2",
                "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5",
                "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8",
                "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11",
                "2:",
                "vfmadd231ps ymm0, ymm14, ymm15", "vfmadd231ps ymm1, ymm14, ymm15",
                "vfmadd231ps ymm2, ymm14, ymm15", "vfmadd231ps ymm3, ymm14, ymm15",
                "vfmadd231ps ymm4, ymm14, ymm15", "vfmadd231ps ymm5, ymm14, ymm15",
                "vfmadd231ps ymm6, ymm14, ymm15", "vfmadd231ps ymm7, ymm14, ymm15",
                "vfmadd231ps ymm8, ymm14, ymm15", "vfmadd231ps ymm9, ymm14, ymm15",
                "vfmadd231ps ymm10, ymm14, ymm15", "vfmadd231ps ymm11, ymm14, ymm15",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iterations => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm14") _, out("ymm15") _,
                options(nomem, nostack),
            );
        }
    }

    /// `iterations` x 24 independent `vdpbf16ps zmm` (zmm0..23 += pairwise bf16 products of
    /// zmm30 and zmm31, all zero). 24 x 64 FLOP per iteration.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dpbf16_zmm(iterations: u64) {
        // SAFETY: registers only (see zmm_loop); the caller checked avx512f and avx512bf16.
        unsafe { zmm_loop!("vdpbf16ps", iterations) };
    }

    /// The widest f32 FMA loop this CPU runs: (width in bits, loop, FLOP per iteration).
    pub fn fma_probe() -> Option<(u32, Run, f64)> {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: avx512f was detected just above.
            Some((512, Box::new(|n| unsafe { fma_zmm(n) }), 24.0 * 32.0))
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: avx2 and fma were detected just above.
            Some((256, Box::new(|n| unsafe { fma_ymm(n) }), 12.0 * 16.0))
        } else {
            None
        }
    }

    /// The VDPBF16PS zmm loop where the CPU has AVX512-BF16: (loop, FLOP per iteration).
    pub fn bf16_dot_probe() -> Option<(Run, f64)> {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
            // SAFETY: avx512f and avx512bf16 were detected just above.
            Some((Box::new(|n| unsafe { dpbf16_zmm(n) }), 24.0 * 64.0))
        } else {
            None
        }
    }
}

/// Elsewhere: no probe (the JSON line has nulls; `make bench` goes on).
#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub type Run = Box<dyn Fn(u64)>;
    pub fn fma_probe() -> Option<(u32, Run, f64)> {
        None
    }
    pub fn bf16_dot_probe() -> Option<(Run, f64)> {
        None
    }
}

fn main() {
    let args = Args::parse();
    if args.trials == 0 || !(args.trial_s > 0.0 && args.trial_s.is_finite()) {
        eprintln!("vector_peak: error: need --trials > 0 and --trial-s > 0");
        std::process::exit(2);
    }
    let peaks = measure(args.trials, args.trial_s);
    println!("{}", serde_json::to_string(&peaks).expect("plain numbers serialize"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time-stamp counter's rate (GHz): the CPU's nominal clock, an independent reference
    /// for how many instructions a core can retire per second.
    #[cfg(target_arch = "x86_64")]
    fn tsc_ghz() -> f64 {
        // SAFETY: RDTSC exists on every x86-64 CPU and reads a counter, nothing else.
        let (t0, c0) = (Instant::now(), unsafe { core::arch::x86_64::_rdtsc() });
        while t0.elapsed().as_secs_f64() < 0.02 {}
        // SAFETY: as above.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        (c1 - c0) as f64 / t0.elapsed().as_secs_f64() / 1e9
    }

    /// Instructions per nominal clock cycle implied by a GFLOP/s figure, checked against what a
    /// core can do: at most 2 such instructions per cycle at at most 2.5x its nominal clock
    /// (boost), and, for a loop of independent ones, at least one every 2 cycles at half its
    /// nominal clock even when another process takes half the core. A FLOP count per
    /// iteration that forgot the 24 instructions, or the lanes, lands outside.
    #[cfg(target_arch = "x86_64")]
    fn check_rate(what: &str, gflops: f64, flops_per_instruction: f64, tsc_ghz: f64) {
        let per_cycle = gflops / flops_per_instruction / tsc_ghz;
        assert!(
            (0.125..=5.0).contains(&per_cycle),
            "{what}: {gflops} GFLOP/s is {per_cycle} instructions per nominal cycle ({tsc_ghz} GHz)"
        );
    }

    #[test]
    #[cfg(not(target_arch = "x86_64"))]
    fn no_peaks_elsewhere() {
        let json = serde_json::to_value(measure(2, 0.05)).unwrap();
        assert!(json["fp32_fma_gflops"].is_null() && json["bf16_dot_gflops"].is_null());
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn peaks_are_measured_where_the_cpu_has_the_instructions() {
        let p = measure(2, 0.05);
        let ghz = tsc_ghz();
        let json = serde_json::to_value(&p).unwrap();
        let fp32 = p.fp32_fma_gflops.expect("every x86-64 CPU this project builds for has AVX2 + FMA");
        let width = p.fp32_fma_width.unwrap();
        assert!(width == 512 || width == 256);
        check_rate("vfmadd231ps", fp32, f64::from(width) / 16.0, ghz);
        assert_eq!(p.fp32_fma_trials.len(), 2);
        assert_eq!(Some(fp32), best(&p.fp32_fma_trials));
        assert_eq!(json["fp32_fma_gflops"].as_f64(), Some(fp32));
        if is_x86_feature_detected!("avx512bf16") {
            let bf16 = p.bf16_dot_gflops.expect("the CPU has AVX512-BF16");
            check_rate("vdpbf16ps", bf16, 64.0, ghz);
            let ratio = p.bf16_to_fp32.unwrap();
            assert!((ratio - bf16 / fp32).abs() < 1e-12, "ratio {ratio} vs {bf16} / {fp32}");
            assert_eq!(json["bf16_to_fp32"].as_f64(), Some(ratio));
        } else {
            eprintln!("SKIP bf16 dot-product peak: this CPU has no AVX512-BF16");
            assert!(json["bf16_dot_gflops"].is_null() && json["bf16_to_fp32"].is_null());
        }
    }
}

//! Which OpenBLAS kernels run, and why.
//!
//! Distribution builds of OpenBLAS (Debian's among them) are built with DYNAMIC_ARCH: every
//! x86-64 kernel set is in the library and one is picked when it loads, from the CPU's family
//! and model numbers. A CPU newer than the library, or a VM that reports an unusual model
//! number, can get a far older kernel set than the CPU runs: on an Intel Sapphire Rapids VM
//! Debian's 0.3.21 picked "Prescott" (SSE3) and sgemm ran 4-6x slower than with the AVX-512
//! kernels. The library reads `OPENBLAS_CORETYPE` when it loads, before `main`, so the choice
//! has to be made in a process that already has it loaded and applied to a new one.
//!
//! [`prepare`] does that, first thing in every binary: it compares the CPU's features (CPUID,
//! through `is_x86_feature_detected!`, which also checks that the OS saves the wide
//! registers) with the kernel set the loaded library picked (`openblas_get_corename()`), and
//! when the library's is weaker it executes the same program again with `OPENBLAS_CORETYPE`
//! naming the best set for this CPU. A user's own `OPENBLAS_CORETYPE` always wins. The new
//! process multiplies two matrices with the chosen kernels and compares the product with one
//! computed in float64; if they disagree it falls back to the library's own choice. The
//! start-up summary says which kernels run and why ([`summary`]).

use crate::engine::gemm::{gemm, Mat};
use std::ffi::OsString;
use std::os::raw::c_char;
use std::sync::OnceLock;

extern "C" {
    fn openblas_get_corename() -> *const c_char;
    fn openblas_get_config() -> *const c_char;
}

/// OpenBLAS's variable naming the kernel set to load.
pub const CORETYPE_VAR: &str = "OPENBLAS_CORETYPE";
/// OpenBLAS's variable for how long idle worker threads spin (see [`prepare`]).
pub const THREAD_TIMEOUT_VAR: &str = "OPENBLAS_THREAD_TIMEOUT";
/// Pause instructions an idle OpenMP thread spins before it sleeps, unless the user chose
/// (see [`prepare`]).
pub const OPENMP_SPIN_COUNT: &str = "10000";
/// Set on the re-executed process (never by users): the core OpenBLAS's own detection picked
/// in the first process.
const DETECTED_VAR: &str = "NN_TRAIN_BLAS_DETECTED";
/// Set on the re-executed process: the core nn-train put into OPENBLAS_CORETYPE.
const CHOSEN_VAR: &str = "NN_TRAIN_BLAS_CHOSEN";
/// Set on the re-executed process when nn-train's choice failed the product check and the
/// library's own choice runs instead.
const REJECTED_VAR: &str = "NN_TRAIN_BLAS_REJECTED";
/// Marks a process that [`prepare`] started, so it never re-executes a second time (except to
/// back out of a core that failed the product check).
const REEXEC_VAR: &str = "NN_TRAIN_BLAS_REEXEC";
/// For tests: treat the OPENBLAS_CORETYPE in the environment as if it were OpenBLAS's own
/// detection rather than the user's choice. With OPENBLAS_CORETYPE=Prescott this reproduces,
/// on any CPU, a library that does not recognise the CPU.
pub const TEST_AS_DETECTED_VAR: &str = "NN_TRAIN_TEST_CORETYPE_AS_DETECTED";

/// The instruction-set level of a kernel set, as it matters for sgemm. Ordered: a higher level
/// runs faster kernels on a CPU that has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// SSE2/SSE3 kernels (Prescott and older).
    Sse3,
    /// SSSE3 (Core2, Atom, the older AMD sets).
    Ssse3,
    /// SSE4.2 (Nehalem).
    Sse42,
    /// AVX (Sandybridge, the AMD Bulldozer family).
    Avx,
    /// AVX2 and FMA (Haswell, Zen, Excavator).
    Avx2,
    /// AVX-512 F/CD/BW/DQ/VL (SkylakeX; Cooperlake and SapphireRapids reuse its sgemm).
    Avx512,
}

impl Level {
    /// How the summary names the level.
    pub fn describe(self) -> &'static str {
        match self {
            Level::Sse3 => "SSE3 at most",
            Level::Ssse3 => "SSSE3",
            Level::Sse42 => "SSE4.2",
            Level::Avx => "AVX",
            Level::Avx2 => "AVX2+FMA",
            Level::Avx512 => "AVX-512",
        }
    }

    /// The OpenBLAS core name to ask for at this level. Every name here is in the table that
    /// `OPENBLAS_CORETYPE` is matched against in OpenBLAS 0.3.x (driver/others/dynamic.c):
    /// "Cooperlake" only from 0.3.22 on, so AVX-512 asks for "SkylakeX", whose sgemm kernels
    /// Cooperlake and SapphireRapids reuse.
    pub fn core_name(self, amd: bool) -> &'static str {
        match self {
            Level::Sse3 => "Prescott",
            Level::Ssse3 => "Core2",
            Level::Sse42 => "Nehalem",
            Level::Avx => "Sandybridge",
            Level::Avx2 if amd => "Zen",
            Level::Avx2 => "Haswell",
            Level::Avx512 => "SkylakeX",
        }
    }
}

/// The level of an OpenBLAS x86-64 core name (as `openblas_get_corename()` returns it, any
/// case); None for names this table does not know (other architectures, newer names).
pub fn core_level(name: &str) -> Option<Level> {
    let level = match name.to_ascii_lowercase().as_str() {
        "katmai" | "coppermine" | "northwood" | "prescott" | "banias" | "athlon" => Level::Sse3,
        "core2" | "penryn" | "dunnington" | "atom" | "nano" | "opteron" | "opteron_sse3" | "barcelona" | "bobcat" => {
            Level::Ssse3
        }
        "nehalem" => Level::Sse42,
        "sandybridge" | "bulldozer" | "piledriver" | "steamroller" => Level::Avx,
        "haswell" | "zen" | "excavator" => Level::Avx2,
        "skylakex" | "cooperlake" | "sapphirerapids" => Level::Avx512,
        _ => return None,
    };
    Some(level)
}

/// What this CPU offers, from CPUID.
#[derive(Clone, Debug, PartialEq)]
pub struct Cpu {
    /// The best kernel level the CPU and OS support; None off x86-64.
    pub level: Option<Level>,
    /// AMD or Hygon (Zen kernels rather than Haswell's at AVX2).
    pub amd: bool,
    /// Extra features worth naming: avx512_bf16, amx.
    pub extras: Vec<&'static str>,
}

impl Cpu {
    /// The best OpenBLAS core for this CPU, if it is x86-64.
    pub fn best_core(&self) -> Option<&'static str> {
        self.level.map(|l| l.core_name(self.amd))
    }

    /// E.g. "AVX-512, avx512_bf16, amx".
    pub fn describe(&self) -> String {
        let mut parts = vec![self.level.map_or("no x86-64 features known", Level::describe)];
        parts.extend(&self.extras);
        parts.join(", ")
    }
}

/// Reads CPUID.
#[cfg(target_arch = "x86_64")]
pub fn cpu() -> Cpu {
    use std::arch::x86_64::__cpuid;
    use std::is_x86_feature_detected as has;
    let level = if has!("avx512f") && has!("avx512cd") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
        Level::Avx512
    } else if has!("avx2") && has!("fma") {
        Level::Avx2
    } else if has!("avx") {
        Level::Avx
    } else if has!("sse4.2") {
        Level::Sse42
    } else if has!("ssse3") {
        Level::Ssse3
    } else {
        Level::Sse3
    };
    // CPUID leaf 0 (vendor string) exists on every x86-64 CPU.
    let vendor = __cpuid(0);
    let bytes: Vec<u8> = [vendor.ebx, vendor.edx, vendor.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    let amd = bytes == b"AuthenticAMD" || bytes == b"HygonGenuine";
    let mut extras = Vec::new();
    if has!("avx512bf16") {
        extras.push("avx512_bf16");
    }
    if std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("flags") && l.contains(" amx_bf16")))
    {
        extras.push("amx_bf16");
    }
    Cpu { level: Some(level), amd, extras }
}

/// Reads CPUID (nothing to read off x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub fn cpu() -> Cpu {
    Cpu { level: None, amd: false, extras: Vec::new() }
}

fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: p is a non-null NUL-terminated string owned by OpenBLAS for the program's life.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().trim().to_string()
}

/// The kernel set the loaded OpenBLAS runs, e.g. "SkylakeX".
pub fn running_core() -> String {
    // SAFETY: takes no arguments, returns a static string of the loaded library.
    c_str(unsafe { openblas_get_corename() })
}

/// The loaded OpenBLAS's build string, e.g. "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...".
pub fn config() -> String {
    // SAFETY: takes no arguments, returns a static string of the loaded library.
    c_str(unsafe { openblas_get_config() })
}

/// The core nn-train should ask for, or None to leave OpenBLAS's own choice. `detected` is
/// the core the library picked by itself, `dynamic_arch` whether it can load another at all.
pub fn decide(cpu: &Cpu, detected: &str, dynamic_arch: bool) -> Option<&'static str> {
    let best = cpu.level?;
    let have = core_level(detected)?;
    (dynamic_arch && have < best).then(|| best.core_name(cpu.amd))
}

/// Largest error of `c` against `reference` (float64), each scaled by the sum of the
/// magnitudes of the terms of that dot product (`scale`): float32 rounding bounds it by about
/// k x 2^-24 for an inner dimension k; wrong kernels give errors near 1.
pub fn scaled_error(c: &[f32], reference: &[f64], scale: &[f64]) -> f64 {
    c.iter()
        .zip(reference)
        .zip(scale)
        .map(|((&c, &r), &s)| (c as f64 - r).abs() / s.max(f64::MIN_POSITIVE))
        .fold(0.0, f64::max)
}

/// Multiplies matrices through the loaded kernels (the shapes of `gemm`'s forward and both
/// backward products, large enough to leave OpenBLAS's small-matrix paths) and compares each
/// product with float64. Returns the largest scaled error (see [`scaled_error`]).
pub fn check_sgemm() -> f64 {
    let (m, k, n) = (67, 301, 129);
    let fill = |len: usize, seed: u32| -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    };
    let a = fill(m * k, 1);
    let b = fill(k * n, 2);
    // at(x, trans, i, j): element (i, j) of op(x).
    let at = |x: &Mat, trans: bool, i: usize, j: usize| -> f64 {
        (if trans { x.data[j * x.cols + i] } else { x.data[i * x.cols + j] }) as f64
    };
    let mut worst: f64 = 0.0;
    let a_t: Vec<f32> = (0..k * m).map(|idx| a[(idx % m) * k + idx / m]).collect(); // (k, m)
    let b_t: Vec<f32> = (0..n * k).map(|idx| b[(idx % k) * n + idx / k]).collect(); // (n, k)
                                                                                    // (x, transpose x, y, transpose y) with op(x) (m, k) and op(y) (k, n).
    let cases = [
        (Mat::new(&a, m, k), false, Mat::new(&b, k, n), false),
        (Mat::new(&a_t, k, m), true, Mat::new(&b, k, n), false),
        (Mat::new(&a, m, k), false, Mat::new(&b_t, n, k), true),
    ];
    for (x, tx, y, ty) in &cases {
        let mut c = vec![0.0f32; m * n];
        gemm(1.0, x, *tx, y, *ty, 0.0, &mut c);
        let mut reference = vec![0.0f64; m * n];
        let mut scale = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let t = at(x, *tx, i, p) * at(y, *ty, p, j);
                    reference[i * n + j] += t;
                    scale[i * n + j] += t.abs();
                }
            }
        }
        worst = worst.max(scaled_error(&c, &reference, &scale));
    }
    worst
}

/// A product check passes below this scaled error: float32 rounding over k = 301 terms stays
/// under 301 x 2^-24 = 1.8e-5 even in the worst case; a wrong kernel gives errors near 1.
pub const CHECK_TOLERANCE: f64 = 2e-5;

/// What [`prepare`] found, for the summary.
#[derive(Clone, Debug)]
struct Found {
    /// Largest scaled error of the product check, when it ran.
    check: Option<f64>,
}

static FOUND: OnceLock<Found> = OnceLock::new();

fn reexec(vars: &[(&str, OsString)], remove: &[&str]) {
    let Ok(exe) = std::env::current_exe() else { return };
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env(REEXEC_VAR, "1");
    for v in remove {
        cmd.env_remove(v);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    // exec only returns on failure; then we run on with what the library has.
    let _ = cmd.exec();
}

/// Called first thing in every binary, before anything uses OpenBLAS: sets the library's
/// variables that must be in place when it loads and re-executes the program when one of them
/// changes (the library reads them only at load).
///
/// - OPENBLAS_THREAD_TIMEOUT=4 unless set: OpenBLAS keeps its worker threads spinning for 2^28
///   cycles (about 0.1 s) after each multithreaded GEMM. Between GEMMs the main thread runs the
///   element-wise work (Adam, activations), and a spinning worker on a sibling hardware thread
///   or a shared virtual CPU slows it down: measured, the Adam update of W3 took 1.1 ms per
///   step in some runs and 5.8 ms in others. 2^4 cycles, the minimum, lets the workers sleep
///   at once; waking them costs microseconds against GEMMs of milliseconds.
/// - GOMP_SPINCOUNT=10000 unless it or OMP_WAIT_POLICY is set: GNU OpenMP runs oneDNN's bf16
///   products and, on the same threads, the element-wise work between them (see
///   [`crate::engine::parallel`]). An idle thread waits for the next parallel region
///   spinning this many pause instructions (about 140 cycles each on Intel cores since
///   Skylake, under a millisecond) before it sleeps, instead of libgomp's default of 300,000 (tens
///   of milliseconds) or a sleep at once. Measured on the 2-core Sapphire Rapids VM (W3 bf16,
///   1 rank x 2 threads, 2 runs each): 81,800-83,400 samples/s sleeping at once, 88,800-92,700
///   spinning 10,000, 88,500-88,800 spinning 30,000; with a busy process on the same cores,
///   55,600-56,800 sleeping at once, 41,200-42,400 spinning 10,000. So a machine shared with
///   other busy processes wants OMP_WAIT_POLICY=passive; a rank whose threads outnumber its
///   cores spins only briefly anyway (libgomp's own throttle).
/// - OPENBLAS_CORETYPE, unless set, when the library picked weaker kernels than the CPU has
///   (see the module documentation).
pub fn prepare() {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if env(REEXEC_VAR).is_some() {
        let check = check_sgemm();
        if check > CHECK_TOLERANCE {
            if let (Some(chosen), Some(detected)) = (env(CHOSEN_VAR), env(DETECTED_VAR)) {
                if env(REJECTED_VAR).is_none() {
                    // Our choice computed a wrong product: back to the library's own.
                    reexec(&[(CORETYPE_VAR, detected.into()), (REJECTED_VAR, chosen.into())], &[CHOSEN_VAR]);
                }
            }
        }
        let _ = FOUND.set(Found { check: Some(check) });
        return;
    }
    let mut vars: Vec<(&str, OsString)> = Vec::new();
    if std::env::var_os(THREAD_TIMEOUT_VAR).is_none() {
        vars.push((THREAD_TIMEOUT_VAR, "4".into()));
    }
    if std::env::var_os("OMP_WAIT_POLICY").is_none() && std::env::var_os("GOMP_SPINCOUNT").is_none() {
        vars.push(("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT.into()));
    }
    let user_core = env(CORETYPE_VAR).filter(|_| env(TEST_AS_DETECTED_VAR).is_none());
    if user_core.is_none() {
        let detected = running_core();
        if let Some(core) = decide(&cpu(), &detected, config().contains("DYNAMIC_ARCH")) {
            vars.push((CORETYPE_VAR, core.into()));
            vars.push((CHOSEN_VAR, core.into()));
            vars.push((DETECTED_VAR, detected.into()));
        }
    }
    if !vars.is_empty() {
        reexec(&vars, &[CHOSEN_VAR, DETECTED_VAR, REJECTED_VAR]);
    }
    let _ = FOUND.set(Found { check: None });
}

/// One line on the BLAS for the start-up summary: library, version, the kernels that run and
/// why, e.g. "OpenBLAS 0.3.21 SkylakeX kernels (chosen by nn-train: the CPU has AVX-512,
/// avx512_bf16; OpenBLAS detected Prescott; product checked against float64)".
pub fn summary() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let cfg = config();
    let version: Vec<&str> = cfg.split_whitespace().take(2).collect();
    let running = running_core();
    let cpu = cpu();
    let has = cpu.describe();
    let check = FOUND.get().and_then(|f| f.check);
    let checked = match check {
        Some(e) if e <= CHECK_TOLERANCE => format!("; sgemm checked against float64 (error {e:.1e})"),
        Some(e) => format!("; WARNING: sgemm differs from float64 (scaled error {e:.1e})"),
        None => String::new(),
    };
    let weaker = |core: &str| match (core_level(core), cpu.level) {
        (Some(have), Some(best)) if have < best => {
            format!("; slower kernels than the CPU runs: {} would be faster", best.core_name(cpu.amd))
        }
        _ => String::new(),
    };
    let why = if let (Some(chosen), Some(detected)) = (env(CHOSEN_VAR), env(DETECTED_VAR)) {
        let asked = if running.eq_ignore_ascii_case(&chosen) { String::new() } else { format!("asked for {chosen}; ") };
        format!("{asked}chosen by nn-train: the CPU has {has}, OpenBLAS detected {detected}{checked}")
    } else if let Some(rejected) = env(REJECTED_VAR) {
        format!("OpenBLAS's own choice; nn-train's choice {rejected} failed the float64 product check{checked}")
    } else if let Some(user) = env(CORETYPE_VAR) {
        format!("{CORETYPE_VAR}={user} from the environment; the CPU has {has}{}", weaker(&running))
    } else if !cfg.contains("DYNAMIC_ARCH") {
        format!("a build for one core only; the CPU has {has}{}", weaker(&running))
    } else if core_level(&running).is_some() {
        format!("OpenBLAS's own choice, right for the CPU's {has}")
    } else {
        format!("OpenBLAS's own choice; the CPU has {has}")
    };
    format!("{} {running} kernels ({why})", version.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(level: Level, amd: bool) -> Cpu {
        Cpu { level: Some(level), amd, extras: vec![] }
    }

    #[test]
    fn a_weaker_detection_is_replaced_by_the_best_core_for_the_cpu() {
        assert_eq!(decide(&x86(Level::Avx512, false), "Prescott", true), Some("SkylakeX"));
        assert_eq!(decide(&x86(Level::Avx512, false), "Haswell", true), Some("SkylakeX"));
        assert_eq!(decide(&x86(Level::Avx2, true), "Sandybridge", true), Some("Zen"));
        assert_eq!(decide(&x86(Level::Avx2, false), "Nehalem", true), Some("Haswell"));
    }

    #[test]
    fn an_equal_or_unknown_detection_or_a_single_core_build_is_left_alone() {
        // Cooperlake and SapphireRapids run SkylakeX's sgemm: not weaker.
        assert_eq!(decide(&x86(Level::Avx512, false), "Cooperlake", true), None);
        assert_eq!(decide(&x86(Level::Avx512, false), "SkylakeX", true), None);
        assert_eq!(decide(&x86(Level::Avx2, false), "Zen", true), None);
        // Names we do not know (another architecture, a newer library) are trusted.
        assert_eq!(decide(&x86(Level::Avx512, false), "NeoverseN1", true), None);
        // Without DYNAMIC_ARCH OPENBLAS_CORETYPE does nothing.
        assert_eq!(decide(&x86(Level::Avx512, false), "Prescott", false), None);
        assert_eq!(decide(&Cpu { level: None, amd: false, extras: vec![] }, "Prescott", true), None);
    }

    #[test]
    fn core_names_are_matched_in_any_case() {
        assert_eq!(core_level("SKYLAKEX"), Some(Level::Avx512));
        assert_eq!(core_level("prescott"), Some(Level::Sse3));
        assert!(core_level("Prescott") < core_level("Haswell"));
    }

    /// The loaded library's own kernels (this test binary does not re-execute) multiply
    /// correctly; and the check notices a wrong product.
    #[test]
    fn product_check_passes_on_the_loaded_kernels_and_fails_on_a_wrong_product() {
        assert!(check_sgemm() <= CHECK_TOLERANCE, "{}", check_sgemm());
        let reference = [1.0, -2.0, 3.0];
        let scale = [1.0, 2.0, 3.0];
        assert_eq!(scaled_error(&[1.0, -2.0, 3.0], &reference, &scale), 0.0);
        assert!(scaled_error(&[1.0, -2.0, 3.5], &reference, &scale) > 0.1);
    }
}

//! Floating-point environment.
//!
//! Adam's second moments decay towards zero and become subnormal floats; on x86-64 each
//! subnormal operation takes a slow microcode path. Measured here, an Adam update over 5.5k
//! parameters took 547 us per step instead of 20 us once that happened. Setting
//! flush-to-zero (FTZ) and denormals-are-zero (DAZ), as `torch.set_flush_denormal(True)`
//! does, removes the trap; values below 1.2e-38 become 0, far below anything that matters.

/// Sets FTZ and DAZ in this thread's MXCSR. Threads created afterwards inherit it.
pub fn flush_denormals_to_zero() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: stmxcsr/ldmxcsr read and write this thread's MXCSR through a local; setting
    // FTZ and DAZ changes only how subnormal floats are treated.
    unsafe {
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= FTZ | DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
    }
}

/// True when FTZ and DAZ are both set in this thread (always false off x86-64).
pub fn denormals_flushed() -> bool {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: stmxcsr only stores this thread's MXCSR into a local.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr & (1 << 15) != 0 && csr & (1 << 6) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

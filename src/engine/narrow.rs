//! The backward products of a dense layer with few outputs (a classifier's last layer, 10
//! classes), with bf16 inputs and f32 sums like oneDNN's, on the vector units.
//!
//! oneDNN's AMX kernels work on tiles of 16 rows by 32 bf16 values and pack their operands
//! first. With 10 outputs, dW = x^T dz (1024 x 256 x 10) and dx = dz W^T (256 x 10 x 1024)
//! took 0.15 and 0.14 ms of a 3.7 ms W3 step (Intel Sapphire Rapids VM, 2 threads): 8% of the
//! step for 0.4% of its multiply-adds. Here they take 0.04 and 0.07 ms on one thread.
//!
//! The arithmetic is the mixed-precision products': the inputs are bf16, whose products are
//! exact in f32 (8 significant bits each), and the sums are f32 fused multiply-adds, in a
//! fixed order (so every rank and every run gets the same bits).

use crate::engine::bf16::to_f32;
use crate::engine::kernels::multiversion;

/// Dense layers with at most this many outputs take these kernels for their backward
/// products: below an AMX tile's 16 columns, oneDNN pads every tile.
pub const NARROW_MAX_OUT: usize = 16;

/// The name of the kernels [`weights_grad`] and [`input_grad`] run on this CPU, for the
/// start-up line beside oneDNN's.
pub fn implementation() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return "nn-train narrow:avx512";
    }
    "nn-train narrow:portable"
}

/// Input columns per block: 4 AVX-512 registers of f32.
const COLS: usize = 64;

/// Rows of x and dz per pass over the accumulators.
const ROWS: usize = 4;

/// Floats of scratch that [`weights_grad`] and [`input_grad`] need for a layer, at up to
/// `rows` rows.
pub fn scratch_len(rows: usize, in_dim: usize, out: usize) -> usize {
    (in_dim.next_multiple_of(COLS) + rows) * out
}

multiversion! {
    /// [`weights_grad`] in portable code: grad (in_dim, out) = x^T dz over `rows` rows: x bf16 (rows, in_dim), dz bf16 (rows,
    /// out). `scratch` (at least [`scratch_len`]) holds the sums transposed, (out, in_dim
    /// rounded up to a block), so that the inner loop runs along x's rows. Each sum runs over
    /// the rows in order.
    pub fn weights_grad_portable(x: &[u16], dz: &[u16], rows: usize, in_dim: usize, out: usize, scratch: &mut [f32], grad: &mut [f32]) {
        let width = in_dim.next_multiple_of(COLS);
        let acc = &mut scratch[..width * out];
        acc.fill(0.0);
        let (x, dz, grad) = (&x[..rows * in_dim], &dz[..rows * out], &mut grad[..in_dim * out]);
        let mut xs = [[0.0f32; COLS]; ROWS];
        for first in (0..rows).step_by(ROWS) {
            let n = ROWS.min(rows - first);
            for j0 in (0..in_dim).step_by(COLS) {
                let cols = COLS.min(in_dim - j0);
                // The block of x, as f32 (zeros past the rows and columns).
                for (r, xr) in xs.iter_mut().enumerate() {
                    xr.fill(0.0);
                    if r < n {
                        let row = &x[(first + r) * in_dim + j0..][..cols];
                        for (v, &b) in xr.iter_mut().zip(row) {
                            *v = to_f32(b);
                        }
                    }
                }
                for c in 0..out {
                    let mut d = [0.0f32; ROWS];
                    for (r, dr) in d.iter_mut().enumerate().take(n) {
                        *dr = to_f32(dz[(first + r) * out + c]);
                    }
                    let a = &mut acc[c * width + j0..][..COLS];
                    for j in 0..COLS {
                        let mut s = a[j];
                        for r in 0..ROWS {
                            s = xs[r][j].mul_add(d[r], s);
                        }
                        a[j] = s;
                    }
                }
            }
        }
        for (j, g) in grad.chunks_exact_mut(out).enumerate() {
            for (c, v) in g.iter_mut().enumerate() {
                *v = acc[c * width + j];
            }
        }
    }
}

multiversion! {
    /// [`input_grad`] in portable code: dx (rows, in_dim) = dz W^T: dz bf16 (rows, out), w bf16 (in_dim, out) (the layer's
    /// kernel). `scratch` (at least [`scratch_len`]) holds W transposed in f32, (out, in_dim
    /// rounded up to a block). Each sum runs over the outputs in order.
    pub fn input_grad_portable(dz: &[u16], w: &[u16], rows: usize, in_dim: usize, out: usize, scratch: &mut [f32], dx: &mut [f32]) {
        let width = in_dim.next_multiple_of(COLS);
        let wt = &mut scratch[..width * out];
        for (j, wr) in w[..in_dim * out].chunks_exact(out).enumerate() {
            for (c, &b) in wr.iter().enumerate() {
                wt[c * width + j] = to_f32(b);
            }
        }
        for c in 0..out {
            wt[c * width + in_dim..(c + 1) * width].fill(0.0);
        }
        let (dz, dx) = (&dz[..rows * out], &mut dx[..rows * in_dim]);
        for (i, row) in dx.chunks_exact_mut(in_dim).enumerate() {
            let d = &dz[i * out..][..out];
            for j0 in (0..in_dim).step_by(COLS) {
                let mut s = [0.0f32; COLS];
                for (c, &dc) in d.iter().enumerate() {
                    let dc = to_f32(dc);
                    let wc = &wt[c * width + j0..][..COLS];
                    for j in 0..COLS {
                        s[j] = wc[j].mul_add(dc, s[j]);
                    }
                }
                let cols = COLS.min(in_dim - j0);
                row[j0..j0 + cols].copy_from_slice(&s[..cols]);
            }
        }
    }
}

/// grad (in_dim, out) = x^T dz over `rows` rows: x bf16 (rows, in_dim), dz bf16 (rows, out),
/// out at most [`NARROW_MAX_OUT`]; `scratch` at least [`scratch_len`] floats. Each sum runs
/// over the rows in order, from zero, one fused multiply-add per row, on every CPU.
pub fn weights_grad(
    x: &[u16],
    dz: &[u16],
    rows: usize,
    in_dim: usize,
    out: usize,
    scratch: &mut [f32],
    grad: &mut [f32],
) {
    assert!((1..=NARROW_MAX_OUT).contains(&out) && x.len() >= rows * in_dim && dz.len() >= rows * out);
    assert!(scratch.len() >= scratch_len(rows, in_dim, out) && grad.len() >= in_dim * out);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the lengths were checked above.
        unsafe { avx512::weights_grad(x, dz, rows, in_dim, out, scratch, grad) };
        return;
    }
    weights_grad_portable(x, dz, rows, in_dim, out, scratch, grad);
}

/// dx (rows, in_dim) = dz W^T: dz bf16 (rows, out), w bf16 (in_dim, out) (the layer's
/// kernel), out at most [`NARROW_MAX_OUT`]; `scratch` at least [`scratch_len`] floats. Each
/// sum runs over the outputs in order, from zero, one fused multiply-add per output, on every
/// CPU.
pub fn input_grad(dz: &[u16], w: &[u16], rows: usize, in_dim: usize, out: usize, scratch: &mut [f32], dx: &mut [f32]) {
    assert!((1..=NARROW_MAX_OUT).contains(&out) && dz.len() >= rows * out && w.len() >= in_dim * out);
    assert!(scratch.len() >= scratch_len(rows, in_dim, out) && dx.len() >= rows * in_dim);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the lengths were checked above.
        unsafe { avx512::input_grad(dz, w, rows, in_dim, out, scratch, dx) };
        return;
    }
    input_grad_portable(dz, w, rows, in_dim, out, scratch, dx);
}

/// The same kernels with AVX-512 registers as accumulators: oneDNN-free, the accumulators of
/// all outputs of a block of 16 columns stay in registers across all rows. The portable
/// loops above keep theirs in memory and ran at 0.1 ms each for W3's last layer (256 rows,
/// 1024 inputs, 10 outputs, one thread, Intel Sapphire Rapids VM); these took 0.04 (dW) and
/// 0.07 ms (dx), and perform the same operations in the same order, so the results are the
/// same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Calls `$f::<OUT>` for the runtime `out` (1..=16), so that the loop over the outputs
    /// unrolls and their accumulators live in registers (dW: one per output).
    macro_rules! by_out {
        ($out:expr, $f:ident($($arg:expr),*)) => {
            match $out {
                1 => $f::<1>($($arg),*), 2 => $f::<2>($($arg),*), 3 => $f::<3>($($arg),*),
                4 => $f::<4>($($arg),*), 5 => $f::<5>($($arg),*), 6 => $f::<6>($($arg),*),
                7 => $f::<7>($($arg),*), 8 => $f::<8>($($arg),*), 9 => $f::<9>($($arg),*),
                10 => $f::<10>($($arg),*), 11 => $f::<11>($($arg),*), 12 => $f::<12>($($arg),*),
                13 => $f::<13>($($arg),*), 14 => $f::<14>($($arg),*), 15 => $f::<15>($($arg),*),
                16 => $f::<16>($($arg),*),
                _ => unreachable!("checked by the caller"),
            }
        };
    }

    /// 16 bf16 values at `p` as f32.
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const u16) -> __m512 {
        // SAFETY: the caller's pointer has 16 values.
        let h = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    /// See [`super::weights_grad`]; lengths checked there.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weights_grad(
        x: &[u16],
        dz: &[u16],
        rows: usize,
        in_dim: usize,
        out: usize,
        scratch: &mut [f32],
        grad: &mut [f32],
    ) {
        // dz as f32 (rows, out), so that each multiply-add takes its factor straight from
        // memory rather than through a shuffle unit the multiply-adds need too.
        let dzf = &mut scratch[..rows * out];
        for (f, &b) in dzf.iter_mut().zip(&dz[..rows * out]) {
            *f = super::to_f32(b);
        }
        // SAFETY: forwarded.
        unsafe { by_out!(out, weights_grad_n(x, dzf, rows, in_dim, grad)) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn weights_grad_n<const OUT: usize>(x: &[u16], dz: &[f32], rows: usize, in_dim: usize, grad: &mut [f32]) {
        let full = in_dim / 16 * 16;
        let mut lanes = [0.0f32; 16];
        for j0 in (0..full).step_by(16) {
            let mut acc = [_mm512_setzero_ps(); OUT];
            for i in 0..rows {
                // SAFETY: row i has in_dim >= j0 + 16 values from j0.
                let xv = unsafe { load16(x.as_ptr().add(i * in_dim + j0)) };
                let d = &dz[i * OUT..][..OUT];
                for c in 0..OUT {
                    acc[c] = _mm512_fmadd_ps(xv, _mm512_set1_ps(d[c]), acc[c]);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                // SAFETY: 16 floats into a 16-float array.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
                for (l, &v) in lanes.iter().enumerate() {
                    grad[(j0 + l) * OUT + c] = v;
                }
            }
        }
        // The columns past the last full block: the same sums, one value at a time.
        for j in full..in_dim {
            for c in 0..OUT {
                let mut s = 0.0f32;
                for i in 0..rows {
                    s = super::to_f32(x[i * in_dim + j]).mul_add(dz[i * OUT + c], s);
                }
                grad[j * OUT + c] = s;
            }
        }
    }

    /// Stores the first `cols` (at most 64) of the 64 values in `s` at `at`, with masked
    /// stores past the last whole register (no call, no temporary).
    ///
    /// # Safety
    /// `at` has room for `cols` floats.
    #[target_feature(enable = "avx512f")]
    unsafe fn store_cols(at: *mut f32, s: &[__m512; 4], cols: usize) {
        for (k, v) in s.iter().enumerate() {
            let first = k * 16;
            if first >= cols {
                break;
            }
            let n = (cols - first).min(16);
            // SAFETY: n floats from at + first lie within the caller's `cols`.
            unsafe { _mm512_mask_storeu_ps(at.add(first), ((1u32 << n) - 1) as __mmask16, *v) };
        }
    }

    /// See [`super::input_grad`]; lengths checked there.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn input_grad(
        dz: &[u16],
        w: &[u16],
        rows: usize,
        in_dim: usize,
        out: usize,
        scratch: &mut [f32],
        dx: &mut [f32],
    ) {
        // W transposed to f32 by blocks of 64 columns: block b holds (out, 64) for columns
        // 64 b .. 64 b + 64, zeros past in_dim, so that one block (2.5 KB for 10 outputs) stays
        // in L1 while all rows use it; then dz as f32 (rows, out), whose values the
        // multiply-adds broadcast straight from memory.
        let width = in_dim.next_multiple_of(super::COLS);
        let (wt, dzf) = scratch.split_at_mut(width * out);
        wt.fill(0.0);
        for (j, wr) in w[..in_dim * out].chunks_exact(out).enumerate() {
            let block = &mut wt[j / 64 * out * 64 + j % 64..];
            for (c, &b) in wr.iter().enumerate() {
                block[c * 64] = super::to_f32(b);
            }
        }
        let dzf = &mut dzf[..rows * out];
        for (f, &b) in dzf.iter_mut().zip(&dz[..rows * out]) {
            *f = super::to_f32(b);
        }
        // SAFETY: forwarded.
        unsafe { input_grad_blocks(dzf, wt, rows, in_dim, out, dx) }
    }

    /// Block of 64 columns by block, two rows at a time (4 registers each): 8 independent
    /// sums, so the multiply-adds' latency is hidden, and each W value loaded serves both
    /// rows. The number of outputs stays a run-time loop count: unrolled, the compiler
    /// finished one sum before starting the next, one dependent chain at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn input_grad_blocks(dz: &[f32], wt: &[f32], rows: usize, in_dim: usize, out: usize, dx: &mut [f32]) {
        for j0 in (0..in_dim).step_by(64) {
            let block = &wt[j0 / 64 * out * 64..][..out * 64];
            for i0 in (0..rows).step_by(2) {
                // An odd last row is paired with itself; its result is stored once.
                let i1 = (i0 + 1).min(rows - 1);
                let (d0, d1) = (&dz[i0 * out..][..out], &dz[i1 * out..][..out]);
                let mut s0 = [_mm512_setzero_ps(); 4];
                let mut s1 = [_mm512_setzero_ps(); 4];
                for c in 0..out {
                    let wc = &block[c * 64..][..64];
                    let (b0, b1) = (_mm512_set1_ps(d0[c]), _mm512_set1_ps(d1[c]));
                    for k in 0..4 {
                        // SAFETY: 16 floats at k * 16 of a 64-float slice.
                        let wv = unsafe { _mm512_loadu_ps(wc.as_ptr().add(k * 16)) };
                        s0[k] = _mm512_fmadd_ps(wv, b0, s0[k]);
                        s1[k] = _mm512_fmadd_ps(wv, b1, s1[k]);
                    }
                }
                let cols = (in_dim - j0).min(64);
                // SAFETY: each store writes at most the `cols` columns from j0 of a row of dx,
                // which holds rows * in_dim floats (checked by the caller).
                unsafe {
                    store_cols(dx.as_mut_ptr().add(i0 * in_dim + j0), &s0, cols);
                    store_cols(dx.as_mut_ptr().add(i1 * in_dim + j0), &s1, cols);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::bf16::from_f32;

    /// bf16 values in (-2, 2) with exact zeros: (n,).
    fn values(n: usize, seed: u64) -> Vec<u16> {
        (0..n)
            .map(|i| {
                let u = crate::engine::rng::unit_f32(crate::engine::rng::hash(seed, &[i as u64]));
                if i % 11 == 0 {
                    0
                } else {
                    from_f32(4.0 * u - 2.0)
                }
            })
            .collect()
    }

    /// Sums in f64 of the same bf16 inputs against the kernels' f32 sums: the products are
    /// exact in both, so the difference is the f32 summation's rounding, at most about
    /// (terms) * 2^-24 of the sum of the terms' magnitudes.
    fn check(got: &[f32], want: &[f64], magnitude: &[f64], terms: usize, what: &str) {
        for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(magnitude).enumerate() {
            let bound = terms as f64 * m * f64::powi(2.0, -24) + 1e-30;
            assert!((g as f64 - w).abs() <= bound, "{what}[{i}]: {g} vs {w} (bound {bound:e})");
        }
    }

    /// For every (row i, input j, output c), `term(i, j, c)` = (index, product) adds the
    /// product to that index of the f64 sums and its magnitude to the magnitudes: (sums,
    /// magnitudes), (len,) each.
    fn f64_sums(
        (rows, in_dim, out): (usize, usize, usize),
        len: usize,
        term: impl Fn(usize, usize, usize) -> (usize, f64),
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut sums, mut magnitudes) = (vec![0.0; len], vec![0.0; len]);
        for i in 0..rows {
            for j in 0..in_dim {
                for c in 0..out {
                    let (at, p) = term(i, j, c);
                    sums[at] += p;
                    magnitudes[at] += p.abs();
                }
            }
        }
        (sums, magnitudes)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Against f64 sums of the same inputs, and the dispatched kernels (AVX-512 where the CPU
    /// has it) against the portable ones: the same bits.
    #[test]
    fn narrow_products_match_f64_sums_of_the_same_bf16_inputs() {
        // Widths off the block size, row counts off the row block, 1 to 16 outputs.
        for &(rows, in_dim, out) in
            &[(37, 100, 10), (16, 64, 1), (5, 130, 16), (256, 1024, 10), (1, 3, 2), (48, 200, 7)]
        {
            let x = values(rows * in_dim, 1);
            let dz = values(rows * out, 2);
            let w = values(in_dim * out, 3);
            let f = |b: u16| to_f32(b) as f64;
            let mut scratch = vec![f32::NAN; scratch_len(rows, in_dim, out)];

            let mut grad = vec![f32::NAN; in_dim * out];
            weights_grad(&x, &dz, rows, in_dim, out, &mut scratch, &mut grad);
            let (want, mag) = f64_sums((rows, in_dim, out), in_dim * out, |i, j, c| {
                (j * out + c, f(x[i * in_dim + j]) * f(dz[i * out + c]))
            });
            check(&grad, &want, &mag, rows, &format!("dW {rows}x{in_dim}x{out}"));
            let mut portable = vec![f32::NAN; in_dim * out];
            weights_grad_portable(&x, &dz, rows, in_dim, out, &mut scratch, &mut portable);
            assert_eq!(bits(&grad), bits(&portable), "dW {rows}x{in_dim}x{out}: dispatched vs portable");

            let mut scratch = vec![f32::NAN; scratch_len(rows, in_dim, out)];
            let mut dx = vec![f32::NAN; rows * in_dim];
            input_grad(&dz, &w, rows, in_dim, out, &mut scratch, &mut dx);
            let (want, mag) = f64_sums((rows, in_dim, out), rows * in_dim, |i, j, c| {
                (i * in_dim + j, f(dz[i * out + c]) * f(w[j * out + c]))
            });
            check(&dx, &want, &mag, out, &format!("dx {rows}x{in_dim}x{out}"));
            let mut portable = vec![f32::NAN; rows * in_dim];
            input_grad_portable(&dz, &w, rows, in_dim, out, &mut scratch, &mut portable);
            assert_eq!(bits(&dx), bits(&portable), "dx {rows}x{in_dim}x{out}: dispatched vs portable");
        }
    }
}

//! bfloat16: the upper 16 bits of an IEEE f32 (sign, 8 exponent bits, 7 stored mantissa
//! bits, so 8 significant bits and a unit roundoff of 2^-8), kept as `u16`.
//!
//! f32 -> bf16 rounds to nearest, ties to even, as oneDNN's and TensorFlow's conversions do;
//! NaN stays NaN (quiet). The conversion is integer arithmetic on the bit pattern, compiled
//! for the widest vector unit and chosen at run time (16 values per AVX-512 instruction).

use crate::engine::kernels::multiversion;

/// bf16 -> f32 (exact).
pub fn to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 -> bf16, round to nearest even.
#[inline(always)]
pub fn from_f32(v: f32) -> u16 {
    let bits = v.to_bits();
    // Adding 0x7fff plus the lowest kept bit rounds ties to the even neighbour; a carry into
    // the exponent rounds up to the next binade (or to infinity), as it should. A NaN keeps
    // its upper half with the quiet bit set. The choice is made on the 32-bit value and
    // narrowed once: vectorized, that is one masked blend per 16 values, where a choice
    // between 16-bit halves needs AVX-512BW or a mask widened to bytes.
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    let kept = if v.is_nan() { bits | 0x40_0000 } else { rounded };
    (kept >> 16) as u16
}

multiversion! {
    /// dst[i] = bf16(src[i]). Both: same length.
    pub fn convert(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = from_f32(s);
        }
    }
}

multiversion! {
    /// dst[i] = bf16(src[i]) and acc += the sum of the rows of src, in one pass: the bf16 copy
    /// of a layer's dz for the products and its column sums for the bias gradient. src:
    /// (rows, cols) row-major; dst: same length; acc: (cols,). The sums are taken row by row
    /// in order, as [`kernels::add_column_sums`] takes them, so they are bit-identical to it.
    ///
    /// [`kernels::add_column_sums`]: crate::engine::kernels::add_column_sums
    pub fn convert_and_sum_columns(src: &[f32], dst: &mut [u16], acc: &mut [f32]) {
        let cols = acc.len();
        for (s, d) in src.chunks_exact(cols).zip(dst.chunks_exact_mut(cols)) {
            let (s, d) = (&s[..cols], &mut d[..cols]);
            for c in 0..cols {
                acc[c] += s[c];
                d[c] = from_f32(s[c]);
            }
        }
    }
}

multiversion! {
    /// z = max(z, 0) in place and dst = bf16 of the result, in one pass: relu and the bf16
    /// copy of a layer's output for the next layer's product (the same operations as
    /// [`kernels::relu`] then [`convert`]). Both: same length.
    ///
    /// [`kernels::relu`]: crate::engine::kernels::relu
    pub fn relu_and_convert(z: &mut [f32], dst: &mut [u16]) {
        for (v, d) in z.iter_mut().zip(dst.iter_mut()) {
            let r = if *v > 0.0 { *v } else { 0.0 };
            *v = r;
            *d = from_f32(r);
        }
    }
}

multiversion! {
    /// With dz = dy where y > 0 and 0 elsewhere (relu's derivative from its output, as
    /// [`kernels::relu_backward`] takes it): dst = bf16(dz) and acc += the sum of the rows of
    /// dz, in one pass that never stores dz in f32. y, dy: (rows, cols) row-major; dst: same
    /// length; acc: (cols,). Bit-identical to relu_backward then [`convert_and_sum_columns`].
    ///
    /// [`kernels::relu_backward`]: crate::engine::kernels::relu_backward
    pub fn relu_delta_convert_and_sum_columns(y: &[f32], dy: &[f32], dst: &mut [u16], acc: &mut [f32]) {
        let cols = acc.len();
        for ((y, s), d) in y.chunks_exact(cols).zip(dy.chunks_exact(cols)).zip(dst.chunks_exact_mut(cols)) {
            let (y, s, d) = (&y[..cols], &s[..cols], &mut d[..cols]);
            for c in 0..cols {
                let dz = if y[c] > 0.0 { s[c] } else { 0.0 };
                acc[c] += dz;
                d[c] = from_f32(dz);
            }
        }
    }
}

/// Whether the CPU has AVX-512 with 16-bit lanes and 256-bit forms (AVX512BW and VL), which
/// [`convert_interleaved_avx512`] and [`convert_pair_avx512`] need.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512bw() -> bool {
    std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vl")
}

/// dst[2 j] = bf16(src[j]) (every other 16-bit place, leaving the places between alone) and,
/// when `plain` is given, plain[j] = the same: a run of one row of a packed weight matrix,
/// whose partner row fills the places between (see [`crate::engine::onednn::Packing`]).
///
/// # Safety
/// `dst` is valid for writes of 2 src.len() - 1 values, `plain` (when given) of src.len(),
/// and no other thread accesses those places meanwhile (the places between may be written at
/// once: they are never touched).
#[inline(always)]
pub unsafe fn convert_interleaved_portable(src: &[f32], dst: *mut u16, plain: Option<*mut u16>) {
    for (j, &v) in src.iter().enumerate() {
        let b = from_f32(v);
        // SAFETY: the caller's contract.
        unsafe {
            dst.add(2 * j).write(b);
            if let Some(p) = plain {
                p.add(j).write(b);
            }
        }
    }
}

/// [`convert_interleaved_portable`] 16 values at a time: the bf16 values in the lower halves
/// of 32-bit lanes, which are every other 16-bit place, stored under a mask of those places (a
/// masked store writes nothing elsewhere). Inlined into callers compiled for the same features.
///
/// # Safety
/// As [`convert_interleaved_portable`], on a CPU with [`has_avx512bw`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub unsafe fn convert_interleaved_avx512(src: &[f32], dst: *mut u16, plain: Option<*mut u16>) {
    use std::arch::x86_64::*;
    let n = src.len();
    let mut j = 0;
    while j < n {
        let lanes = (n - j).min(16);
        let values_mask: __mmask16 = if lanes == 16 { u16::MAX } else { (1u16 << lanes) - 1 };
        // SAFETY: the masked load reads src[j..j + lanes] only; the stores write the caller's
        // places dst[2 j..2 (j + lanes) - 1] (even ones) and plain[j..j + lanes].
        unsafe {
            let halves = bf16_lanes(_mm512_maskz_loadu_ps(values_mask, src.as_ptr().add(j)));
            let places: __mmask32 = 0x5555_5555 & if lanes == 16 { u32::MAX } else { (1u32 << (2 * lanes)) - 1 };
            _mm512_mask_storeu_epi16(dst.add(2 * j).cast::<i16>(), places, halves);
            if let Some(p) = plain {
                _mm256_mask_storeu_epi16(p.add(j).cast::<i16>(), values_mask, _mm512_cvtepi32_epi16(halves));
            }
        }
        j += 16;
    }
}

/// [`from_f32`] on 16 values at once: each 32-bit lane holds its value's bf16 in its lower
/// half (upper half zero).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn bf16_lanes(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let bits = _mm512_castps_si512(v);
    let lowest_kept = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lowest_kept));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    let kept = _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(bits, _mm512_set1_epi32(0x40_0000)));
    _mm512_srli_epi32::<16>(kept)
}

/// Two rows' runs into their interleaved places: dst[2 j] = bf16(a[j]) and dst[2 j + 1] =
/// bf16(b[j]) (whole cache lines, no masks), and the plain copies plain_a[j], plain_b[j] when
/// given. a, b: same length.
///
/// # Safety
/// `dst` is valid for writes of 2 a.len() values and the plain starts (when given) of a.len()
/// each, which no other thread accesses meanwhile.
#[inline(always)]
pub unsafe fn convert_pair_portable(a: &[f32], b: &[f32], dst: *mut u16, plain: Option<(*mut u16, *mut u16)>) {
    for (j, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (from_f32(x), from_f32(y));
        // SAFETY: the caller's contract.
        unsafe {
            dst.add(2 * j).write(x);
            dst.add(2 * j + 1).write(y);
            if let Some((pa, pb)) = plain {
                pa.add(j).write(x);
                pb.add(j).write(y);
            }
        }
    }
}

/// [`convert_pair_portable`] 16 pairs at a time: each 32-bit lane holds a's bf16 in its lower
/// half and b's in its upper half, which is the interleaved order.
///
/// # Safety
/// As [`convert_pair_portable`], on a CPU with [`has_avx512bw`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub unsafe fn convert_pair_avx512(a: &[f32], b: &[f32], dst: *mut u16, plain: Option<(*mut u16, *mut u16)>) {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut j = 0;
    while j < n {
        let lanes = (n - j).min(16);
        let values_mask: __mmask16 = if lanes == 16 { u16::MAX } else { (1u16 << lanes) - 1 };
        // SAFETY: masked loads of a[j..j + lanes] and b[j..j + lanes]; the stores write the
        // caller's places dst[2 j..2 (j + lanes)] and the plain ones of those values.
        unsafe {
            let x = bf16_lanes(_mm512_maskz_loadu_ps(values_mask, a.as_ptr().add(j)));
            let y = bf16_lanes(_mm512_maskz_loadu_ps(values_mask, b.as_ptr().add(j)));
            let both = _mm512_or_si512(x, _mm512_slli_epi32::<16>(y));
            _mm512_mask_storeu_epi32(dst.add(2 * j).cast::<i32>(), values_mask, both);
            if let Some((pa, pb)) = plain {
                _mm256_mask_storeu_epi16(pa.add(j).cast::<i16>(), values_mask, _mm512_cvtepi32_epi16(x));
                _mm256_mask_storeu_epi16(pb.add(j).cast::<i16>(), values_mask, _mm512_cvtepi32_epi16(y));
            }
        }
        j += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::add_column_sums;

    /// The rounding as first written (a choice between 16-bit halves), kept as the reference
    /// for the vectorization-friendly form of [`from_f32`].
    fn from_f32_reference(v: f32) -> u16 {
        let bits = v.to_bits();
        let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
        if v.is_nan() {
            ((bits >> 16) as u16) | 0x40
        } else {
            rounded
        }
    }

    /// Bit patterns covering every exponent, both signs, ties, values next to ties, zeros,
    /// subnormals, infinities and NaNs (quiet, signalling, negative, with payloads).
    fn awkward_values(n: usize) -> Vec<f32> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut v: Vec<f32> = [0.0, -0.0, 1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN]
            .into_iter()
            .chain(
                [0x7f80_0001u32, 0xff80_0001, 0x7fc0_1234, 0x7f80_8000, 0x0000_0001, 0x8000_8000, 0x7f7f_ffff]
                    .map(f32::from_bits),
            )
            .collect();
        while v.len() < n {
            let r = next();
            let bits = match r % 4 {
                // Anything, NaNs included.
                0 => (r >> 16) as u32,
                // Exact ties and their neighbours.
                1 => (((r >> 8) as u32) & 0xffff_0000) | 0x8000,
                2 => (((r >> 8) as u32) & 0xffff_0000) | [0x7fff, 0x8001, 0xffff][(r >> 50) as usize % 3],
                // Moderate magnitudes of both signs, as activations and deltas are.
                _ => ((r >> 20) as f32 / (1u64 << 44) as f32 - 0.5).to_bits(),
            };
            v.push(f32::from_bits(bits));
        }
        v
    }

    #[test]
    fn rounding_matches_the_reference_on_awkward_bit_patterns() {
        let src = awkward_values(200_003);
        let mut dst = vec![0u16; src.len()];
        convert(&src, &mut dst);
        for (&s, &d) in src.iter().zip(&dst) {
            assert_eq!(d, from_f32_reference(s), "{:#010x}", s.to_bits());
            assert_eq!(from_f32(s), d);
        }
        // Every 16-bit lower half of a few upper halves (all the rounding cases of a binade).
        for hi in [0x0000u32, 0x3f80, 0x3f81, 0x7f7f, 0x7f80, 0x7fc0, 0x8000, 0xbf80, 0xff80] {
            for lo in 0..=0xffffu32 {
                let s = f32::from_bits(hi << 16 | lo);
                assert_eq!(from_f32(s), from_f32_reference(s), "{:#010x}", s.to_bits());
            }
        }
    }

    /// The fused pass against the two passes it replaces, bit for bit (sums and conversion),
    /// on widths below, at and above a vector, rows including NaN, infinities and zeros.
    #[test]
    fn convert_and_sum_columns_equals_convert_then_column_sums() {
        let src = awkward_values(64 * 37);
        for cols in [1, 3, 16, 37, 64, 1024] {
            let rows = src.len() / cols;
            let src = &src[..rows * cols];
            let (mut want_dst, mut want_acc) = (vec![0u16; src.len()], vec![0.0f32; cols]);
            convert(src, &mut want_dst);
            add_column_sums(&mut want_acc, src);
            let (mut dst, mut acc) = (vec![7u16; src.len()], vec![0.0f32; cols]);
            convert_and_sum_columns(src, &mut dst, &mut acc);
            assert_eq!(dst, want_dst, "{cols} columns");
            let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&acc), bits(&want_acc), "{cols} columns");
        }
        // Finite sums stay finite and exact where they can be: 1 + 2 + ... in one column.
        let (mut dst, mut acc) = (vec![0u16; 4], vec![0.5f32]);
        convert_and_sum_columns(&[1.0, 2.0, 3.0, -4.0], &mut dst, &mut acc);
        assert_eq!((acc[0], dst.iter().map(|&d| to_f32(d)).collect::<Vec<_>>()), (2.5, vec![1.0, 2.0, 3.0, -4.0]));
    }

    type Interleaved = unsafe fn(&[f32], *mut u16, Option<*mut u16>);
    type Pair = unsafe fn(&[f32], &[f32], *mut u16, Option<(*mut u16, *mut u16)>);

    /// The portable conversion, and the AVX-512 one where the CPU has it.
    fn interleaved_variants() -> Vec<(&'static str, Interleaved)> {
        let mut v: Vec<(&'static str, Interleaved)> = vec![("portable", convert_interleaved_portable)];
        #[cfg(target_arch = "x86_64")]
        if has_avx512bw() {
            v.push(("avx512", |s, d, p| {
                // SAFETY: the CPU has the features; the caller's contract.
                unsafe { convert_interleaved_avx512(s, d, p) }
            }));
        }
        v
    }

    /// As [`interleaved_variants`], for the pair conversion.
    fn pair_variants() -> Vec<(&'static str, Pair)> {
        let mut v: Vec<(&'static str, Pair)> = vec![("portable", convert_pair_portable)];
        #[cfg(target_arch = "x86_64")]
        if has_avx512bw() {
            v.push(("avx512", |a, b, d, p| {
                // SAFETY: the CPU has the features; the caller's contract.
                unsafe { convert_pair_avx512(a, b, d, p) }
            }));
        }
        v
    }

    #[test]
    fn interleaved_conversion_writes_every_other_place_and_the_plain_copy() {
        let src = awkward_values(1000);
        for n in [0, 1, 15, 16, 17, 64, 1000] {
            let src = &src[..n];
            for (variant, convert) in interleaved_variants() {
                let (mut dst, mut plain) = (vec![0xabcdu16; 2 * n + 2], vec![0u16; n]);
                // SAFETY: dst holds 2 n + 2 values, plain n.
                unsafe { convert(src, dst.as_mut_ptr().add(1), Some(plain.as_mut_ptr())) };
                for j in 0..n {
                    assert_eq!(dst[1 + 2 * j], from_f32_reference(src[j]), "{variant}: {n} values, value {j}");
                    assert_eq!(plain[j], dst[1 + 2 * j]);
                }
                let untouched = |i: &usize| i.is_multiple_of(2) || *i > 2 * n.max(1) - 1;
                assert!((0..dst.len()).filter(untouched).all(|i| dst[i] == 0xabcd), "{variant}: {n}");
            }
        }
    }

    #[test]
    fn pair_conversion_interleaves_two_rows_and_writes_their_plain_copies() {
        let src = awkward_values(2000);
        for n in [1, 15, 16, 17, 64, 1000] {
            let (a, b) = (&src[..n], &src[1000..1000 + n]);
            for (variant, convert) in pair_variants() {
                let (mut dst, mut pa, mut pb) = (vec![0xabcdu16; 2 * n + 1], vec![0u16; n], vec![0u16; n]);
                // SAFETY: dst holds 2 n + 1 values, pa and pb n each.
                unsafe { convert(a, b, dst.as_mut_ptr(), Some((pa.as_mut_ptr(), pb.as_mut_ptr()))) };
                for j in 0..n {
                    let want = (from_f32_reference(a[j]), from_f32_reference(b[j]));
                    assert_eq!((dst[2 * j], dst[2 * j + 1]), want, "{variant}: {n}: {j}");
                    assert_eq!((pa[j], pb[j]), (dst[2 * j], dst[2 * j + 1]));
                }
                assert_eq!(dst[2 * n], 0xabcd, "{variant}: {n}: wrote past the pairs");
            }
        }
    }

    #[test]
    fn rounds_to_nearest_even_and_keeps_specials() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: the tie goes to the even 1.0.
        assert_eq!(to_f32(from_f32(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(to_f32(from_f32(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        // Just above a tie rounds up; just below rounds down.
        assert_eq!(to_f32(from_f32(1.0 + 2f32.powi(-8) + 2f32.powi(-20))), 1.0 + 2f32.powi(-7));
        assert_eq!(to_f32(from_f32(1.0 + 2f32.powi(-8) - 2f32.powi(-20))), 1.0);
        assert_eq!(to_f32(from_f32(-2.5)), -2.5);
        assert_eq!(to_f32(from_f32(f32::INFINITY)), f32::INFINITY);
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        assert_eq!(to_f32(from_f32(f32::MAX)), f32::INFINITY, "rounds past the largest bf16");
        // Every value within the relative bound 2^-8 of its bf16, over many magnitudes.
        let src: Vec<f32> =
            (0..10_000).map(|i| ((i as f32 * 0.7331).sin() * 1e3) * 1.37f32.powi(i % 40 - 20)).collect();
        let mut dst = vec![0u16; src.len()];
        convert(&src, &mut dst);
        for (&s, &d) in src.iter().zip(&dst) {
            assert_eq!(d, from_f32(s));
            assert!((to_f32(d) - s).abs() <= s.abs() * 2f32.powi(-8), "{s} -> {}", to_f32(d));
        }
    }
}

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

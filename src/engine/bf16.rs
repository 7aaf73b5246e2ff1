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
    // the exponent rounds up to the next binade (or to infinity), as it should.
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if v.is_nan() {
        ((bits >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

multiversion! {
    /// dst[i] = bf16(src[i]). Both: same length.
    pub fn convert(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = from_f32(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

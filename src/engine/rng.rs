//! Seeded randomness. Every random choice derives from `--seed` and a purpose, never from
//! the rank count, so a run on P ranks makes the same choices as on one.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a seed with a sequence of words (purpose, epoch, row, ...).
pub fn hash(seed: u64, words: &[u64]) -> u64 {
    words.iter().fold(mix(seed), |h, &w| mix(h ^ mix(w)))
}

/// Purposes, so that streams for different uses never coincide.
pub const INIT: u64 = 1;
/// Purpose: the global shuffle of the training rows per epoch.
pub const SHUFFLE: u64 = 2;
/// Purpose: the per-rank shuffle (`--shuffle local`).
pub const LOCAL_SHUFFLE: u64 = 3;
/// Purpose: dropout masks.
pub const DROPOUT: u64 = 4;
/// `nn-data gen`: features, teacher weights, target noise, the teacher's calibration rows.
pub const GEN_X: u64 = 5;
/// Purpose: `nn-data gen`'s teacher weights.
pub const GEN_TEACHER: u64 = 6;
/// Purpose: `nn-data gen`'s target noise.
pub const GEN_NOISE: u64 = 7;
/// Purpose: `nn-data gen`'s calibration rows.
pub const GEN_CALIBRATION: u64 = 8;
/// `nn-data import --split`: which rows go to the test file, and their order.
pub const SPLIT: u64 = 9;

/// A ChaCha8 generator for one purpose (and further words such as the epoch).
pub fn stream(seed: u64, words: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(hash(seed, words))
}

/// A uniform float in [0, 1) from a hash: 24 random bits, exact in f32.
pub fn unit_f32(h: u64) -> f32 {
    (h >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

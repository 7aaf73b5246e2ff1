//! Mean and standard deviation of a stream of values, numerically careful: Welford's running
//! update within one stream, and Chan, Golub and LeVeque's combination of parts (chunks,
//! ranks) about the whole's mean.
//!
//! The textbook E[x^2] - E[x]^2 subtracts two numbers of size mean^2 to get one of size
//! std^2: with a mean 1e9 times the spread, f64's 16 digits all cancel (for 1e9 + {0, 1, 2}
//! it gives variance 0, and a standardization would take the feature for a constant). Here
//! every sum is of deviations from a running or final mean, whose size is the spread's.

/// Count, mean and M2 (the sum of squared deviations from the mean) of a set of values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    /// How many values (f64: it is summed across ranks with the other sums).
    pub count: f64,
    /// Their mean (0 for none).
    pub mean: f64,
    /// Sum over the values of (value - mean)^2.
    pub m2: f64,
}

impl Moments {
    /// Adds one value (Welford's update: the deviation from the old mean times the deviation
    /// from the new one).
    pub fn add(&mut self, x: f64) {
        self.count += 1.0;
        let delta = x - self.mean;
        self.mean += delta / self.count;
        self.m2 += delta * (x - self.mean);
    }

    /// The sum of squared deviations of this part's values from `mean`, the mean of a whole
    /// the part belongs to: M2 + count * (part mean - mean)^2. Summing it over disjoint parts
    /// gives the whole's M2 with no cancellation (every term is >= 0).
    pub fn m2_about(&self, mean: f64) -> f64 {
        let d = self.mean - mean;
        self.m2 + self.count * d * d
    }

    /// The moments of the union of disjoint parts: the count-weighted mean of their means,
    /// then the sum of their [`Moments::m2_about`] that mean. (Across ranks, the same two
    /// sums are allreduces: see [`crate::data::scaling::compute`].)
    pub fn merge(parts: &[Moments]) -> Moments {
        let count: f64 = parts.iter().map(|p| p.count).sum();
        if count == 0.0 {
            return Moments::default();
        }
        let mean = parts.iter().map(|p| p.count * p.mean).sum::<f64>() / count;
        Moments { count, mean, m2: parts.iter().map(|p| p.m2_about(mean)).sum() }
    }

    /// Population variance (divided by the count, as numpy's default and scikit-learn's
    /// StandardScaler); NaN for no values.
    pub fn variance(&self) -> f64 {
        if self.count == 0.0 {
            f64::NAN
        } else {
            self.m2 / self.count
        }
    }

    /// Population standard deviation, in the values' units; NaN for no values.
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[f64]) -> Moments {
        let mut m = Moments::default();
        for &v in values {
            m.add(v);
        }
        m
    }

    /// 1e9 + {0, 1, 2}: mean 1e9 + 1, deviations -1, 0, 1, so M2 = 2 and the variance 2/3
    /// (exactly, by hand). E[x^2] - E[x]^2 in f64 gets 0: x^2 ~ 1e18 has an ulp of 128.
    #[test]
    fn a_large_mean_does_not_cancel_the_spread() {
        let x = [1e9, 1e9 + 1.0, 1e9 + 2.0];
        let m = of(&x);
        assert_eq!((m.count, m.mean, m.m2), (3.0, 1e9 + 1.0, 2.0));
        assert_eq!(m.variance(), 2.0 / 3.0);
        assert_eq!(m.std(), (2.0f64 / 3.0).sqrt());
        let (s, s2) = x.iter().fold((0.0f64, 0.0f64), |(s, s2), v| (s + v, s2 + v * v));
        let naive = s2 / 3.0 - (s / 3.0) * (s / 3.0);
        assert!((naive - 2.0 / 3.0).abs() > 0.5, "E[x^2]-E[x]^2 gave {naive}; the test shows nothing");
    }

    /// Parts merged (uneven sizes, one empty, as ranks' slices can be) equal the whole
    /// stream, and both equal a two-pass computation.
    #[test]
    fn merged_parts_equal_the_whole() {
        let x: Vec<f64> = (0..101).map(|i| 1e6 + ((i * 37) % 101) as f64 * 0.25 - 3.0).collect();
        let whole = of(&x);
        let parts = [of(&x[..1]), of(&[]), of(&x[1..40]), of(&x[40..])];
        let merged = Moments::merge(&parts);
        let mean = x.iter().sum::<f64>() / x.len() as f64;
        let m2 = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>();
        for m in [whole, merged] {
            assert_eq!(m.count, 101.0);
            assert!((m.mean - mean).abs() <= 1e-15 * mean, "{} vs {mean}", m.mean);
            assert!((m.m2 - m2).abs() <= 1e-12 * m2, "{} vs {m2}", m.m2);
        }
        assert!(Moments::merge(&[]).variance().is_nan() && of(&[]).std().is_nan());
        assert_eq!(of(&[7.0, 7.0, 7.0]).m2, 0.0, "a constant has no spread");
    }
}

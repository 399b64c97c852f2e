//! Statistical assertions for randomised algorithms.
//!
//! A test of an estimator's mean draws it `n` times with fixed seeds and compares the sample
//! mean with the expected value. The tolerance is not a guess: it comes from the estimator's
//! variance, which the paper states in closed form. With per-draw variance `σ²`, the sample mean
//! has standard deviation `σ/√n`, so `|mean − μ| ≤ z·σ/√n` holds for a correct estimator with
//! probability at least `1 − 1/z²` (Chebyshev) and about `1 − 2Φ(−z)` (CLT). Because seeds are
//! fixed the outcome is deterministic; `z` (4 to 6) says how far from the expectation a correct
//! estimator may land, and a biased estimator fails whenever its bias exceeds that margin.

/// `|actual − expected| / |expected|`, or `|actual|` when `expected` is 0.
pub fn relative_error(actual: f64, expected: f64) -> f64 {
    if expected == 0.0 {
        actual.abs()
    } else {
        (actual - expected).abs() / expected.abs()
    }
}

/// `‖actual − expected‖ / ‖expected‖` for vectors (or `‖actual‖` when `expected` is 0).
///
/// # Panics
/// When the lengths differ.
pub fn relative_error_vec(actual: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let diff: f64 = actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| (a as f64 - e as f64).powi(2))
        .sum();
    let norm: f64 = expected.iter().map(|&e| (e as f64).powi(2)).sum();
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Asserts `relative_error(actual, expected) ≤ tol`, naming `what` on failure.
///
/// # Panics
/// When the relative error exceeds `tol` (or is NaN).
#[track_caller]
pub fn assert_relative_close(what: &str, actual: f64, expected: f64, tol: f64) {
    let err = relative_error(actual, expected);
    assert!(
        err <= tol,
        "{what}: actual {actual} vs expected {expected}: relative error {err:.3e} > {tol:.3e}"
    );
}

/// Sample mean and unbiased sample variance of `samples`.
pub fn mean_and_variance(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 {
        samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var)
}

/// Draws `n` samples with `draw(i)` (seed each draw from `i`) and asserts their mean lies within
/// `z·√(variance/n)` of `expected`, where `variance` is the estimator's per-draw variance from
/// theory. Returns the sample mean.
///
/// # Panics
/// When the mean is out of the band.
#[track_caller]
pub fn assert_mean_of_draws(
    what: &str,
    n: usize,
    mut draw: impl FnMut(usize) -> f64,
    expected: f64,
    variance: f64,
    z: f64,
) -> f64 {
    let samples: Vec<f64> = (0..n).map(&mut draw).collect();
    let (mean, sample_var) = mean_and_variance(&samples);
    let band = z * (variance / n as f64).sqrt();
    assert!(
        (mean - expected).abs() <= band,
        "{what}: mean of {n} draws {mean} is {:.3e} from the expected {expected}, outside \
         z·σ/√n = {z}·√({variance:.3e}/{n}) = {band:.3e} (sample variance {sample_var:.3e})",
        (mean - expected).abs()
    );
    mean
}

/// Running mean of vector-valued draws of an estimator, for unbiasedness tests of codecs.
#[derive(Debug, Clone)]
pub struct VectorMean {
    sum: Vec<f64>,
    count: usize,
}

impl VectorMean {
    /// An empty accumulator for vectors of `len` entries.
    pub fn new(len: usize) -> Self {
        Self {
            sum: vec![0.0; len],
            count: 0,
        }
    }

    /// Adds one draw.
    ///
    /// # Panics
    /// When the draw has the wrong length.
    pub fn push(&mut self, draw: &[f32]) {
        assert_eq!(draw.len(), self.sum.len(), "draw length");
        for (s, &x) in self.sum.iter_mut().zip(draw) {
            *s += x as f64;
        }
        self.count += 1;
    }

    /// Number of draws so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean of the draws so far.
    pub fn mean(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / self.count as f64).collect()
    }

    /// Asserts the mean is unbiased for `expected`: `‖mean − expected‖² ≤ k · V / N`, where
    /// `V = E‖X − EX‖²` is the estimator's total variance from theory (its closed form or bound)
    /// and `N` the number of draws. For a correct estimator `E‖mean − EX‖² = V/N`, so by Markov
    /// the bound fails with probability at most `1/k`; in many dimensions the squared error
    /// concentrates near `V/N`, so `k` of 4 to 9 is already a wide margin.
    ///
    /// # Panics
    /// When the squared error exceeds the bound.
    #[track_caller]
    pub fn assert_unbiased(&self, what: &str, expected: &[f32], total_variance: f64, k: f64) {
        let mean = self.mean();
        let err2: f64 = mean
            .iter()
            .zip(expected)
            .map(|(m, &e)| (m - e as f64).powi(2))
            .sum();
        let bound = k * total_variance / self.count as f64;
        assert!(
            err2 <= bound,
            "{what}: ‖mean − g‖² = {err2:.4e} over {} draws exceeds k·V/N = {k}·{total_variance:.4e}/{} \
             = {bound:.4e}",
            self.count,
            self.count
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic uniform(0,1) stream (SplitMix64) so these tests need no RNG crate.
    fn uniform(i: usize) -> f64 {
        let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn relative_errors() {
        assert_eq!(relative_error(1.1, 1.0), 0.10000000000000009);
        assert_eq!(relative_error(0.5, 0.0), 0.5);
        assert!((relative_error_vec(&[3.0, 4.0], &[3.0, 0.0]) - 4.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn mean_of_uniform_draws_is_accepted() {
        // Uniform(0,1): mean 1/2, variance 1/12.
        let mean = assert_mean_of_draws("uniform", 10_000, uniform, 0.5, 1.0 / 12.0, 4.0);
        assert!((mean - 0.5).abs() < 0.02);
    }

    #[test]
    fn a_biased_estimator_is_rejected() {
        let result = std::panic::catch_unwind(|| {
            assert_mean_of_draws(
                "biased",
                10_000,
                |i| uniform(i) + 0.05,
                0.5,
                1.0 / 12.0,
                4.0,
            )
        });
        assert!(
            result.is_err(),
            "a bias of 0.05 ≫ 4·√(1/12/10⁴) = 0.0115 must fail"
        );
    }

    #[test]
    fn vector_mean_unbiasedness() {
        // Two coordinates, each a ±1 coin around its mean: variance 1 each, V = 2.
        let expected = [0.25_f32, -0.5];
        let mut acc = VectorMean::new(2);
        for i in 0..4000 {
            let s0 = if uniform(2 * i) < 0.5 { 1.0 } else { -1.0 };
            let s1 = if uniform(2 * i + 1) < 0.5 { 1.0 } else { -1.0 };
            acc.push(&[expected[0] + s0, expected[1] + s1]);
        }
        assert_eq!(acc.count(), 4000);
        acc.assert_unbiased("coins", &expected, 2.0, 9.0);
        let shifted = [0.35_f32, -0.5];
        let caught = std::panic::catch_unwind(|| acc.assert_unbiased("coins", &shifted, 2.0, 9.0));
        assert!(caught.is_err(), "a 0.1 shift must be detected");
    }
}

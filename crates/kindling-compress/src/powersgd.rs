//! The math of PowerSGD (Vogels, Karimireddy & Jaggi, *PowerSGD: Practical Low-Rank Gradient
//! Compression for Distributed Optimization*, NeurIPS 2019, <https://arxiv.org/abs/1905.13727>),
//! as steps a data-parallel exchange drives. The exchange itself (two all-reduce rounds) belongs
//! to `kindling-dist`; with one worker the all-reduces are the identity ([`PowerSgd::step_local`]).
//!
//! Per matrix `M` (`[rows, cols]`, the [matrix view](crate::matrix_view)) and rank `r`, with error
//! feedback `Δ = g + e`:
//!
//! ```text
//! P = Δ Q                              Q warm-started from the previous step (first step:
//!                                      Q ~ N(0, 1) from a seed shared by every worker)
//! P ← all_reduce_sum(P);  P ← orthonormalise the columns of P (Gram–Schmidt, ε for zero columns)
//! Q = Δᵀ P;  Q ← all_reduce_mean(Q)
//! out = P Qᵀ;  e ← Δ − out
//! ```
//!
//! A tensor is compressed only if `rows·cols / ((rows + cols)·r)` exceeds
//! `min_compression_rate` (default 2); rank-1 tensors never are.

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

use crate::CompressError;
use crate::codec::{invalid, matrix_view};

/// Settings of PowerSGD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerSgdConfig {
    /// Rank `r` of the approximation.
    pub rank: usize,
    /// Compress a matrix only if its compression rate exceeds this (default 2).
    pub min_compression_rate: f64,
    /// Norm below which Gram–Schmidt treats a column as zero (default 1e-8); a column that keeps
    /// less than [`RELATIVE_TOLERANCE`] of its norm after projection is zero too.
    pub epsilon: f32,
    /// Seed of the initial `Q` (the same on every worker).
    pub seed: u64,
}

impl PowerSgdConfig {
    /// Rank `rank`, min compression rate 2, ε = 1e-8, seed 0.
    pub fn new(rank: usize) -> Result<Self, CompressError> {
        if rank == 0 {
            return Err(invalid("PowerSgd", "rank", rank, "must be ≥ 1"));
        }
        Ok(Self {
            rank,
            min_compression_rate: 2.0,
            epsilon: 1e-8,
            seed: 0,
        })
    }

    /// Sets the minimum compression rate.
    pub fn with_min_compression_rate(mut self, rate: f64) -> Result<Self, CompressError> {
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(invalid(
                "PowerSgd",
                "min_compression_rate",
                rate,
                "must be finite and ≥ 0",
            ));
        }
        self.min_compression_rate = rate;
        Ok(self)
    }

    /// Sets the shared seed of the initial `Q`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether a tensor of shape `dims` is compressed (rank ≥ 2 and rate above the minimum).
    pub fn compresses(&self, dims: &[usize]) -> bool {
        let (rows, cols) = matrix_view(dims);
        dims.len() >= 2 && compression_rate(rows, cols, self.rank) > self.min_compression_rate
    }
}

/// `rows·cols / ((rows + cols)·r)`: dense floats over the floats of `P` and `Q`.
pub fn compression_rate(rows: usize, cols: usize, rank: usize) -> f64 {
    (rows * cols) as f64 / ((rows + cols) * rank) as f64
}

/// Fraction of its own norm a column must keep after being projected off the previous ones to
/// count as independent (a column in their span keeps only rounding residue, ~1e-7 of it in
/// f32).
pub const RELATIVE_TOLERANCE: f32 = 1e-5;

/// Orthonormalises the columns of `p` by modified Gram–Schmidt with one re-orthogonalisation
/// pass ("twice is enough"). A column that is (numerically) in the span of the previous ones —
/// its norm after projection below `epsilon` or below [`RELATIVE_TOLERANCE`] of its norm
/// before — becomes zero, instead of normalising rounding residue into a non-orthogonal
/// column. So a rank-deficient `p` (a batch-of-1 linear layer's gradient is rank 1) gives
/// orthonormal columns followed by zero ones. Runs on `p`'s device without a host sync.
pub fn orthonormalize(p: Tensor<2>, epsilon: f32) -> Tensor<2> {
    let [rows, r] = p.dims();
    let mut cols: Vec<Tensor<2>> = Vec::with_capacity(r);
    for j in 0..r {
        let mut c = p.clone().slice([0..rows, j..j + 1]);
        let before = c.clone().square().sum().sqrt();
        for _pass in 0..2 {
            for q in &cols {
                let proj = q.clone().mul(c.clone()).sum();
                c = c - q.clone().mul(proj.unsqueeze());
            }
        }
        let norm = c.clone().square().sum().sqrt();
        let floor = before.mul_scalar(RELATIVE_TOLERANCE).clamp_min(epsilon);
        let keep = norm.clone().greater_equal(floor).float();
        c = c.mul((keep / norm.clamp_min(epsilon)).unsqueeze());
        cols.push(c);
    }
    Tensor::cat(cols, 1)
}

/// The initial `Q` `[cols, rank]`, entries N(0, 1) from `seed` (ChaCha8): the same on
/// every worker and backend.
pub fn initial_q(cols: usize, rank: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..cols * rank)
        .map(|_| rng.sample(StandardNormal))
        .collect();
    Tensor::from_data(TensorData::new(values, [cols, rank]), device)
}

/// PowerSGD state of one matrix: the warm-started `Q` and the error-feedback residual `e`.
#[derive(Debug, Clone)]
pub struct PowerSgd {
    /// `Q` `[cols, rank]`, warm-started across steps.
    pub q: Tensor<2>,
    /// Residual `e` `[rows, cols]`.
    pub error: Tensor<2>,
    epsilon: f32,
}

impl PowerSgd {
    /// State for a `rows × cols` matrix. `index` distinguishes the parameters of one model, so
    /// their initial `Q`s differ while every worker draws the same ones.
    pub fn new(
        config: &PowerSgdConfig,
        rows: usize,
        cols: usize,
        index: u64,
        device: &Device,
    ) -> Self {
        let seed = config.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            q: initial_q(cols, config.rank, seed, device),
            error: Tensor::zeros([rows, cols], device),
            epsilon: config.epsilon,
        }
    }

    /// First half of a step: `Δ = g + e` and `P = Δ Q` (to be all-reduced with a sum).
    pub fn start(&self, grad: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let delta = grad + self.error.clone();
        let p = delta.clone().matmul(self.q.clone());
        (delta, p)
    }

    /// Second half: orthonormalise the summed `P` and form `Q = Δᵀ P` (to be all-reduced with a
    /// mean). Returns the orthonormal `P` and the local `Q`.
    pub fn project(&self, delta: &Tensor<2>, p_sum: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let p = orthonormalize(p_sum, self.epsilon);
        let q = delta.clone().transpose().matmul(p.clone());
        (p, q)
    }

    /// Last part: `out = P Qᵀ` with the averaged `Q`; keeps `Q` for the warm start and the
    /// residual `e = Δ − out`. Returns `out`, the aggregated low-rank gradient.
    pub fn finish(&mut self, delta: Tensor<2>, p: Tensor<2>, q_mean: Tensor<2>) -> Tensor<2> {
        let out = p.matmul(q_mean.clone().transpose());
        self.error = delta - out.clone();
        self.q = q_mean;
        out
    }

    /// One step with a single worker (all-reduces are the identity).
    pub fn step_local(&mut self, grad: Tensor<2>) -> Tensor<2> {
        let (delta, p) = self.start(grad);
        let (p, q) = self.project(&delta, p);
        self.finish(delta, p, q)
    }
}

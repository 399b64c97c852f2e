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
//!
//! **Where the work runs.** The factors `P` (`rows × r`) and `Q` (`cols × r`) are small and
//! cross to the host anyway to be all-reduced, so they live there on every device, and the
//! Gram–Schmidt runs on the host. The `rows × cols` work (`Δ = g + e`, `ΔQ`, `ΔᵀP`, `PQᵀ`,
//! `e ← Δ − PQᵀ`) runs where the gradient is: on a host device (Flex, NdArray) in three fused,
//! multi-threaded passes over `Δ`, which is the gradient's own buffer when the tensor owns it, and
//! the result takes that buffer back (no allocation beyond `e`, kept between steps); on other
//! devices (wgpu, CUDA) as tensor operations, so only `P` and `Q` cross to the host. Both paths
//! compute the same sums in the same order up to the device's matmul; neither uses fused
//! multiply-add on the host, so the result does not depend on the CPU or the thread count.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use kindling_compress::powersgd::{PowerSgd, PowerSgdConfig};
//!
//! let device = Device::flex();
//! let config = PowerSgdConfig::new(2)?;
//! let mut state = PowerSgd::new(&config, 32, 64, 0, &device);
//! let grad = Tensor::<2>::random([32, 64], Distribution::Normal(0.0, 1.0), &device);
//! // With several workers, P and Q are all-reduced between the phases (kindling-dist does it).
//! let started = state.start(grad)?;
//! let p_sum = started.p().to_vec();
//! let projected = state.project(started, &p_sum)?;
//! let q_mean = projected.q().to_vec();
//! let out = state.finish(projected, &q_mean)?;
//! assert_eq!(out.dims(), [32, 64]);
//! # Ok::<(), kindling_compress::CompressError>(())
//! ```

use burn::tensor::{Device, Tensor};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::CompressError;
use crate::codec::{invalid, matrix_view};
use crate::host::{CHUNK, HostGrad, abs_bits, gt_times, is_host_device, non_finite, tensor};
use crate::simd::wide;

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

/// Orthonormalises the columns of `p` (`rows × rank`, row-major, host values) in place by
/// modified Gram–Schmidt with one re-orthogonalisation pass ("twice is enough"), in f64. A
/// column that is (numerically) in the span of the previous ones — its norm after projection
/// not above `epsilon` (which may be 0) or not above [`RELATIVE_TOLERANCE`] of its norm before —
/// becomes zero, instead of normalising rounding residue into a non-orthogonal column. So a
/// rank-deficient `p` (a batch-of-1 linear layer's gradient is rank 1) gives orthonormal
/// columns followed by zero ones. Spectral ATOMO's randomized SVD orthonormalises its sketches
/// with it too.
///
/// # Panics
/// If `p.len() != rows · rank`.
pub fn orthonormalize(p: &mut [f32], rows: usize, rank: usize, epsilon: f32) {
    assert_eq!(p.len(), rows * rank, "P must have rows·rank entries");
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut done: Vec<Vec<f64>> = Vec::with_capacity(rank);
    for j in 0..rank {
        let mut c: Vec<f64> = (0..rows).map(|i| p[i * rank + j] as f64).collect();
        let before = dot(&c, &c).sqrt();
        for _pass in 0..2 {
            for q in &done {
                let proj = dot(q, &c);
                c.iter_mut().zip(q).for_each(|(x, q)| *x -= proj * q);
            }
        }
        let norm = dot(&c, &c).sqrt();
        let floor = (before * RELATIVE_TOLERANCE as f64).max(epsilon as f64);
        let keep = norm > floor && norm > 0.0;
        c.iter_mut()
            .for_each(|x| *x = if keep { *x / norm } else { 0.0 });
        for (i, x) in c.iter().enumerate() {
            p[i * rank + j] = *x as f32;
        }
        done.push(c);
    }
}

/// The initial `Q` `[cols, rank]` (row-major), entries N(0, 1) from `seed` (ChaCha8): the same
/// on every worker and backend.
pub fn initial_q(cols: usize, rank: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..cols * rank)
        .map(|_| rng.sample(StandardNormal))
        .collect()
}

/// A `rows × cols` matrix where its gradient was: host values, or a tensor on a device.
#[derive(Debug, Clone)]
enum Matrix {
    Host(Vec<f32>),
    Device(Box<Tensor<2>>),
}

/// `Δ = g + e` during a step: the gradient's host buffer, or a tensor on the device.
#[derive(Debug)]
enum Delta {
    Host(HostGrad),
    Device(Tensor<2>),
}

/// A step after [`PowerSgd::start`]: `Δ` and the local `P = ΔQ`, to be summed over the workers.
#[derive(Debug)]
pub struct Started {
    delta: Delta,
    /// `max|Δ|`, finite.
    max_abs: f32,
    p: Vec<f32>,
}

impl Started {
    /// The local `P = ΔQ`, `rows × rank` row-major.
    pub fn p(&self) -> &[f32] {
        &self.p
    }
}

/// A step after [`PowerSgd::project`]: `Δ`, the orthonormal `P` and the local `Q = ΔᵀP`, to be
/// averaged over the workers.
#[derive(Debug)]
pub struct Projected {
    delta: Delta,
    max_abs: f32,
    p: Vec<f32>,
    q: Vec<f32>,
}

impl Projected {
    /// The local `Q = ΔᵀP`, `cols × rank` row-major.
    pub fn q(&self) -> &[f32] {
        &self.q
    }
}

/// PowerSGD state of one `rows × cols` matrix: the warm-started `Q` (host values) and the
/// error-feedback residual `e` (on the gradient's device; see the module docs for the paths).
#[derive(Debug, Clone)]
pub struct PowerSgd {
    rows: usize,
    cols: usize,
    rank: usize,
    epsilon: f32,
    /// `Q`, `cols × rank` row-major.
    q: Vec<f32>,
    error: Matrix,
    device: Device,
}

/// Rows of a `cols`-wide matrix per task of the host kernels (about [`CHUNK`] entries).
fn rows_per_task(cols: usize) -> usize {
    (CHUNK / cols.max(1)).max(1)
}

/// `Σ a[i]·b[i]` in f32 over sixteen lanes summed in a fixed order, then the tail: it
/// vectorises, and the result does not depend on the vector unit.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0_f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let (a_tail, b_tail) = (a16.remainder(), b16.remainder());
    for (x, y) in a16.zip(b16) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

/// `[n, k]` row-major → `[k, n]` row-major.
fn transposed(values: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * k];
    for (i, row) in values.chunks_exact(k).enumerate() {
        for (j, v) in row.iter().enumerate() {
            out[j * n + i] = *v;
        }
    }
    out
}

impl PowerSgd {
    /// State for a `rows × cols` matrix on `device`. `index` distinguishes the parameters of one
    /// model, so their initial `Q`s differ while every worker draws the same ones.
    pub fn new(
        config: &PowerSgdConfig,
        rows: usize,
        cols: usize,
        index: u64,
        device: &Device,
    ) -> Self {
        let seed = config.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let error = if is_host_device(device) {
            Matrix::Host(vec![0.0; rows * cols])
        } else {
            Matrix::Device(Box::new(Tensor::zeros([rows, cols], device)))
        };
        Self {
            rows,
            cols,
            rank: config.rank,
            epsilon: config.epsilon,
            q: initial_q(cols, config.rank, seed),
            error,
            device: device.clone(),
        }
    }

    /// State restored from a checkpoint: `q` (`cols × rank`, as [`PowerSgd::q`] gave it) and
    /// `error` (`rows × cols`, as [`PowerSgd::error`] gave it). Sizes that do not fit, or
    /// non-finite values, are an error naming the field.
    pub fn restore(
        config: &PowerSgdConfig,
        rows: usize,
        cols: usize,
        q: Vec<f32>,
        error: Vec<f32>,
        device: &Device,
    ) -> Result<Self, CompressError> {
        if q.len() != cols * config.rank {
            return Err(invalid(
                "PowerSgd",
                "q",
                q.len(),
                "must have cols·rank entries",
            ));
        }
        if error.len() != rows * cols {
            return Err(invalid(
                "PowerSgd",
                "error",
                error.len(),
                "must have rows·cols entries",
            ));
        }
        for (field, values) in [("q", &q), ("error", &error)] {
            if !all_finite(values) {
                return Err(invalid(
                    "PowerSgd",
                    field,
                    "non-finite entries",
                    "must be finite",
                ));
            }
        }
        let error = if is_host_device(device) {
            Matrix::Host(error)
        } else {
            Matrix::Device(Box::new(tensor(error, [rows, cols], device)))
        };
        Ok(Self {
            rows,
            cols,
            rank: config.rank,
            epsilon: config.epsilon,
            q,
            error,
            device: device.clone(),
        })
    }

    /// The warm-started `Q`, `cols × rank` row-major.
    pub fn q(&self) -> &[f32] {
        &self.q
    }

    /// The residual `e`, `rows × cols` row-major (read from the device on a device path).
    pub fn error(&self) -> Vec<f32> {
        match &self.error {
            Matrix::Host(e) => e.clone(),
            Matrix::Device(e) => HostGrad::read((**e).clone()).into_values(),
        }
    }

    /// Drops the residual (`e ← 0`): the next step runs a plain warm-started power iteration.
    pub fn reset_error(&mut self) {
        self.error = match &self.error {
            Matrix::Host(_) => Matrix::Host(vec![0.0; self.rows * self.cols]),
            Matrix::Device(_) => Matrix::Device(Box::new(Tensor::zeros(
                [self.rows, self.cols],
                &self.device,
            ))),
        };
    }

    /// First phase of a step: `Δ = g + e` and the local `P = ΔQ` ([`Started::p`], to be
    /// all-reduced with a sum). On a host device `Δ` is written into the gradient's buffer.
    ///
    /// A gradient with NaN or ±Inf entries is [`CompressError::NonFinite`], and a finite one
    /// whose `P` overflows f32 is [`CompressError::Overflow`]; the state is left as it was (no
    /// phase changes it before [`PowerSgd::finish`] succeeds).
    ///
    /// # Panics
    /// If `grad` is not `rows × cols`.
    pub fn start(&self, grad: Tensor<2>) -> Result<Started, CompressError> {
        assert_eq!(
            grad.dims(),
            [self.rows, self.cols],
            "PowerSGD state is for a {}×{} matrix",
            self.rows,
            self.cols
        );
        let (cols, rank) = (self.cols, self.rank);
        let (delta, max_abs, p) = match &self.error {
            Matrix::Host(error) => {
                let mut delta = HostGrad::read(grad);
                let qt = transposed(&self.q, cols, rank);
                let mut p = vec![0.0; self.rows * rank];
                // Returns the task's largest `abs_bits` of Δ (≥ 0x7F80_0000 iff one is not
                // finite).
                let task = |((d, e), p): ((&mut [f32], &[f32]), &mut [f32])| {
                    wide!({
                        let mut big = 0;
                        for ((d, e), p) in d
                            .chunks_exact_mut(cols)
                            .zip(e.chunks_exact(cols))
                            .zip(p.chunks_exact_mut(rank))
                        {
                            d.iter_mut().zip(e).for_each(|(d, e)| *d += e);
                            big = d.iter().fold(big, |m, v| m.max(abs_bits(*v)));
                            for (pk, qk) in p.iter_mut().zip(qt.chunks_exact(cols)) {
                                *pk = dot(d, qk);
                            }
                        }
                        big
                    })
                };
                let rows = rows_per_task(cols);
                let d = delta.values_mut();
                let big = d
                    .par_chunks_mut(rows * cols)
                    .zip(error.par_chunks(rows * cols))
                    .zip(p.par_chunks_mut(rows * rank))
                    .map(task)
                    .max()
                    .unwrap_or(0);
                if big >= 0x7F80_0000 {
                    return Err(non_finite(delta.values()));
                }
                (Delta::Host(delta), f32::from_bits(big), p)
            }
            Matrix::Device(error) => {
                let delta = grad + (**error).clone();
                let q = tensor(self.q.clone(), [cols, rank], &self.device);
                let p = HostGrad::read(delta.clone().matmul(q)).into_values();
                let max_abs: f32 = delta.clone().abs().max().into_scalar();
                if !max_abs.is_finite() {
                    return Err(non_finite(HostGrad::read(delta).values()));
                }
                (Delta::Device(delta), max_abs, p)
            }
        };
        if !all_finite(&p) {
            return Err(CompressError::Overflow);
        }
        Ok(Started { delta, max_abs, p })
    }

    /// Second phase: orthonormalises the summed `P` ([`orthonormalize`], on the host) and forms
    /// the local `Q = ΔᵀP` ([`Projected::q`], to be all-reduced with a mean). A sum that
    /// overflowed f32 (the Gram–Schmidt would zero its column, a silent loss), or a `Q` that
    /// does, is [`CompressError::Overflow`].
    ///
    /// # Panics
    /// If `p_sum` does not have `rows · rank` entries.
    pub fn project(&self, started: Started, p_sum: &[f32]) -> Result<Projected, CompressError> {
        let (rows, cols, rank) = (self.rows, self.cols, self.rank);
        if !all_finite(p_sum) {
            return Err(CompressError::Overflow);
        }
        let mut p = p_sum.to_vec();
        orthonormalize(&mut p, rows, rank, self.epsilon);
        let q = match &started.delta {
            Delta::Host(delta) => gt_times(delta.values(), rows, cols, &p, rank),
            Delta::Device(delta) => {
                let p = tensor(p.clone(), [rows, rank], &self.device);
                HostGrad::read(delta.clone().transpose().matmul(p)).into_values()
            }
        };
        if !all_finite(&q) {
            return Err(CompressError::Overflow);
        }
        Ok(Projected {
            delta: started.delta,
            max_abs: started.max_abs,
            p,
            q,
        })
    }

    /// Last phase: `out = P Qᵀ` with the averaged `Q`; keeps `Q` for the warm start and the
    /// residual `e = Δ − out`. Returns `out`, the aggregated low-rank gradient (on a host device
    /// in the gradient's buffer).
    ///
    /// `P`'s columns are orthonormal, so `|out| ≤ rank·max|Q|` and `|e| ≤ max|Δ| + |out|`: a `Q`
    /// for which that bound is not finite (or one that is not) is [`CompressError::Overflow`],
    /// and the state is left as it was.
    ///
    /// # Panics
    /// If `q_mean` does not have `cols · rank` entries.
    pub fn finish(
        &mut self,
        projected: Projected,
        q_mean: &[f32],
    ) -> Result<Tensor<2>, CompressError> {
        let (rows, cols, rank) = (self.rows, self.cols, self.rank);
        assert_eq!(q_mean.len(), cols * rank, "Q must have cols·rank entries");
        let Projected {
            delta, max_abs, p, ..
        } = projected;
        let q_max = q_mean.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
        // The bound in f64 with a margin for the f32 rounding of each sum.
        let bound = 2.0 * (rank as f64 * q_max as f64 + max_abs as f64);
        if !(q_max.is_finite() && bound < f32::MAX as f64) {
            return Err(CompressError::Overflow);
        }
        self.q = q_mean.to_vec();
        match (delta, &mut self.error) {
            (Delta::Host(mut delta), Matrix::Host(error)) => {
                let qt = transposed(q_mean, cols, rank);
                let task = |((d, e), p): ((&mut [f32], &mut [f32]), &[f32])| {
                    wide!({
                        for ((d, e), pi) in d
                            .chunks_exact_mut(cols)
                            .zip(e.chunks_exact_mut(cols))
                            .zip(p.chunks_exact(rank))
                        {
                            // out = Σ_k p_ik·q_k (a row of Qᵀ at a time), into `d`
                            // once `e` holds Δ; then e = Δ − out.
                            e.copy_from_slice(d);
                            d.fill(0.0);
                            for (pik, qk) in pi.iter().zip(qt.chunks_exact(cols)) {
                                d.iter_mut().zip(qk).for_each(|(o, q)| *o += pik * q);
                            }
                            e.iter_mut().zip(&*d).for_each(|(e, o)| *e -= o);
                        }
                    })
                };
                let task_rows = rows_per_task(cols);
                let d = delta.values_mut();
                d.par_chunks_mut(task_rows * cols)
                    .zip(error.par_chunks_mut(task_rows * cols))
                    .zip(p.par_chunks(task_rows * rank))
                    .for_each(task);
                Ok(delta.into_tensor([rows, cols], &self.device))
            }
            (Delta::Device(delta), Matrix::Device(error)) => {
                let p = tensor(p, [rows, rank], &self.device);
                let q = tensor(q_mean.to_vec(), [cols, rank], &self.device);
                let out = p.matmul(q.transpose());
                **error = delta - out.clone();
                Ok(out)
            }
            _ => unreachable!("a step's Δ is where the state's residual is"),
        }
    }

    /// One step with a single worker (the all-reduces are the identity); the errors of
    /// [`PowerSgd::start`], [`PowerSgd::project`] and [`PowerSgd::finish`].
    pub fn step_local(&mut self, grad: Tensor<2>) -> Result<Tensor<2>, CompressError> {
        let started = self.start(grad)?;
        let p = started.p().to_vec();
        let projected = self.project(started, &p)?;
        let q = projected.q().to_vec();
        self.finish(projected, &q)
    }
}

/// Whether every value is finite.
fn all_finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

//! ATOMO: unbiased atomic sparsification (Wang et al., *ATOMO: Communication-efficient Learning
//! via Atomic Sparsification*, NeurIPS 2018, <https://arxiv.org/abs/1806.04090>).
//!
//! Write the gradient in an atomic decomposition `g = Σ_a λ_a·a` with unit-norm atoms, keep atom
//! `a` with probability `p_a` and rescale it by `1/p_a`:
//!
//! ```text
//! t_a ~ Bernoulli(p_a) independently;   ĝ = Σ_a (λ_a·t_a/p_a)·a
//! ```
//!
//! `ĝ` is unbiased for any `p ∈ (0, 1]`, and for orthonormal atoms `E‖ĝ‖² = Σ_a λ_a²/p_a`.
//! [`probabilities`] chooses the `p` that minimises this subject to an expected budget
//! `Σ_a p_a = s` (water-filling). Three atom sets are codecs: [`EntryWise`] (the standard basis,
//! which contains 1-level QSGD and TernGrad), [`Spectral`] (singular vectors of the matrix
//! view) and [`Fourier`] (the orthonormal real DFT basis).
//!
//! ```
//! use kindling_compress::atomo::probabilities;
//!
//! let p = probabilities(&[4.0, 3.0, 2.0, 1.0], 2.0);
//! assert!(p.iter().zip([0.8, 0.6, 0.4, 0.2]).all(|(a, b)| (a - b).abs() < 1e-12));
//! ```

mod entry;
mod fourier;
mod spectral;

pub use fourier::Fourier;
pub use spectral::Spectral;

use burn::tensor::Tensor;
use rand::Rng;

use rayon::prelude::*;

use crate::CompressError;
use crate::codec::invalid;
use crate::host::{self, BLOCK, CHUNK};
use crate::random::{Stream, uniforms};
use crate::simd;
use crate::sparse::SparseVec;

/// The standard basis: atoms `e_i`, coefficients `λ = g`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryWise;

/// An ATOMO codec over atom set `A` ([`EntryWise`], [`Spectral`] or [`Fourier`]) with a budget.
#[derive(Debug, Clone)]
pub struct Atomo<A> {
    atoms: A,
    budget: Budget,
}

impl<A> Atomo<A> {
    /// ATOMO over `atoms` with `budget`.
    pub fn new(atoms: A, budget: Budget) -> Result<Self, CompressError> {
        Ok(Self {
            atoms,
            budget: budget.validate()?,
        })
    }

    /// The budget.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The atom set.
    pub fn atoms(&self) -> &A {
        &self.atoms
    }
}

/// The expected number of atoms ATOMO sends, `s = Σ_a p_a`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Budget {
    /// A fixed `s > 0` (capped at the number of non-zero atoms).
    Atoms(f64),
    /// `s = f · #atoms`, `0 < f ≤ 1`.
    Fraction(f64),
    /// `s = ‖λ‖₁/‖λ‖₂`: with entry-wise atoms, exactly 1-level QSGD's probabilities.
    QsgdEquivalent,
    /// `s = ‖λ‖₁/max|λ|`: with entry-wise atoms, exactly TernGrad's probabilities.
    TernGradEquivalent,
}

impl Budget {
    fn validate(self) -> Result<Self, CompressError> {
        match self {
            Budget::Atoms(s) if !(s.is_finite() && s > 0.0) => {
                Err(invalid("Atomo", "budget", s, "must be finite and > 0"))
            }
            Budget::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                Err(invalid("Atomo", "budget fraction", f, "must be in (0, 1]"))
            }
            b => Ok(b),
        }
    }

    /// The budget `s` for coefficients with the given norms, out of `atoms` atoms.
    pub fn resolve(self, atoms: usize, l1: f64, l2: f64, linf: f64) -> f64 {
        let s = match self {
            Budget::Atoms(s) => s,
            Budget::Fraction(f) => f * atoms as f64,
            Budget::QsgdEquivalent if l2 > 0.0 => l1 / l2,
            Budget::TernGradEquivalent if linf > 0.0 => l1 / linf,
            _ => 0.0,
        };
        s.min(atoms as f64)
    }
}

/// Water-filling: the probabilities minimising `Σ_a λ_a²/p_a` subject to `Σ_a p_a = s` and
/// `0 < p_a ≤ 1` (atoms with `λ_a = 0` get `p_a = 0`), computed exactly as in the paper:
///
/// ```text
/// sort |λ| descending; i = 1
/// loop: if |λ_i|·s ≤ Σ_{k≥i} |λ_k|:  p_k = |λ_k|·s / Σ_{j≥i}|λ_j| for all k ≥ i; stop
///       else: p_i = 1; s = s − 1; i = i + 1
/// ```
///
/// `Σ p = min(s, #non-zero atoms)`; `p` is monotone in `|λ|`. (The authors' code clips
/// `s·|λ|/Σ|λ|` once, so `Σ p < s`; this does not.)
pub fn probabilities(lambda: &[f32], s: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..lambda.len()).filter(|&i| lambda[i] != 0.0).collect();
    order.sort_by(|&a, &b| lambda[b].abs().total_cmp(&lambda[a].abs()));
    let mut p = vec![0.0; lambda.len()];
    let mut rest: f64 = order.iter().map(|&i| lambda[i].abs() as f64).sum();
    let mut s = s.min(order.len() as f64);
    for (pos, &i) in order.iter().enumerate() {
        let a = lambda[i].abs() as f64;
        if a * s <= rest {
            for &k in &order[pos..] {
                p[k] = lambda[k].abs() as f64 * s / rest;
            }
            break;
        }
        p[i] = 1.0;
        s -= 1.0;
        rest -= a;
    }
    p
}

/// The water-filling solution on the device, as the scale `c` with `p = min(1, c·|λ|)` (the
/// solution always has that form). Starting from `c = s/Σ|λ|`, the saturated set
/// `{c·|λ| ≥ 1}` only grows and `c = (s − #saturated)/Σ_unsaturated |λ|` only increases, so the
/// iteration reaches the exact fixed point in at most `#atoms` rounds (one or two in practice).
pub(crate) fn water_level(abs_lambda: &Tensor<1>, s: f64) -> f64 {
    let total = abs_lambda.clone().sum().into_scalar::<f64>();
    if total == 0.0 || s <= 0.0 {
        return 0.0;
    }
    let mut c = s / total;
    let mut saturated = 0i64;
    loop {
        let mask = abs_lambda.clone().mul_scalar(c).greater_equal_elem(1.0);
        let k = mask.clone().int().sum().into_scalar::<i64>();
        if k == saturated && saturated > 0 || k == 0 {
            return c;
        }
        let rest = abs_lambda
            .clone()
            .mask_fill(mask, 0.0)
            .sum()
            .into_scalar::<f64>();
        if rest <= 0.0 {
            return f64::INFINITY;
        }
        saturated = k;
        c = (s - k as f64) / rest;
    }
}

/// Samples atoms on the device: keep atom `a` with probability `p_a = min(1, c·|λ_a|)` and send
/// `λ_a/p_a` (the mask leaves the device as a bitmap, the values as floats).
pub(crate) fn sample(lambda: Tensor<1>, s: f64, rng: &mut dyn Rng) -> SparseVec {
    let n = lambda.dims()[0];
    let device = lambda.device();
    let abs = lambda.clone().abs();
    let c = water_level(&abs, s).min(f32::MAX as f64);
    let p = abs.mul_scalar(c).clamp_max(1.0);
    let keep = uniforms(rng, n, &device).lower(p.clone()).float();
    SparseVec::from_mask(keep, n, |idx| {
        let p = p.select(0, idx.clone());
        lambda.select(0, idx).div(p)
    })
}

/// [`water_level`] over host values, with the same f32 comparisons as the device version
/// (`c` rounded to f32, `|λ|·c ≥ 1` saturated); one parallel pass per round, whose chunk sums
/// add up in chunk order (the same for any thread count). `max` is `max|λ|`: a first round in
/// which even it does not saturate needs no pass.
pub(crate) fn water_level_host(lambda: &[f32], s: f64, total: f64, max: f32) -> f64 {
    if total == 0.0 || s <= 0.0 {
        return 0.0;
    }
    let mut c = s / total;
    let mut saturated = 0usize;
    loop {
        let c32 = c as f32;
        // f32 products are monotone in |v|: no entry saturates when the largest does not.
        if saturated == 0 && max * c32 < 1.0 {
            return c;
        }
        let parts: Vec<(usize, f64)> = lambda
            .par_chunks(CHUNK)
            .map(|chunk| simd::wide!(saturation(chunk, c32)))
            .collect();
        let (k, rest) = parts
            .iter()
            .fold((0, 0.0), |(k, rest), &(n, sum)| (k + n, rest + sum));
        if k == saturated && saturated > 0 || k == 0 {
            return c;
        }
        if rest <= 0.0 {
            return f64::INFINITY;
        }
        saturated = k;
        c = (s - k as f64) / rest;
    }
}

/// How many entries of `chunk` saturate (`|v|·c ≥ 1`), and `Σ|v|` of the others in f64:
/// sixteen lanes without a branch, so it vectorises.
#[inline(always)]
fn saturation(chunk: &[f32], c: f32) -> (usize, f64) {
    let (mut count, mut rest) = ([0u32; 16], [0f64; 16]);
    let mut blocks = chunk.chunks_exact(16);
    for block in &mut blocks {
        for k in 0..16 {
            let a = block[k].abs();
            let full = a * c >= 1.0;
            count[k] += full as u32;
            rest[k] += if full { 0.0 } else { a as f64 };
        }
    }
    let (mut n, mut sum) = (0usize, 0f64);
    for &v in blocks.remainder() {
        let a = v.abs();
        if a * c >= 1.0 {
            n += 1;
        } else {
            sum += a as f64;
        }
    }
    (
        n + count.iter().map(|&k| k as usize).sum::<usize>(),
        sum + rest.iter().sum::<f64>(),
    )
}

/// [`sample`] over host values, in one parallel pass: keep entry `a` when `u_a < p_a`
/// (`p = min(1, c·|λ|)` in f32) and send `λ_a/p_a`, with the counter-based uniforms drawn a
/// block at a time. `total` and `max` are `‖λ‖₁` and `max|λ|`.
pub(crate) fn sample_host(
    lambda: &[f32],
    s: f64,
    (total, max): (f64, f32),
    stream: Stream,
) -> SparseVec {
    let c = water_level_host(lambda, s, total, max).min(f32::MAX as f64) as f32;
    let parts: Vec<Vec<(u32, f32)>> = lambda
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(ci, chunk)| {
            simd::wide!({
                let mut kept = Vec::new();
                let mut u = [0f32; BLOCK];
                for (b, block) in chunk.chunks(BLOCK).enumerate() {
                    let start = ci * CHUNK + b * BLOCK;
                    let u = &mut u[..block.len()];
                    stream.fill(start, u);
                    let p = |v: f32| (v.abs() * c).min(1.0);
                    for (g, (vs, us)) in block.chunks(16).zip(u.chunks(16)).enumerate() {
                        let hits = host::hit_mask(vs.iter().zip(us), |(&v, &u)| u < p(v));
                        host::each_bit(hits, |i| {
                            kept.push(((start + 16 * g + i) as u32, vs[i] / p(vs[i])))
                        });
                    }
                }
                kept
            })
        })
        .collect();
    let (positions, values) = parts.into_iter().flatten().unzip();
    SparseVec { positions, values }
}

/// `(‖λ‖₁, ‖λ‖₂, max|λ|)` of host values, or [`CompressError::NonFinite`]: one parallel pass.
pub(crate) fn norms_host(lambda: &[f32]) -> Result<(f64, f64, f64), CompressError> {
    let (linf, l2, l1) = host::norms(lambda)?;
    Ok((l1, l2, linf as f64))
}

/// `(‖λ‖₁, ‖λ‖₂, max|λ|)` on the host.
pub(crate) fn norms(lambda: &Tensor<1>) -> (f64, f64, f64) {
    if lambda.dims()[0] == 0 {
        return (0.0, 0.0, 0.0);
    }
    let abs = lambda.clone().abs();
    let linf = abs.clone().max().into_scalar::<f64>();
    // ℓ₂ of λ/‖λ‖∞ (entries in [-1, 1]) cannot overflow or underflow f32 as λ² can
    // (|λ| above ~1.8e19 or below ~1e-23).
    let scale = if linf > 0.0 { linf } else { 1.0 };
    let l2 = abs
        .clone()
        .div_scalar(scale)
        .square()
        .sum()
        .into_scalar::<f64>()
        .sqrt()
        * scale;
    (abs.sum().into_scalar::<f64>(), l2, linf)
}

#[cfg(test)]
mod tests;

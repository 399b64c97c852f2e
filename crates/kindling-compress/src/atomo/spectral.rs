use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, RngExt};

use rayon::prelude::*;

use super::{Atomo, probabilities};
use crate::codec::host_decoders;
use crate::codec::{as_matrix, decompress_on_host, invalid, l1_norm_checked, matrix_view};
use crate::host::{self, HostGrad, Sink, g_times, gt_times, is_host_device};
use crate::payload::{Reader, Writer};
use crate::powersgd::orthonormalize;
use crate::simd;
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload, PayloadRef};

/// Spectral atoms: the singular vectors of the gradient's [matrix view](crate::matrix_view),
/// `G = Σ_i σ_i u_i v_iᵀ`, atoms `u_i v_iᵀ`, `λ = σ`.
///
/// The SVD runs on the host (the gradient is detached): one-sided Jacobi in f64 when the smaller
/// side is at most 256 (robust on the rank-deficient gradients of networks with dead units),
/// faer's divide-and-conquer SVD in f32 beyond. For large matrices, [`Spectral::truncated`] uses a randomized rank-r SVD (Halko, Martinsson & Tropp
/// 2011: a random test matrix, power iterations with QR re-orthonormalisation, an SVD of the
/// small projected matrix): faster, but the discarded tail makes the estimator biased.
///
/// Wire: header (5 + 4·rank), `k` (u32), then for each of the `k` sent atoms its coefficient
/// `σ_i/p_i` (f32), `u_i` (`rows` f32) and `v_i` (`cols` f32): `4 + 4k·(rows + cols + 1)` body
/// bytes.
#[derive(Debug, Clone, Copy)]
pub struct Spectral {
    rank: Option<usize>,
    power_iterations: usize,
}

impl Default for Spectral {
    fn default() -> Self {
        Self {
            rank: None,
            power_iterations: 2,
        }
    }
}

impl Spectral {
    /// The full SVD (unbiased).
    pub fn full() -> Self {
        Self::default()
    }

    /// A randomized rank-`rank` SVD with `power_iterations` power iterations (2 is typical).
    pub fn truncated(rank: usize, power_iterations: usize) -> Result<Self, CompressError> {
        if rank == 0 {
            return Err(invalid("Spectral", "rank", rank, "must be ≥ 1"));
        }
        Ok(Self {
            rank: Some(rank),
            power_iterations,
        })
    }

    /// `(U [rows, m], σ [m], Vᵀ [m, cols])`.
    fn decompose(&self, g: Tensor<2>, rng: &mut dyn Rng) -> (Tensor<2>, Vec<f32>, Tensor<2>) {
        let [rows, cols] = g.dims();
        let m = rows.min(cols);
        match self.rank {
            Some(r) if r + 5 < m => {
                let l = r + 5;
                let device = g.device();
                let omega: Vec<f32> = (0..cols * l).map(|_| rng.random_range(-1.0..1.0)).collect();
                let omega = Tensor::<2>::from_data(TensorData::new(omega, [cols, l]), &device);
                let mut q = orthonormal_basis(g.clone().matmul(omega));
                for _ in 0..self.power_iterations {
                    let z = orthonormal_basis(g.clone().transpose().matmul(q));
                    q = orthonormal_basis(g.clone().matmul(z));
                }
                // The projected matrix is small (l × cols): Jacobi on the host.
                let (ub, sigma, vt) = host_svd(q.clone().transpose().matmul(g));
                let u = q.matmul(ub);
                (
                    u.slice([0..rows, 0..r]),
                    sigma[..r].to_vec(),
                    vt.slice([0..r, 0..cols]),
                )
            }
            _ => host_svd(g),
        }
    }
}

/// A decomposition's factors read back to the host, row-major.
fn to_host((u, sigma, vt): (Tensor<2>, Vec<f32>, Tensor<2>)) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        u.try_into_vec_as().expect("U"),
        sigma,
        vt.try_into_vec_as().expect("V"),
    )
}

/// Matrices whose smaller side is at most this are decomposed by one-sided Jacobi in f64;
/// larger ones by faer's SVD in f32.
const JACOBI_MAX: usize = 256;

/// The full SVD of a detached gradient on the host, read from any device: `(U, σ, Vᵀ)` as
/// tensors on its device (see [`full_svd`]).
fn host_svd(g: Tensor<2>) -> (Tensor<2>, Vec<f32>, Tensor<2>) {
    let [rows, cols] = g.dims();
    let device = g.device();
    let values: Vec<f32> = g.try_into_vec_as::<f32>().expect("gradient values");
    let (u, sigma, vt) = full_svd(&values, rows, cols).into_full();
    let k = sigma.len();
    (
        Tensor::from_data(TensorData::new(u, [rows, k]), &device),
        sigma,
        Tensor::from_data(TensorData::new(vt, [k, cols]), &device),
    )
}

/// The full SVD of a row-major `rows × cols` matrix: `(U [rows, k], σ [k], Vᵀ [k, cols])`,
/// `k = min(rows, cols)`, σ descending, row-major f32. Up to [`JACOBI_MAX`] on the smaller side
/// by one-sided (Hestenes) Jacobi rotations in f64 ([`jacobi_svd`]; preconditioned by a pivoted
/// QR when one side is at least twice the other): robust on rank-deficient gradients (dead ReLU
/// units give exact zero singular values, where QR-iteration SVDs can fail to converge); a zero
/// singular value gets a zero singular vector, which ATOMO never sends (its probability is 0).
/// Larger matrices by faer's bidiagonal divide-and-conquer SVD in f32 (Jacobi is cubic per
/// sweep), with Jacobi as the fallback should it not converge.
fn full_svd(g: &[f32], rows: usize, cols: usize) -> Svd {
    let jacobi = || {
        let values: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        jacobi_svd(values, rows, cols)
    };
    if rows.min(cols) <= JACOBI_MAX {
        return jacobi();
    }
    let a = faer::MatRef::from_row_major_slice(g, rows, cols);
    let Ok(svd) = a.thin_svd() else {
        return jacobi();
    };
    let k = rows.min(cols);
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
    let u_rows: Vec<f32> = (0..rows)
        .flat_map(|r| order.iter().map(move |&j| u[(r, j)]))
        .collect();
    let vt: Vec<f32> = order
        .iter()
        .flat_map(|&j| (0..cols).map(move |c| v[(c, j)]))
        .collect();
    // Singular values below the f32 rounding of the matrix itself (max(rows, cols)·ε·σ₁, the
    // usual numerical-rank cut) are zeros the decomposition did not resolve: zero, as Jacobi
    // leaves exact zeros, so ATOMO never sends their noise directions.
    let floor = rows.max(cols) as f32 * f32::EPSILON * s[order[0]];
    let sigma = order
        .iter()
        .map(|&j| if s[j] > floor { s[j] } else { 0.0 })
        .collect();
    Svd::full(u_rows, sigma, vt, rows, cols)
}

/// A singular value decomposition `G = Σ_i σ_i·u_i·v_iᵀ` read an atom `(σ_i, u_i, v_i)` at a time
/// (ATOMO sends a few of them): whole factors (faer's SVD, the randomized path, a device's), or
/// the Jacobi SVD's, which keeps one side's singular vectors and computes the other side's for
/// the atoms asked for, `u_i = G·v_i/σ_i` or `v_i = Gᵀ·u_i/σ_i`. So `σ_i·u_i·v_iᵀ` is `G·v_i·v_iᵀ`
/// (or `u_i·u_iᵀ·G`) and the atoms add up to `G` as exactly as the kept side is orthonormal; the
/// computed side's vectors are unit to about `ε·σ₁/σ_i`.
struct Svd {
    /// Singular values, descending.
    sigma: Vec<f32>,
    rows: usize,
    cols: usize,
    factors: Factors,
}

enum Factors {
    /// `U [rows, k]` and `Vᵀ [k, cols]`, row-major.
    Full { u: Vec<f32>, vt: Vec<f32> },
    /// The matrix (row-major, f64) and, in σ order, one side's singular vectors: the left ones
    /// (`rows` entries) when `left`, else the right ones (`cols` entries).
    Kept {
        g: Vec<f64>,
        kept: Vec<Vec<f64>>,
        left: bool,
    },
}

impl Svd {
    /// Whole factors: `U [rows, k]`, `σ [k]` descending, `Vᵀ [k, cols]`, row-major.
    fn full(u: Vec<f32>, sigma: Vec<f32>, vt: Vec<f32>, rows: usize, cols: usize) -> Self {
        Self {
            sigma,
            rows,
            cols,
            factors: Factors::Full { u, vt },
        }
    }

    /// The singular values, descending.
    fn sigma(&self) -> &[f32] {
        &self.sigma
    }

    /// Atom `i`'s singular vectors `(u_i [rows], v_i [cols])`; zeros for a zero σ.
    fn atom(&self, i: usize) -> (Vec<f32>, Vec<f32>) {
        let (rows, cols) = (self.rows, self.cols);
        match &self.factors {
            Factors::Full { u, vt } => {
                let k = self.sigma.len();
                (
                    (0..rows).map(|r| u[r * k + i]).collect(),
                    vt[i * cols..(i + 1) * cols].to_vec(),
                )
            }
            Factors::Kept { g, kept, left } => {
                let s = self.sigma[i] as f64;
                let x = &kept[i];
                let other: Vec<f64> = if s == 0.0 {
                    vec![0.0; if *left { cols } else { rows }]
                } else if *left {
                    // v = Gᵀ·u/σ, accumulated row by row of G.
                    let mut v = vec![0.0f64; cols];
                    for (row, &ur) in g.chunks_exact(cols).zip(x) {
                        v.iter_mut().zip(row).for_each(|(v, &g)| *v += g * ur);
                    }
                    v.iter().map(|v| v / s).collect()
                } else {
                    g.chunks_exact(cols).map(|row| dot(row, x) / s).collect()
                };
                let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
                match left {
                    true => (narrow(x), narrow(&other)),
                    false => (narrow(&other), narrow(x)),
                }
            }
        }
    }

    /// Whole factors `(U [rows, k], σ [k], Vᵀ [k, cols])`, row-major.
    fn into_full(self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        if let Factors::Full { u, vt } = self.factors {
            return (u, self.sigma, vt);
        }
        let (rows, cols, k) = (self.rows, self.cols, self.sigma.len());
        let (mut u, mut vt) = (vec![0f32; rows * k], Vec::with_capacity(k * cols));
        for i in 0..k {
            let (ui, vi) = self.atom(i);
            for (r, x) in ui.into_iter().enumerate() {
                u[r * k + i] = x;
            }
            vt.extend(vi);
        }
        (u, self.sigma, vt)
    }
}

/// [`full_svd`] by one-sided Jacobi in f64 of the row-major `rows × cols` matrix `values`
/// (kept in the [`Svd`], which computes one side's singular vectors from it).
fn jacobi_svd(values: Vec<f64>, rows: usize, cols: usize) -> Svd {
    // Work on the orientation with at least as many rows as columns: A = G or Gᵀ, m ≥ n.
    let transposed = rows < cols;
    let (m, n) = if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let at = |i: usize, j: usize| {
        if transposed {
            values[j * cols + i]
        } else {
            values[i * cols + j]
        }
    };
    // Column-major A for cheap column rotations.
    let mut a: Vec<Vec<f64>> = (0..n).map(|j| (0..m).map(|i| at(i, j)).collect()).collect();
    // A tall A (m ≥ 2n, as an MLP layer's gradient or the randomized path's small B) is first
    // reduced by Householder QR with column pivoting, A·P = Q·R, and the rotations run on the
    // n × n matrix Rᵀ (Drmač & Veselić's preconditioned Jacobi, as LAPACK's dgejsv): its columns
    // are nearly orthogonal already, so it takes fewer sweeps than A or R, and the pivoting puts
    // a rank-deficient A's rounding residue in R's last rows, which the sweeps then leave alone.
    // Rᵀ·V_x = W·Σ gives A = (Q·V_x)·Σ·(P·W)ᵀ: the right singular vectors are P·W, and neither
    // V_x nor Q is formed (the left ones are A·v/σ, for the atoms asked for).
    let (residue, pivots) = simd::wide!({
        if m >= 2 * n {
            let (pivots, rank) = householder_qr(&mut a);
            // Rᵀ's columns are R's rows; those past the numerical rank are dropped (zero).
            a = (0..rank)
                .map(|i| a.iter().map(|col| col[i]).collect())
                .collect();
            let residue = jacobi_sweeps(&mut a);
            a.resize(n, vec![0.0; n]);
            (residue, Some(pivots))
        } else {
            (jacobi_sweeps(&mut a), None)
        }
    });
    // A column left at rounding residue is a zero singular value, as the larger matrices' SVD
    // cuts at its numerical rank: ATOMO never sends its noise direction.
    let sigma: Vec<f64> = a
        .iter()
        .map(|col| col.iter().map(|x| x * x).sum::<f64>().sqrt())
        .map(|s| if s <= residue { 0.0 } else { s })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| sigma[y].total_cmp(&sigma[x]));
    // The rotated columns divided by their σ (zero for a zero σ) are A's singular vectors of
    // one side: without the QR the left ones (A·V = Û·Σ), with it the right ones, `P·a_j/σ_j`
    // (row k of W is row pivots[k] of V). For Gᵀ the sides swap.
    let kept: Vec<Vec<f64>> = order
        .iter()
        .map(|&j| {
            let s = sigma[j];
            let scaled = a[j].iter().map(|x| if s > 0.0 { x / s } else { 0.0 });
            match &pivots {
                None => scaled.collect(),
                Some(pivots) => {
                    let mut right = vec![0.0; n];
                    for (k, x) in scaled.enumerate() {
                        right[pivots[k]] = x;
                    }
                    right
                }
            }
        })
        .collect();
    Svd {
        sigma: order.iter().map(|&j| sigma[j] as f32).collect(),
        rows,
        cols,
        factors: Factors::Kept {
            g: values,
            kept,
            left: pivots.is_none() != transposed,
        },
    }
}

/// One-sided Jacobi: rotates pairs of columns of `a` until every pair is orthogonal to working
/// precision. The rotations are not accumulated: the singular vectors they would give are
/// computed from the matrix for the atoms that need them (see [`Svd`]). Each sweep takes the
/// columns' squared norms once and updates them with each rotation; the dot products run in
/// lanes (the same sums at any vector level).
///
/// A column whose norm is below the matrix's own f64 rounding (`len·ε·` the largest column norm)
/// is rounding residue, as a rank-deficient gradient leaves (a linear layer's over a batch of 16
/// has rank ≤ 16): it is not rotated. Rotating residue only moves residue, and took up to 16
/// sweeps where a full-rank matrix takes 9. Returns that bound on a residue column's norm: the
/// caller counts those columns' singular values as zeros.
#[inline(always)]
fn jacobi_sweeps(a: &mut [Vec<f64>]) -> f64 {
    let n = a.len();
    let residue = {
        let len = a.first().map_or(0, Vec::len) as f64;
        let largest = a.iter().map(|col| dot(col, col)).fold(0.0, f64::max);
        len * f64::EPSILON * largest.sqrt()
    };
    let floor = residue * residue;
    for _sweep in 0..60 {
        let mut norms: Vec<f64> = a.iter().map(|col| dot(col, col)).collect();
        let mut rotated = false;
        for p in 0..n {
            if norms[p] <= floor {
                continue;
            }
            for q in p + 1..n {
                let (alpha, beta) = (norms[p], norms[q]);
                if beta <= floor {
                    continue;
                }
                let gamma = dot(&a[p], &a[q]);
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(a, p, q, c, s);
                let cross = 2.0 * c * s * gamma;
                norms[p] = c * c * alpha - cross + s * s * beta;
                norms[q] = s * s * alpha + cross + c * c * beta;
            }
        }
        if !rotated {
            break;
        }
    }
    residue
}

/// Householder QR with column pivoting of the `m × n` matrix whose columns are `a` (m ≥ n):
/// `A·P = H_0·H_1·…·H_{n−1}·[R; 0]`. Step k brings forward the remaining column with the largest
/// norm below row k (the lowest index on ties), so R's diagonal falls and a rank-deficient A's
/// residue gathers in R's last rows. `a` becomes the columns of the `n × n` upper triangle R (Q
/// is not kept: the SVD does without it); returns the pivots (column k of A·P is column
/// `pivots[k]` of A) and the numerical rank `r`: R's rows from `r` on are left out (taken as
/// zero, and not computed).
///
/// **Numerical rank.** The gradients come in f32, so an entry is known only to about
/// `ε₃₂ = 2⁻²³` of its size. The factorization stops at step k when every remaining column's
/// norm below row k is under `m·ε₃₂/√n` of the largest column of A: the block it drops then has
/// a Frobenius norm under `m·ε₃₂·‖A‖₂`, the cut below which faer (as LAPACK) calls a singular
/// value zero. A layer's gradient over a batch of 16 has rank ≤ 16 plus f32 rounding, so its
/// 64 × 256 QR stops after 16 of its 64 steps, and the sweeps run on 16 columns instead of 64.
#[inline(always)]
fn householder_qr(a: &mut [Vec<f64>]) -> (Vec<usize>, usize) {
    let n = a.len();
    let mut pivots: Vec<usize> = (0..n).collect();
    // Each column's squared norm below row k, downdated as the rows are eliminated and taken
    // again when the downdate has cancelled most of it (`taken`: its value when last taken).
    // Only the pivots' order depends on them, not the factorization's exactness.
    let mut norms: Vec<f64> = a.iter().map(|col| dot(col, col)).collect();
    let mut taken = norms.clone();
    let m = a.first().map_or(0, Vec::len);
    let largest = norms.iter().fold(0.0f64, |l, &x| l.max(x));
    let floor = (m as f64 * f32::EPSILON as f64).powi(2) / n as f64 * largest;
    let mut rank = n;
    for k in 0..n {
        let best = (k..n).fold(k, |b, j| if norms[j] > norms[b] { j } else { b });
        a.swap(k, best);
        pivots.swap(k, best);
        norms.swap(k, best);
        taken.swap(k, best);
        if norms[k] < floor {
            rank = k;
            break;
        }
        // Built from x / max|x|: the reflector does not depend on x's scale, and a column of
        // rounding residue (after the reflections of a rank-deficient matrix its entries reach
        // ~1e-162) would otherwise square to zero and give an infinite scale.
        let x = &a[k][k..];
        let big = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if big == 0.0 {
            continue;
        }
        let mut h: Vec<f64> = x.iter().map(|v| v / big).collect();
        let norm = dot(&h, &h).sqrt();
        // H·x = alpha·big·e₀ with alpha of the sign opposite to x₀ (no cancellation in h₀).
        let alpha = if h[0] > 0.0 { -norm } else { norm };
        h[0] -= alpha;
        let scale = (2.0 / dot(&h, &h)).sqrt();
        h.iter_mut().for_each(|e| *e *= scale);
        a[k][k] = alpha * big;
        a[k][k + 1..].fill(0.0);
        for (j, col) in a.iter_mut().enumerate().skip(k + 1) {
            reflect(&h, &mut col[k..]);
            norms[j] -= col[k] * col[k];
            if norms[j] <= 1e-6 * taken[j] {
                norms[j] = dot(&col[k + 1..], &col[k + 1..]);
                taken[j] = norms[j];
            }
        }
    }
    for col in a.iter_mut() {
        col.truncate(n);
    }
    (pivots, rank)
}

/// `y ← (I − h·hᵀ)·y`.
#[inline(always)]
fn reflect(h: &[f64], y: &mut [f64]) {
    let d = dot(h, y);
    for (y, &h) in y.iter_mut().zip(h) {
        *y -= d * h;
    }
}

/// `Σ x·y` in eight lanes, added up in lane order: it vectorises, and gives the same sum at
/// every vector level.
#[inline(always)]
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let (xs, ys) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f64 = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xs.zip(ys) {
        for k in 0..8 {
            lanes[k] += a[k] * b[k];
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Applies the Jacobi rotation `(c, s)` to columns `p < q`: `(x, y) ← (c·x − s·y, s·x + c·y)`.
#[inline(always)]
fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (low, high) = cols.split_at_mut(q);
    for (x, y) in low[p].iter_mut().zip(high[0].iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}

/// The host randomized rank-`r` SVD of a row-major `rows × cols` matrix (the same draws and steps
/// as the device path): `Y = GΩ`, `power_iterations` rounds of `Q ← orth(G·orth(GᵀQ))`, then the
/// Jacobi SVD of the small `B = QᵀG`. Returns `(U [rows, r], σ [r], Vᵀ [r, cols])`, row-major.
fn randomized_host(
    g: &[f32],
    rows: usize,
    cols: usize,
    r: usize,
    power_iterations: usize,
    rng: &mut dyn Rng,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let l = r + 5;
    let omega: Vec<f32> = (0..cols * l).map(|_| rng.random_range(-1.0..1.0)).collect();
    let orthonormal = |mut y: Vec<f32>, rows: usize| {
        orthonormalize(&mut y, rows, l, 0.0);
        y
    };
    let mut q = orthonormal(g_times(g, rows, cols, &omega, l), rows);
    for _ in 0..power_iterations {
        let z = orthonormal(gt_times(g, rows, cols, &q, l), cols);
        q = orthonormal(g_times(g, rows, cols, &z, l), rows);
    }
    // B = QᵀG = (GᵀQ)ᵀ: l × cols.
    let bt = gt_times(g, rows, cols, &q, l);
    let b: Vec<f64> = (0..l * cols)
        .map(|i| bt[(i % cols) * l + i / cols] as f64)
        .collect();
    let (ub, sigma, vt) = jacobi_svd(b, l, cols).into_full();
    // U = Q·Ub, keeping the first r columns.
    let mut u = vec![0f32; rows * r];
    for (row, q_row) in u.chunks_mut(r).zip(q.chunks(l)) {
        for (c, slot) in row.iter_mut().enumerate() {
            *slot = (0..l).map(|t| q_row[t] * ub[t * l + c]).sum();
        }
    }
    (u, sigma[..r].to_vec(), vt[..r * cols].to_vec())
}

fn orthonormal_basis(y: Tensor<2>) -> Tensor<2> {
    burn::linalg::qr(y, true).0
}

impl Compressor for Atomo<Spectral> {
    fn codec(&self) -> CodecId {
        CodecId::AtomoSpectral
    }

    fn is_unbiased(&self) -> bool {
        self.atoms.rank.is_none()
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let shape = grad.dims();
        let (rows, cols) = matrix_view(&shape);
        if rows * cols == 0 {
            l1_norm_checked(&grad)?;
            let mut w = Writer::new(CodecId::AtomoSpectral, 0, &shape, 4)?;
            w.u32(0);
            return Ok(w.finish());
        }
        // Host devices: the whole decomposition on host memory (the full SVD, or the randomized
        // SVD with host matmuls).
        let device = grad.device();
        let svd = if is_host_device(&device) {
            let host = HostGrad::read(grad);
            let g = host.values();
            host::max_abs(g)?;
            match self.atoms.rank {
                Some(r) if r + 5 < rows.min(cols) => {
                    let (u, sigma, vt) =
                        randomized_host(g, rows, cols, r, self.atoms.power_iterations, rng);
                    Svd::full(u, sigma, vt, rows, cols)
                }
                _ => full_svd(g, rows, cols),
            }
        } else {
            l1_norm_checked(&grad)?;
            let (u, sigma, vt) = to_host(self.atoms.decompose(as_matrix(grad.detach()), rng));
            Svd::full(u, sigma, vt, rows, cols)
        };
        let sigma = svd.sigma();
        // Finite entries whose singular values overflow f32 would make the probabilities NaN
        // and send no atom at all: a typed error instead of a silently zero gradient.
        if sigma.iter().any(|s| !s.is_finite()) {
            return Err(CompressError::Overflow);
        }
        let m = sigma.len();
        let l1: f64 = sigma.iter().map(|&x| x as f64).sum();
        let l2: f64 = sigma
            .iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let linf = sigma.first().copied().unwrap_or(0.0) as f64;
        let s = self.budget.resolve(m, l1, l2, linf);
        let p = probabilities(sigma, s);
        let sent: Vec<usize> = (0..m)
            .filter(|&i| p[i] > 0.0 && rng.random::<f64>() < p[i])
            .collect();
        let k = sent.len();
        let mut w = Writer::new(
            CodecId::AtomoSpectral,
            0,
            &shape,
            4 + 4 * k * (rows + cols + 1),
        )?;
        w.u32(k as u32);
        for &i in &sent {
            let scale = (sigma[i] as f64 / p[i]) as f32;
            let (u, v) = svd.atom(i);
            if !(scale.is_finite() && u.iter().chain(&v).all(|x| x.is_finite())) {
                return Err(CompressError::Overflow);
            }
            w.f32(scale);
            w.f32s(&u);
            w.f32s(&v);
        }
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        if is_host_device(device) {
            return decompress_on_host(self, payload, device);
        }
        let (header, shape, r) = payload.open::<D>(CodecId::AtomoSpectral)?;
        let (rows, cols) = matrix_view(&header.shape);
        let floats = read_atoms(r, rows, cols)?;
        let per_atom = rows + cols + 1;
        let k = floats.len() / per_atom;
        if k == 0 {
            return Ok(Tensor::zeros(shape, device));
        }
        let mut us = Vec::with_capacity(k * rows);
        let mut vs = Vec::with_capacity(k * cols);
        for atom in floats.chunks_exact(per_atom) {
            let coef = atom[0];
            us.extend_from_slice(&atom[1..=rows]);
            vs.extend(atom[rows + 1..].iter().map(|v| v * coef));
        }
        let u = Tensor::<2>::from_data(TensorData::new(us, [k, rows]), device);
        let v = Tensor::<2>::from_data(TensorData::new(vs, [k, cols]), device);
        Ok(u.transpose().matmul(v).reshape(shape))
    }
    host_decoders!(payload, out, sink => decode_host(payload, out, sink));
}

/// Reads and checks the atoms of a spectral body over a `rows × cols` matrix: per atom its
/// coefficient, `u` and `v`, all finite, with a sum that cannot overflow f32.
fn read_atoms(mut r: Reader<'_>, rows: usize, cols: usize) -> Result<Vec<f32>, DecodeError> {
    let k = r.u32("atom count")? as usize;
    if k > rows.min(cols) {
        return Err(DecodeError::FieldOutOfRange {
            field: "atom count",
            value: k as u64,
            reason: "exceeds min(rows, cols)",
        });
    }
    let per_atom = rows + cols + 1;
    let floats = r.f32s("spectral atoms", k * per_atom)?;
    r.finish()?;
    // |Σ_k c_k u_k v_kᵀ| ≤ Σ_k |c_k|·max|u_k|·max|v_k| bounds every entry and every partial
    // sum of the product. With each max taken at least 1 the bound also covers the partial
    // products c_k·u_k and c_k·v_k a decoder forms first (a hostile atom may pair a huge
    // coefficient with tiny vectors). Below f32::MAX, finite atoms rebuild a finite gradient in
    // any order of evaluation; the encoder's atoms (unit vectors) meet the plain bound.
    let bound: f64 = floats
        .chunks_exact(per_atom)
        .map(|atom| {
            let max = |xs: &[f32]| xs.iter().fold(1f64, |m, x| m.max(x.abs() as f64));
            (atom[0].abs() as f64) * max(&atom[1..=rows]) * max(&atom[rows + 1..])
        })
        .sum();
    if bound >= f32::MAX as f64 {
        return Err(DecodeError::FieldOutOfRange {
            field: "spectral atoms",
            value: k as u64,
            reason: "their sum would overflow f32",
        });
    }
    Ok(floats)
}

/// The host decoder: `Σ_k c_k·u_k v_kᵀ`, row by row in parallel.
fn decode_host<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (header, r) = payload.open_into(CodecId::AtomoSpectral, out)?;
    let (rows, cols) = matrix_view(&header.shape);
    let floats = read_atoms(r, rows, cols)?;
    if out.is_empty() {
        return Ok(());
    }
    let atoms: Vec<&[f32]> = floats.chunks_exact(rows + cols + 1).collect();
    out.par_chunks_mut(cols).enumerate().for_each_init(
        || vec![0f32; cols],
        |acc, (i, row)| {
            simd::wide!({
                acc.fill(0.0);
                for atom in &atoms {
                    let w = atom[0] * atom[1 + i];
                    for (a, &v) in acc.iter_mut().zip(&atom[rows + 1..]) {
                        *a += w * v;
                    }
                }
                for (slot, &v) in row.iter_mut().zip(acc.iter()) {
                    sink.put(slot, v);
                }
            })
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row-major `rows × cols` matrix of a fixed pseudo-random stream in [−1, 1).
    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
        crate::test_stream::xorshift(seed)
            .take(rows * cols)
            .map(|state| (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
            .collect()
    }

    /// `rows × cols` of rank `rank`: a product of two random factors (an outer-product sum, as a
    /// linear layer's gradient over a batch).
    fn low_rank(rows: usize, cols: usize, rank: usize) -> Vec<f64> {
        let (x, y) = (matrix(rows, rank, 11), matrix(rank, cols, 12));
        (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                (0..rank).map(|k| x[r * rank + k] * y[k * cols + c]).sum()
            })
            .collect()
    }

    /// A 64 × 256 linear layer's weight gradient `Xᵀ·Δ` over a batch of `batch`, summed in f32 as
    /// a backward pass does: 29 of the 64 inputs are blank (zero, as the digits' edge pixels) and
    /// 82 of the 256 units dead (zero deltas).
    fn layer_gradient(batch: usize) -> Vec<f64> {
        let (x, d) = (matrix(batch, 64, 21), matrix(batch, 256, 22));
        let mut g = vec![0.0; 64 * 256];
        for i in (0..64).filter(|i| i % 2 == 1 || *i < 6) {
            for u in (0..256).filter(|u| u % 3 != 0 || *u < 12) {
                let sum: f32 = (0..batch)
                    .map(|b| x[b * 64 + i] as f32 * d[b * 256 + u] as f32)
                    .sum();
                g[i * 256 + u] = sum as f64;
            }
        }
        g
    }

    /// A real one: the digits MLP's first-layer gradient (64 inputs × 256 hidden units, batch 16,
    /// 35 blank inputs and 81 dead units) from `data-parallel --protocol atomo --hidden 256`,
    /// little-endian f32. Its QR meets a column of rounding residue near 1e-162, on which a
    /// reflector built without rescaling was NaN (training then failed in epoch 2).
    fn digits_layer_gradient() -> Vec<f64> {
        include_bytes!("../../tests/data/digits-mlp-layer-gradient-64x256.f32")
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
            .collect()
    }

    /// `jacobi_svd` against its definition: `U·diag(σ)·Vᵀ = G`, σ descending and equal to faer's,
    /// orthonormal singular vectors where σ > 10⁻⁶·σ₁ (the side computed from the matrix is unit
    /// to about ε·σ₁/σ). Tall and wide matrices take the pivoted-QR path (m ≥ 2n after
    /// orientation), square ones the plain rotations; the rank-deficient ones
    /// have zero and repeated columns (dead and duplicate units), so some Householder steps meet
    /// a column that is already zero.
    /// The QR stops at the f32 input's numerical rank: a batch-of-16 layer gradient (f32 sums)
    /// and an exact rank-16 product stop after 16 steps, the real digits gradient (batch 16)
    /// by then too, and a full-rank matrix runs all its steps.
    #[test]
    fn the_qr_stops_at_the_numerical_rank() {
        let rank = |rows: usize, cols: usize, g: Vec<f64>| {
            let mut a: Vec<Vec<f64>> = (0..cols)
                .map(|j| (0..rows).map(|i| g[i * cols + j]).collect())
                .collect();
            householder_qr(&mut a).1
        };
        let transposed = |g: Vec<f64>| -> Vec<f64> {
            (0..64 * 256).map(|i| g[(i % 64) * 256 + i / 64]).collect()
        };
        assert_eq!(rank(256, 64, low_rank(256, 64, 16)), 16);
        assert_eq!(rank(256, 64, transposed(layer_gradient(16))), 16);
        assert!(rank(256, 64, transposed(digits_layer_gradient())) <= 16);
        assert_eq!(rank(256, 64, matrix(256, 64, 1)), 64);
    }

    #[test]
    fn jacobi_svd_decomposes_tall_wide_square_and_rank_deficient_matrices() {
        let deficient = |rows: usize, cols: usize| {
            let mut g = matrix(rows, cols, 7);
            for r in 0..rows {
                g[r * cols + 1] = 0.0;
                g[r * cols + 3] = g[r * cols];
                g[r * cols + 5] = 2.0 * g[r * cols + 2] - g[r * cols + 4];
            }
            g
        };
        let cases = [
            (256, 64, matrix(256, 64, 1)),
            (64, 256, matrix(64, 256, 2)),
            (1000, 3, matrix(1000, 3, 3)),
            (50, 1, matrix(50, 1, 4)),
            (48, 48, matrix(48, 48, 5)),
            (200, 20, deficient(200, 20)),
            (20, 200, {
                let g = deficient(200, 20);
                (0..20 * 200).map(|i| g[(i % 200) * 20 + i / 200]).collect()
            }),
            (30, 10, vec![0.0; 300]),
            // A linear layer's gradient over a batch of 16: rank 16 of 64; then also with the
            // zero rows and columns of blank pixels and dead units, whose rounding residue
            // after a few reflections is ~1e-162 (a reflector built from it unscaled is NaN).
            (64, 256, low_rank(64, 256, 16)),
            (256, 64, low_rank(256, 64, 16)),
            (64, 256, layer_gradient(16)),
            (64, 256, layer_gradient(4)),
            (64, 256, digits_layer_gradient()),
        ];
        for (rows, cols, g) in cases {
            let (u, sigma, vt) = jacobi_svd(g.clone(), rows, cols).into_full();
            let k = rows.min(cols);
            let name = format!("{rows} × {cols}");
            assert!(
                u.iter().chain(&sigma).chain(&vt).all(|x| x.is_finite()),
                "{name}: non-finite output"
            );
            assert!(
                sigma.windows(2).all(|w| w[0] >= w[1]),
                "{name}: σ not descending"
            );
            let scale = sigma[0].max(f32::MIN_POSITIVE) as f64;
            for r in 0..rows {
                for c in 0..cols {
                    let x: f64 = (0..k)
                        .map(|j| u[r * k + j] as f64 * sigma[j] as f64 * vt[j * cols + c] as f64)
                        .sum();
                    assert!(
                        (x - g[r * cols + c]).abs() <= 1e-5 * scale,
                        "{name}: entry ({r}, {c}) is {x}, not {}",
                        g[r * cols + c]
                    );
                }
            }
            let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            let faer = faer::MatRef::from_row_major_slice(&g32, rows, cols)
                .singular_values()
                .unwrap();
            for (j, (&ours, &theirs)) in sigma.iter().zip(&faer).enumerate() {
                assert!(
                    (ours as f64 - theirs as f64).abs() <= 1e-5 * scale,
                    "{name}: σ_{j} = {ours}, faer {theirs}"
                );
            }
            let live: Vec<usize> = (0..k).filter(|&j| sigma[j] > 1e-6 * sigma[0]).collect();
            for &p in &live {
                for &q in &live {
                    let uu: f64 = (0..rows)
                        .map(|r| u[r * k + p] as f64 * u[r * k + q] as f64)
                        .sum();
                    let vv: f64 = (0..cols)
                        .map(|c| vt[p * cols + c] as f64 * vt[q * cols + c] as f64)
                        .sum();
                    let want = (p == q) as u8 as f64;
                    assert!((uu - want).abs() < 1e-5, "{name}: uᵀu[{p}, {q}] = {uu}");
                    assert!((vv - want).abs() < 1e-5, "{name}: vᵀv[{p}, {q}] = {vv}");
                }
            }
        }
    }
}

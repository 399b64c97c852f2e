use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, RngExt};

use super::{Atomo, probabilities};
use crate::codec::{as_matrix, invalid, l1_norm_checked, matrix_view};
use crate::payload::Writer;
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Spectral atoms: the singular vectors of the gradient's [matrix view](crate::matrix_view),
/// `G = Σ_i σ_i u_i v_iᵀ`, atoms `u_i v_iᵀ`, `λ = σ`.
///
/// The SVD is one-sided Jacobi in f64 on the host when the smaller side is at most 256 (robust on
/// the rank-deficient gradients of networks with dead units), burn's `linalg::svd` beyond (the
/// gradient is detached). For large matrices, [`Spectral::truncated`] uses a randomized rank-r SVD (Halko, Martinsson & Tropp
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
    sweeps: usize,
}

impl Default for Spectral {
    fn default() -> Self {
        Self {
            rank: None,
            power_iterations: 2,
            sweeps: 64,
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
            sweeps: 64,
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
            _ if m <= JACOBI_MAX => host_svd(g),
            _ => {
                let (u, s, vt) = burn::linalg::svd::<2, 1>(g, self.sweeps);
                (u, s.try_into_vec_as().expect("singular values"), vt)
            }
        }
    }
}

/// Matrices whose smaller side is at most this are decomposed by one-sided Jacobi on the host;
/// larger ones by burn's `linalg::svd`.
const JACOBI_MAX: usize = 256;

/// SVD by one-sided (Hestenes) Jacobi rotations in f64 on the host: `(U, σ, Vᵀ)` with σ
/// descending. Robust on rank-deficient gradients (dead ReLU units give exact zero singular
/// values, where QR-iteration SVDs can fail to converge); a zero singular value gets a zero
/// singular vector, which ATOMO never sends (its probability is 0).
fn host_svd(g: Tensor<2>) -> (Tensor<2>, Vec<f32>, Tensor<2>) {
    let [rows, cols] = g.dims();
    let device = g.device();
    let values: Vec<f64> = g.try_into_vec_as::<f64>().expect("gradient values");
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
    // Column-major A and V for cheap column rotations.
    let mut a: Vec<Vec<f64>> = (0..n).map(|j| (0..m).map(|i| at(i, j)).collect()).collect();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| (i == j) as u8 as f64).collect())
        .collect();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let alpha: f64 = a[p].iter().map(|x| x * x).sum();
                let beta: f64 = a[q].iter().map(|x| x * x).sum();
                let gamma: f64 = a[p].iter().zip(&a[q]).map(|(x, y)| x * y).sum();
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut a, p, q, c, s);
                rotate(&mut v, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let sigma: Vec<f64> = a
        .iter()
        .map(|col| col.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| sigma[y].total_cmp(&sigma[x]));
    // A = Û Σ Vᵀ with Û's columns a_j/σ_j. For G itself: G = Û Σ Vᵀ; for Gᵀ: G = V Σ Ûᵀ.
    let left = |j: usize| -> Vec<f64> {
        let s = sigma[j];
        a[j].iter()
            .map(|x| if s > 0.0 { x / s } else { 0.0 })
            .collect()
    };
    let (u_cols, v_cols): (Vec<Vec<f64>>, Vec<Vec<f64>>) = order
        .iter()
        .map(|&j| {
            if transposed {
                (v[j].clone(), left(j))
            } else {
                (left(j), v[j].clone())
            }
        })
        .unzip();
    let k = n;
    let mut u = vec![0.0f32; rows * k];
    for (c, col) in u_cols.iter().enumerate() {
        for (r, x) in col.iter().enumerate() {
            u[r * k + c] = *x as f32;
        }
    }
    let vt: Vec<f32> = v_cols
        .iter()
        .flat_map(|col| col.iter().map(|&x| x as f32))
        .collect();
    (
        Tensor::from_data(TensorData::new(u, [rows, k]), &device),
        order.iter().map(|&j| sigma[j] as f32).collect(),
        Tensor::from_data(TensorData::new(vt, [k, cols]), &device),
    )
}

/// Applies the Jacobi rotation `(c, s)` to columns `p < q`: `(x, y) ← (c·x − s·y, s·x + c·y)`.
fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (low, high) = cols.split_at_mut(q);
    for (x, y) in low[p].iter_mut().zip(high[0].iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
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
        l1_norm_checked(&grad)?;
        let mut w;
        if rows * cols == 0 {
            w = Writer::new(CodecId::AtomoSpectral, 0, &shape, 4)?;
            w.u32(0);
            return Ok(w.finish());
        }
        let g = as_matrix(grad.detach());
        let device = g.device();
        let (u, sigma, vt) = self.atoms.decompose(g, rng);
        let l1: f64 = sigma.iter().map(|&x| x as f64).sum();
        let l2: f64 = sigma
            .iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let linf = sigma.first().copied().unwrap_or(0.0) as f64;
        let s = self.budget.resolve(sigma.len(), l1, l2, linf);
        let p = probabilities(&sigma, s);
        let sent: Vec<usize> = (0..sigma.len())
            .filter(|&i| p[i] > 0.0 && rng.random::<f64>() < p[i])
            .collect();
        let k = sent.len();
        w = Writer::new(
            CodecId::AtomoSpectral,
            0,
            &shape,
            4 + 4 * k * (rows + cols + 1),
        )?;
        w.u32(k as u32);
        if k > 0 {
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(sent.iter().map(|&i| i as i64).collect(), [k]),
                &device,
            );
            let us: Vec<f32> = u
                .select(1, idx.clone())
                .transpose()
                .try_into_vec_as()
                .expect("U");
            let vs: Vec<f32> = vt.select(0, idx).try_into_vec_as().expect("V");
            for (j, &i) in sent.iter().enumerate() {
                w.f32((sigma[i] as f64 / p[i]) as f32);
                w.f32s(&us[j * rows..(j + 1) * rows]);
                w.f32s(&vs[j * cols..(j + 1) * cols]);
            }
        }
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        let (header, shape, mut r) = payload.open::<D>(CodecId::AtomoSpectral)?;
        let (rows, cols) = matrix_view(&header.shape);
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
        // sum of the product (and each scaled v_k), so finite atoms whose bound stays below
        // f32::MAX rebuild a finite gradient.
        let bound: f64 = floats
            .chunks_exact(per_atom)
            .map(|atom| {
                let max = |xs: &[f32]| xs.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
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
}

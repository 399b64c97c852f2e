use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, RngExt};

use super::{Atomo, probabilities};
use crate::codec::{as_matrix, invalid, l1_norm_checked, matrix_view};
use crate::payload::Writer;
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Spectral atoms: the singular vectors of the gradient's [matrix view](crate::matrix_view),
/// `G = Σ_i σ_i u_i v_iᵀ`, atoms `u_i v_iᵀ`, `λ = σ`.
///
/// The SVD is burn's `linalg::svd` (a host computation; the gradient is detached). For large
/// matrices, [`Spectral::truncated`] uses a randomized rank-r SVD (Halko, Martinsson & Tropp
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
        let (u, s, vt) = match self.rank {
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
                let b = q.clone().transpose().matmul(g);
                let (ub, s, vt) = burn::linalg::svd::<2, 1>(b, self.sweeps);
                let u = q.matmul(ub);
                (
                    u.slice([0..rows, 0..r]),
                    s.slice(0..r),
                    vt.slice([0..r, 0..cols]),
                )
            }
            _ => burn::linalg::svd::<2, 1>(g, self.sweeps),
        };
        let sigma: Vec<f32> = s.try_into_vec_as().expect("singular values");
        (u, sigma, vt)
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
        let (header, mut r) = payload.open::<D>(CodecId::AtomoSpectral)?;
        let (rows, cols) = matrix_view(&header.shape);
        let shape: [usize; D] = header.shape.clone().try_into().expect("rank checked");
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
        if let Some(v) = floats.iter().find(|v| !v.is_finite()) {
            return Err(DecodeError::FieldOutOfRange {
                field: "spectral atom",
                value: v.to_bits() as u64,
                reason: "must be finite",
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

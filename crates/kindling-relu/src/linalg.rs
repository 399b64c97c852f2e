//! Small dense linear algebra on the host in f64: the symmetric eigendecomposition (cyclic
//! Jacobi) the tensor method needs on `d × d` and `k × k` matrices, a Cholesky solve, and the
//! blocked `Aᵀ B` products over many samples that feed them.

use burn::tensor::Tensor;

/// Rows per block of [`outer_sum`].
const BLOCK_ROWS: usize = 16_384;

/// `Aᵀ B` for `A [n, p]` and `B [n, q]` (row-major `p × q`), summed block by block of
/// [`BLOCK_ROWS`] rows with the blocks' products added in `f64` on the host: one matmul with an
/// inner dimension of a million rows loses digits in `f32` and is not reliable on every backend
/// (wgpu on lavapipe returned wrong sums at n = 400 000).
pub(crate) fn outer_sum(a: &Tensor<2>, b: &Tensor<2>) -> Vec<f64> {
    let [n, p] = a.dims();
    let q = b.dims()[1];
    let mut total = vec![0.0f64; p * q];
    for start in (0..n).step_by(BLOCK_ROWS) {
        let end = (start + BLOCK_ROWS).min(n);
        let block: Vec<f64> = a
            .clone()
            .slice(start..end)
            .transpose()
            .matmul(b.clone().slice(start..end))
            .try_into_vec_as::<f64>()
            .expect("moment block");
        total.iter_mut().zip(block).for_each(|(t, v)| *t += v);
    }
    total
}

/// Eigenvalues (descending) and eigenvectors (columns of a row-major `n × n` matrix) of the
/// symmetric row-major matrix `a`, by cyclic Jacobi rotations to `1e-12` off-diagonal mass.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "matrix size");
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = m
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-12 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| m[b * n + b].total_cmp(&m[a * n + a]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (new, &old) in order.iter().enumerate() {
        for r in 0..n {
            vectors[r * n + new] = v[r * n + old];
        }
    }
    (values, vectors)
}

/// Solves the symmetric positive definite system `G x = b` (row-major `n × n`) by Cholesky
/// factorisation `G = L Lᵀ`; `None` when `G` is not positive definite (to working precision).
pub fn cholesky_solve(g: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    let scale = (0..n)
        .map(|i| g[i * n + i].abs())
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = g[i * n + i] - s;
                if d <= 1e-12 * scale {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (g[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    let mut z = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * z[k]).sum();
        z[i] = (b[i] - s) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (z[i] - s) / l[i * n + i];
    }
    Some(x)
}

/// `Σ_k λ_k^{±½} v_k v_kᵀ`: the symmetric square root (`power = 0.5`) or inverse square root
/// (`power = −0.5`) of a positive definite matrix from its eigendecomposition.
pub fn symmetric_power(a: &[f64], n: usize, power: f64) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(a, n);
    let mut out = vec![0.0; n * n];
    for (k, &lambda) in values.iter().enumerate() {
        let f = lambda.max(f64::MIN_POSITIVE).powf(power);
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] += f * vectors[i * n + k] * vectors[j * n + k];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises_a_symmetric_matrix() {
        let a = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (values, vectors) = symmetric_eigen(&a, 3);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for k in 0..3 {
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| a[i * 3 + j] * vectors[j * 3 + k]).sum();
                assert!((av - values[k] * vectors[i * 3 + k]).abs() < 1e-10);
            }
        }
        let trace: f64 = values.iter().sum();
        assert!((trace - 12.0).abs() < 1e-10);
        let root = symmetric_power(&a, 3, 0.5);
        for i in 0..3 {
            for j in 0..3 {
                let sq: f64 = (0..3).map(|k| root[i * 3 + k] * root[k * 3 + j]).sum();
                assert!((sq - a[i * 3 + j]).abs() < 1e-9);
            }
        }
        let x = cholesky_solve(&a, &[7.0, 4.5, 7.5], 3).unwrap();
        for (i, expected) in [7.0, 4.5, 7.5].iter().enumerate() {
            let ax: f64 = (0..3).map(|j| a[i * 3 + j] * x[j]).sum();
            assert!((ax - expected).abs() < 1e-10);
        }
        assert!(cholesky_solve(&[1.0, 2.0, 2.0, 4.0], &[1.0, 1.0], 2).is_none());
    }
}

//! Empirical moments of `(x, y)` with Gaussian `x` and the tensor initialisation built on them
//! (method of moments after Zhong et al. 2017, as used by Zhang, Yu, Wang & Gu 2019).

use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::ReluError;
use crate::linalg::{outer_sum, symmetric_eigen};

/// Random contraction directions tried by [`tensor_init`].
pub const ALPHA_TRIALS: usize = 16;

/// The mean of a column `[n, 1]`, accumulated like [`outer_sum`].
fn mean_of(column: &Tensor<2>) -> f64 {
    let ones = Tensor::<2>::ones([column.dims()[0], 1], &column.device());
    mean_outer(column, &ones)[0]
}

/// `(1/n) Aᵀ B` for `A [n, p]` and `B [n, q]`.
fn mean_outer(a: &Tensor<2>, b: &Tensor<2>) -> Vec<f64> {
    let n = a.dims()[0] as f64;
    let mut total = outer_sum(a, b);
    total.iter_mut().for_each(|t| *t /= n);
    total
}

/// `M1 = E[y·x] = ½ Σ_j w_j*`, estimated as `(1/n) Xᵀy`.
pub fn m1(x: &Tensor<2>, y: &Tensor<1>) -> Vec<f64> {
    mean_outer(x, &y.clone().unsqueeze_dim(1))
}

/// `M2 = E[y·(x xᵀ − I)] = Σ_j (‖w_j*‖/√(2π))·w̄_j w̄_jᵀ`, estimated as
/// `(1/n) Xᵀ diag(y) X − mean(y)·I` (row-major `d × d`).
pub fn m2(x: &Tensor<2>, y: &Tensor<1>) -> Vec<f64> {
    let d = x.dims()[1];
    let y2 = y.clone().unsqueeze_dim::<2>(1);
    let mut m = mean_outer(&(x.clone() * y2.clone()), x);
    let mean = mean_of(&y2);
    for i in 0..d {
        m[i * d + i] -= mean;
    }
    m
}

/// The fourth-order moment `M4 = E[y·He4(x)] = −Σ_j (‖w_j*‖/√(2π))·w̄_j^{⊗4}` contracted as
/// `M4(V_i, V_j, β, β)` for the orthonormal columns `V_i` of `v` (`d × k`, row-major) and the unit
/// vector `β = V α`: a `k × k` matrix. With `z = Vᵀx` and `s = αᵀz`, `He4` contracted this way is
/// `z_i z_j s² − δ_ij s² − 2α_i z_j s − 2α_j z_i s − z_i z_j + δ_ij + 2α_i α_j`, so
///
/// ```text
/// R = E[y s² z zᵀ] − E[y s²]·I − 2(α gᵀ + g αᵀ) − E[y z zᵀ] + E[y]·I + 2E[y]·α αᵀ,  g = E[y s z]
/// ```
pub fn m4_contraction(
    x: &Tensor<2>,
    y: &Tensor<1>,
    v: &[f64],
    k: usize,
    alpha: &[f64],
) -> Vec<f64> {
    ProjectedMoments::new(x, y, v, k).m4_contraction(alpha)
}

/// The `y`-weighted moments of the projected samples `z = Vᵀx` up to order four, from one pass
/// over the data: every [`m4_contraction`](Self::m4_contraction) after that is `O(k⁴)` on the
/// host, so trying many directions `α` costs nothing extra.
struct ProjectedMoments {
    k: usize,
    /// `E[y]`.
    e_y: f64,
    /// `E[y z zᵀ]` (`k × k`).
    e_yzz: Vec<f64>,
    /// `E[y z_i z_j z_a z_b]` (`k² × k²`, rows `(i, j)`, columns `(a, b)`).
    e_yz4: Vec<f64>,
}

impl ProjectedMoments {
    fn new(x: &Tensor<2>, y: &Tensor<1>, v: &[f64], k: usize) -> Self {
        let [n, d] = x.dims();
        let vt = Tensor::<2>::from_data(
            TensorData::new(v.iter().map(|&a| a as f32).collect::<Vec<_>>(), [d, k]),
            &x.device(),
        );
        let z = x.clone().matmul(vt); // [n, k]
        let y2 = y.clone().unsqueeze_dim::<2>(1); // [n, 1]
        // z ⊗ z per sample: [n, k²]
        let zz =
            (z.clone().unsqueeze_dim::<3>(2) * z.clone().unsqueeze_dim::<3>(1)).reshape([n, k * k]);
        Self {
            k,
            e_y: mean_of(&y2),
            e_yzz: mean_outer(&(z.clone() * y2.clone()), &z),
            e_yz4: mean_outer(&(zz.clone() * y2), &zz),
        }
    }

    /// `R = M4(V, V, Vα, Vα)` (`k × k`), see [`m4_contraction`].
    fn m4_contraction(&self, alpha: &[f64]) -> Vec<f64> {
        let k = self.k;
        let kk = k * k;
        let b = &self.e_yzz;
        // g = E[y s z] = E[y z zᵀ] α, c1 = E[y s²] = αᵀ g
        let g: Vec<f64> = (0..k)
            .map(|i| (0..k).map(|a| b[i * k + a] * alpha[a]).sum())
            .collect();
        let c1: f64 = g.iter().zip(alpha).map(|(g, a)| g * a).sum();
        let c0 = self.e_y;
        let mut r = vec![0.0; kk];
        for i in 0..k {
            for j in 0..k {
                // E[y s² z_i z_j] = Σ_ab α_a α_b E[y z_i z_j z_a z_b]
                let row = &self.e_yz4[(i * k + j) * kk..(i * k + j + 1) * kk];
                let a: f64 = (0..k)
                    .flat_map(|p| (0..k).map(move |q| (p, q)))
                    .map(|(p, q)| alpha[p] * alpha[q] * row[p * k + q])
                    .sum();
                let delta = (i == j) as u8 as f64;
                r[i * k + j] =
                    a - delta * c1 - 2.0 * (alpha[i] * g[j] + alpha[j] * g[i]) - b[i * k + j]
                        + delta * c0
                        + 2.0 * alpha[i] * alpha[j] * c0;
            }
        }
        r
    }
}

/// What the tensor initialisation computed along the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostics {
    /// Eigenvalues of the empirical `M2` (all `d`, descending): a gap after the k-th means the
    /// subspace is well estimated.
    pub m2_eigenvalues: Vec<f64>,
    /// Eigenvalues of the whitened `M4` contraction (one per hidden unit; distinct values make
    /// the directions identifiable).
    pub m4_eigenvalues: Vec<f64>,
    /// The random unit vector `α` of the contraction.
    pub alpha: Vec<f64>,
    /// The magnitudes `‖w_j‖` recovered from `M1`.
    pub norms: Vec<f64>,
}

/// Directions from the whitened contraction's eigenvectors and magnitudes from `M1`: the
/// candidate `W0` (`k × d`, row-major) and the least-squares coefficients `a_j`.
fn candidate(
    eigenvectors: &[f64],
    v: &[f64],
    p2: &[f64],
    m1: &[f64],
    k: usize,
    d: usize,
) -> (Vec<f64>, Vec<f64>) {
    // u_j = P2^{½} v_j, w̄_j = V u_j / ‖V u_j‖ (columns of a d × k matrix).
    let mut directions = vec![0.0; d * k];
    for j in 0..k {
        let u: Vec<f64> = (0..k)
            .map(|i| p2[i].sqrt() * eigenvectors[i * k + j])
            .collect();
        let col: Vec<f64> = (0..d)
            .map(|r| (0..k).map(|i| v[r * k + i] * u[i]).sum())
            .collect();
        let cn = col.iter().map(|c| c * c).sum::<f64>().sqrt();
        for r in 0..d {
            directions[r * k + j] = col[r] / cn;
        }
    }
    // Least squares M1 ≈ Σ_j a_j w̄_j: normal equations (k × k).
    let mut gram = vec![0.0; k * k];
    let mut rhs = vec![0.0; k];
    for i in 0..k {
        rhs[i] = (0..d).map(|r| directions[r * k + i] * m1[r]).sum();
        for j in 0..k {
            gram[i * k + j] = (0..d)
                .map(|r| directions[r * k + i] * directions[r * k + j])
                .sum();
        }
    }
    let inverse = crate::linalg::symmetric_power(&gram, k, -1.0);
    let a: Vec<f64> = (0..k)
        .map(|i| (0..k).map(|j| inverse[i * k + j] * rhs[j]).sum())
        .collect();
    let mut w = vec![0.0; k * d];
    for j in 0..k {
        for c in 0..d {
            w[j * d + c] = 2.0 * a[j] * directions[c * k + j];
        }
    }
    (w, a)
}

/// `(1/2n) Σ_i (Σ_j ReLU(w_jᵀx_i) − y_i)²` for `W` (`k × d`, row-major).
fn empirical_loss(w: &[f64], k: usize, d: usize, x: &Tensor<2>, y: &Tensor<1>) -> f64 {
    let w = crate::weights_tensor(w, k, d, &x.device());
    let residual = crate::predict(w, x.clone()) - y.clone();
    0.5 * residual.square().mean().into_scalar::<f64>()
}

/// The tensor initialisation: `W0` (`k × d`, row-major) and [`Diagnostics`].
///
/// 1. `V` = the top-k eigenvectors of the empirical `M2` (the span of the `w_j*`);
/// 2. `P2 = Vᵀ M2 V = Σ_j c_j u_j u_jᵀ` with `u_j = Vᵀ w̄_j`, `c_j = ‖w_j‖/√(2π)`; whitening by
///    `P2^{−½}` makes the `√c_j P2^{−½} u_j` orthonormal;
/// 3. the contraction `R = M4(V, V, Vα, Vα) = −Σ_j c_j (αᵀu_j)² u_j u_jᵀ` for a random unit `α`
///    (of [`ALPHA_TRIALS`] draws, the one whose `W0` has the lowest empirical loss
///    `(1/2n) Σ_i (Σ_j ReLU(w_jᵀx_i) − y_i)²`),
///    whitened, is diagonal in that orthonormal basis: its eigenvectors give the `u_j`
///    (`u_j ∝ P2^{½} v_j`), and `w̄_j = V u_j / ‖V u_j‖`. This is simultaneous diagonalisation of
///    `P2` and `R` (whitening + one symmetric eigendecomposition): exact for exact moments, and
///    with `k × k` matrices far cheaper than a tensor power method on the `k⁴` tensor;
/// 4. signs and magnitudes from `M1 = Σ_j (‖w_j‖/2) w̄_j` by least squares: `w_j = 2 a_j w̄_j`
///    (a negative `a_j` flips a direction whose eigenvector came out with the wrong sign).
pub fn tensor_init(
    x: &Tensor<2>,
    y: &Tensor<1>,
    k: usize,
    seed: u64,
) -> Result<(Vec<f64>, Diagnostics), ReluError> {
    let [n, d] = x.dims();
    if k == 0 || k > d {
        return Err(ReluError::InvalidField {
            config: "tensor_init",
            field: "k",
            value: k.to_string(),
            reason: "must be in 1..=d",
        });
    }
    if n < d + 1 {
        return Err(ReluError::InvalidField {
            config: "tensor_init",
            field: "n",
            value: n.to_string(),
            reason: "needs more samples than dimensions",
        });
    }
    let (m2_values, m2_vectors) = symmetric_eigen(&m2(x, y), d);
    let v: Vec<f64> = (0..d)
        .flat_map(|r| (0..k).map(move |c| (r, c)))
        .map(|(r, c)| m2_vectors[r * d + c])
        .collect();
    let p2 = &m2_values[..k];
    if p2.iter().any(|&l| l <= 0.0) {
        return Err(ReluError::Degenerate(format!(
            "the top {k} eigenvalues of M2 must be positive, got {:?}",
            &m2_values[..k]
        )));
    }
    let normal = Normal::new(0.0, 1.0).expect("standard normal");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // The eigenvalues of the whitened contraction are −(αᵀu_j)²: a random α can make two of them
    // nearly equal (or one nearly 0) and mix their eigenvectors under sampling noise. Each of
    // `ALPHA_TRIALS` random α gives a candidate W0; the one with the lowest empirical loss on
    // the data is kept (the eigenvalue gap alone picks badly when the estimate is noisy).
    let projected = ProjectedMoments::new(x, y, &v, k);
    let m1 = m1(x, y);
    // (loss, W0, α, eigenvalues, magnitudes) of the best candidate so far
    type Candidate = (f64, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut best: Option<Candidate> = None;
    for _ in 0..ALPHA_TRIALS {
        let mut alpha: Vec<f64> = (0..k).map(|_| normal.sample(&mut rng)).collect();
        let norm = alpha.iter().map(|a| a * a).sum::<f64>().sqrt();
        alpha.iter_mut().for_each(|a| *a /= norm);
        let r = projected.m4_contraction(&alpha);
        // P2 = diag(p2) in the eigenbasis V: whitening is a diagonal scaling.
        let mut rw = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                rw[i * k + j] = r[i * k + j] / (p2[i] * p2[j]).sqrt();
            }
        }
        let (values, vectors) = symmetric_eigen(&rw, k);
        let (w, a) = candidate(&vectors, &v, p2, &m1, k, d);
        let loss = empirical_loss(&w, k, d, x, y);
        if best.as_ref().is_none_or(|b| loss < b.0) {
            best = Some((loss, w, alpha, values, a));
        }
    }
    let (_, w, alpha, m4_values, a) = best.expect("at least one trial");
    Ok((
        w,
        Diagnostics {
            m2_eigenvalues: m2_values,
            m4_eigenvalues: m4_values,
            alpha,
            norms: a.iter().map(|x| 2.0 * x.abs()).collect(),
        },
    ))
}

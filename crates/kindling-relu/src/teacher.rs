use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::ReluError;

/// How the teacher's weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weights {
    /// Rows i.i.d. `N(0, I/d)` (norms near 1).
    Gaussian,
    /// `W* = U·diag(s)·Q`: `Q` with orthonormal rows, `U` a random rotation of the hidden units,
    /// singular values `s` spread evenly from 1 to `kappa` (the condition number).
    Conditioned {
        /// Condition number κ ≥ 1.
        kappa: f64,
    },
}

/// A teacher network `y = Σ_{j=1..k} ReLU(w_jᵀ x) + ξ` with `x ~ N(0, I_d)`, `ξ ~ N(0, σ²)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Teacher {
    /// Input dimension d.
    pub d: usize,
    /// Hidden units k.
    pub k: usize,
    /// Noise standard deviation σ.
    pub noise: f64,
    /// The true weights `W*`, `k × d` row-major.
    pub weights: Vec<f64>,
}

fn normal_matrix(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let normal = Normal::new(0.0, 1.0).expect("standard normal");
    (0..rows * cols).map(|_| normal.sample(rng)).collect()
}

/// Orthonormalises the rows of a row-major `rows × cols` matrix (Gram–Schmidt).
fn orthonormal_rows(mut m: Vec<f64>, rows: usize, cols: usize) -> Vec<f64> {
    for i in 0..rows {
        for j in 0..i {
            let dot: f64 = (0..cols).map(|c| m[i * cols + c] * m[j * cols + c]).sum();
            for c in 0..cols {
                m[i * cols + c] -= dot * m[j * cols + c];
            }
        }
        let norm = (0..cols)
            .map(|c| m[i * cols + c].powi(2))
            .sum::<f64>()
            .sqrt();
        for c in 0..cols {
            m[i * cols + c] /= norm;
        }
    }
    m
}

impl Teacher {
    /// A teacher with `k ≤ d` hidden units, weights from `seed`.
    pub fn new(
        d: usize,
        k: usize,
        noise: f64,
        weights: Weights,
        seed: u64,
    ) -> Result<Self, ReluError> {
        let fail = |field, value: String, reason| ReluError::InvalidField {
            config: "Teacher",
            field,
            value,
            reason,
        };
        if d == 0 {
            return Err(fail("d", "0".into(), "must be ≥ 1"));
        }
        if k == 0 || k > d {
            return Err(fail("k", k.to_string(), "must be in 1..=d"));
        }
        if !(noise.is_finite() && noise >= 0.0) {
            return Err(fail("noise", noise.to_string(), "must be finite and ≥ 0"));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w = match weights {
            Weights::Gaussian => normal_matrix(k, d, &mut rng)
                .into_iter()
                .map(|v| v / (d as f64).sqrt())
                .collect(),
            Weights::Conditioned { kappa } => {
                if !(kappa.is_finite() && kappa >= 1.0) {
                    return Err(fail("kappa", kappa.to_string(), "must be finite and ≥ 1"));
                }
                let q = orthonormal_rows(normal_matrix(k, d, &mut rng), k, d);
                let u = orthonormal_rows(normal_matrix(k, k, &mut rng), k, k);
                let s: Vec<f64> = (0..k)
                    .map(|i| {
                        if k == 1 {
                            1.0
                        } else {
                            1.0 + (kappa - 1.0) * i as f64 / (k - 1) as f64
                        }
                    })
                    .collect();
                let mut w = vec![0.0; k * d];
                for r in 0..k {
                    for c in 0..d {
                        w[r * d + c] = (0..k).map(|m| u[r * k + m] * s[m] * q[m * d + c]).sum();
                    }
                }
                w
            }
        };
        Ok(Self {
            d,
            k,
            noise,
            weights: w,
        })
    }

    /// `W*` as a `[k, d]` tensor.
    pub fn weights(&self, device: &Device) -> Tensor<2> {
        let w: Vec<f32> = self.weights.iter().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(w, [self.k, self.d]), device)
    }

    /// `n` samples `(X [n, d], y [n])` from `seed` (drawn on the host, so the same on every
    /// backend).
    pub fn sample(&self, n: usize, seed: u64, device: &Device) -> (Tensor<2>, Tensor<1>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = normal_matrix(n, self.d, &mut rng);
        let normal = Normal::new(0.0, 1.0).expect("standard normal");
        let y: Vec<f32> = x
            .chunks(self.d)
            .map(|row| {
                let clean: f64 = self
                    .weights
                    .chunks(self.d)
                    .map(|w| w.iter().zip(row).map(|(a, b)| a * b).sum::<f64>().max(0.0))
                    .sum();
                (clean + self.noise * normal.sample(&mut rng)) as f32
            })
            .collect();
        let x: Vec<f32> = x.into_iter().map(|v| v as f32).collect();
        (
            Tensor::from_data(TensorData::new(x, [n, self.d]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }

    /// `‖W − W*‖_F / ‖W*‖_F` after the best matching of hidden units.
    pub fn relative_error(&self, w: &Tensor<2>) -> f64 {
        let w: Vec<f64> = w.try_to_vec_as::<f64>().expect("weights");
        relative_error(&w, &self.weights, self.k, self.d)
    }
}

/// The network's output `Σ_j ReLU(w_jᵀ x)` for `X [n, d]` and `W [k, d]`: `[n]`.
pub fn predict(w: Tensor<2>, x: Tensor<2>) -> Tensor<1> {
    burn::tensor::activation::relu(x.matmul(w.transpose()))
        .sum_dim(1)
        .squeeze_dim(1)
}

/// `‖W − W*‖_F / ‖W*‖_F` minimised over permutations of the hidden units (exhaustive for
/// `k ≤ 8`, greedy nearest rows beyond), `k × d` row-major.
pub fn relative_error(w: &[f64], w_star: &[f64], k: usize, d: usize) -> f64 {
    let cost = |a: usize, b: usize| -> f64 {
        (0..d)
            .map(|c| (w[a * d + c] - w_star[b * d + c]).powi(2))
            .sum()
    };
    let norm: f64 = w_star.iter().map(|v| v * v).sum();
    let best = if k <= 8 {
        let mut perm: Vec<usize> = (0..k).collect();
        let mut best = f64::INFINITY;
        permutations(&mut perm, 0, &mut |p| {
            best = best.min((0..k).map(|i| cost(i, p[i])).sum());
        });
        best
    } else {
        let mut free: Vec<usize> = (0..k).collect();
        (0..k)
            .map(|i| {
                let (pos, c) = free
                    .iter()
                    .enumerate()
                    .map(|(pos, &j)| (pos, cost(i, j)))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("free units");
                free.remove(pos);
                c
            })
            .sum()
    };
    (best / norm).sqrt()
}

fn permutations(p: &mut Vec<usize>, start: usize, visit: &mut impl FnMut(&[usize])) {
    if start == p.len() {
        visit(p);
        return;
    }
    for i in start..p.len() {
        p.swap(start, i);
        permutations(p, start + 1, visit);
        p.swap(start, i);
    }
}

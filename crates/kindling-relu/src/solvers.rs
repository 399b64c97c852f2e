//! The two ways of fitting the student: gradient descent on the empirical squared loss (Zhang,
//! Yu, Wang & Gu 2019) and alternating minimisation (Jagatap & Hegde 2018).

use burn::tensor::{Device, Tensor, TensorData};

use crate::ReluError;
use crate::linalg::{cholesky_solve, outer_sum};
use crate::moments::m1;
use crate::teacher::{Teacher, predict};

/// One iteration's record: the empirical loss and, when the teacher is known, the error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracePoint {
    /// Iteration (0 = the initial point).
    pub iteration: usize,
    /// `L(W) = (1/2n) Σ (Σ_j ReLU(w_jᵀx_i) − y_i)²`.
    pub loss: f64,
    /// `‖W − W*‖_F/‖W*‖_F` after the best matching (NaN without a teacher).
    pub error: f64,
}

fn point(
    iteration: usize,
    w: &Tensor<2>,
    x: &Tensor<2>,
    y: &Tensor<1>,
    teacher: Option<&Teacher>,
) -> TracePoint {
    let r = predict(w.clone(), x.clone()) - y.clone();
    TracePoint {
        iteration,
        loss: 0.5 * r.square().mean().into_scalar::<f64>(),
        error: teacher.map_or(f64::NAN, |t| t.relative_error(w)),
    }
}

/// Weights `k × d` (row-major f64) as a tensor.
pub fn weights_tensor(w: &[f64], k: usize, d: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(w.iter().map(|&v| v as f32).collect::<Vec<_>>(), [k, d]),
        device,
    )
}

/// Gradient descent `W ← W − η·∇L(W)` on `L(W) = (1/2n) Σ_i (Σ_j ReLU(w_jᵀx_i) − y_i)²`, with
/// `ReLU'(z) = 1{z > 0}`: `∇_{w_j} L = (1/n) Σ_i r_i 1{w_jᵀx_i > 0} x_i`, `r` the residuals. The
/// gradient is computed in closed form on the device (two matmuls per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientDescent {
    /// Step size η.
    pub lr: f64,
    /// Iterations.
    pub iterations: usize,
}

impl GradientDescent {
    /// Runs from `w0` (`[k, d]`); returns the weights and the trace (one point per iteration,
    /// plus the start).
    pub fn run(
        &self,
        w0: Tensor<2>,
        x: &Tensor<2>,
        y: &Tensor<1>,
        teacher: Option<&Teacher>,
    ) -> (Tensor<2>, Vec<TracePoint>) {
        let n = x.dims()[0] as f64;
        let mut w = w0;
        let mut trace = vec![point(0, &w, x, y, teacher)];
        for it in 1..=self.iterations {
            let pre = x.clone().matmul(w.clone().transpose()); // [n, k]
            let active = pre.clone().greater_elem(0.0).float();
            let r = burn::tensor::activation::relu(pre).sum_dim(1) - y.clone().unsqueeze_dim(1); // [n, 1]
            let grad = (active * r).transpose().matmul(x.clone()).div_scalar(n); // [k, d]
            w = w - grad.mul_scalar(self.lr);
            trace.push(point(it, &w, x, y, teacher));
        }
        (w, trace)
    }
}

/// Alternating minimisation: guess the activation pattern, solve a least-squares problem,
/// repeat — no step size.
///
/// ```text
/// P_q = diag(1{X w_q > 0}),  q = 1..k
/// w = argmin ‖y − [P_1 X, …, P_k X]·vec(w_1..w_k)‖²
/// ```
///
/// The least squares is solved by [`least_squares`] (normal equations, Cholesky in f64); each
/// step records the residuals and stops with an error when `A` is rank deficient (a hidden unit
/// active on no sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AltMin {
    /// Largest number of iterations.
    pub iterations: usize,
    /// Stop when the relative change of `W` falls below this.
    pub tolerance: f64,
}

/// The least-squares solve of one AltMin step, with its residuals.
#[derive(Debug, Clone, PartialEq)]
pub struct LeastSquares {
    /// `vec(w_1..w_k)`.
    pub solution: Vec<f64>,
    /// `‖Aw − y‖/‖y‖`.
    pub residual: f64,
    /// `‖Aᵀ(Aw − y)‖/‖Aᵀy‖` (≈ 0 at the least-squares optimum).
    pub normal_residual: f64,
}

/// The least-squares solution of `A w = y` (`A` is `[n, m]`, `n ≥ m`): the normal equations
/// `AᵀA w = Aᵀy` are formed on the device (two matmuls) and solved by a Cholesky factorisation in
/// f64 on the host. (burn's Householder QR works with the `n × n` reflectors, quadratic in the
/// sample count; the normal equations cost `O(n·m²)` and, with Gaussian designs, lose nothing
/// measurable — the residuals below check it.)
pub fn least_squares(a: Tensor<2>, y: &Tensor<1>) -> Result<LeastSquares, ReluError> {
    let [n, m] = a.dims();
    if n < m {
        return Err(ReluError::Degenerate(format!(
            "{n} equations for {m} unknowns"
        )));
    }
    let yt = y.clone().unsqueeze_dim::<2>(1);
    let gram = outer_sum(&a, &a);
    let aty = outer_sum(&a, &yt);
    let solution = cholesky_solve(&gram, &aty, m).ok_or_else(|| {
        ReluError::Degenerate("the least-squares matrix is rank deficient".into())
    })?;
    let device = a.device();
    let wt = Tensor::<2>::from_data(
        TensorData::new(
            solution.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            [m, 1],
        ),
        &device,
    );
    let resid = a.clone().matmul(wt) - yt;
    let norm = |t: Tensor<2>| t.square().sum().into_scalar::<f64>().sqrt();
    let y_norm = y
        .clone()
        .square()
        .sum()
        .into_scalar::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    let aty_norm = aty
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    Ok(LeastSquares {
        solution,
        residual: norm(resid.clone()) / y_norm,
        normal_residual: outer_sum(&a, &resid)
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
            / aty_norm,
    })
}

/// The single-ReLU initialisation `w0 = (2/n) Σ_i y_i x_i` (since `E[y x] = w*/2`).
pub fn single_unit_init(x: &Tensor<2>, y: &Tensor<1>) -> Tensor<2> {
    let d = x.dims()[1];
    let w: Vec<f64> = m1(x, y).iter().map(|v| 2.0 * v).collect();
    weights_tensor(&w, 1, d, &x.device())
}

impl AltMin {
    /// Runs from `w0` (`[k, d]`); returns the weights and the trace.
    pub fn run(
        &self,
        w0: Tensor<2>,
        x: &Tensor<2>,
        y: &Tensor<1>,
        teacher: Option<&Teacher>,
    ) -> Result<(Tensor<2>, Vec<TracePoint>), ReluError> {
        let [k, d] = w0.dims();
        let n = x.dims()[0];
        let device = x.device();
        let mut w = w0;
        let mut trace = vec![point(0, &w, x, y, teacher)];
        for it in 1..=self.iterations {
            let active = x
                .clone()
                .matmul(w.clone().transpose())
                .greater_elem(0.0)
                .float(); // [n, k]
            // A = [P_1 X, …, P_k X]: [n, k, d] → [n, k·d]
            let a = (active.unsqueeze_dim::<3>(2) * x.clone().unsqueeze_dim::<3>(1))
                .reshape([n, k * d]);
            let ls = least_squares(a, y)?;
            let next = weights_tensor(&ls.solution, k, d, &device);
            let change = (next.clone() - w.clone())
                .square()
                .sum()
                .into_scalar::<f64>()
                .sqrt()
                / next
                    .clone()
                    .square()
                    .sum()
                    .into_scalar::<f64>()
                    .sqrt()
                    .max(f64::MIN_POSITIVE);
            w = next;
            trace.push(point(it, &w, x, y, teacher));
            if change < self.tolerance {
                break;
            }
        }
        Ok((w, trace))
    }
}

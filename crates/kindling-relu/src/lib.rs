//! Recovering one-hidden-layer ReLU networks for [burn](https://burn.dev) 0.22: given samples of a
//! teacher `y = Σ_{j=1..k} ReLU(w_j*ᵀx) + ξ` with Gaussian inputs, find `W*`. For burn users who
//! study what gradient methods provably learn, with the two 2018 papers' algorithms:
//!
//! * [`tensor_init`] + [`GradientDescent`] (Zhang, Yu, Wang & Gu, *Learning One-hidden-layer ReLU
//!   Networks via Gradient Descent*, AISTATS 2019, <https://arxiv.org/abs/1806.07808>): a
//!   method-of-moments start close to `W*`, from which gradient descent converges linearly to
//!   the statistical error;
//! * [`AltMin`] (Jagatap & Hegde, *Learning ReLU Networks via Alternating Minimization*,
//!   <https://arxiv.org/abs/1806.07863>): activation patterns and least squares in turn, no step
//!   size;
//! * [`Teacher`]: the data, the true weights, and errors after the best matching of hidden units.
//!
//! ```
//! use burn::tensor::Device;
//! use kindling_relu::{AltMin, Teacher, Weights, single_unit_init};
//!
//! let device = Device::flex();
//! let teacher = Teacher::new(10, 1, 0.0, Weights::Gaussian, 1).unwrap();
//! let (x, y) = teacher.sample(40, 2, &device);
//! let w0 = single_unit_init(&x, &y);
//! let (w, trace) = AltMin { iterations: 10, tolerance: 1e-9 }.run(w0, &x, &y, Some(&teacher)).unwrap();
//! assert!(teacher.relative_error(&w) < 1e-4, "{trace:?}");
//! ```

mod linalg;
mod moments;
mod solvers;
mod teacher;

/// Why a teacher, an initialisation or a solve was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReluError {
    /// A setting is out of range.
    #[error("{config}.{field} = {value} is invalid: {reason}")]
    InvalidField {
        /// The setting's owner.
        config: &'static str,
        /// The field.
        field: &'static str,
        /// The offending value, printed.
        value: String,
        /// What it must satisfy.
        reason: &'static str,
    },
    /// The data do not determine the answer (too few samples, a rank-deficient system).
    #[error("degenerate problem: {0}")]
    Degenerate(String),
}

pub use linalg::{cholesky_solve, symmetric_eigen};
pub use moments::{ALPHA_TRIALS, Diagnostics, m1, m2, m4_contraction, tensor_init};
pub use solvers::{
    AltMin, GradientDescent, LeastSquares, TracePoint, least_squares, single_unit_init,
    weights_tensor,
};
pub use teacher::{Teacher, Weights, predict, relative_error};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

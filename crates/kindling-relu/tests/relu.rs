//! The two papers' claims, measured: moment identities, the tensor initialisation, gradient
//! descent's linear rate, and exact recovery by alternating minimisation.

use burn::tensor::{Tensor, TensorData};
use kindling_relu::*;
use kindling_testing::device;

const SQRT_2PI: f64 = 2.506_628_274_631_000_7;

fn norms_and_units(t: &Teacher) -> Vec<(f64, Vec<f64>)> {
    t.weights
        .chunks(t.d)
        .map(|w| {
            let n = w.iter().map(|v| v * v).sum::<f64>().sqrt();
            (n, w.iter().map(|v| v / n).collect())
        })
        .collect()
}

/// Monte Carlo (n = 200 000): E[y·x] = ½ Σ w_j and E[y] = Σ ‖w_j‖/√(2π). Each coordinate of
/// y·x has standard deviation below 2 here, so the sample mean is within 4·2/√n ≈ 0.018.
#[test]
fn first_moments_match_their_closed_forms() {
    let device = device();
    let teacher = Teacher::new(5, 3, 0.1, Weights::Gaussian, 3).unwrap();
    let (x, y) = teacher.sample(200_000, 4, &device);
    let m1 = m1(&x, &y);
    for (c, estimate) in m1.iter().enumerate() {
        let expected: f64 = 0.5 * (0..3).map(|j| teacher.weights[j * 5 + c]).sum::<f64>();
        assert!(
            (estimate - expected).abs() < 0.018,
            "M1[{c}] {estimate} vs {expected}"
        );
    }
    let mean = y.mean().into_scalar::<f64>();
    let expected: f64 = norms_and_units(&teacher)
        .iter()
        .map(|(n, _)| n / SQRT_2PI)
        .sum();
    assert!((mean - expected).abs() < 0.01, "E[y] {mean} vs {expected}");
}

/// The empirical M2 and the M4 contraction against their closed forms for a known W:
/// `M2 = Σ c_j w̄ w̄ᵀ` and `M4(V, V, Vα, Vα) = −Σ c_j (Vᵀw̄)(Vᵀw̄)ᵀ (αᵀVᵀw̄)²`, `c_j = ‖w_j‖/√(2π)`
/// (n = 400 000; fourth moments have standard deviations up to ≈ 15 here, so the tolerance
/// 0.1 is about 4 standard errors, while a wrong sign or factor is off by 0.2 or more).
#[test]
fn second_and_fourth_moments_match_their_closed_forms() {
    let device = device();
    let (d, k) = (4, 2);
    let teacher = Teacher::new(d, k, 0.0, Weights::Conditioned { kappa: 2.0 }, 5).unwrap();
    let (x, y) = teacher.sample(400_000, 6, &device);
    let units = norms_and_units(&teacher);
    let m2 = m2(&x, &y);
    for i in 0..d {
        for j in 0..d {
            let expected: f64 = units.iter().map(|(n, u)| n / SQRT_2PI * u[i] * u[j]).sum();
            assert!(
                (m2[i * d + j] - expected).abs() < 0.02,
                "M2[{i},{j}] {} vs {expected}",
                m2[i * d + j]
            );
        }
    }
    // V: the first two coordinate axes (orthonormal); α = (0.6, 0.8).
    let v = vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let alpha = [0.6, 0.8];
    let r = m4_contraction(&x, &y, &v, k, &alpha);
    for a in 0..k {
        for b in 0..k {
            let expected: f64 = -units
                .iter()
                .map(|(n, u)| {
                    n / SQRT_2PI * u[a] * u[b] * (alpha[0] * u[0] + alpha[1] * u[1]).powi(2)
                })
                .sum::<f64>();
            assert!(
                (r[a * k + b] - expected).abs() < 0.1,
                "R[{a},{b}] {} vs {expected}",
                r[a * k + b]
            );
        }
    }
}

/// With many samples the tensor initialisation lands close to W*, and closer with more data:
/// below 0.05 relative error at n = 1 000 000 (d = 8, k = 3, orthonormal teacher rows, σ = 0.1).
/// The fourth-moment estimate is noisy, so the method needs many samples (0.17 at n = 200 000).
#[test]
fn tensor_init_is_close_for_large_n() {
    let device = device();
    let teacher = Teacher::new(8, 3, 0.1, Weights::Conditioned { kappa: 1.0 }, 7).unwrap();
    let mut errors = Vec::new();
    for n in [200_000, 1_000_000] {
        let (x, y) = teacher.sample(n, 8, &device);
        let (w0, diag) = tensor_init(&x, &y, 3, 9).unwrap();
        let err = relative_error(&w0, &teacher.weights, 3, 8);
        eprintln!(
            "tensor init n = {n}: error {err:.3}, M2 eigenvalues {:?}",
            &diag.m2_eigenvalues[..4]
        );
        errors.push(err);
    }
    assert!(errors[1] < 0.05, "{errors:?}");
    assert!(errors[1] < errors[0], "{errors:?}");
}

/// Gradient descent from the tensor initialisation converges linearly (noise-free): the log of
/// the error falls along a straight line, its slope per 50 iterations steady within a factor 2.
#[test]
fn gradient_descent_converges_linearly_from_tensor_init() {
    let device = device();
    let teacher = Teacher::new(6, 2, 0.0, Weights::Conditioned { kappa: 1.5 }, 11).unwrap();
    let (x, y) = teacher.sample(20_000, 12, &device);
    let (w0, _) = tensor_init(&x, &y, 2, 13).unwrap();
    let w0 = weights_tensor(&w0, 2, 6, &device);
    let (_, trace) = GradientDescent {
        lr: 0.25,
        iterations: 300,
    }
    .run(w0, &x, &y, Some(&teacher));
    let log_err = |i: usize| trace[i].error.ln();
    let slopes: Vec<f64> = [50, 100, 150, 200]
        .iter()
        .map(|&i| (log_err(i + 50) - log_err(i)) / 50.0)
        .collect();
    eprintln!(
        "GD log-error slopes per iteration: {slopes:?}; final error {:.2e}",
        trace[300].error
    );
    assert!(slopes.iter().all(|&s| s < -0.005), "{slopes:?}");
    let (lo, hi) = slopes
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &s| (a.min(s), b.max(s)));
    assert!(lo / hi < 2.0, "the rate is not steady: {slopes:?}");
    assert!(trace[300].error < 1e-2, "{}", trace[300].error);
}

/// Noise-free AltMin recovers a single ReLU to 1e-4 relative error within 10 iterations from
/// n = 4d samples, starting at (2/n) Σ y_i x_i.
#[test]
fn altmin_recovers_a_single_relu_from_4d_samples() {
    let device = device();
    for seed in 0..3 {
        let d = 20;
        let teacher = Teacher::new(d, 1, 0.0, Weights::Gaussian, 100 + seed).unwrap();
        let (x, y) = teacher.sample(4 * d, 200 + seed, &device);
        let w0 = single_unit_init(&x, &y);
        let (w, trace) = AltMin {
            iterations: 10,
            tolerance: 0.0,
        }
        .run(w0, &x, &y, Some(&teacher))
        .unwrap();
        let err = teacher.relative_error(&w);
        eprintln!(
            "AltMin seed {seed}: errors {:?}",
            trace.iter().map(|p| p.error).collect::<Vec<_>>()
        );
        assert!(err < 1e-4, "seed {seed}: {err}");
    }
}

/// AltMin's least squares against a hand-computed solve of the normal equations, with its
/// residuals; a rank-deficient system is an error.
#[test]
fn least_squares_matches_a_direct_solve() {
    let device = device();
    let a_host = [2.0, 1.0, 1.0, 3.0, 0.0, 1.0, 1.0, 1.0];
    let y_host = [1.0, 2.0, 0.5, -1.0];
    let a = Tensor::<2>::from_data(TensorData::new(a_host.to_vec(), [4, 2]), &device);
    let y = Tensor::<1>::from_data(TensorData::new(y_host.to_vec(), [4]), &device);
    let ls = least_squares(a, &y).unwrap();
    // Normal equations by hand: AᵀA = [[6, 6], [6, 12]], Aᵀy = [3, 6.5].
    let det: f64 = 6.0 * 12.0 - 36.0;
    let direct = [
        (12.0 * 3.0 - 6.0 * 6.5) / det,
        (6.0 * 6.5 - 6.0 * 3.0) / det,
    ];
    for (s, e) in ls.solution.iter().zip(direct) {
        assert!((s - e).abs() < 1e-5, "{:?} vs {direct:?}", ls.solution);
    }
    assert!(ls.normal_residual < 1e-5, "{ls:?}");
    let singular = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 2.0, 4.0, 3.0, 6.0], [3, 2]),
        &device,
    );
    assert!(matches!(
        least_squares(singular, &Tensor::ones([3], &device)),
        Err(ReluError::Degenerate(_))
    ));
}

#[test]
fn invalid_settings_are_named() {
    assert!(matches!(
        Teacher::new(3, 4, 0.0, Weights::Gaussian, 0),
        Err(ReluError::InvalidField { field: "k", .. })
    ));
    assert!(Teacher::new(3, 2, -1.0, Weights::Gaussian, 0).is_err());
    assert!(Teacher::new(3, 2, 0.0, Weights::Conditioned { kappa: 0.5 }, 0).is_err());
    let t = Teacher::new(3, 1, 0.0, Weights::Gaussian, 0).unwrap();
    assert_eq!(relative_error(&t.weights, &t.weights, 1, 3), 0.0);
}

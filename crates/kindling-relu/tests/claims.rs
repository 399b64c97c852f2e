//! The papers' claims as tests, each over several seeds: gradient descent's statistical floor
//! falls like n^−1/2, alternating minimisation recovers several hidden units from the tensor
//! start, its phase transition in n/d for one unit, and the tensor initialisation on an
//! ill-conditioned teacher.
//!
//! The floor and the ill-conditioned initialisation measure statistical outcomes over many runs
//! (7 200 gradient steps with a read-back each; 10⁶-sample moments), which do not depend on the
//! backend, so they run on Flex whatever `KINDLING_TEST_DEVICE` selects: on a software Vulkan
//! driver they cost many minutes. The other two, and the moment and solver tests in `relu.rs`,
//! run on the selected backend.

use burn::tensor::Device;
use kindling_relu::{
    AltMin, GradientDescent, Teacher, Weights, relative_error, single_unit_init, tensor_init,
    weights_tensor,
};
use kindling_testing::device;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

/// W* with every entry moved by up to ±`scale`·max|w*| (a start inside the basin, so the test
/// is about the floor and not about the initialisation).
fn perturbed(teacher: &Teacher, scale: f64, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let top = teacher.weights.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    teacher
        .weights
        .iter()
        .map(|w| w + scale * top * rng.random_range(-1.0..1.0))
        .collect()
}

/// Least-squares slope of `ys` against `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    xs.iter()
        .zip(ys)
        .map(|(x, y)| (x - mx) * (y - my))
        .sum::<f64>()
        / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>()
}

/// With noise σ = 0.1, gradient descent converges to the empirical risk minimiser, whose error
/// is of order σ·√(d/n): over 6 seeds and n = 1 000, 8 000, 64 000 (d = 5, k = 2, κ = 3), the
/// log-log slope of the mean log-error against n is −0.5 ± 0.15, every seed's error falls from
/// the smallest to the largest n, and each error is σ·√(d/n) up to a factor of 10 either way.
/// (One seed's own slope is noisy: with three points per seed it ranged from −0.1 to −0.6.)
#[test]
fn gradient_descent_floor_falls_like_inverse_sqrt_n() {
    let device = Device::flex();
    let (d, k, sigma) = (5, 2, 0.1);
    let sizes = [1_000usize, 8_000, 64_000];
    let seeds = 0..6u64;
    let gd = GradientDescent {
        lr: 1.0,
        iterations: 400,
    };
    let mut per_seed = Vec::new();
    for seed in seeds.clone() {
        let teacher =
            Teacher::new(d, k, sigma, Weights::Conditioned { kappa: 3.0 }, 40 + seed).unwrap();
        let errors: Vec<f64> = sizes
            .iter()
            .map(|&n| {
                let (x, y) = teacher.sample(n, 50 + seed * 7 + n as u64, &device);
                let w0 = weights_tensor(&perturbed(&teacher, 0.1, seed), k, d, &device);
                let (_, trace) = gd.run(w0, &x, &y, Some(&teacher));
                let last = trace.last().unwrap().error;
                let before = trace[trace.len() - 21].error;
                assert!(
                    (before - last).abs() <= 0.02 * last,
                    "GD has not converged at n = {n}: {before} → {last}"
                );
                let scale = sigma * (d as f64 / n as f64).sqrt();
                assert!(
                    (0.1 * scale..10.0 * scale).contains(&last),
                    "n = {n}: error {last} vs σ√(d/n) = {scale}"
                );
                last
            })
            .collect();
        per_seed.push(errors);
    }
    let log_n: Vec<f64> = sizes.iter().map(|&n| (n as f64).ln()).collect();
    for (seed, errors) in seeds.zip(&per_seed) {
        let s = slope(&log_n, &errors.iter().map(|e| e.ln()).collect::<Vec<_>>());
        eprintln!("seed {seed}: errors {errors:.3?}, slope {s:.3}");
        assert!(errors[2] < errors[0], "seed {seed}: {errors:?}");
    }
    let mean: Vec<f64> = (0..sizes.len())
        .map(|i| per_seed.iter().map(|e| e[i].ln()).sum::<f64>() / per_seed.len() as f64)
        .collect();
    let s = slope(&log_n, &mean);
    eprintln!("slope of the mean log-error: {s:.3}");
    assert!((s + 0.5).abs() < 0.15, "slope {s}");
}

/// Noise-free, k = 3 hidden units: from the tensor initialisation (error ≈ 0.1–0.3 at
/// n = 100 000) alternating minimisation recovers W* to 1e-5 (f32 precision) within 30
/// iterations, on 3 seeds.
#[test]
fn altmin_recovers_several_units_from_the_tensor_start() {
    let device = device();
    let (d, k) = (6, 3);
    for seed in 0..3u64 {
        let teacher =
            Teacher::new(d, k, 0.0, Weights::Conditioned { kappa: 1.5 }, 60 + seed).unwrap();
        let (x, y) = teacher.sample(100_000, 70 + seed, &device);
        let (w0, _) = tensor_init(&x, &y, k, 80 + seed).unwrap();
        let start = relative_error(&w0, &teacher.weights, k, d);
        let (w, trace) = AltMin {
            iterations: 30,
            tolerance: 1e-12,
        }
        .run(weights_tensor(&w0, k, d, &device), &x, &y, Some(&teacher))
        .unwrap();
        let err = teacher.relative_error(&w);
        eprintln!(
            "seed {seed}: tensor start {start:.3}, AltMin {err:.2e} after {} iterations",
            trace.len() - 1
        );
        assert!(start > 1e-2, "the start must leave work to do: {start}");
        assert!(err < 1e-5, "seed {seed}: {err}");
    }
}

/// AltMin on one ReLU (d = 20, noise-free, 20 trials per point, start (2/n)Σ y_i x_i) has a
/// phase transition in n/d: it almost never recovers W* at n/d = 1.5 (≤ 3 of 20), almost
/// always at n/d = 3 (≥ 18 of 20), and the probability does not fall in between.
#[test]
fn altmin_phase_transition_in_samples_per_dimension() {
    let device = device();
    let d = 20;
    let recovered = |ratio: f64| -> usize {
        let n = (ratio * d as f64).round() as usize;
        (0..20u64)
            .filter(|&trial| {
                let teacher = Teacher::new(d, 1, 0.0, Weights::Gaussian, 1000 + trial).unwrap();
                let (x, y) = teacher.sample(n, 2000 + trial, &device);
                AltMin {
                    iterations: 30,
                    tolerance: 1e-12,
                }
                .run(single_unit_init(&x, &y), &x, &y, None)
                .map(|(w, _)| teacher.relative_error(&w) < 1e-3)
                .unwrap_or(false)
            })
            .count()
    };
    let counts: Vec<usize> = [1.5, 2.0, 2.5, 3.0].into_iter().map(recovered).collect();
    eprintln!("recoveries of 20 at n/d = 1.5, 2, 2.5, 3: {counts:?}");
    assert!(counts[0] <= 3, "{counts:?}");
    assert!(counts[3] >= 18, "{counts:?}");
    assert!(counts.windows(2).all(|w| w[1] + 2 >= w[0]), "{counts:?}");
}

/// The tensor initialisation on a teacher with condition number κ = 3 (d = 6, k = 3, σ = 0.1),
/// 3 seeds: below 0.25 relative error at n = 1 000 000 on every seed (measured 0.04, 0.09,
/// 0.22), and lower on average than at n = 100 000. The fourth-moment estimate is what limits
/// it. (Before the candidate of each random contraction was scored by its loss on the data, the
/// second seed landed at 0.44 at n = 1 000 000: two mixed directions.)
#[test]
fn tensor_init_on_an_ill_conditioned_teacher() {
    let device = Device::flex();
    let (d, k) = (6, 3);
    let mut totals = [0.0; 2];
    for seed in 0..3u64 {
        let teacher =
            Teacher::new(d, k, 0.1, Weights::Conditioned { kappa: 3.0 }, 90 + seed).unwrap();
        let errors: Vec<f64> = [100_000usize, 1_000_000]
            .iter()
            .map(|&n| {
                let (x, y) = teacher.sample(n, 95 + seed, &device);
                let (w0, _) = tensor_init(&x, &y, k, 99 + seed).unwrap();
                relative_error(&w0, &teacher.weights, k, d)
            })
            .collect();
        eprintln!("seed {seed}: tensor init errors at n = 1e5, 1e6: {errors:.3?}");
        assert!(errors[1] < 0.25, "seed {seed}: {errors:?}");
        totals[0] += errors[0];
        totals[1] += errors[1];
    }
    assert!(totals[1] < totals[0], "{totals:?}");
}

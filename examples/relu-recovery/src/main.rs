//! Three experiments on recovering a one-hidden-layer ReLU teacher, each written as an SVG:
//!
//! (a) error against iteration for gradient descent from the tensor initialisation, from a
//!     random start, and for alternating minimisation;
//! (b) the final error of tensor init + GD against the sample size n over several sample draws
//!     (log-log; slope ≈ −½ with noise), with the range over the draws;
//! (c) the probability that alternating minimisation recovers a single ReLU against n/d (the
//!     phase transition).
//!
//! ```text
//! cargo run --release -p relu-recovery -- --d 20 --k 3 --sigma 0.1 --n 20000
//! ```

use std::path::PathBuf;

use burn::tensor::Device;
use clap::Parser;
use kindling_examples_common::cli;
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use kindling_relu::*;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

/// Recover a teacher ReLU network three ways.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Input dimension d.
    #[arg(long, default_value_t = 20)]
    d: usize,
    /// Hidden units k.
    #[arg(long, default_value_t = 3)]
    k: usize,
    /// Noise standard deviation σ.
    #[arg(long, default_value_t = 0.1)]
    sigma: f64,
    /// Samples for experiment (a).
    #[arg(long, default_value_t = 20_000)]
    n: usize,
    /// Condition number of the teacher's weights.
    #[arg(long, default_value_t = 2.0)]
    kappa: f64,
    /// Gradient-descent iterations.
    #[arg(long, default_value_t = 400)]
    iterations: usize,
    /// Step size of gradient descent.
    #[arg(long, default_value_t = 1.0)]
    lr: f64,
    /// Sample draws per n in experiment (b): the final error is reported as mean and range.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Trials per point of the phase transition.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the SVGs.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
}

fn chart(args: &Args, file: &str, spec: ChartSpec, series: Vec<Series>) -> cli::Outcome {
    let path = args.out_dir.join(file);
    line_chart(&path, &spec, &series)
        .map_err(|e| format!("could not write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The teacher the arguments describe, or why it cannot be built.
fn teacher(args: &Args) -> Result<Teacher, String> {
    let weights = Weights::Conditioned { kappa: args.kappa };
    Teacher::new(args.d, args.k, args.sigma, weights, args.seed).map_err(|e| e.to_string())
}

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    cli::between("--d", args.d, 1, 2000)?;
    cli::between("--k", args.k, 1, args.d)?;
    cli::non_negative("--sigma", args.sigma)?;
    cli::at_least("--kappa", args.kappa, 1.0)?;
    cli::at_least("--n", args.n, args.d + 1)?;
    cli::at_least("--iterations", args.iterations, 1)?;
    cli::positive("--lr", args.lr)?;
    cli::at_least("--trials", args.trials, 1)?;
    cli::between("--seeds", args.seeds, 1, 100)?;
    teacher(args)?;
    cli::output_dir("--out-dir", &args.out_dir)
}

fn main() {
    cli::run(check, experiments);
}

/// Least-squares slope of log(error) against log(n).
fn log_log_slope(points: &[(f64, f64)]) -> f64 {
    let (lx, ly): (Vec<f64>, Vec<f64>) = points.iter().map(|(n, e)| (n.ln(), e.ln())).unzip();
    let count = lx.len() as f64;
    let (mx, my) = (
        lx.iter().sum::<f64>() / count,
        ly.iter().sum::<f64>() / count,
    );
    lx.iter()
        .zip(&ly)
        .map(|(a, b)| (a - mx) * (b - my))
        .sum::<f64>()
        / lx.iter().map(|a| (a - mx).powi(2)).sum::<f64>()
}

fn experiments(args: Args) -> cli::Outcome {
    let device = Device::flex();
    let (d, k) = (args.d, args.k);
    let teacher = teacher(&args)?;

    // (a) error against iteration.
    // ANCHOR: recover
    let (x, y) = teacher.sample(args.n, args.seed + 1, &device);
    let (w0, diagnostics) = tensor_init(&x, &y, k, args.seed + 2).map_err(|e| e.to_string())?;
    let w0 = weights_tensor(&w0, k, d, &device);
    let gd = GradientDescent {
        lr: args.lr,
        iterations: args.iterations,
    };
    let (_, from_tensor) = gd.run(w0.clone(), &x, &y, Some(&teacher));
    let (_, altmin) = AltMin {
        iterations: 20,
        tolerance: 1e-10,
    }
    .run(w0, &x, &y, Some(&teacher))
    .map_err(|e| e.to_string())?;
    // ANCHOR_END: recover
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed + 3);
    let random: Vec<f64> = (0..k * d)
        .map(|_| rng.random_range(-1.0..1.0) / (d as f64).sqrt())
        .collect();
    let (_, from_random) = gd.run(
        weights_tensor(&random, k, d, &device),
        &x,
        &y,
        Some(&teacher),
    );
    println!(
        "(a) d = {d}, k = {k}, σ = {}, n = {}: M2 eigenvalues {:.3?}…",
        args.sigma,
        args.n,
        &diagnostics.m2_eigenvalues[..(k + 1).min(d)]
    );
    println!(
        "    tensor init error {:.4}; GD from it {:.2e} after {} iterations; GD from random {:.2e}; AltMin {:.2e} after {} iterations",
        from_tensor[0].error,
        from_tensor.last().expect("trace").error,
        args.iterations,
        from_random.last().expect("trace").error,
        altmin.last().expect("trace").error,
        altmin.len() - 1
    );
    let curve = |t: &[TracePoint]| t.iter().map(|p| (p.iteration as f64, p.error)).collect();
    chart(
        &args,
        "relu-error-vs-iteration.svg",
        ChartSpec {
            title: format!("Recovering W* (d = {d}, k = {k}, σ = {})", args.sigma),
            x_label: "iteration".into(),
            y_label: "‖W − W*‖/‖W*‖".into(),
            log_y: true,
            ..Default::default()
        },
        vec![
            Series::new("GD from tensor init", curve(&from_tensor)),
            Series::new("GD from random init", curve(&from_random)),
            Series::new("AltMin from tensor init", curve(&altmin)),
        ],
    )?;

    // (b) final error against n, over several sample draws.
    let mut mean = Vec::new();
    let mut lowest = Vec::new();
    let mut highest = Vec::new();
    let mut per_seed: Vec<Vec<(f64, f64)>> = vec![Vec::new(); args.seeds as usize];
    for n in [2_000usize, 4_000, 8_000, 16_000, 32_000, 64_000] {
        let mut errors = Vec::new();
        for (s, curve) in per_seed.iter_mut().enumerate() {
            let s = s as u64;
            let (x, y) = teacher.sample(n, args.seed + 10 + n as u64 + 1000 * s, &device);
            let Ok((w0, _)) = tensor_init(&x, &y, k, args.seed + 4 + s) else {
                continue;
            };
            let (_, trace) = gd.run(weights_tensor(&w0, k, d, &device), &x, &y, Some(&teacher));
            let err = trace.last().expect("trace").error;
            errors.push(err);
            curve.push((n as f64, err));
        }
        if errors.is_empty() {
            continue;
        }
        let log_mean = errors.iter().map(|e| e.ln()).sum::<f64>() / errors.len() as f64;
        let (lo, hi) = errors
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &e| (a.min(e), b.max(e)));
        println!(
            "(b) n = {n:>6}: final error {:.3e} (geometric mean of {}), range [{lo:.3e}, {hi:.3e}]",
            log_mean.exp(),
            errors.len()
        );
        mean.push((n as f64, log_mean.exp()));
        lowest.push((n as f64, lo));
        highest.push((n as f64, hi));
    }
    let slope = log_log_slope(&mean);
    let seed_slopes: Vec<f64> = per_seed.iter().map(|c| log_log_slope(c)).collect();
    let (lo, hi) = seed_slopes
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &s| (a.min(s), b.max(s)));
    println!(
        "    log-log slope of the mean error against n: {slope:.3} (theory: −0.5); per draw: [{lo:.2}, {hi:.2}]"
    );
    chart(
        &args,
        "relu-error-vs-n.svg",
        ChartSpec {
            title: format!(
                "Final error of tensor init + GD against n (σ = {}, {} draws), slope {slope:.2}",
                args.sigma, args.seeds
            ),
            x_label: "n".into(),
            y_label: "‖W − W*‖/‖W*‖".into(),
            log_x: true,
            log_y: true,
        },
        vec![
            Series::new("geometric mean", mean),
            Series::new("lowest", lowest),
            Series::new("highest", highest),
        ],
    )?;

    // (c) AltMin's phase transition for a single ReLU.
    let mut probability = Vec::new();
    for ratio in [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0] {
        let n = (ratio * d as f64).round() as usize;
        let mut successes = 0;
        for trial in 0..args.trials as u64 {
            let single = Teacher::new(d, 1, 0.0, Weights::Gaussian, 1000 + trial).expect("valid");
            let (x, y) = single.sample(n, 2000 + trial, &device);
            let recovered = AltMin {
                iterations: 30,
                tolerance: 1e-12,
            }
            .run(single_unit_init(&x, &y), &x, &y, Some(&single))
            .map(|(w, _)| single.relative_error(&w) < 1e-3)
            .unwrap_or(false);
            successes += recovered as usize;
        }
        let p = successes as f64 / args.trials as f64;
        println!(
            "(c) n/d = {ratio:.1}: AltMin recovers a single ReLU in {:.0}% of {} trials",
            100.0 * p,
            args.trials
        );
        probability.push((ratio, p));
    }
    chart(
        &args,
        "relu-altmin-phase-transition.svg",
        ChartSpec {
            title: format!("AltMin recovery probability, single ReLU, d = {d}"),
            x_label: "n / d".into(),
            y_label: "P(recovery)".into(),
            ..Default::default()
        },
        vec![Series::new("AltMin", probability)],
    )
}

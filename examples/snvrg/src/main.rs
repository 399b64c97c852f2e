//! SGD, SVRG and SNVRG (K = 2, 3) on two nonconvex finite sums, plotted against the number of
//! single-example gradient evaluations (IFO calls, the paper's x-axis):
//!
//! 1. logistic regression with the nonconvex regulariser `λ Σ_j x_j²/(1 + x_j²)` on synthetic
//!    data (the paper's setting);
//! 2. a small MLP on the bundled UCI digits.
//!
//! Each method runs with its own step size, the winner of a grid (`--tune` re-runs it); SGD's
//! step decays as η/√(1 + passes). Progress is measured 10 times per pass over the data (inside
//! SNVRG's epochs, through `Snvrg::epoch_observed`), and the table reports the IFO calls to a
//! target with their spread over several sampling seeds.
//!
//! ```text
//! cargo run --release -p snvrg -- --out-dir plots     # the comparison, 5 seeds
//! cargo run --release -p snvrg -- --tune              # the step-size grid
//! ```

use std::path::PathBuf;
use std::time::Instant;

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use kindling_examples_common::cli;
use kindling_examples_common::digits::{Digits, DigitsSet};
use kindling_examples_common::mlp::Mlp;
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use kindling_optim::{SnvrgConfig, SvrgConfig, grads};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};

/// The compared methods, in the order of every learning-rate list.
const NAMES: [&str; 4] = ["SGD (b = 32)", "SVRG", "SNVRG K=2", "SNVRG K=3"];

/// The step sizes `--tune` tries (the same grid for every method and problem).
const GRID: [f64; 8] = [0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 3.0];

/// Progress is measured this many times per pass over the data (n IFO calls).
const SAMPLES_PER_PASS: u64 = 10;

/// Compare SGD, SVRG and SNVRG by IFO calls.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Budget in IFO calls, in multiples of n (passes over the data).
    #[arg(long, default_value_t = 30)]
    passes: usize,
    /// Examples of the synthetic logistic regression.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// Dimension of the synthetic logistic regression.
    #[arg(long, default_value_t = 50)]
    d: usize,
    /// Weight λ of the nonconvex regulariser.
    #[arg(long, default_value_t = 0.1)]
    lambda: f32,
    /// Step sizes on the logistic regression for SGD (initial; decayed as η/√(1 + passes)),
    /// SVRG, SNVRG K=2, SNVRG K=3: the winners of `--tune`.
    #[arg(long, value_delimiter = ',', num_args = 4, default_values_t = [0.03, 0.3, 0.3, 0.3])]
    lrs_logistic: Vec<f64>,
    /// Step sizes on the MLP, in the same order: the winners of `--tune`.
    #[arg(long, value_delimiter = ',', num_args = 4, default_values_t = [1.0, 1.0, 0.6, 1.0])]
    lrs_mlp: Vec<f64>,
    /// Seeds of the batch sampling (and the MLP's initialisation) for the comparison: the table
    /// reports the spread over them.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Seed of the data (synthetic problem and the digits split).
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Run the step-size grid per method and problem (on seed 0) instead of the comparison.
    #[arg(long)]
    tune: bool,
    /// Folder for the SVG plots (created if missing).
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
}

/// Logistic regression weights.
#[derive(Module, Debug)]
struct LogReg {
    w: Param<Tensor<1>>,
}

// ANCHOR: problem
/// `f_i(x) = log(1 + exp(−y_i a_iᵀx)) + λ Σ_j x_j²/(1 + x_j²)`.
struct Logistic {
    a: Tensor<2>,
    y: Tensor<1>,
    lambda: f32,
}

impl Logistic {
    fn loss(&self, m: &LogReg, idx: &[usize]) -> Tensor<1> {
        let device = self.a.device();
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(idx.iter().map(|&i| i as i64).collect(), [idx.len()]),
            &device,
        );
        let a = self.a.clone().select(0, idx.clone());
        let y = self.y.clone().select(0, idx);
        let w = m.w.val();
        let margin = a.matmul(w.clone().unsqueeze_dim(1)).squeeze_dim::<1>(1) * y;
        let data = burn::tensor::activation::softplus(margin.neg(), 1.0).mean();
        let w2 = w.square();
        let reg = (w2.clone() / (w2 + 1.0)).sum().mul_scalar(self.lambda);
        data + reg
    }
}
// ANCHOR_END: problem

/// One point of a curve: IFO calls, loss, gradient norm.
type Point = (f64, f64, f64);

trait Problem {
    type M: Module + Clone;
    fn n(&self) -> usize;
    fn loss(&self, m: &Self::M, idx: &[usize]) -> Tensor<1>;
    fn grad(&self, m: &Self::M, idx: &[usize]) -> GradientsParams {
        GradientsParams::from_grads(self.loss(m, idx).backward(), m)
    }
    fn measure(&self, m: &Self::M, ifo: u64) -> Point {
        let all: Vec<usize> = (0..self.n()).collect();
        let loss = self.loss(m, &all).into_scalar::<f64>();
        let g = self.grad(m, &all);
        (ifo as f64, loss, grads::squared_norm(m, &g).sqrt())
    }
}

impl Problem for Logistic {
    type M = LogReg;
    fn n(&self) -> usize {
        self.a.dims()[0]
    }
    fn loss(&self, m: &LogReg, idx: &[usize]) -> Tensor<1> {
        Logistic::loss(self, m, idx)
    }
}

struct DigitsProblem {
    set: DigitsSet,
}

impl Problem for DigitsProblem {
    type M = Mlp;
    fn n(&self) -> usize {
        self.set.len()
    }
    fn loss(&self, m: &Mlp, idx: &[usize]) -> Tensor<1> {
        let device = self.set.images.device();
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(idx.iter().map(|&i| i as i64).collect(), [idx.len()]),
            &device,
        );
        let logits = m.forward(self.set.images.clone().select(0, idx.clone()));
        CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, self.set.labels.clone().select(0, idx))
    }
}

/// Measures a run every `n / SAMPLES_PER_PASS` IFO calls.
struct Recorder<'a, P: Problem> {
    problem: &'a P,
    next: u64,
    curve: Vec<Point>,
}

impl<'a, P: Problem> Recorder<'a, P> {
    fn new(problem: &'a P, start: &P::M) -> Self {
        Self {
            problem,
            next: Self::every(problem),
            curve: vec![problem.measure(start, 0)],
        }
    }

    fn every(problem: &P) -> u64 {
        (problem.n() as u64 / SAMPLES_PER_PASS).max(1)
    }

    fn observe(&mut self, ifo: u64, m: &P::M) {
        if ifo >= self.next {
            self.curve.push(self.problem.measure(m, ifo));
            self.next = (ifo / Self::every(self.problem) + 1) * Self::every(self.problem);
        }
    }
}

/// Plain mini-batch SGD with the step decayed as `η/√(1 + passes so far)`.
fn sgd<P: Problem>(p: &P, mut m: P::M, lr: f64, budget: u64, seed: u64) -> Vec<Point> {
    const BATCH: usize = 32;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut optim = SgdConfig::new().init();
    let mut recorder = Recorder::new(p, &m);
    let mut ifo = 0u64;
    while ifo < budget {
        let idx: Vec<usize> = (0..BATCH).map(|_| rng.random_range(0..p.n())).collect();
        let g = p.grad(&m, &idx);
        let decayed = lr / (1.0 + ifo as f64 / p.n() as f64).sqrt();
        m = optim.step(decayed, m, g);
        ifo += BATCH as u64;
        recorder.observe(ifo, &m);
    }
    recorder.curve
}

// ANCHOR: run
/// SNVRG (or SVRG as its K = 1 case) for `budget` IFO calls, measured inside the epochs.
fn snvrg<P: Problem>(p: &P, mut m: P::M, config: SnvrgConfig, budget: u64) -> Vec<Point> {
    let mut opt = config.build();
    let mut recorder = Recorder::new(p, &m);
    while opt.ifo_calls() < budget {
        let oracle = |model: &P::M, idx: &[usize]| p.grad(model, idx);
        m = opt
            .epoch_observed(m, oracle, |ifo, x| recorder.observe(ifo, x))
            .next;
    }
    recorder.curve
}
// ANCHOR_END: run

/// The SNVRG configuration of method `index` (1..=3 in `NAMES`) on `n` examples.
fn vr_config(index: usize, n: usize, lr: f64, seed: u64) -> SnvrgConfig {
    match index {
        1 => SvrgConfig::new(n, n / 32, n, 32, lr)
            .with_seed(seed)
            .into_snvrg(),
        2 => SnvrgConfig::new(n, vec![4, n / 128], n, vec![n / 4, 32], lr).with_seed(seed),
        _ => {
            SnvrgConfig::new(n, vec![2, 4, n / 256], n, vec![n / 2, n / 8, 32], lr).with_seed(seed)
        }
    }
}

/// Runs method `index` of `NAMES` with step `lr` and sampling seed `seed`.
fn run_method<P: Problem>(
    p: &P,
    index: usize,
    init: P::M,
    lr: f64,
    budget: u64,
    seed: u64,
) -> Vec<Point> {
    if index == 0 {
        sgd(p, init, lr, budget, seed)
    } else {
        snvrg(p, init, vr_config(index, p.n(), lr, seed), budget)
    }
}

/// The progress measure: training loss or gradient norm, with the level that counts as reached.
#[derive(Clone, Copy)]
struct Target {
    column: usize,
    value: f64,
}

impl Target {
    fn of(self, p: &Point) -> f64 {
        [p.1, p.2][self.column]
    }

    /// IFO calls at which a curve first reaches the target.
    fn reach(self, curve: &[Point]) -> Option<f64> {
        curve.iter().find(|p| self.of(p) <= self.value).map(|p| p.0)
    }

    /// A tuning score (lower is better): IFO calls to the target, or beyond the budget by the
    /// log of how far the final value stayed from it.
    fn score(self, curve: &[Point]) -> f64 {
        let last = curve.last().expect("points");
        self.reach(curve)
            .unwrap_or(last.0 * (1.0 + (self.of(last) / self.value).ln().max(0.0)))
    }
}

/// A problem of the comparison.
struct Setup<'a, P: Problem> {
    title: &'a str,
    file: &'a str,
    problem: &'a P,
    init: &'a dyn Fn(u64) -> P::M,
    /// Builds the target from the curves of seed 0.
    target: &'a dyn Fn(&[Vec<Point>]) -> Target,
    target_text: &'a str,
    lrs: &'a [f64],
}

/// The step-size grid on seed 0: per method, the IFO calls to the target for every step size.
fn tune<P: Problem>(setup: &Setup<'_, P>, budget: u64) {
    println!("\n{}: step-size grid (seed 0)", setup.title);
    let runs: Vec<Vec<Vec<Point>>> = (0..NAMES.len())
        .map(|i| {
            GRID.iter()
                .map(|&lr| run_method(setup.problem, i, (setup.init)(0), lr, budget, 0))
                .collect()
        })
        .collect();
    let finals: Vec<Vec<Point>> = runs
        .iter()
        .flatten()
        .map(|c| vec![c[c.len() - 1]])
        .collect();
    let target = (setup.target)(&finals);
    println!("  target: {} = {:.3e}", setup.target_text, target.value);
    for (name, curves) in NAMES.iter().zip(&runs) {
        let scores: Vec<f64> = curves.iter().map(|c| target.score(c)).collect();
        let best = (0..GRID.len())
            .min_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .expect("grid");
        let shown: Vec<String> = GRID
            .iter()
            .zip(curves)
            .map(|(lr, c)| match target.reach(c) {
                Some(ifo) => format!("{lr}: {ifo:.0}"),
                None => format!("{lr}: — ({:.1e})", target.of(c.last().expect("points"))),
            })
            .collect();
        println!("  {name:<13} {}  → best {}", shown.join(", "), GRID[best]);
    }
}

/// Mean, sample standard deviation, minimum and maximum.
fn spread(xs: &[f64]) -> (f64, f64, f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, var.sqrt(), min, max)
}

fn compare<P: Problem>(setup: &Setup<'_, P>, budget: u64, args: &Args) -> cli::Outcome {
    let p = setup.problem;
    println!(
        "\n{}: n = {}, {} passes, {} seeds, progress sampled {SAMPLES_PER_PASS}× per pass",
        setup.title,
        p.n(),
        args.passes,
        args.seeds
    );
    let curves: Vec<Vec<Vec<Point>>> = NAMES
        .iter()
        .zip(setup.lrs)
        .enumerate()
        .map(|(i, (name, &lr))| {
            let start = Instant::now();
            let runs: Vec<Vec<Point>> = (0..args.seeds)
                .map(|seed| run_method(p, i, (setup.init)(seed), lr, budget, seed))
                .collect();
            println!(
                "  {name} (step {lr}) ran {} seeds in {:.1}s",
                args.seeds,
                start.elapsed().as_secs_f64()
            );
            runs
        })
        .collect();
    let seed0: Vec<Vec<Point>> = curves.iter().map(|runs| runs[0].clone()).collect();
    let target = (setup.target)(&seed0);
    println!("target: {} = {:.3e}", setup.target_text, target.value);
    println!(
        "{:<13} {:>6} {:>24} {:>19} {:>9} {:>11}",
        "method", "step", "IFO to target mean ± sd", "[min, max]", "reached", "final loss"
    );
    for ((name, lr), runs) in NAMES.iter().zip(setup.lrs).zip(&curves) {
        let hits: Vec<f64> = runs.iter().filter_map(|c| target.reach(c)).collect();
        let finals: Vec<f64> = runs.iter().map(|c| c.last().expect("points").1).collect();
        let (mean_loss, ..) = spread(&finals);
        let (ifo, range) = if hits.is_empty() {
            ("—".to_string(), String::new())
        } else {
            let (mean, sd, min, max) = spread(&hits);
            (
                format!("{mean:.0} ± {sd:.0}"),
                format!("[{min:.0}, {max:.0}]"),
            )
        };
        println!(
            "{name:<13} {lr:>6} {ifo:>24} {range:>19} {:>9} {mean_loss:>11.5}",
            format!("{}/{}", hits.len(), runs.len()),
        );
    }
    for (column, label, suffix) in [(1usize, "training loss", "loss"), (2, "‖∇F‖", "gradnorm")]
    {
        let series: Vec<Series> = NAMES
            .iter()
            .zip(&seed0)
            .map(|(name, c)| {
                let n = p.n() as f64;
                Series::new(
                    *name,
                    c.iter()
                        .map(|q| (q.0 / n, [q.1, q.2][column - 1]))
                        .collect(),
                )
            })
            .collect();
        let spec = ChartSpec {
            title: format!("{}: {label} against IFO calls (seed 0)", setup.title),
            x_label: "IFO calls / n".into(),
            y_label: label.into(),
            log_y: true,
            ..Default::default()
        };
        let path = args.out_dir.join(format!("{}-{suffix}.svg", setup.file));
        line_chart(&path, &spec, &series)
            .map_err(|e| format!("could not write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    cli::at_least("--passes", args.passes, 1)?;
    // SNVRG K = 3 loops over n/256 inner steps.
    cli::between("--n", args.n, 256, 1_000_000)?;
    cli::between("--d", args.d, 1, 10_000)?;
    cli::non_negative("--lambda", args.lambda as f64)?;
    cli::between("--seeds", args.seeds, 1, 100)?;
    for (flag, lrs) in [
        ("--lrs-logistic", &args.lrs_logistic),
        ("--lrs-mlp", &args.lrs_mlp),
    ] {
        for &lr in lrs {
            cli::positive(flag, lr)?;
        }
    }
    cli::output_dir("--out-dir", &args.out_dir)
}

fn main() {
    cli::run(check, run);
}

fn run(args: Args) -> cli::Outcome {
    let device = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(args.data_seed);
    let normal = Normal::new(0.0_f32, 1.0).expect("normal");
    let (n, d) = (args.n, args.d);
    let truth: Vec<f32> = (0..d).map(|_| normal.sample(&mut rng)).collect();
    let a: Vec<f32> = (0..n * d).map(|_| normal.sample(&mut rng)).collect();
    let y: Vec<f32> = a
        .chunks(d)
        .map(|row| {
            let m: f32 = row.iter().zip(&truth).map(|(x, w)| x * w).sum::<f32>()
                + 0.5 * normal.sample(&mut rng);
            if m >= 0.0 { 1.0 } else { -1.0 }
        })
        .collect();
    let logistic = Logistic {
        a: Tensor::from_data(TensorData::new(a, [n, d]), &device),
        y: Tensor::from_data(TensorData::new(y, [n]), &device),
        lambda: args.lambda,
    };
    let zero = |_: u64| LogReg {
        w: Param::from_data(TensorData::new(vec![0.0_f32; d], [d]), &device),
    };
    let first_grad = logistic.measure(&zero(0), 0).2;
    let gradient_target = move |_: &[Vec<Point>]| Target {
        column: 1,
        value: 1e-2 * first_grad,
    };
    let logistic_setup = Setup {
        title: "nonconvex logistic regression",
        file: "snvrg-logistic",
        problem: &logistic,
        init: &zero,
        target: &gradient_target,
        target_text: "‖∇F‖ ≤ 1% of its initial value",
        lrs: &args.lrs_logistic,
    };

    let split = Digits::load()
        .map_err(|e| format!("the bundled digits: {e}"))?
        .split(0.25, args.data_seed, &device);
    let digits = DigitsProblem { set: split.train };
    let mlp = |seed: u64| Mlp::new(32, seed, &device);
    // The loss target: twice the best final training loss of the seed-0 runs.
    let loss_target = |curves: &[Vec<Point>]| Target {
        column: 0,
        value: 2.0
            * curves
                .iter()
                .map(|c| c.last().expect("points").1)
                .fold(f64::INFINITY, f64::min),
    };
    let digits_setup = Setup {
        title: "MLP on the UCI digits",
        file: "snvrg-digits",
        problem: &digits,
        init: &mlp,
        target: &loss_target,
        target_text: "training loss ≤ 2× the best final loss of seed 0",
        lrs: &args.lrs_mlp,
    };
    let logistic_budget = (args.passes * n) as u64;
    let digits_budget = (args.passes * digits.n()) as u64;
    if args.tune {
        tune(&logistic_setup, logistic_budget);
        tune(&digits_setup, digits_budget);
        return Ok(());
    }
    compare(&logistic_setup, logistic_budget, &args)?;
    compare(&digits_setup, digits_budget, &args)
}

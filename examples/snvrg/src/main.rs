//! SGD, SVRG and SNVRG (K = 2, 3) on two nonconvex finite sums, plotted against the number of
//! single-example gradient evaluations (IFO calls, the paper's x-axis):
//!
//! 1. logistic regression with the nonconvex regulariser `λ Σ_j x_j²/(1 + x_j²)` on synthetic
//!    data (the paper's setting);
//! 2. a small MLP on the bundled UCI digits.
//!
//! ```text
//! cargo run --release -p snvrg -- --epochs 15 --out-dir .
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
    /// SGD's step on the logistic regression.
    #[arg(long, default_value_t = 0.1)]
    lr_sgd_logistic: f64,
    /// SVRG's and SNVRG's step on the logistic regression.
    #[arg(long, default_value_t = 0.5)]
    lr_vr_logistic: f64,
    /// SGD's step on the MLP.
    #[arg(long, default_value_t = 0.3)]
    lr_sgd_mlp: f64,
    /// SVRG's and SNVRG's step on the MLP.
    #[arg(long, default_value_t = 1.0)]
    lr_vr_mlp: f64,
    /// Seed of the data, the initial point and the batch sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the SVG plots.
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

/// A named method: runs from an initial module and returns its curve.
type Method<'a, M> = (&'a str, Box<dyn Fn(M) -> Vec<Point> + 'a>);

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

/// Plain mini-batch SGD, measured every pass over the data.
fn sgd<P: Problem>(
    p: &P,
    mut m: P::M,
    batch: usize,
    lr: f64,
    budget: u64,
    seed: u64,
) -> Vec<Point> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut optim = SgdConfig::new().init();
    let mut ifo = 0u64;
    let mut curve = vec![p.measure(&m, 0)];
    while ifo < budget {
        for _ in 0..p.n() / batch {
            let idx: Vec<usize> = (0..batch).map(|_| rng.random_range(0..p.n())).collect();
            let g = p.grad(&m, &idx);
            m = optim.step(lr, m, g);
            ifo += batch as u64;
        }
        curve.push(p.measure(&m, ifo));
    }
    curve
}

// ANCHOR: run
/// SNVRG (or SVRG as its K = 1 case) for `budget` IFO calls, measured every epoch.
fn snvrg<P: Problem>(p: &P, mut m: P::M, config: SnvrgConfig, budget: u64) -> Vec<Point> {
    let mut opt = config.build();
    let mut curve = vec![p.measure(&m, 0)];
    while opt.ifo_calls() < budget {
        m = opt.epoch(m, |model: &P::M, idx: &[usize]| p.grad(model, idx));
        curve.push(p.measure(&m, opt.ifo_calls()));
    }
    curve
}
// ANCHOR_END: run

/// IFO calls at which a curve first reaches `target` (in the chosen column).
fn reach(curve: &[Point], target: f64, column: usize) -> Option<f64> {
    curve
        .iter()
        .find(|p| [p.1, p.2][column] <= target)
        .map(|p| p.0)
}

/// The compared methods on `p`: SGD (b = 32), SVRG (b = 32 inner steps over n/32), SNVRG with
/// K = 2 and K = 3, each within `budget` IFO calls.
fn methods<P: Problem>(
    p: &P,
    lr_sgd: f64,
    lr: f64,
    budget: u64,
    seed: u64,
) -> Vec<Method<'_, P::M>> {
    let n = p.n();
    let configs = [
        (
            "SVRG",
            SvrgConfig {
                n,
                inner_steps: n / 32,
                batch: n,
                inner_batch: 32,
                step_size: lr,
                seed,
            }
            .into_snvrg(),
        ),
        (
            "SNVRG K=2",
            SnvrgConfig {
                n,
                loop_lengths: vec![4, n / 128],
                batch: n,
                level_batches: vec![n / 4, 32],
                step_size: lr,
                seed,
            },
        ),
        (
            "SNVRG K=3",
            SnvrgConfig {
                n,
                loop_lengths: vec![2, 4, n / 256],
                batch: n,
                level_batches: vec![n / 2, n / 8, 32],
                step_size: lr,
                seed,
            },
        ),
    ];
    let mut out: Vec<Method<'_, P::M>> = vec![(
        "SGD (b = 32)",
        Box::new(move |m| sgd(p, m, 32, lr_sgd, budget, seed)),
    )];
    for (name, config) in configs {
        out.push((name, Box::new(move |m| snvrg(p, m, config.clone(), budget))));
    }
    out
}

fn compare<P: Problem>(
    title: &str,
    p: &P,
    init: impl Fn() -> P::M,
    methods: Vec<Method<'_, P::M>>,
    args: &Args,
    file: &str,
) -> cli::Outcome {
    println!("\n{title}: n = {}", p.n());
    let curves: Vec<(&str, Vec<Point>)> = methods
        .into_iter()
        .map(|(name, run)| {
            let start = Instant::now();
            let curve = run(init());
            println!("  {name} ran in {:.1}s", start.elapsed().as_secs_f64());
            (name, curve)
        })
        .collect();
    let best_loss = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(f64::INFINITY, f64::min);
    let target_loss = best_loss + 1e-2 * best_loss.abs().max(1e-3);
    let first_grad = curves[0].1[0].2;
    let target_grad = 1e-2 * first_grad;
    println!(
        "{:<14} {:>12} {:>12} {:>16} {:>18}",
        "method", "final loss", "final ‖∇F‖", "IFO to loss tgt", "IFO to ‖∇F‖ tgt"
    );
    let fmt = |x: Option<f64>| x.map_or("not reached".to_string(), |v| format!("{:.0}", v));
    for (name, c) in &curves {
        let last = c.last().expect("points");
        println!(
            "{name:<14} {:>12.5} {:>12.2e} {:>16} {:>18}",
            last.1,
            last.2,
            fmt(reach(c, target_loss, 0)),
            fmt(reach(c, target_grad, 1))
        );
    }
    println!(
        "(loss target: best final loss + 1% = {target_loss:.5}; gradient target: 1% of the initial ‖∇F‖ = {target_grad:.2e})"
    );
    for (column, label, suffix) in [(1usize, "training loss", "loss"), (2, "‖∇F‖", "gradnorm")]
    {
        let series: Vec<Series> = curves
            .iter()
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
            title: format!("{title}: {label} against IFO calls"),
            x_label: "IFO calls / n".into(),
            y_label: label.into(),
            log_y: true,
            ..Default::default()
        };
        let path = args.out_dir.join(format!("{file}-{suffix}.svg"));
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
    for (flag, lr) in [
        ("--lr-sgd-logistic", args.lr_sgd_logistic),
        ("--lr-vr-logistic", args.lr_vr_logistic),
        ("--lr-sgd-mlp", args.lr_sgd_mlp),
        ("--lr-vr-mlp", args.lr_vr_mlp),
    ] {
        cli::positive(flag, lr)?;
    }
    cli::output_dir("--out-dir", &args.out_dir)
}

fn main() {
    cli::run(check, run);
}

fn run(args: Args) -> cli::Outcome {
    let device = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
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
    let budget = (args.passes * n) as u64;
    let init = || LogReg {
        w: Param::from_data(TensorData::new(vec![0.0_f32; d], [d]), &device),
    };
    let s = args.seed;
    let (lr_sgd, lr) = (args.lr_sgd_logistic, args.lr_vr_logistic);
    compare(
        "nonconvex logistic regression",
        &logistic,
        init,
        methods(&logistic, lr_sgd, lr, budget, s),
        &args,
        "snvrg-logistic",
    )?;

    let split = Digits::load()
        .map_err(|e| format!("the bundled digits: {e}"))?
        .split(0.25, args.seed, &device);
    let digits = DigitsProblem { set: split.train };
    let m = digits.n();
    let init = || Mlp::new(32, args.seed, &device);
    let budget = (args.passes * m) as u64;
    let (lr_sgd, lr) = (args.lr_sgd_mlp, args.lr_vr_mlp);
    compare(
        "MLP on the UCI digits",
        &digits,
        init,
        methods(&digits, lr_sgd, lr, budget, s),
        &args,
        "snvrg-digits",
    )
}

//! Trains the same MLP on the bundled UCI handwritten digits with four optimizers — SGD with
//! momentum and Adam (burn's), Signum and M-SVAG (kindling's) — from the same seed, prints each
//! one's held-out accuracy and writes an SVG of the training-loss curves.
//!
//! ```text
//! cargo run --release -p optimizers-digits -- --epochs 20 --out optimizers-digits.svg
//! cargo run --release -p optimizers-digits -- --tune      # re-run the learning-rate grid
//! ```
//!
//! The default learning rates are the winners of the grid `--tune` runs (each optimizer tried at
//! the values in `GRID` for 10 epochs; the best final validation accuracy, measured on a
//! validation split carved out of the training set, wins).

use std::path::PathBuf;
use std::time::Instant;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use burn::tensor::Device;
use clap::Parser;
use kindling_examples_common::cli;
use kindling_examples_common::digits::{Digits, DigitsSet};
use kindling_examples_common::mlp::{Mlp, train_epoch};
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use kindling_optim::{SignumConfig, SvagConfig};

/// Compare SGD-momentum, Adam, Signum and M-SVAG on the UCI digits.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Passes over the training set.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Learning rate of SGD with momentum 0.9.
    #[arg(long, default_value_t = 0.3)]
    lr_sgd: f64,
    /// Learning rate of Adam.
    #[arg(long, default_value_t = 3e-3)]
    lr_adam: f64,
    /// Learning rate of Signum (β = 0.9).
    #[arg(long, default_value_t = 1e-3)]
    lr_signum: f64,
    /// Learning rate of M-SVAG (β = 0.9).
    #[arg(long, default_value_t = 0.3)]
    lr_msvag: f64,
    /// Run the learning-rate grid on a validation split instead of the comparison.
    #[arg(long)]
    tune: bool,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seed of the split, the initial weights and the batch order (the same for every optimizer).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the SVG of the loss curves.
    #[arg(long, default_value = "optimizers-digits.svg")]
    out: PathBuf,
}

// ANCHOR: optimizers
/// The four optimizers, by name, each built from its config like any burn optimizer.
fn optimizer(name: &str) -> ModuleOptimizer {
    match name {
        "SGD-momentum" => SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            }))
            .init(),
        "Adam" => AdamConfig::new().init(),
        "Signum" => SignumConfig::new().with_momentum(0.9).init(),
        "M-SVAG" => SvagConfig::m_svag().with_beta(0.9).init(),
        _ => unreachable!("unknown optimizer {name}"),
    }
}
// ANCHOR_END: optimizers

const NAMES: [&str; 4] = ["SGD-momentum", "Adam", "Signum", "M-SVAG"];
/// The learning rates `--tune` tries, per optimizer (same order as `NAMES`).
const GRID: [[f64; 4]; 4] = [
    [0.03, 0.1, 0.3, 1.0],
    [3e-4, 1e-3, 3e-3, 1e-2],
    [1e-4, 3e-4, 1e-3, 3e-3],
    [0.03, 0.1, 0.3, 1.0],
];

/// What every run shares: the schedule, the network and the seed.
#[derive(Clone, Copy)]
struct Setup {
    epochs: usize,
    hidden: usize,
    batch: usize,
    seed: u64,
}

struct Run {
    losses: Vec<f32>,
    accuracy: f32,
    seconds: f64,
}

// ANCHOR: train
/// Trains a fresh MLP (same seed for every optimizer) and reports its loss curve and accuracy.
fn train(name: &str, lr: f64, train: &DigitsSet, test: &DigitsSet, setup: Setup) -> Run {
    let device = train.images.device();
    let mut model = Mlp::new(setup.hidden, setup.seed, &device);
    let mut optim = optimizer(name);
    let start = Instant::now();
    let mut losses = Vec::with_capacity(setup.epochs);
    for epoch in 0..setup.epochs {
        let seed = setup.seed.wrapping_add(epoch as u64);
        let (trained, loss) = train_epoch(model, &mut optim, train, setup.batch, lr, seed);
        model = trained;
        losses.push(loss);
    }
    Run {
        losses,
        accuracy: model.accuracy(test),
        seconds: start.elapsed().as_secs_f64(),
    }
}
// ANCHOR_END: train

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    cli::at_least("--epochs", args.epochs, 1)?;
    for (flag, lr) in [
        ("--lr-sgd", args.lr_sgd),
        ("--lr-adam", args.lr_adam),
        ("--lr-signum", args.lr_signum),
        ("--lr-msvag", args.lr_msvag),
    ] {
        cli::positive(flag, lr)?;
    }
    cli::at_least("--hidden", args.hidden, 1)?;
    cli::at_least("--batch", args.batch, 1)?;
    cli::output_file("--out", &args.out)
}

fn main() {
    cli::run(check, compare);
}

fn compare(args: Args) -> cli::Outcome {
    let device = Device::flex().autodiff();
    let digits = Digits::load().map_err(|e| format!("the bundled digits: {e}"))?;
    let split = digits.split(0.25, args.seed, &device);
    let setup = Setup {
        epochs: args.epochs,
        hidden: args.hidden,
        batch: args.batch,
        seed: args.seed,
    };
    if args.tune {
        tune(
            &split.train,
            Setup {
                epochs: 10,
                ..setup
            },
        );
        return Ok(());
    }
    let lrs = [args.lr_sgd, args.lr_adam, args.lr_signum, args.lr_msvag];
    println!(
        "UCI digits: {} train / {} test images, MLP 64→{}→10, {} epochs, batch {}, seed {}",
        split.train.len(),
        split.test.len(),
        args.hidden,
        args.epochs,
        args.batch,
        args.seed
    );
    println!(
        "{:<14} {:>8} {:>12} {:>10} {:>8}",
        "optimizer", "lr", "final loss", "test acc", "time"
    );
    let mut series = Vec::new();
    for (name, lr) in NAMES.iter().zip(lrs) {
        let run = train(name, lr, &split.train, &split.test, setup);
        println!(
            "{name:<14} {lr:>8} {:>12.4} {:>9.1}% {:>7.1}s",
            run.losses.last().copied().unwrap_or(f32::NAN),
            100.0 * run.accuracy,
            run.seconds
        );
        let points = run
            .losses
            .iter()
            .enumerate()
            .map(|(e, &l)| ((e + 1) as f64, l as f64));
        series.push(Series::new(format!("{name} (lr {lr})"), points.collect()));
    }
    let spec = ChartSpec {
        title: "MLP on UCI digits: training loss".into(),
        x_label: "epoch".into(),
        y_label: "mean training cross-entropy".into(),
        log_y: true,
        ..Default::default()
    };
    line_chart(&args.out, &spec, &series)
        .map_err(|e| format!("could not write {}: {e}", args.out.display()))?;
    println!("loss curves written to {}", args.out.display());
    Ok(())
}

/// The learning-rate grid: each setting trained on 80% of the training set, scored on the rest.
fn tune(train_set: &DigitsSet, setup: Setup) {
    let n = train_set.len();
    let cut = n * 4 / 5;
    let (fit, valid) = (train_set.slice(0..cut), train_set.slice(cut..n));
    for (name, grid) in NAMES.iter().zip(GRID) {
        let scores: Vec<(f64, f32)> = grid
            .iter()
            .map(|&lr| (lr, train(name, lr, &fit, &valid, setup).accuracy))
            .collect();
        let best = scores
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("non-empty grid");
        let shown: Vec<String> = scores
            .iter()
            .map(|(lr, a)| format!("{lr}: {:.1}%", 100.0 * a))
            .collect();
        println!("{name:<14} {}  → best lr {}", shown.join(", "), best.0);
    }
}

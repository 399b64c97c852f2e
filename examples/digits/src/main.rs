//! Trains a small MLP on the bundled UCI handwritten digits with burn's Adam and prints the loss,
//! the accuracy and the time of every epoch.
//!
//! ```text
//! cargo run --release -p digits -- --epochs 10
//! ```

use std::time::Instant;

use burn::optim::AdamConfig;
use burn::tensor::Device;
use clap::Parser;
use kindling_examples_common::cli;
use kindling_examples_common::digits::Digits;
use kindling_examples_common::mlp::{Mlp, train_epoch};

/// Train an MLP on the UCI handwritten digits (8×8, 1797 images) with burn's Adam.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Number of passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Fraction of the images held out for testing.
    #[arg(long, default_value_t = 0.25)]
    test_fraction: f64,
    /// Seed of the split, the initial weights and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend: `flex` (CPU) or `wgpu` (needs `--features wgpu`).
    #[arg(long, default_value = "flex")]
    device: String,
}

/// The backend `--device` names, or why it cannot be had.
fn device(name: &str) -> Result<Device, String> {
    match name {
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(Default::default())),
        other => Err(format!(
            "--device {other:?} is unknown or not compiled in: use flex (or build with --features wgpu for wgpu)"
        )),
    }
}

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    cli::at_least("--epochs", args.epochs, 1)?;
    cli::at_least("--hidden", args.hidden, 1)?;
    cli::positive("--lr", args.lr)?;
    cli::at_least("--batch", args.batch, 1)?;
    if !(args.test_fraction > 0.0 && args.test_fraction < 1.0) {
        return Err(format!(
            "--test-fraction must be strictly between 0 and 1 (got {})",
            args.test_fraction
        ));
    }
    device(&args.device).map(drop)
}

fn main() {
    cli::run(check, train);
}

fn train(args: Args) -> cli::Outcome {
    let device = device(&args.device)?.autodiff();
    let split = Digits::load()
        .map_err(|e| format!("the bundled digits: {e}"))?
        .split(args.test_fraction, args.seed, &device);
    println!(
        "UCI digits: {} training and {} test images of 8×8 pixels; MLP 64→{}→10; Adam lr {}",
        split.train.len(),
        split.test.len(),
        args.hidden,
        args.lr
    );
    let mut model = Mlp::new(args.hidden, args.seed, &device);
    let mut optim = AdamConfig::new().init();
    println!("epoch  train loss  train acc  test acc     time");
    let start = Instant::now();
    for epoch in 1..=args.epochs {
        let t = Instant::now();
        let (trained, loss) = train_epoch(
            model,
            &mut optim,
            &split.train,
            args.batch,
            args.lr,
            args.seed.wrapping_add(epoch as u64),
        );
        model = trained;
        println!(
            "{epoch:>5}  {loss:>10.4}  {:>8.1}%  {:>7.1}%  {:>5.1} ms",
            100.0 * model.accuracy(&split.train),
            100.0 * model.accuracy(&split.test),
            1e3 * t.elapsed().as_secs_f64()
        );
    }
    println!(
        "done in {:.0} ms: {:.1}% of the held-out digits classified correctly",
        1e3 * start.elapsed().as_secs_f64(),
        100.0 * model.accuracy(&split.test)
    );
    Ok(())
}

//! Trains a graph weighted model (a tensor network on the picture grid) to recognise a picture
//! language, prints train and held-out accuracy (members, uniform non-members and near misses
//! separately), shows misclassified pictures, evaluates the same model on another picture size,
//! and writes an SVG of the loss curve.
//!
//! ```text
//! cargo run --release -p gwm-pictures -- --language bs --size 4x4 --bond 3
//! cargo run --release -p gwm-pictures -- --language sb --size 4x6 --bond 3 --also 5x6
//! ```

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use burn::optim::AdamConfig;
use burn::tensor::Device;
use clap::{Parser, ValueEnum};
use kindling_examples_common::cli;
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use kindling_gwm::languages::{Language, dataset};
use kindling_gwm::{Objective, PictureGwmConfig, Training, accuracy, mistakes, train};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Lang {
    /// Bars & Stripes.
    Bs,
    /// Shifting Bits (each row the previous one shifted right by one).
    Sb,
}

/// Learn a picture language with a graph weighted model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The language.
    #[arg(long, value_enum, default_value_t = Lang::Bs)]
    language: Lang,
    /// Picture size HxW.
    #[arg(long, default_value = "3x3")]
    size: String,
    /// Another size HxW to evaluate the trained model on (tensors are tied across positions).
    #[arg(long)]
    also: Option<String>,
    /// Bond dimension d.
    #[arg(long, default_value_t = 2)]
    bond: usize,
    /// Training negatives per member (half uniform, half near misses).
    #[arg(long, default_value_t = 4)]
    negatives: usize,
    /// Training epochs (full batch).
    #[arg(long, default_value_t = 300)]
    epochs: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 0.02)]
    lr: f64,
    /// Use the logistic loss instead of the regression loss.
    #[arg(long)]
    logistic: bool,
    /// Seed of the data set and the initial tensors.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the SVG of the loss curve.
    #[arg(long, default_value = "gwm-loss.svg")]
    out: PathBuf,
}

/// A picture size `HxW` (each side ≥ 2, at most 30 pixels: the data sets enumerate pictures).
fn size(flag: &str, text: &str) -> Result<(usize, usize), String> {
    let parsed = text
        .split_once('x')
        .and_then(|(h, w)| Some((h.parse::<usize>().ok()?, w.parse::<usize>().ok()?)));
    match parsed {
        Some((h, w)) if h >= 2 && w >= 2 && h * w <= 30 => Ok((h, w)),
        Some(_) => Err(format!(
            "{flag} {text}: each side must be at least 2 and H·W at most 30"
        )),
        None => Err(format!("{flag} {text:?} is not HxW, for example 3x4")),
    }
}

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    size("--size", &args.size)?;
    if let Some(other) = &args.also {
        size("--also", other)?;
    }
    cli::between("--bond", args.bond, 1, 16)?;
    cli::at_least("--negatives", args.negatives, 1)?;
    cli::at_least("--epochs", args.epochs, 1)?;
    cli::positive("--lr", args.lr)?;
    cli::output_file("--out", &args.out)
}

fn main() {
    cli::run(check, learn);
}

fn learn(args: Args) -> cli::Outcome {
    let language = match args.language {
        Lang::Bs => Language::BarsAndStripes,
        Lang::Sb => Language::SHIFTING_BITS,
    };
    let (h, w) = size("--size", &args.size)?;
    let device = Device::flex().autodiff();
    // ANCHOR: train
    let data =
        dataset(language, h, w, args.negatives, 200, args.seed).map_err(|e| e.to_string())?;
    let model = PictureGwmConfig::new()
        .with_bond(args.bond)
        .init_with_seed(args.seed, &device);
    let objective = if args.logistic {
        Objective::Logistic
    } else {
        Objective::Regression
    };
    let settings = Training {
        epochs: args.epochs,
        lr: args.lr,
        batch: None,
        objective,
    };
    let mut optim = AdamConfig::new().init();
    let start = Instant::now();
    let (model, losses) = train(model, &mut optim, &data.train, settings, |epoch, loss| {
        if epoch % 50 == 0 {
            println!("epoch {epoch:>4}: loss {loss:.5}");
        }
        ControlFlow::Continue(())
    });
    // ANCHOR_END: train
    println!(
        "{language:?} {h}×{w}, bond {}: {} training pictures, {} epochs in {:.1}s",
        args.bond,
        data.train.len(),
        losses.len(),
        start.elapsed().as_secs_f64()
    );
    let pct = |set| 100.0 * accuracy(&model, set, objective);
    println!("train accuracy          {:>6.1}%", pct(&data.train));
    println!(
        "members                 {:>6.1}%",
        pct(&data.test_positives)
    );
    println!("held-out uniform negs   {:>6.1}%", pct(&data.test_uniform));
    println!(
        "held-out near misses    {:>6.1}%",
        pct(&data.test_near_misses)
    );
    for (set, kind) in [
        (&data.test_positives, "member"),
        (&data.test_uniform, "uniform non-member"),
        (&data.test_near_misses, "near miss"),
    ] {
        for (picture, value) in mistakes(&model, set, objective).into_iter().take(2) {
            println!(
                "misclassified {kind} (f = {value:.3}):\n{}\n",
                picture.render()
            );
        }
    }
    if let Some(other) = &args.also {
        let (h2, w2) = size("--also", other)?;
        let d2 = dataset(language, h2, w2, 1, 200, args.seed + 1).map_err(|e| e.to_string())?;
        println!(
            "same model on {h2}×{w2}: members {:.1}%, uniform negatives {:.1}%, near misses {:.1}%",
            100.0 * accuracy(&model, &d2.test_positives, objective),
            100.0 * accuracy(&model, &d2.test_uniform, objective),
            100.0 * accuracy(&model, &d2.test_near_misses, objective)
        );
    }
    let points = losses
        .iter()
        .enumerate()
        .map(|(e, &l)| (e as f64, l as f64))
        .collect();
    let spec = ChartSpec {
        title: format!("GWM on {language:?} {h}×{w}, bond {}", args.bond),
        x_label: "epoch".into(),
        y_label: "training loss".into(),
        log_y: true,
        ..Default::default()
    };
    line_chart(&args.out, &spec, &[Series::new("loss", points)])
        .map_err(|e| format!("could not write {}: {e}", args.out.display()))?;
    println!("loss curve written to {}", args.out.display());
    Ok(())
}

//! Trains a graph weighted model (a tensor network on the picture grid) to recognise a picture
//! language from pictures of one or several sizes at once, prints train and held-out accuracy
//! (members, uniform non-members and near misses separately), shows misclassified pictures,
//! evaluates the same model on other picture sizes (accuracy and AUC), and writes an SVG of the
//! loss curve.
//!
//! ```text
//! cargo run --release -p gwm-pictures -- --language bs --size 4x4 --bond 3
//! cargo run --release -p gwm-pictures -- --size 3x3,3x4,4x3 --bond 3 --also 4x4,5x5,6x6
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
use kindling_gwm::languages::{Dataset, Language, PictureSet, dataset};
use kindling_gwm::{
    BoundaryEncoding, Objective, PictureGwmConfig, Training, accuracy, auc, mistakes, train_sizes,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Lang {
    /// Bars & Stripes.
    Bs,
    /// Shifting Bits (each row the previous one shifted right by one).
    Sb,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Boundary {
    /// One tensor per symbol and position type (corners, border sides, interior).
    Typed,
    /// One interior tensor per symbol and four learned boundary vectors (a padded picture).
    Vectors,
}

/// Learn a picture language with a graph weighted model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The language.
    #[arg(long, value_enum, default_value_t = Lang::Bs)]
    language: Lang,
    /// Training picture sizes HxW, comma separated: every epoch trains on all of them.
    #[arg(long, default_value = "3x3")]
    size: String,
    /// Other sizes HxW, comma separated, to evaluate the trained model on (tensors are tied
    /// across positions, so one model evaluates every size).
    #[arg(long)]
    also: Option<String>,
    /// Bond dimension d.
    #[arg(long, default_value_t = 2)]
    bond: usize,
    /// How the border is represented.
    #[arg(long, value_enum, default_value_t = Boundary::Typed)]
    boundary: Boundary,
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

/// Picture sizes `HxW,HxW,…` (each side ≥ 2, at most 64 pixels: the data sets enumerate the
/// members).
fn sizes(flag: &str, text: &str) -> Result<Vec<(usize, usize)>, String> {
    text.split(',')
        .map(|one| {
            let parsed = one
                .trim()
                .split_once('x')
                .and_then(|(h, w)| Some((h.parse::<usize>().ok()?, w.parse::<usize>().ok()?)));
            match parsed {
                Some((h, w)) if h >= 2 && w >= 2 && h * w <= 64 => Ok((h, w)),
                Some(_) => Err(format!(
                    "{flag} {one}: each side must be at least 2 and H·W at most 64"
                )),
                None => Err(format!("{flag} {one:?} is not HxW, for example 3x4")),
            }
        })
        .collect()
}

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    sizes("--size", &args.size)?;
    if let Some(other) = &args.also {
        sizes("--also", other)?;
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
    let trained_on = sizes("--size", &args.size)?;
    let device = Device::flex().autodiff();
    // ANCHOR: train
    let data = trained_on
        .iter()
        .map(|&(h, w)| dataset(language, h, w, args.negatives, 200, args.seed))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let boundary = match args.boundary {
        Boundary::Typed => BoundaryEncoding::Typed,
        Boundary::Vectors => BoundaryEncoding::Vectors,
    };
    let model = PictureGwmConfig::new()
        .with_bond(args.bond)
        .with_boundary(boundary)
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
    let sets: Vec<PictureSet> = data.iter().map(|d| d.train.clone()).collect();
    let (model, losses) = train_sizes(model, &mut optim, &sets, settings, |epoch, loss| {
        if epoch % 50 == 0 {
            println!("epoch {epoch:>4}: loss {loss:.5}");
        }
        ControlFlow::Continue(())
    });
    // ANCHOR_END: train
    println!(
        "{language:?} on {}, bond {}: {} training pictures, {} epochs in {:.1}s",
        args.size,
        args.bond,
        sets.iter().map(PictureSet::len).sum::<usize>(),
        losses.len(),
        start.elapsed().as_secs_f64()
    );
    let pct = |set: &PictureSet| 100.0 * accuracy(&model, set, objective);
    println!(
        "{:<6} {:>7} {:>8} {:>10} {:>12} {:>7}",
        "size", "train", "members", "uniform", "near misses", "AUC"
    );
    for ((h, w), d) in trained_on.iter().zip(&data) {
        println!(
            "{:<6} {:>6.1}% {:>7.1}% {:>9.1}% {:>11.1}% {:>7.3}",
            format!("{h}×{w}"),
            pct(&d.train),
            pct(&d.test_positives),
            pct(&d.test_uniform),
            pct(&d.test_near_misses),
            auc(&model, &d.test_positives, &negatives(d))
        );
    }
    for d in &data {
        for (set, kind) in [
            (&d.test_positives, "member"),
            (&d.test_uniform, "uniform non-member"),
            (&d.test_near_misses, "near miss"),
        ] {
            for (picture, value) in mistakes(&model, set, objective).into_iter().take(1) {
                println!(
                    "misclassified {kind} (f = {value:.3}):\n{}\n",
                    picture.render()
                );
            }
        }
    }
    if let Some(other) = &args.also {
        println!("the same model on sizes it was not trained on:");
        for (h, w) in sizes("--also", other)? {
            let d = dataset(language, h, w, 1, 200, args.seed + 1).map_err(|e| e.to_string())?;
            println!(
                "{:<6} {:>7} {:>7.1}% {:>9.1}% {:>11.1}% {:>7.3}",
                format!("{h}×{w}"),
                "",
                pct(&d.test_positives),
                pct(&d.test_uniform),
                pct(&d.test_near_misses),
                auc(&model, &d.test_positives, &negatives(&d))
            );
        }
    }
    let points = losses
        .iter()
        .enumerate()
        .map(|(e, &l)| (e as f64, l as f64))
        .collect();
    let spec = ChartSpec {
        title: format!("GWM on {language:?} {}, bond {}", args.size, args.bond),
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

/// Both kinds of held-out negatives of a data set, for the AUC.
fn negatives(d: &Dataset) -> PictureSet {
    let mut all = d.test_uniform.clone();
    all.pictures
        .extend(d.test_near_misses.pictures.iter().cloned());
    all.labels.extend(&d.test_near_misses.labels);
    all
}

//! Decodes a W-language string with the Deductron's hand-built weights, printing the image as
//! text art with the memory cells over time, or trains a Deductron from scratch (by gradients or
//! by annealing) and reports its errors. Writes an SVG of the memory trace.
//!
//! ```text
//! cargo run --release -p deductron -- --text XOOXXOOXO --stretch 2
//! cargo run --release -p deductron -- --train sgd --seeds 8
//! cargo run --release -p deductron -- --train sgd --data combined --memory 4 --steps 60000
//! cargo run --release -p deductron -- --train anneal --seeds 8
//! cargo run --release -p deductron -- --train anneal --data combined
//! ```

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::optim::AdamConfig;
use burn::tensor::Device;
use clap::{Parser, ValueEnum};
use kindling_deductron::wlang::{self, Drawing};
use kindling_deductron::{Annealer, Deductron, GradientTraining, Progress, train_gradient};
use kindling_examples_common::cli;
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Training {
    /// Gradient training with Adam by the authors' recipe (β = 1, shift 0, Glorot init; lr 0.01
    /// and 20 000 steps on `small`, lr 1e-3 and 600 000 steps on the combined data).
    Sgd,
    /// Simulated annealing over quantised weights (the authors' proposals and restarts, with
    /// fresh chains when one stalls).
    Anneal,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Data {
    /// The reference sample "XOOXXO".
    Small,
    /// `small` followed by the hand-drawn `large` as one sequence.
    Combined,
}

/// The Deductron on the W-language.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A string over {X, O} to draw and decode with the exact weights.
    #[arg(long, default_value = "XOOXXOOXO")]
    text: String,
    /// Largest stroke stretching (each column repeated 1..=stretch times).
    #[arg(long, default_value_t = 1)]
    stretch: usize,
    /// Train from scratch instead of decoding.
    #[arg(long)]
    train: Option<Training>,
    /// What to train on.
    #[arg(long, value_enum, default_value_t = Data::Small)]
    data: Data,
    /// Memory cells m of the trained network (the paper uses 3 on `small`).
    #[arg(long, default_value_t = 3)]
    memory: usize,
    /// Number of seeds to train (the success rate is reported over them).
    #[arg(long, default_value_t = 4)]
    seeds: u64,
    /// Gradient training: train at the paper's β = 10 and shift ½ instead of the authors' β = 1.
    #[arg(long)]
    sharp: bool,
    /// Gradient training: step budget per seed (default: the recipe's).
    #[arg(long)]
    steps: Option<usize>,
    /// Annealing: increase of β per iteration.
    #[arg(long, default_value_t = 0.0005)]
    beta_step: f32,
    /// Annealing: iterations without progress after which a fresh chain starts.
    #[arg(long, default_value_t = 30_000)]
    fresh_start: usize,
    /// Annealing: iteration budget per seed.
    #[arg(long, default_value_t = 1_000_000)]
    iterations: usize,
    /// Seed of the drawing.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the SVG of the memory trace.
    #[arg(long, default_value = "deductron-memory.svg")]
    out: PathBuf,
}

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    if args.text.is_empty() || !args.text.chars().all(|c| c == 'X' || c == 'O') {
        return Err(format!(
            "--text must be a non-empty string of X and O (got {:?})",
            args.text
        ));
    }
    cli::between("--stretch", args.stretch, 1, 64)?;
    cli::between("--memory", args.memory, 1, 64)?;
    cli::at_least("--seeds", args.seeds, 1)?;
    match args.train {
        None => cli::output_file("--out", &args.out),
        Some(_) => Ok(()),
    }
}

fn main() {
    cli::run(check, |args: Args| match args.train {
        None => decode(&args),
        Some(training) => train(&args, training),
    });
}

// ANCHOR: decode
fn decode(args: &Args) -> cli::Outcome {
    let device = Device::flex();
    let drawing = Drawing {
        max_stretch: args.stretch,
        blank_jumps: false,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let sample = wlang::generate(&args.text, drawing, &mut rng).map_err(|e| e.to_string())?;
    let net = Deductron::exact(&device);
    let out = net.forward(sample.inputs(&device));
    println!("{}", sample.render());
    let z: Vec<f32> = out.z.clone().try_into_vec_as().expect("memory trace");
    let m = net.n_memory();
    for cell in 0..m {
        let row: String = (0..sample.len())
            .map(|t| if z[t * m + cell] > 0.5 { '█' } else { '·' })
            .collect();
        println!("{row}  z{}", cell + 1);
    }
    let decided: String = wlang::decode(&out.y).concat();
    println!("written: {}\ndecoded: {decided}", args.text);
    println!(
        "errors against the targets: {}",
        wlang::errors(&out.y, &sample.targets(&device))
    );
    // ANCHOR_END: decode
    let series = (0..m)
        .map(|cell| {
            let pts =
                (0..sample.len()).map(|t| (t as f64, z[t * m + cell] as f64 + 1.2 * cell as f64));
            Series::new(
                format!("z{} (offset {:.1})", cell + 1, 1.2 * cell as f64),
                pts.collect(),
            )
        })
        .collect::<Vec<_>>();
    let spec = ChartSpec {
        title: format!("Deductron memory cells decoding {}", args.text),
        x_label: "frame t".into(),
        y_label: "z_t (cells offset)".into(),
        ..Default::default()
    };
    line_chart(&args.out, &spec, &series)
        .map_err(|e| format!("could not write {}: {e}", args.out.display()))?;
    println!("memory trace written to {}", args.out.display());
    Ok(())
}

fn train(args: &Args, training: Training) -> cli::Outcome {
    let sample = match args.data {
        Data::Small => wlang::small(),
        Data::Combined => wlang::combined(),
    };
    println!(
        "training on {:?} ({} frames) with {training:?}, m = {}, {} seeds",
        args.data,
        sample.len(),
        args.memory,
        args.seeds
    );
    let mut solved = 0;
    let start = Instant::now();
    let mut ticker = cli::Ticker::new(Duration::from_secs(3));
    for seed in 0..args.seeds {
        let t = Instant::now();
        let (steps, sse, errors) = match training {
            Training::Sgd => {
                // ANCHOR: sgd
                let device = Device::flex().autodiff();
                let mut recipe = match (args.sharp, args.data) {
                    (true, _) => GradientTraining::sharp(),
                    (false, Data::Small) => GradientTraining::default(),
                    (false, Data::Combined) => GradientTraining::combined(),
                };
                recipe.max_steps = args.steps.unwrap_or(recipe.max_steps);
                let model = recipe.config(args.memory).init_with_seed(seed, &device);
                let mut optim = AdamConfig::new().init();
                let (_, last) = train_gradient(model, &mut optim, &sample, recipe, |p| {
                    show(seed, p, &mut ticker)
                });
                // ANCHOR_END: sgd
                (last.step, last.sse, last.errors)
            }
            Training::Anneal => {
                // ANCHOR: anneal
                let annealer = Annealer {
                    seed,
                    n_memory: args.memory,
                    beta_step: args.beta_step,
                    max_iterations: args.iterations,
                    fresh_start_after: args.fresh_start,
                    ..Annealer::default()
                };
                let result = annealer
                    .run(&sample, &Device::flex(), |p| show(seed, p, &mut ticker))
                    .map_err(|e| e.to_string())?;
                // ANCHOR_END: anneal
                (result.iterations, result.sse, result.errors)
            }
        };
        solved += (errors == 0) as usize;
        println!(
            "seed {seed}: {steps:>6} steps, SSE {sse:.4}, {errors} errors, {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "{solved} of {} seeds reached zero errors ({:.0}%), {:.1}s in all",
        args.seeds,
        100.0 * solved as f64 / args.seeds as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Progress of a long training run, every few seconds.
fn show(seed: u64, p: &Progress, ticker: &mut cli::Ticker) -> ControlFlow<()> {
    if ticker.due() {
        println!(
            "  seed {seed}: step {:>6}, SSE {:.4}, {} errors",
            p.step, p.sse, p.errors
        );
    }
    ControlFlow::Continue(())
}

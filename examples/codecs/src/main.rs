//! Compresses the gradient of a real training step — the hidden layer of an MLP on the bundled
//! UCI digits, after a few epochs of Adam — with every kindling-compress codec, and prints for
//! each its compression ratio, bits per entry, mean relative error, variance and bias over
//! repeated draws. Writes an SVG of the layer gradient's singular values: the spectral decay that
//! motivates ATOMO's spectral atoms.
//!
//! ```text
//! cargo run --release -p codecs -- --draws 100 --out spectrum.svg
//! ```

use std::path::PathBuf;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use clap::Parser;
use kindling_compress::*;
use kindling_examples_common::cli;
use kindling_examples_common::digits::Digits;
use kindling_examples_common::mlp::{Mlp, train_epoch};
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// Compare gradient codecs on a real gradient.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Encode/decode draws per codec (for the variance and bias estimates).
    #[arg(long, default_value_t = 100)]
    draws: usize,
    /// Epochs of Adam before the gradient is taken.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Hidden units of the MLP (the layer compressed is 64 × hidden).
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Seed of the data split, the model and the codecs' randomness.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the SVG of singular values.
    #[arg(long, default_value = "gradient-spectrum.svg")]
    out: PathBuf,
}

/// The hidden layer's weight gradient on 256 training images.
fn layer_gradient(args: &Args, device: &Device) -> Tensor<2> {
    let split = Digits::load()
        .expect("bundled digits")
        .split(0.25, args.seed, device);
    let mut model = Mlp::new(args.hidden, args.seed, device);
    let mut optim = AdamConfig::new().init();
    for epoch in 0..args.epochs {
        model = train_epoch(model, &mut optim, &split.train, 64, 3e-3, epoch as u64).0;
    }
    let batch = split.train.slice(0..256);
    let grads = GradientsParams::from_grads(model.loss(&batch).backward(), &model);
    grads
        .get::<2>(model.hidden().weight.id)
        .expect("the hidden layer has a gradient")
}

// ANCHOR: measure
/// Mean relative error, relative variance E‖ĝ−g‖²/‖g‖², relative bias ‖E ĝ − g‖/‖g‖ and the
/// wire size, over `draws` encodings of `g`.
fn measure<C: Compressor>(codec: &mut C, g: &Tensor<2>, draws: usize, seed: u64) -> [f64; 4] {
    let device = g.device();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let norm2 = g.clone().square().sum().into_scalar::<f64>();
    let mut sum = g.zeros_like();
    let (mut err, mut var, mut stats) = (0.0, 0.0, CompressionStats::default());
    for _ in 0..draws {
        let payload = codec
            .compress(g.clone(), &mut rng)
            .expect("finite gradient");
        stats = CompressionStats::of(&payload);
        let decoded: Tensor<2> = codec.decompress(&payload, &device).expect("own payload");
        let sq = (decoded.clone() - g.clone())
            .square()
            .sum()
            .into_scalar::<f64>();
        err += (sq / norm2).sqrt() / draws as f64;
        var += sq / norm2 / draws as f64;
        sum = sum + decoded;
    }
    let mean = sum.div_scalar(draws as f64);
    let bias = ((mean - g.clone()).square().sum().into_scalar::<f64>() / norm2).sqrt();
    [err, var, bias, stats.bits_per_entry()]
}
// ANCHOR_END: measure

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    cli::at_least("--draws", args.draws, 2)?;
    cli::at_least("--hidden", args.hidden, 2)?;
    cli::output_file("--out", &args.out)
}

fn main() {
    cli::run(check, compare);
}

fn compare(args: Args) -> cli::Outcome {
    let device = Device::flex().autodiff();
    let g = layer_gradient(&args, &device).inner();
    let [rows, cols] = g.dims();
    println!(
        "hidden-layer gradient of an MLP on the UCI digits after {} epochs of Adam: {rows}×{cols}, ‖g‖ = {:.4}",
        args.epochs,
        g.clone().square().sum().into_scalar::<f64>().sqrt()
    );
    println!(
        "{:<30} {:>8} {:>10} {:>10} {:>12} {:>10}",
        "codec", "ratio", "bits/entry", "rel. error", "variance", "bias"
    );
    let row = |name: &str, m: [f64; 4]| {
        println!(
            "{name:<30} {:>7.1}× {:>10.3} {:>10.3} {:>12.4} {:>10.4}",
            32.0 / m[3],
            m[3],
            m[0],
            m[1],
            m[2]
        );
    };
    let (d, s) = (args.draws, args.seed);
    row("identity (f32)", measure(&mut Identity, &g, 1, s));
    row(
        "half (f16)",
        measure(&mut Half::new(HalfFormat::F16), &g, 1, s),
    );
    row("sign", measure(&mut Sign, &g, 1, s));
    row("scaled sign", measure(&mut ScaledSign, &g, 1, s));
    row("qsgd s=1", measure(&mut Qsgd::new(1).unwrap(), &g, d, s));
    row("qsgd s=16", measure(&mut Qsgd::new(16).unwrap(), &g, d, s));
    row("terngrad", measure(&mut TernGrad::new(), &g, d, s));
    row(
        "top-k 5%",
        measure(&mut TopK::new(Count::Fraction(0.05)).unwrap(), &g, 1, s),
    );
    row(
        "random-k 5%",
        measure(&mut RandomK::new(Count::Fraction(0.05)).unwrap(), &g, d, s),
    );
    let qsgd_budget = Budget::QsgdEquivalent;
    row(
        "atomo entry-wise (qsgd s)",
        measure(&mut Atomo::new(EntryWise, qsgd_budget).unwrap(), &g, d, s),
    );
    row(
        "atomo fourier (5%)",
        measure(
            &mut Atomo::new(Fourier, Budget::Fraction(0.05)).unwrap(),
            &g,
            d,
            s,
        ),
    );
    for atoms in [2.0, 4.0, 8.0] {
        let mut c = Atomo::new(Spectral::full(), Budget::Atoms(atoms)).unwrap();
        row(
            &format!("atomo spectral (s = {atoms})"),
            measure(&mut c, &g, d, s),
        );
    }

    let (_, sigma, _) = burn::linalg::svd::<2, 1>(g, 64);
    let sigma: Vec<f32> = sigma.try_into_vec_as().expect("singular values");
    let total: f64 = sigma.iter().map(|x| (*x as f64).powi(2)).sum();
    let top4: f64 = sigma.iter().take(4).map(|x| (*x as f64).powi(2)).sum();
    println!(
        "singular values: σ₁ = {:.4}, σ₄ = {:.4}, σ_last = {:.2e}; the top 4 of {} hold {:.1}% of ‖g‖²",
        sigma[0],
        sigma[3.min(sigma.len() - 1)],
        sigma[sigma.len() - 1],
        sigma.len(),
        100.0 * top4 / total
    );
    let points = sigma
        .iter()
        .enumerate()
        .map(|(i, &x)| ((i + 1) as f64, x as f64))
        .collect();
    let spec = ChartSpec {
        title: "Singular values of the hidden layer's gradient (UCI digits MLP)".into(),
        x_label: "index i".into(),
        y_label: "σ_i".into(),
        log_y: true,
        ..Default::default()
    };
    line_chart(&args.out, &spec, &[Series::new("σ_i", points)])
        .map_err(|e| format!("could not write {}: {e}", args.out.display()))?;
    println!("spectrum written to {}", args.out.display());
    Ok(())
}

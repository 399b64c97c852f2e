//! KD codes (Chen, Min & Sun, ICML 2018) two ways:
//!
//! * **a language model** — an LSTM LM with a full `burn::nn::Embedding` (the teacher), then
//!   the same model with KD-code embeddings of several sizes learned by pre-trained distillation
//!   guidance (PDG: distil the teacher's table into codes, then fine-tune end to end with the
//!   guidance term), reporting held-out perplexity and sizes, and a plot of perplexity against
//!   embedding size;
//! * **a pretrained table** (`--distill FILE`, safetensors or `.npy`; or `--synthetic-table`
//!   for a generated stand-in) — distilled into KD codes in mini-batches of rows, against product
//!   and residual quantisation at the same code bits.
//!
//! ```text
//! cargo run --release -p kd-embedding                                    # synthetic corpus
//! cargo run --release -p kd-embedding -- --corpus path/ptb.train.txt     # PTB-format text
//! cargo run --release -p kd-embedding -- --distill table.safetensors     # compress a table
//! cargo run --release -p kd-embedding -- --synthetic-table 30000x384 --grid
//! ```

mod corpus;
mod report;
mod table;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, Lstm, LstmConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use kindling_examples_common::cli;
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use kindling_kdcode::guidance::{
    CodeUpdate, DistillConfig, DistillStart, MixedOptimizerConfig, distill, guidance_loss,
};
use kindling_kdcode::{
    CompactKdEmbedding, Composition, KdEmbedding, KdEmbeddingConfig, Relaxation, data, eval,
};

/// Full embedding vs KD codes in a language model; or distil a pretrained table.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A PTB-format text file (default: a synthetic corpus with latent clusters).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Largest vocabulary kept from a corpus file.
    #[arg(long, default_value_t = 10_000)]
    max_vocab: usize,
    /// A pretrained embedding table to distil: `.npy`, or safetensors (first 2-D tensor by
    /// name, or --tensor).
    #[arg(long)]
    distill: Option<PathBuf>,
    /// Name of the tensor in the safetensors file.
    #[arg(long)]
    tensor: Option<String>,
    /// Distil a generated stand-in for a pretrained table instead, `ROWSxCOLS` (e.g. 30000x384).
    #[arg(long)]
    synthetic_table: Option<String>,
    /// With a table: try K, D ∈ {16, 32, 64} (d′ = d, random and RQ starts; and d′ = 64).
    #[arg(long)]
    grid: bool,
    /// Embedding and LSTM size of the language model.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Choices per code dimension K (one table shape).
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Code length D (one table shape).
    #[arg(long, default_value_t = 32)]
    d: usize,
    /// Code-embedding width d′ (one table shape; default: the table's width).
    #[arg(long)]
    d_code: Option<usize>,
    /// Distillation steps.
    #[arg(long, default_value_t = 1000)]
    distill_steps: usize,
    /// Rows per distillation step.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// Rows probed for the top-10 neighbour overlap.
    #[arg(long, default_value_t = 1000)]
    probes: usize,
    /// Training epochs of the full (teacher) language model.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Fine-tuning epochs of each KD language model (and further epochs of the full one).
    #[arg(long, default_value_t = 2)]
    finetune_epochs: usize,
    /// Weight of the guidance term (relative squared error) while fine-tuning.
    #[arg(long, default_value_t = 0.1)]
    guidance: f64,
    /// Language model: Gumbel-softmax codes with a temperature schedule (τ 0.5 → 0.05)
    /// instead of straight-through argmax.
    #[arg(long)]
    gumbel: bool,
    /// Distillation from the RQ start: the head start of each symbol's RQ code over the other
    /// logits.
    #[arg(long, default_value_t = 1.0)]
    rq_margin: f32,
    /// Distillation: Adam's learning rate on the code logits.
    #[arg(long, default_value_t = 1e-2)]
    logit_rate: f64,
    /// Distillation's code update: `exact` (coordinate descent on the loss) or
    /// `straight-through` (the paper's gradient). Default: exact for a table,
    /// straight-through for the language model, each the better one measured there.
    #[arg(long, value_enum)]
    code_update: Option<Update>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the SVG of perplexity against embedding size.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
}

/// The embedding under test: burn's, or KD codes. (One value of it exists per model, so the
/// size difference between the variants costs nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
enum Embed {
    Full(Embedding),
    Codes(KdEmbedding),
}

impl Embed {
    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Embed::Full(e) => e.forward(ids),
            Embed::Codes(e) => e.forward(ids),
        }
    }
}

// ANCHOR: model
/// A one-layer LSTM language model; only the embedding differs between runs.
#[derive(Module, Debug)]
struct LanguageModel {
    embed: Embed,
    lstm: Lstm,
    output: Linear,
}

impl LanguageModel {
    /// Mean next-token cross-entropy of `[batch, seq + 1]` windows.
    fn loss(&self, windows: Tensor<2, Int>) -> Tensor<1> {
        let [b, s1] = windows.dims();
        let s = s1 - 1;
        let input = windows.clone().slice([0..b, 0..s]);
        let target = windows.slice([0..b, 1..s1]).reshape([b * s]);
        let (hidden, _) = self.lstm.forward(self.embed.forward(input), None);
        let d = hidden.dims()[2];
        let logits = self.output.forward(hidden.reshape([b * s, d]));
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, target)
    }
}
// ANCHOR_END: model

fn windows(tokens: &[usize], seq: usize, device: &Device) -> Tensor<2, Int> {
    let n = tokens.len() / (seq + 1);
    let flat: Vec<i64> = tokens[..n * (seq + 1)].iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [n, seq + 1]), device)
}

fn perplexity(model: &LanguageModel, data: &Tensor<2, Int>) -> f64 {
    let [n, s] = data.dims();
    let mut total = 0.0;
    for start in (0..n).step_by(64) {
        let end = (start + 64).min(n);
        total += model
            .loss(data.clone().slice([start..end, 0..s]))
            .into_scalar::<f64>()
            * (end - start) as f64;
    }
    (total / n as f64).exp()
}

// ANCHOR: pdg
/// Trains `model` for `epochs` epochs of Adam; with `guide` (the teacher's table and a weight),
/// the KD embedding's guidance term toward it is added to the task loss (PDG's fine-tuning).
fn train(
    mut model: LanguageModel,
    train: &Tensor<2, Int>,
    epochs: usize,
    learning_rate: f64,
    guide: Option<(&Tensor<2>, f64)>,
) -> LanguageModel {
    let mut optim = AdamConfig::new().init();
    let [n, s] = train.dims();
    for epoch in 1..=epochs {
        let start = Instant::now();
        let mut total = 0.0;
        for first in (0..n).step_by(32) {
            let batch = train.clone().slice([first..(first + 32).min(n), 0..s]);
            let mut loss = model.loss(batch.clone());
            total += loss.clone().into_scalar::<f64>() * (32.min(n - first)) as f64;
            if let (Some((table, weight)), Embed::Codes(codes)) = (guide, &model.embed) {
                let ids = batch.flatten::<1>(0, 1);
                let targets = table.clone().select(0, ids.clone());
                loss = loss + guidance_loss(codes, ids, targets).mul_scalar(weight);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(learning_rate, model, grads);
            if let Embed::Codes(codes) = &mut model.embed {
                codes.decay_temperature();
            }
        }
        println!(
            "    epoch {epoch}/{epochs}: training perplexity {:.1} ({:.1}s)",
            (total / n as f64).exp(),
            start.elapsed().as_secs_f64()
        );
    }
    model
}

/// PDG: distil the teacher's embedding table into `config`'s codes, then put them in place of
/// the teacher's embedding (its LSTM and output layer kept) and fine-tune end to end, the
/// guidance term still pulling toward the teacher's table.
fn pdg(
    teacher: &LanguageModel,
    config: &KdEmbeddingConfig,
    start: DistillStart,
    args: &Args,
    train_set: &Tensor<2, Int>,
) -> Result<LanguageModel, String> {
    let Embed::Full(full) = &teacher.embed else {
        return Err("the teacher has a full embedding".into());
    };
    let table = full.weight.val().detach();
    let device = table.device();
    let codes = distill(
        config.init_with_seed(args.seed, &device),
        &table,
        &DistillConfig::new()
            .with_steps(args.distill_steps)
            .with_batch_size(args.batch_size)
            .with_start(start)
            .with_optimizer(optimizer(args))
            // Straight-through from the RQ start: on this teacher (3 epochs from a random init,
            // mostly noise) the exact update's lower reconstruction error fine-tunes to a worse
            // perplexity (see the book).
            .with_code_update(code_update(args, CodeUpdate::StraightThrough))
            .with_seed(args.seed),
        |_| {},
    )
    .map_err(|e| e.to_string())?;
    let distinct = codes
        .codes()
        .into_iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    println!(
        "    distilled: relative error {:.3}, {distinct} distinct codes for {} symbols",
        eval::relative_error(&codes.table().inner(), &table.clone().inner()),
        table.dims()[0]
    );
    let student = LanguageModel {
        embed: Embed::Codes(codes),
        lstm: teacher.lstm.clone(),
        output: teacher.output.clone(),
    };
    Ok(train(
        student,
        train_set,
        args.finetune_epochs,
        1e-3,
        Some((&table, args.guidance)),
    ))
}
// ANCHOR_END: pdg

/// `--code-update`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Update {
    /// Coordinate descent on each alternative's exact loss (`CodeUpdate::Exact`).
    Exact,
    /// The paper's straight-through gradient (`CodeUpdate::StraightThrough`).
    StraightThrough,
}

/// The distillation's code update: `--code-update`, else `default`.
fn code_update(args: &Args, default: CodeUpdate) -> CodeUpdate {
    match args.code_update {
        Some(Update::Exact) => CodeUpdate::Exact,
        Some(Update::StraightThrough) => CodeUpdate::StraightThrough,
        None => default,
    }
}

/// The distillation's mixed optimizer: `--logit-rate`, the derived rest.
fn optimizer(args: &Args) -> MixedOptimizerConfig {
    MixedOptimizerConfig::new().with_logit_learning_rate(args.logit_rate)
}

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    cli::between("--k", args.k, 2, 1 << 16)?;
    cli::at_least("--d", args.d, 1)?;
    cli::at_least("--dim", args.dim, 1)?;
    if let Some(d_code) = args.d_code {
        cli::at_least("--d-code", d_code, 1)?;
    }
    cli::at_least("--distill-steps", args.distill_steps, 1)?;
    cli::at_least("--batch-size", args.batch_size, 1)?;
    cli::at_least("--probes", args.probes, 1)?;
    cli::at_least("--epochs", args.epochs, 1)?;
    cli::at_least("--max-vocab", args.max_vocab, 2)?;
    if !(args.rq_margin.is_finite() && args.rq_margin >= 0.0) {
        return Err(format!(
            "--rq-margin {} must be finite and ≥ 0",
            args.rq_margin
        ));
    }
    if !(args.logit_rate.is_finite() && args.logit_rate >= 0.0) {
        return Err(format!(
            "--logit-rate {} must be finite and ≥ 0",
            args.logit_rate
        ));
    }
    if !(args.guidance.is_finite() && args.guidance >= 0.0) {
        return Err(format!(
            "--guidance {} must be finite and ≥ 0",
            args.guidance
        ));
    }
    if let Some(path) = &args.corpus {
        cli::input_file("--corpus", path)?;
    }
    if let Some(spec) = &args.synthetic_table {
        parse_shape(spec).map_err(|e| format!("--synthetic-table {spec}: {e}"))?;
        if args.distill.is_some() {
            return Err("--synthetic-table and --distill are alternatives".into());
        }
    }
    match &args.distill {
        Some(path) => cli::input_file("--distill", path)?,
        None if args.tensor.is_some() => return Err("--tensor needs --distill FILE".into()),
        None if args.synthetic_table.is_none() && args.grid => {
            return Err("--grid needs --distill FILE or --synthetic-table".into());
        }
        None => cli::output_dir("--out-dir", &args.out_dir)?,
    }
    Ok(())
}

/// `ROWSxCOLS`, both at least 2 and 1.
fn parse_shape(spec: &str) -> Result<(usize, usize), String> {
    let (r, c) = spec.split_once('x').ok_or("expected ROWSxCOLS")?;
    let r: usize = r.trim().parse().map_err(|_| "ROWS is not a number")?;
    let c: usize = c.trim().parse().map_err(|_| "COLS is not a number")?;
    if r < 2 || c < 1 || r.checked_mul(c).is_none_or(|n| n > 1 << 30) {
        return Err("needs ROWS ≥ 2, COLS ≥ 1 and at most 2³⁰ entries".into());
    }
    Ok((r, c))
}

fn main() {
    cli::run(check, run);
}

fn run(args: Args) -> cli::Outcome {
    let device = Device::flex().autodiff();
    let plain = device.clone().inner();
    let table = if let Some(path) = &args.distill {
        let t = table::read(path, args.tensor.as_deref())
            .map_err(|e| format!("cannot read the table: {e}"))?;
        println!("{}: a {} × {} table", path.display(), t.rows, t.cols);
        Some(Tensor::<2>::from_data(
            TensorData::new(t.values, [t.rows, t.cols]),
            &plain,
        ))
    } else if let Some(spec) = &args.synthetic_table {
        let (rows, cols) = parse_shape(spec)?;
        println!(
            "a generated {rows} × {cols} stand-in for a pretrained table (mean direction, \
             power-law spectrum, loose clusters of 50 rows)"
        );
        Some(data::pretrained_like_table(rows, cols, args.seed, &plain))
    } else {
        None
    };
    if let Some(table) = table {
        let width = table.dims()[1];
        let shapes: Vec<report::Shape> = if args.grid {
            let mut variants = vec![
                (width, DistillStart::Random),
                (
                    width,
                    DistillStart::Residual {
                        margin: args.rq_margin,
                    },
                ),
            ];
            if width > 64 {
                variants.push((64, DistillStart::Random));
            }
            [16, 32, 64]
                .into_iter()
                .flat_map(|k| [16, 32, 64].map(|d| (k, d)))
                .map(|(k, d)| report::Shape {
                    k,
                    d,
                    variants: variants.clone(),
                })
                .collect()
        } else {
            let d_code = args.d_code.unwrap_or(width);
            let start = if d_code == width {
                DistillStart::Residual {
                    margin: args.rq_margin,
                }
            } else {
                DistillStart::Random
            };
            vec![report::Shape {
                k: args.k,
                d: args.d,
                variants: vec![(d_code, start)],
            }]
        };
        let budget = report::Budget {
            steps: args.distill_steps,
            batch_size: args.batch_size,
            probes: args.probes,
            seed: args.seed,
            code_update: code_update(&args, CodeUpdate::Exact),
            optimizer: optimizer(&args),
        };
        let start = Instant::now();
        report::compare(&table, &shapes, &budget)?;
        println!("done in {:.0}s", start.elapsed().as_secs_f64());
        return Ok(());
    }
    language_model(&args, &device)
}

fn language_model(args: &Args, device: &Device) -> cli::Outcome {
    let corpus = match &args.corpus {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--corpus {}: {e}", path.display()))?;
            corpus::read_ptb(&text, args.max_vocab)
        }
        None => corpus::synthetic(40, 50, 120_000, args.seed),
    };
    let v = corpus.vocab.len();
    let cut = corpus.tokens.len() * 9 / 10;
    let seq = 20;
    let train_set = windows(&corpus.tokens[..cut], seq, device);
    let valid = windows(&corpus.tokens[cut..], seq, device);
    let dim = args.dim;
    println!(
        "corpus: {} tokens, vocabulary {v}; LSTM LM with {dim}-dimensional embeddings",
        corpus.tokens.len()
    );
    let full_bits = v as u64 * dim as u64 * 32;
    let teacher = LanguageModel {
        embed: Embed::Full(EmbeddingConfig::new(v, dim).init(device)),
        lstm: LstmConfig::new(dim, dim, true).init(device),
        output: LinearConfig::new(dim, v).init(device),
    };
    let rest_bits = (teacher.num_params() as u64 - v as u64 * dim as u64) * 32;
    println!("  training the full-table model (the teacher)…");
    let start = Instant::now();
    let teacher = train(teacher, &train_set, args.epochs, 3e-3, None);
    let teacher_perplexity = perplexity(&teacher, &valid);
    println!(
        "  …and {} more epochs of it, for a fair reference",
        args.finetune_epochs
    );
    let full = train(
        teacher.clone(),
        &train_set,
        args.finetune_epochs,
        1e-3,
        None,
    );
    let full_perplexity = perplexity(&full, &valid);
    println!(
        "\n{:<34} {:>10} {:>14} {:>10} {:>10} {:>8}",
        "embedding", "perplexity", "embedding Mbit", "emb. ×", "model ×", "time"
    );
    let whole =
        |embedding_bits: u64| (full_bits + rest_bits) as f64 / (embedding_bits + rest_bits) as f64;
    println!(
        "{:<34} {:>10.2} {:>14.3} {:>10} {:>10} {:>7.1}s",
        format!("full table ({} epochs)", args.epochs),
        teacher_perplexity,
        full_bits as f64 / 1e6,
        "1.0×",
        "1.0×",
        start.elapsed().as_secs_f64()
    );
    println!(
        "{:<34} {:>10.2} {:>14.3} {:>10} {:>10}",
        format!("full table ({} epochs)", args.epochs + args.finetune_epochs),
        full_perplexity,
        full_bits as f64 / 1e6,
        "1.0×",
        "1.0×"
    );
    let mut series = vec![Series::new(
        "full table",
        vec![(full_bits as f64 / 1e6, full_perplexity)],
    )];
    // (K, D) per size; linear codes compose in the embedding's own width, recurrent ones in
    // d′ = 16 through an LSTM with hidden size d′ and a linear map to the embedding.
    let sizes = [(16, 4), (16, 8), (32, 16)];
    let variants = [
        ("KD linear", dim, Composition::Linear),
        ("KD recurrent", 16, Composition::Recurrent { hidden: 16 }),
    ];
    for (name, d_code, composition) in variants {
        let mut points = Vec::new();
        for (k, d) in sizes {
            let config = KdEmbeddingConfig::new(v, dim)
                .with_choices(k)
                .with_code_length(d)
                .with_d_code(d_code)
                .with_composition(composition);
            // --gumbel: sampling at τ from 0.5 down to 0.05, one decay a step — exploration
            // early in the distillation, nearly the argmax by the fine-tuning.
            let config = if args.gumbel {
                config
                    .with_relaxation(Relaxation::Gumbel)
                    .with_temperature(0.5)
                    .with_temperature_decay(0.997)
                    .with_min_temperature(0.05)
            } else {
                config
            };
            let start = if composition == Composition::Linear {
                DistillStart::Residual {
                    margin: args.rq_margin,
                }
            } else {
                DistillStart::Random
            };
            let label = format!("{name}, K = {k}, D = {d}");
            println!("  {label}: distilling the teacher's table, then fine-tuning…");
            let clock = Instant::now();
            let model = pdg(&teacher, &config, start, args, &train_set)?;
            let Embed::Codes(codes) = &model.embed else {
                unreachable!("a KD model")
            };
            let report = CompactKdEmbedding::from_trained(codes).size_report();
            let kd_perplexity = perplexity(&model, &valid);
            println!(
                "{label:<34} {:>10.2} {:>14.3} {:>9.1}× {:>9.2}× {:>7.1}s",
                kd_perplexity,
                report.total_bits as f64 / 1e6,
                report.ratio(),
                whole(report.total_bits),
                clock.elapsed().as_secs_f64()
            );
            points.push((report.total_bits as f64 / 1e6, kd_perplexity));
        }
        series.push(Series::new(name, points));
    }
    let spec = ChartSpec {
        title: format!(
            "LSTM language model, vocabulary {v}: perplexity against embedding size (PDG)"
        ),
        x_label: "embedding Mbit".into(),
        y_label: "held-out perplexity".into(),
        log_x: true,
        ..Default::default()
    };
    let path = args.out_dir.join("kd-embedding-perplexity.svg");
    line_chart(&path, &spec, &series)
        .map_err(|e| format!("could not write {}: {e}", path.display()))?;
    println!("plot written to {}", path.display());
    Ok(())
}

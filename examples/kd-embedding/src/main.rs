//! An LSTM language model trained with a full `burn::nn::Embedding` and with KD-code embeddings
//! (linear and recurrent composition), reporting held-out perplexity and the embedding's size
//! side by side; and the distillation of a pretrained embedding table (from a safetensors file,
//! or the full model's own table) into KD codes, reporting reconstruction error and how many
//! nearest neighbours survive.
//!
//! ```text
//! cargo run --release -p kd-embedding                                  # synthetic corpus
//! cargo run --release -p kd-embedding -- --corpus path/ptb.train.txt   # PTB-format text
//! cargo run --release -p kd-embedding -- --distill table.safetensors   # compress a table
//! ```

mod corpus;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, Lstm, LstmConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use kindling_examples_common::cli;
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use kindling_kdcode::{
    CompactKdEmbedding, Composition, KdEmbedding, KdEmbeddingConfig, distillation_loss,
    mixed_optimizer,
};

/// Full embedding vs KD codes in a language model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A PTB-format text file (default: a synthetic corpus with latent clusters).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Largest vocabulary kept from a corpus file.
    #[arg(long, default_value_t = 10_000)]
    max_vocab: usize,
    /// A safetensors file with a 2-D embedding table to distil (first 2-D tensor, or --tensor).
    #[arg(long)]
    distill: Option<PathBuf>,
    /// Name of the tensor in the safetensors file.
    #[arg(long)]
    tensor: Option<String>,
    /// Embedding and LSTM size.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Choices per code dimension K.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Code length D.
    #[arg(long, default_value_t = 16)]
    d: usize,
    /// Full-batch steps of distillation.
    #[arg(long, default_value_t = 1000)]
    distill_steps: usize,
    /// Training epochs of each language model.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
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

fn train(mut model: LanguageModel, train: &Tensor<2, Int>, epochs: usize) -> LanguageModel {
    let mut optim = AdamConfig::new().init();
    let [n, s] = train.dims();
    for epoch in 1..=epochs {
        let start = Instant::now();
        let mut total = 0.0;
        for first in (0..n).step_by(32) {
            let batch = train.clone().slice([first..(first + 32).min(n), 0..s]);
            let loss = model.loss(batch);
            total += loss.clone().into_scalar::<f64>() * (32.min(n - first)) as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        println!(
            "    epoch {epoch}/{epochs}: training perplexity {:.1} ({:.1}s)",
            (total / n as f64).exp(),
            start.elapsed().as_secs_f64()
        );
    }
    model
}

/// Top-`m` cosine neighbours of row `i` of a `[V, d]` table.
fn neighbours(table: &[f32], d: usize, i: usize, m: usize) -> Vec<usize> {
    let v = table.len() / d;
    let row = |r: usize| &table[r * d..(r + 1) * d];
    let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
    let q = row(i);
    let mut scored: Vec<(usize, f32)> = (0..v)
        .filter(|&r| r != i)
        .map(|r| {
            (
                r,
                q.iter().zip(row(r)).map(|(a, b)| a * b).sum::<f32>() / (norm(q) * norm(row(r))),
            )
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.into_iter().take(m).map(|(r, _)| r).collect()
}

/// Mean Hamming distance between the codes of words in the same latent cluster and in different
/// ones.
fn code_distances(codes: &[Vec<u32>], clusters: &[usize]) -> (f64, f64) {
    let (mut within, mut between, mut nw, mut nb) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for i in 0..codes.len() {
        for j in (i + 1..codes.len()).step_by(7) {
            let d = codes[i]
                .iter()
                .zip(&codes[j])
                .filter(|(a, b)| a != b)
                .count() as f64;
            if clusters[i] == clusters[j] {
                (within, nw) = (within + d, nw + 1.0);
            } else {
                (between, nb) = (between + d, nb + 1.0);
            }
        }
    }
    (within / nw.max(1.0), between / nb.max(1.0))
}

// ANCHOR: distill
/// Distils `table` (`[V, d]`) into KD codes: `λ‖e − e_pre‖²` with Adam on the code logits and SGD
/// elsewhere (the reference's recipe).
fn distill(table: Tensor<2>, k: usize, d: usize, steps: usize, seed: u64) -> KdEmbedding {
    let device = table.device().autodiff();
    let [v, dim] = table.dims();
    let config = KdEmbeddingConfig::new(v, dim)
        .with_choices(k)
        .with_code_length(d)
        .with_d_code(dim);
    let mut embedding = config.init_with_seed(seed, &device);
    // SGD at 1.0 on the tables and the composition, Adam at 0.01 on the code logits.
    let mut optim = mixed_optimizer(0.01);
    let ids = Tensor::<1, Int>::arange(0..v as i64, &device);
    let mut ticker = cli::Ticker::new(Duration::from_secs(3));
    for step in 0..steps {
        let loss = distillation_loss(&embedding, ids.clone(), &table, 1.0);
        if ticker.due() {
            println!(
                "    step {step}/{steps}: distillation loss {:.4}",
                loss.clone().into_scalar::<f64>()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &embedding);
        embedding = optim.step(1.0, embedding, grads);
    }
    embedding
}
// ANCHOR_END: distill

fn report_distillation(original: Tensor<2>, args: &Args, label: &str) {
    let device = original.device();
    let [v, dim] = original.dims();
    let start = Instant::now();
    let embedding = distill(
        original.clone(),
        args.k,
        args.d,
        args.distill_steps,
        args.seed,
    );
    let compact = CompactKdEmbedding::from_trained(&embedding);
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new((0..v as i64).collect(), [1, v]), &device);
    let rebuilt = compact.forward(ids).reshape([v, dim]);
    let error = ((rebuilt.clone() - original.clone())
        .square()
        .sum()
        .into_scalar::<f64>()
        / original.clone().square().sum().into_scalar::<f64>())
    .sqrt();
    let a: Vec<f32> = original.try_into_vec_as().expect("table");
    let b: Vec<f32> = rebuilt.try_into_vec_as().expect("table");
    let probes = v.min(200);
    let overlap: f64 = (0..probes)
        .map(|i| {
            let i = i * v / probes;
            let x = neighbours(&a, dim, i, 10);
            let y = neighbours(&b, dim, i, 10);
            x.iter().filter(|w| y.contains(w)).count() as f64 / 10.0
        })
        .sum::<f64>()
        / probes as f64;
    println!(
        "distilled {label} ({v} × {dim}) into K = {}, D = {} codes in {:.1}s: relative reconstruction error {error:.3}, \
         top-10 neighbour overlap {:.0}%\n  {}",
        args.k,
        args.d,
        start.elapsed().as_secs_f64(),
        100.0 * overlap,
        compact.size_report()
    );
}

fn read_table(path: &PathBuf, name: Option<&str>, device: &Device) -> Result<Tensor<2>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let (tensor_name, view) = match name {
        Some(n) => (n.to_string(), file.tensor(n).map_err(|e| e.to_string())?),
        None => file
            .tensors()
            .into_iter()
            .find(|(_, t)| t.shape().len() == 2)
            .ok_or("no 2-D tensor in the file")?,
    };
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(format!(
            "{tensor_name} is {:?}; f32 tables are supported",
            view.dtype()
        ));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let shape = view.shape();
    Ok(Tensor::from_data(
        TensorData::new(values, [shape[0], shape[1]]),
        device,
    ))
}

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    cli::between("--k", args.k, 2, 1 << 16)?;
    cli::at_least("--d", args.d, 1)?;
    // The recurrent composer has dim/2 hidden units.
    cli::at_least("--dim", args.dim, 2)?;
    cli::at_least("--distill-steps", args.distill_steps, 1)?;
    cli::at_least("--epochs", args.epochs, 1)?;
    cli::at_least("--max-vocab", args.max_vocab, 2)?;
    if let Some(path) = &args.corpus {
        cli::input_file("--corpus", path)?;
    }
    match &args.distill {
        Some(path) => cli::input_file("--distill", path)?,
        None if args.tensor.is_some() => return Err("--tensor needs --distill FILE".into()),
        None => cli::output_dir("--out-dir", &args.out_dir)?,
    }
    Ok(())
}

fn main() {
    cli::run(check, run);
}

fn run(args: Args) -> cli::Outcome {
    let device = Device::flex().autodiff();
    if let Some(path) = &args.distill {
        let table = read_table(path, args.tensor.as_deref(), &device.clone().inner())
            .map_err(|e| format!("cannot read the table: {e}"))?;
        report_distillation(table.to_device(&device), &args, &path.display().to_string());
        return Ok(());
    }
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
    let train_set = windows(&corpus.tokens[..cut], seq, &device);
    let valid = windows(&corpus.tokens[cut..], seq, &device);
    println!(
        "corpus: {} tokens, vocabulary {v}; LSTM LM with {}-dimensional embeddings",
        corpus.tokens.len(),
        args.dim
    );
    let dim = args.dim;
    let make = |embed: Embed| LanguageModel {
        embed,
        lstm: LstmConfig::new(dim, dim, true).init(&device),
        output: LinearConfig::new(dim, v).init(&device),
    };
    let full_bits = v as u64 * dim as u64 * 32;
    println!(
        "{:<26} {:>12} {:>16} {:>10}",
        "embedding", "perplexity", "embedding Mbit", "time"
    );
    let start = Instant::now();
    println!("  training the full-table model…");
    let full = train(
        make(Embed::Full(EmbeddingConfig::new(v, dim).init(&device))),
        &train_set,
        args.epochs,
    );
    let full_perplexity = perplexity(&full, &valid);
    println!(
        "{:<26} {:>12.2} {:>16.3} {:>9.1}s",
        "full table",
        full_perplexity,
        full_bits as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    let mut points = vec![Series::new(
        "full table",
        vec![(full_bits as f64 / 1e6, full_perplexity)],
    )];
    for (label, composition) in [
        ("KD codes, linear", Composition::Linear),
        (
            "KD codes, recurrent",
            Composition::Recurrent { hidden: dim / 2 },
        ),
    ] {
        let start = Instant::now();
        println!("  training the model with {label}…");
        let config = KdEmbeddingConfig::new(v, dim)
            .with_choices(args.k)
            .with_code_length(args.d)
            .with_d_code(dim)
            .with_composition(composition);
        let model = train(
            make(Embed::Codes(config.init_with_seed(args.seed, &device))),
            &train_set,
            args.epochs,
        );
        let Embed::Codes(codes) = &model.embed else {
            unreachable!("a KD model")
        };
        let report = CompactKdEmbedding::from_trained(codes).size_report();
        let kd_perplexity = perplexity(&model, &valid);
        points.push(Series::new(
            label,
            vec![(report.total_bits as f64 / 1e6, kd_perplexity)],
        ));
        println!(
            "{label:<26} {:>12.2} {:>16.3} {:>9.1}s   ({:.1}× smaller)",
            kd_perplexity,
            report.total_bits as f64 / 1e6,
            start.elapsed().as_secs_f64(),
            report.ratio()
        );
        if let Some(clusters) = &corpus.clusters {
            let (within, between) = code_distances(&codes.codes(), clusters);
            println!(
                "{:<26} mean code Hamming distance: within latent clusters {within:.2}, between {between:.2}",
                ""
            );
        }
    }
    let spec = ChartSpec {
        title: format!("LSTM language model, vocabulary {v}: perplexity against embedding size"),
        x_label: "embedding Mbit".into(),
        y_label: "held-out perplexity".into(),
        log_x: true,
        ..Default::default()
    };
    let path = args.out_dir.join("kd-embedding-perplexity.svg");
    line_chart(&path, &spec, &points)
        .map_err(|e| format!("could not write {}: {e}", path.display()))?;
    println!("plot written to {}", path.display());
    if let Embed::Full(e) = &full.embed {
        report_distillation(e.weight.val(), &args, "the full model's table");
    }
    Ok(())
}

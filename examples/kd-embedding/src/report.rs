//! Distilling an embedding table into KD codes, measured against product and residual
//! quantisation at the same code bits.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use kindling_kdcode::eval::{self, QuantizerConfig};
use kindling_kdcode::guidance::{
    CodeUpdate, DistillConfig, DistillStart, MixedOptimizerConfig, distill,
};
use kindling_kdcode::{CompactKdEmbedding, KdEmbeddingConfig, code_bits};

/// One code shape to try: K and D, with the KD variants (d′ and start) measured at it.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Choices per dimension K.
    pub k: usize,
    /// Code length D.
    pub d: usize,
    /// KD variants: code-embedding width d′ (a linear map to d follows when smaller) and where
    /// the codes start.
    pub variants: Vec<(usize, DistillStart)>,
}

/// How long and on how many rows.
pub struct Budget {
    /// Optimizer steps.
    pub steps: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// Probes of the neighbour overlap.
    pub probes: usize,
    /// Seed.
    pub seed: u64,
    /// The gradient the code logits follow.
    pub code_update: CodeUpdate,
    /// The mixed optimizer.
    pub optimizer: MixedOptimizerConfig,
}

/// One measured method.
struct Row {
    method: String,
    error: f64,
    overlap: f64,
    mbit: f64,
    ratio: f64,
    seconds: f64,
}

fn print_row(r: &Row) {
    println!(
        "  {:<40} {:>9.3} {:>9.1}% {:>10.2} {:>8.1}× {:>8.1}s",
        r.method,
        r.error,
        100.0 * r.overlap,
        r.mbit,
        r.ratio,
        r.seconds
    );
}

/// A one-line progress bar, redrawn in place (only on a terminal).
fn progress(label: &str, done: usize, total: usize, loss: f64) {
    if !std::io::stdout().is_terminal() {
        return;
    }
    let width = 30;
    let filled = done * width / total.max(1);
    print!(
        "\r  {label} [{}{}] {done}/{total} loss {loss:.4}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    let _ = std::io::stdout().flush();
    if done == total {
        print!("\r{}\r", " ".repeat(width + label.len() + 40));
    }
}

/// Distils `table` into each shape and prints, per shape, KD codes against PQ and RQ at the
/// same code bits: relative error, top-10 neighbour overlap, size and ratio, time.
// ANCHOR: distill
pub fn compare(table: &Tensor<2>, shapes: &[Shape], budget: &Budget) -> Result<(), String> {
    let [v, dim] = table.dims();
    let device = table.device();
    let train_device: Device = device.clone().autodiff();
    let full_bits = (v * dim * 32) as f64;
    println!(
        "  {:<40} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "method", "rel. err", "top-10", "Mbit", "smaller", "time"
    );
    for shape in shapes {
        println!(
            "K = {}, D = {} ({} code bits a row):",
            shape.k,
            shape.d,
            shape.d * code_bits(shape.k)
        );
        let quantizer = QuantizerConfig::new(shape.k, shape.d).with_seed(budget.seed);
        for name in ["product quantisation", "residual quantisation"] {
            if name.starts_with("product") && shape.d > dim {
                continue;
            }
            let start = Instant::now();
            let q = if name.starts_with("product") {
                quantizer.product(table)
            } else {
                quantizer.residual(table)
            }
            .map_err(|e| e.to_string())?;
            let seconds = start.elapsed().as_secs_f64();
            print_row(&Row {
                method: name.into(),
                error: eval::relative_error(&q.table, table),
                overlap: eval::neighbour_overlap(table, &q.table, budget.probes, 10),
                mbit: q.total_bits() as f64 / 1e6,
                ratio: full_bits / q.total_bits() as f64,
                seconds,
            });
        }
        for &(d_code, start_at) in &shape.variants {
            let start = Instant::now();
            let embedding = KdEmbeddingConfig::new(v, dim)
                .with_choices(shape.k)
                .with_code_length(shape.d)
                .with_d_code(d_code)
                .init_with_seed(budget.seed, &train_device);
            let config = DistillConfig::new()
                .with_steps(budget.steps)
                .with_batch_size(budget.batch_size)
                .with_start(start_at)
                .with_code_update(budget.code_update)
                .with_optimizer(budget.optimizer.clone())
                .with_seed(budget.seed);
            let label = match start_at {
                DistillStart::Random => format!("KD codes, d′ = {d_code}, random start"),
                DistillStart::Residual { .. } => format!("KD codes, d′ = {d_code}, RQ start"),
            };
            let distilled = distill(embedding, table, &config, |p| {
                if p.step % 20 == 0 || p.step == p.steps {
                    progress(&label, p.step, p.steps, p.loss);
                }
            })
            .map_err(|e| e.to_string())?;
            let seconds = start.elapsed().as_secs_f64();
            let report = CompactKdEmbedding::from_trained(&distilled).size_report();
            let rebuilt = distilled.table().inner();
            print_row(&Row {
                method: label,
                error: eval::relative_error(&rebuilt, table),
                overlap: eval::neighbour_overlap(table, &rebuilt, budget.probes, 10),
                mbit: report.total_bits as f64 / 1e6,
                ratio: report.ratio(),
                seconds,
            });
        }
    }
    Ok(())
}
// ANCHOR_END: distill

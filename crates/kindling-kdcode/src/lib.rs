//! KD-code embeddings for [burn](https://burn.dev) 0.22 (Chen, Min & Sun, *Learning K-way
//! D-dimensional Discrete Codes for Compact Embedding Representations*, ICML 2018,
//! <https://arxiv.org/abs/1806.09464>). For burn users whose embedding table dominates their
//! model: replace `burn::nn::Embedding` by [`KdEmbedding`] (same `forward`), train, then export
//! the [`CompactKdEmbedding`] — codes at ⌈log₂K⌉ bits, small tables, the composition — with an
//! exact [`SizeReport`].
//!
//! * [`KdEmbeddingConfig`] → [`KdEmbedding`]: code logits relaxed by straight-through argmax or
//!   Gumbel-softmax ([`relax`]) with a temperature schedule, per-dimension or shared code
//!   tables, linear or recurrent composition, optional batch norm; initialised at the scale of
//!   `burn::nn::Embedding` (unit root-mean-square entries);
//! * [`guidance`]: the paper's distillation guidance — [`guidance::distill`] learns codes from a
//!   pretrained table in mini-batches of rows (PDG's first stage; then fine-tune end to end with
//!   [`guidance::guidance_loss`] in the objective), by default with exact coordinate descent on
//!   the codes ([`guidance::CodeUpdate`]) where the paper used straight-through, [`guidance::online_guidance_loss`] pulls
//!   codes toward a full table trained jointly (ODG); the loss is the relative squared error and
//!   the mixed optimizer's step sizes are derived ([`guidance::MixedOptimizerConfig`]);
//! * [`CompactKdEmbedding`]: the inference form, saved and loaded on its own;
//! * [`eval`]: relative error, top-k neighbour overlap, and the product- and
//!   residual-quantisation baselines at the same code bits; [`data`]: a generated stand-in for
//!   a pretrained table.
//!
//! PDG in a few lines (distil a table, then use the codes in place of the full embedding):
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use kindling_kdcode::guidance::{DistillConfig, distill};
//! use kindling_kdcode::{KdEmbeddingConfig, data, eval};
//!
//! let device = Device::flex().autodiff();
//! let pretrained = data::pretrained_like_table(500, 32, 0, &device);
//! let codes = KdEmbeddingConfig::new(500, 32).with_d_code(32).init_with_seed(0, &device);
//! let codes = distill(codes, &pretrained, &DistillConfig::new().with_steps(200), |_| {}).unwrap();
//! assert!(eval::relative_error(&codes.table(), &pretrained) < 0.8);
//! // …then train the model with `codes` as its embedding, adding
//! // `guidance_loss(&codes, ids, pretrained.select(0, ids))` to the task loss.
//! ```
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use kindling_kdcode::{CompactKdEmbedding, KdEmbeddingConfig};
//!
//! let device = Device::flex();
//! let config = KdEmbeddingConfig::new(10_000, 200).with_choices(32).with_code_length(32);
//! let embedding = config.init(&device);
//! let report = CompactKdEmbedding::from_trained(&embedding).size_report();
//! assert_eq!(report.full_table_bits, 64_000_000);
//! assert_eq!(report.code_bits, 1_600_000);
//! ```

mod compact;
pub mod data;
mod error;
pub mod eval;
pub mod guidance;
mod model;
pub mod relax;

pub use compact::{CompactKdEmbedding, SizeReport, code_bits};
pub use error::KdError;
pub use model::{Composer, Composition, KdEmbedding, KdEmbeddingConfig, Relaxation};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

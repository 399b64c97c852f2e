//! KD-code embeddings for [burn](https://burn.dev) 0.22 (Chen, Min & Sun, *Learning K-way
//! D-dimensional Discrete Codes for Compact Embedding Representations*, ICML 2018,
//! <https://arxiv.org/abs/1806.09464>). For burn users whose embedding table dominates their
//! model: replace `burn::nn::Embedding` by [`KdEmbedding`] (same `forward`), train, then export
//! the [`CompactKdEmbedding`] — codes at ⌈log₂K⌉ bits, small tables, the composition — with an
//! exact [`SizeReport`].
//!
//! * [`KdEmbeddingConfig`] → [`KdEmbedding`]: code logits relaxed by straight-through argmax or
//!   Gumbel-softmax ([`relax`]), per-dimension or shared code tables, linear or recurrent
//!   composition, optional batch norm, temperature schedule;
//! * [`distillation_loss`]: learn codes toward a pretrained table, `λ‖e − e_pre‖²`; the reference's
//!   mixed optimizer (Adam on the code logits, SGD elsewhere) is [`mixed_optimizer`];
//! * [`CompactKdEmbedding`]: the inference form, saved and loaded on its own.
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
mod error;
mod model;
pub mod relax;
mod train;

pub use compact::{CompactKdEmbedding, SizeReport, code_bits};
pub use error::KdError;
pub use model::{Composer, Composition, KdEmbedding, KdEmbeddingConfig, Relaxation};
pub use train::{distillation_loss, mixed_optimizer};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

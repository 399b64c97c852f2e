//! Shared pieces of the kindling examples (never published): the bundled UCI handwritten digits
//! as seeded burn tensors, a small MLP classifier for them, the two in burn-train's terms (items,
//! a batcher, `TrainStep`), an SVG line-chart helper, and the command-line checks every example
//! runs before any work.
//!
//! ```
//! use kindling_examples_common::digits::Digits;
//!
//! let device = burn::tensor::Device::flex();
//! let split = Digits::load().unwrap().split(0.25, 7, &device);
//! assert_eq!(split.train.len() + split.test.len(), 1797);
//! ```

pub mod cli;
pub mod digits;
pub mod learner;
pub mod mlp;
pub mod plot;

//! Graph weighted models on pictures for [burn](https://burn.dev) 0.22 (Amortila & Rabusseau,
//! *Learning Graph Weighted Models on Pictures*, ICGI 2018, <https://arxiv.org/abs/1806.08297>).
//! For burn users who want to learn functions of 2-D words — weighted automata generalised from
//! strings to grids — as tensor networks trained by gradient descent.
//!
//! * [`PictureGwm`] / [`PictureGwmConfig`]: position-typed tensors tied across positions, exact
//!   row-by-row contraction over a batch of pictures, any size ≥ 2×2, differentiable;
//! * [`languages`]: Bars & Stripes and Shifting Bits, membership tests, negative sampling and
//!   seeded balanced data sets;
//! * [`train`] / [`train_sizes`] (several picture sizes per epoch): regression or logistic
//!   training with any burn optimizer; [`accuracy`] and the threshold-free [`auc`].
//!
//! ```
//! use burn::optim::AdamConfig;
//! use burn::tensor::Device;
//! use kindling_gwm::languages::{Language, dataset};
//! use kindling_gwm::{PictureGwmConfig, Training, accuracy, train};
//!
//! let device = Device::flex().autodiff();
//! let data = dataset(Language::BarsAndStripes, 3, 3, 2, 20, 0).unwrap();
//! let model = PictureGwmConfig::new().with_bond(2).init(&device);
//! let settings = Training { epochs: 5, ..Training::default() };
//! let (model, losses) = train(model, &mut AdamConfig::new().init(), &data.train, settings, |_, _| {
//!     std::ops::ControlFlow::Continue(())
//! });
//! assert_eq!(losses.len(), 5);
//! let _ = accuracy(&model, &data.train, settings.objective);
//! ```

mod error;
pub mod languages;
mod model;
mod train;

pub use error::GwmError;
pub use model::{BoundaryEncoding, GwmInit, PictureGwm, PictureGwmConfig};
pub use train::{Objective, Training, accuracy, auc, mistakes, train, train_sizes};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

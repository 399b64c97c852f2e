//! The Deductron for [burn](https://burn.dev) 0.22: a recurrent network built "by inspection" to
//! decode the W-language, a cursive script that needs unbounded memory (Rychlik, *A Deductron:
//! A recurrent neural network*, <https://arxiv.org/abs/1806.09038>). For burn users who want a
//! small, interpretable RNN whose hidden layer reads as logic, with its data and two trainings.
//!
//! * [`Deductron`] / [`DeductronConfig`]: the module, batched over `[batch, time, n_in]`,
//!   differentiable, on any device; [`Deductron::exact`] holds the paper's hand-built weights.
//! * [`wlang`]: the three reference samples, a generator for any string with stroke stretching,
//!   the decoder and the error count.
//! * [`train_gradient`]: gradient training with any burn optimizer (the paper's recipe), and
//!   [`Annealer`]: simulated annealing over quantised weights.
//!
//! ```
//! use burn::tensor::Device;
//! use kindling_deductron::{Deductron, wlang};
//! use rand::SeedableRng;
//!
//! let device = Device::flex();
//! let net = Deductron::exact(&device);
//! let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(1);
//! let drawing = wlang::Drawing { max_stretch: 3, blank_jumps: false };
//! let sample = wlang::generate("XOOXXOXO", drawing, &mut rng).unwrap();
//! let out = net.forward(sample.inputs(&device));
//! assert_eq!(wlang::decode(&out.y), vec!["XOOXXOXO".to_string()]);
//! ```

mod error;
mod model;
mod train;
pub mod wlang;

pub use error::DeductronError;
pub use model::{Deductron, DeductronConfig, DeductronInit, DeductronOutput};
pub use train::{AnnealResult, Annealer, GradientTraining, Progress, train_gradient};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

//! Optimizers for [burn](https://burn.dev) 0.22 from three papers on gradient-based learning:
//! sign descent, variance adaptation and nested variance reduction. For burn users who want an
//! optimizer that plugs into `Learner` (or a plain loop) exactly like burn's own Adam or Lion.
//!
//! | optimizer | paper | type |
//! | --- | --- | --- |
//! | signSGD, Signum (= SSD, M-SSD) | Bernstein et al., ICML 2018 | [`SignumConfig`] → [`Signum`] |
//! | SVAG, M-SVAG | Balles & Hennig, ICML 2018 | [`SvagConfig`] → [`Svag`] |
//! | M-SVAG with batch variances | (extension) | [`MinibatchSvag`] |
//! | SNVRG, SVRG / SCSG | Zhou, Xu & Gu, NeurIPS 2018 | [`SnvrgConfig`] → [`Snvrg`], [`SvrgConfig`] |
//!
//! Every `XConfig` has `init()` (a burn `ModuleOptimizer`, with gradient clipping when
//! configured), `build()` (the bare per-tensor optimizer, for parameter groups), `validate()`
//! and the checked `try_init()` / `try_build()` returning an [`OptimError`] that names the
//! offending field. State is burn `RecordState`, so `ModuleOptimizer::save` / `load` checkpoint
//! it and `Learner` checkpoints work unchanged.
//!
//! [`Signum`] and [`Svag`] plug into burn-train's `Learner` like burn's Adam. [`MinibatchSvag`]
//! (two gradients per step) and [`Snvrg`] (gradients at several reference points of batches it
//! picks itself) cannot: their docs say why and how to drive them from a plain loop. With the
//! `train` feature, `EpochRenderer` prints one readable line of metrics per epoch and split for
//! `Learner` runs.
//!
//! **Weight decay, mapped to burn's.** burn uses the name `weight_decay` for two different
//! rules; kindling names them apart:
//!
//! | kindling field | rule | burn's equivalent |
//! | --- | --- | --- |
//! | `weight_decay` (λ) | coupled: `g ← g + λ·x` before the update | `AdamConfig` / `SgdConfig` `weight_decay: Some(WeightDecayConfig::new(λ))` |
//! | `decoupled_weight_decay` (λ_d) | decoupled: `x ← (1 − η·λ_d)·x` | `AdamWConfig.weight_decay`, `LionConfig.weight_decay` |
//!
//! So burn's `LionConfig::new().with_weight_decay(0.01)` corresponds to
//! `SignumConfig::new().with_decoupled_weight_decay(0.01)`.
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Tensor};
//! use kindling_optim::{SignumConfig, SvagConfig};
//!
//! let device = Device::flex().autodiff();
//! let mut model = LinearConfig::new(8, 1).init(&device);
//! let mut signum = SignumConfig::new().with_momentum(0.9).init();
//! let mut msvag = SvagConfig::m_svag().init();
//! for step in 0..4 {
//!     let x = Tensor::<2>::ones([16, 8], &device);
//!     let loss = (model.forward(x) - 1.0).powi_scalar(2).mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     model = if step % 2 == 0 { signum.step(1e-2, model, grads) } else { msvag.step(0.1, model, grads) };
//! }
//! assert!(SignumConfig::new().with_momentum(1.5).try_init().is_err());
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;

// `#[derive(RecordState)]` expands to paths under the crate root.
#[doc(hidden)]
pub use burn::optim::{RecordState, StateSink, StateSource, join_index, join_path};

mod error;
pub mod grads;
#[cfg(feature = "train")]
mod render;
mod signum;
mod snvrg;
mod svag;
mod svag_mb;
mod transform;

pub use error::OptimError;
#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub use render::EpochRenderer;
pub use signum::*;
pub use snvrg::*;
pub use svag::*;
pub use svag_mb::*;
pub use transform::SkippedUpdates;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

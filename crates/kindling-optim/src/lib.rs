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

extern crate alloc;

// `#[derive(RecordState)]` expands to paths under the crate root.
#[doc(hidden)]
pub use burn::optim::{RecordState, StateSink, StateSource, join_index, join_path};

mod error;
pub mod grads;
mod signum;
mod snvrg;
mod svag;
mod svag_mb;
mod transform;

pub use error::OptimError;
pub use signum::*;
pub use snvrg::*;
pub use svag::*;
pub use svag_mb::*;

//! Small gradient transformations shared by the optimizers (optax-style pieces): weight decay in
//! both forms, the exponential moving average, the non-finite guard, and the wrapping of a
//! per-tensor optimizer into a burn `ModuleOptimizer`.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{ModuleOptimizer, Optimizer};
use burn::tensor::Tensor;

use crate::OptimError;
use crate::error::Check;

/// Weight decay, in MXNet's two forms (both optional, both may be on).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Decay {
    /// Coupled (L2) decay λ: `g ← g + λ·x` before any momentum (MXNet's `wd`).
    pub(crate) coupled: f32,
    /// Decoupled decay λ_d: `x ← (1 − η·λ_d)·x` before the step (MXNet's `wd_lh`, AdamW's form).
    pub(crate) decoupled: f32,
}

impl Decay {
    pub(crate) fn validate(&self, check: &Check) -> Result<(), OptimError> {
        check.non_negative("weight_decay", self.coupled)?;
        check.non_negative("decoupled_weight_decay", self.decoupled)
    }

    /// `g + λ·x` (no op when λ = 0).
    pub(crate) fn couple<const D: usize>(&self, grad: Tensor<D>, param: &Tensor<D>) -> Tensor<D> {
        if self.coupled == 0.0 {
            grad
        } else {
            grad + param.clone().mul_scalar(self.coupled)
        }
    }

    /// `(1 − η·λ_d)·x` (no op when λ_d = 0).
    pub(crate) fn shrink<const D: usize>(&self, param: Tensor<D>, lr: f64) -> Tensor<D> {
        let factor = 1.0 - lr * self.decoupled as f64;
        if factor == 1.0 {
            param
        } else {
            param.mul_scalar(factor)
        }
    }
}

/// Exponential moving average with zero initialisation: `β·s + (1 − β)·x`, or `(1 − β)·x` when
/// there is no previous value.
pub(crate) fn ema<const D: usize>(
    previous: Option<Tensor<D>>,
    x: Tensor<D>,
    beta: f32,
) -> Tensor<D> {
    let fresh = x.mul_scalar(1.0 - beta);
    match previous {
        Some(s) => s.mul_scalar(beta) + fresh,
        None => fresh,
    }
}

/// Wraps a per-tensor optimizer into a `ModuleOptimizer`, with gradient clipping when configured
/// (burn's `LionConfig::init` shape).
pub(crate) fn module_optimizer<O: Optimizer>(
    optim: O,
    clipping: &Option<GradientClippingConfig>,
) -> ModuleOptimizer {
    let module = ModuleOptimizer::from(optim);
    match clipping {
        Some(config) => module.with_grad_clipping(config.init()),
        None => module,
    }
}

/// How many parameter updates an optimizer skipped because a gradient was not finite.
///
/// **The rule, for every kindling optimizer.** Before a parameter tensor is updated, the
/// optimizer checks the quantity that carries the gradient into its state (Signum: the gradient
/// after coupled weight decay; SVAG: its square, so a gradient whose square overflows is caught
/// too; M-SVAG (mb): the mean gradient and its variance; SNVRG: the step direction `v_t`). If
/// any entry is NaN or ±∞, the update of that tensor is skipped: the parameter and its state
/// stay exactly as they were (the step counter too), and this count goes up by one. A NaN or ∞
/// therefore never enters the state. Other parameters of the same step are updated as usual.
///
/// The check is one reduction and one scalar read-back per parameter tensor and step (a device
/// sync on GPU backends). Clones share one count; the count is not part of a checkpoint.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn::optim::Optimizer;
/// use kindling_optim::SignumConfig;
///
/// let device = Device::flex();
/// let signum = SignumConfig::new().build();
/// let skipped = signum.skipped_updates();
/// let x = Tensor::<1>::from_floats([1.0, 2.0], &device);
/// let g = Tensor::<1>::from_floats([f32::NAN, 1.0], &device);
/// let (x, state) = signum.step(0.1, x, g, None);
/// assert_eq!(x.into_data().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
/// assert!(state.is_none());
/// assert_eq!(skipped.count(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SkippedUpdates(Arc<AtomicU64>);

impl SkippedUpdates {
    /// Parameter updates skipped so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// `true` when every entry of `probe` is finite; otherwise counts one skipped update.
    pub(crate) fn admit<const D: usize>(&self, probe: &Tensor<D>) -> bool {
        let finite = probe.clone().is_finite().all().into_scalar::<bool>();
        if !finite {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        finite
    }
}

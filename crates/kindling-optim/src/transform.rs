//! Small gradient transformations shared by the optimizers (optax-style pieces): weight decay in
//! both forms, the exponential moving average, and the wrapping of a per-tensor optimizer into a
//! burn `ModuleOptimizer`.

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

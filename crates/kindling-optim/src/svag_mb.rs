use burn::module::{Module, ParamId};
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, OptimizerRecord};
use burn::store::RecordError;
use burn::tensor::{Bytes, Device, Tensor};

use crate::error::Check;
use crate::grads::{GradientMap, MeanVariance, map};
use crate::transform::{Decay, SkippedUpdates, ema};
use crate::{OptimError, SvagConfig};

/// SVAG / M-SVAG with the gradient variance measured on the batch — "M-SVAG (mb)" — instead of
/// estimated from the moving averages.
///
/// The caller supplies, per step, the batch's mean gradient `g` and the per-coordinate variance
/// `s` of that mean (for example [`grads::mean_and_variance`](crate::grads::mean_and_variance)
/// over `K` micro-batches: `Σ(g_k − g)²/(K(K−1))`). Per parameter, with `t` from 1:
///
/// ```text
/// M-SVAG (mb):  m̃ ← β·m̃ + (1−β)·g ;  q̃ ← β²·q̃ + (1−β)²·s         (q̃ = Var[m̃] for independent batches)
///               γ = m̃² / (m̃² + q̃) ;  x ← x − α·γ·m̃/(1−β^t)
/// SVAG (mb):    γ = g² / (g² + s)  ;  x ← x − α·γ·g
/// ```
///
/// `q̃` propagates the supplied variances through the moving average exactly (the moving average
/// of independent batch means has variance `Σ w_i² s_i`), so no ρ correction is needed; with a
/// constant `s` it equals the `ρ·s` of [`Svag`](crate::Svag) up to the bias correction. γ is
/// clipped to `[0, 1]` and is 0 where `m̃ = q̃ = 0`. A mean or variance holding NaN or ±∞ skips
/// the update of that tensor and is counted ([`skipped_updates`](Self::skipped_updates)). Weight decay works as in `Svag`; gradient
/// clipping is not offered (it would have to clip the mean and rescale the variance together).
///
/// The paper estimates the variance from moving averages only; this variant is for users who can
/// afford per-example or micro-batch gradients and want a less noisy γ.
///
/// **Not for `Learner`.** burn's `Learner` hands its optimizer one gradient per step; this
/// optimizer needs two per parameter (the mean and its variance), which a `TrainStep` cannot
/// return. Drive it from your own loop: compute `K` micro-batch gradients, reduce them with
/// [`grads::mean_and_variance`](crate::grads::mean_and_variance), and call
/// [`step`](Self::step); use [`SvagConfig`](crate::SvagConfig)'s `init()` (M-SVAG with
/// moving-average variances) inside a `Learner`.
///
/// State (checkpointable through [`into_bytes`](Self::into_bytes) / [`from_bytes`](Self::from_bytes),
/// burn's optimizer record format): `m̃`, `q̃` and the step count per parameter.
#[derive(Clone)]
pub struct MinibatchSvag {
    inner: ModuleOptimizer,
    skipped: SkippedUpdates,
}

/// The per-tensor step of [`MinibatchSvag`]. It receives the mean gradient and its variance
/// concatenated along the first dimension (`[2·n₀, …]` for an `[n₀, …]` parameter), which is how
/// `MinibatchSvag` passes two tensors through burn's one-gradient `ModuleOptimizer`.
#[derive(Clone, Debug)]
pub struct MinibatchSvagStep {
    beta: f32,
    momentum: bool,
    decay: Decay,
    skipped: SkippedUpdates,
}

/// State of [`MinibatchSvag`] for one parameter.
#[derive(crate::RecordState, Clone, derive_new::new)]
pub struct MinibatchSvagState<const D: usize> {
    /// `m̃`: moving average of the batch-mean gradients (not bias-corrected).
    pub m: Tensor<D>,
    /// `q̃`: variance of `m̃`, propagated from the supplied batch variances.
    pub q: Tensor<D>,
    /// Number of steps taken (t).
    pub step: usize,
}

impl SvagConfig {
    /// The mini-batch-variance variant (M-SVAG (mb) when `momentum`, else SVAG (mb)), or the
    /// validation error. `grad_clipping` must be unset.
    pub fn try_init_minibatch(&self) -> Result<MinibatchSvag, OptimError> {
        self.validate()?;
        Check {
            config: "SvagConfig",
        }
        .require(
            self.grad_clipping.is_none(),
            "grad_clipping",
            "Some(..)",
            "is not supported by the mini-batch variance variant",
        )?;
        let skipped = SkippedUpdates::default();
        let step = MinibatchSvagStep {
            beta: self.beta,
            momentum: self.momentum,
            decay: self.decay(),
            skipped: skipped.clone(),
        };
        Ok(MinibatchSvag {
            inner: ModuleOptimizer::from(step),
            skipped,
        })
    }

    /// The mini-batch-variance variant.
    ///
    /// # Panics
    /// When the configuration is invalid or sets `grad_clipping`.
    pub fn init_minibatch(&self) -> MinibatchSvag {
        self.try_init_minibatch().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl MinibatchSvag {
    /// The count of parameter updates skipped because a mean gradient or variance held NaN or
    /// ±∞ (see [`SkippedUpdates`]).
    pub fn skipped_updates(&self) -> SkippedUpdates {
        self.skipped.clone()
    }

    /// One step: updates every parameter of `module` that has a mean gradient. Every such
    /// parameter needs a variance too.
    pub fn step<M: Module>(
        &mut self,
        lr: LearningRate,
        module: M,
        grads: MeanVariance,
    ) -> Result<M, OptimError> {
        struct Pack(Option<ParamId>);
        impl GradientMap for Pack {
            fn apply<const D: usize>(
                &mut self,
                id: ParamId,
                operands: Vec<Option<Tensor<D>>>,
            ) -> Option<Tensor<D>> {
                let mut it = operands.into_iter();
                match (it.next().flatten(), it.next().flatten()) {
                    (Some(mean), Some(var)) => Some(Tensor::cat(vec![mean, var], 0)),
                    (Some(_), None) => {
                        self.0.get_or_insert(id);
                        None
                    }
                    _ => None,
                }
            }
        }
        let (packed, Pack(missing)) = map(&module, &[&grads.mean, &grads.variance], Pack(None));
        if let Some(id) = missing {
            return Err(OptimError::Gradients(format!(
                "parameter {id} has a mean gradient but no variance"
            )));
        }
        Ok(self.inner.step(lr, module, packed))
    }

    /// The optimizer state as burn's [`OptimizerRecord`].
    pub fn to_record(&self) -> OptimizerRecord {
        self.inner.to_record()
    }

    /// Restores a state saved by [`to_record`](Self::to_record).
    pub fn load_record(self, record: OptimizerRecord) -> Self {
        Self {
            inner: self.inner.load_record(record),
            skipped: self.skipped,
        }
    }

    /// The state in burn's optimizer byte format.
    pub fn into_bytes(&self) -> Result<Bytes, RecordError> {
        self.inner.into_bytes()
    }

    /// Restores a state saved by [`into_bytes`](Self::into_bytes).
    pub fn from_bytes(self, bytes: Bytes) -> Result<Self, RecordError> {
        Ok(Self {
            inner: self.inner.from_bytes(bytes)?,
            skipped: self.skipped,
        })
    }
}

impl Optimizer for MinibatchSvagStep {
    type State<const D: usize> = MinibatchSvagState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        packed: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let rows = tensor.dims()[0];
        assert_eq!(
            packed.dims()[0],
            2 * rows,
            "MinibatchSvagStep expects [mean; variance] stacked on dim 0; use MinibatchSvag::step"
        );
        if !self.skipped.admit(&packed) {
            return (tensor, state);
        }
        let grad = self
            .decay
            .couple(packed.clone().narrow(0, 0, rows), &tensor);
        let variance = packed.narrow(0, rows, rows);
        let (m, q, step) = match state {
            Some(s) => (Some(s.m), Some(s.q), s.step + 1),
            None => (None, None, 1),
        };
        let b = self.beta;
        let m = ema(m, grad.clone(), b);
        let fresh_q = variance.clone().mul_scalar((1.0 - b) * (1.0 - b));
        let q = match q {
            Some(q) => q.mul_scalar(b * b) + fresh_q,
            None => fresh_q,
        };
        let update = if self.momentum {
            let a = m.clone().square();
            let gamma = a.clone().div(a + q.clone().add_scalar(f32::MIN_POSITIVE));
            let correction = 1.0 - (b as f64).powi(step.min(i32::MAX as usize) as i32);
            gamma * m.clone().mul_scalar(lr / correction)
        } else {
            let a = grad.clone().square();
            let gamma = a.clone().div(a + variance.add_scalar(f32::MIN_POSITIVE));
            gamma * grad.mul_scalar(lr)
        };
        let tensor = self.decay.shrink(tensor, lr);
        (tensor - update, Some(MinibatchSvagState::new(m, q, step)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.m = state.m.to_device(device);
        state.q = state.q.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grads::mean_and_variance;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::optim::GradientsParams;
    use burn::tensor::TensorData;
    use kindling_testing::{assert_slices_close, autodiff_device, to_vec};

    /// A bias-free 1 → 2 linear layer with weights [1, −2].
    fn layer() -> Linear {
        Linear {
            weight: Param::from_data(TensorData::from([[1.0_f32, -2.0]]), &autodiff_device()),
            bias: None,
        }
    }

    fn grads_for(model: &Linear, mean: [f32; 2], variance: [f32; 2]) -> MeanVariance {
        let device = autodiff_device().inner();
        let id = model.weight.id;
        let mut m = GradientsParams::new();
        m.register(id, Tensor::<2>::from_floats([mean], &device));
        let mut v = GradientsParams::new();
        v.register(id, Tensor::<2>::from_floats([variance], &device));
        MeanVariance {
            mean: m,
            variance: v,
        }
    }

    /// SVAG (mb): γ = g²/(g² + s) on the current batch. g = [1, 1], s = [0, 3]: γ = [1, 1/4],
    /// so with α = 0.1 the weights move by [−0.1, −0.025].
    #[test]
    fn svag_mb_uses_the_batch_variance() {
        let mut optim = SvagConfig::svag().init_minibatch();
        let model = layer();
        let g = grads_for(&model, [1.0, 1.0], [0.0, 3.0]);
        let model = optim.step(0.1, model, g).unwrap();
        assert_slices_close(&to_vec(&model.weight.val()), &[0.9, -2.025], 1e-6);
    }

    /// M-SVAG (mb), hand computed with β = 0.5, g = [1, 1] twice, s = [0, 1] twice:
    /// step 1: m̃ = [.5, .5], q̃ = [0, .25], γ = [1, .5], update α·γ·m̃/(1−.5) = [.1, .05];
    /// step 2: m̃ = [.75, .75], q̃ = [0, .0625 + .25 = .3125], γ₂ = .5625/(.5625+.3125) = 0.642857,
    /// update α·γ·m̃/(1−.25) = [.1, .0642857].
    #[test]
    fn m_svag_mb_propagates_the_variance_through_the_average() {
        let mut optim = SvagConfig::m_svag().with_beta(0.5).init_minibatch();
        let mut model = layer();
        for _ in 0..2 {
            let g = grads_for(&model, [1.0, 1.0], [0.0, 1.0]);
            model = optim.step(0.1, model, g).unwrap();
        }
        assert_slices_close(
            &to_vec(&model.weight.val()),
            &[1.0 - 0.1 - 0.1, -2.0 - 0.05 - 0.0642857],
            1e-6,
        );
    }

    #[test]
    fn missing_variance_and_clipping_are_errors() {
        let mut optim = SvagConfig::new().init_minibatch();
        let model = layer();
        let mut g = grads_for(&model, [1.0, 1.0], [0.0, 0.0]);
        g.variance = GradientsParams::new();
        let err = optim.step(0.1, model, g).err().unwrap();
        assert!(err.to_string().contains("no variance"), "{err}");
        let clipped = SvagConfig::new().with_grad_clipping(Some(
            burn::grad_clipping::GradientClippingConfig::Value(1.0),
        ));
        let err = clipped.try_init_minibatch().err().unwrap();
        assert!(matches!(
            err,
            OptimError::InvalidField {
                field: "grad_clipping",
                ..
            }
        ));
    }

    #[test]
    fn save_load_continue_equals_uninterrupted() {
        let steps = [
            ([1.0, -0.5], [0.1, 0.3]),
            ([0.2, 0.4], [0.0, 0.5]),
            ([-0.3, 0.1], [0.2, 0.2]),
        ];
        let mut original = SvagConfig::m_svag().init_minibatch();
        let mut model = layer();
        for (m, v) in &steps[..2] {
            let g = grads_for(&model, *m, *v);
            model = original.step(0.1, model, g).unwrap();
        }
        let bytes = original.into_bytes().unwrap();
        let mut restored = SvagConfig::m_svag()
            .init_minibatch()
            .from_bytes(bytes)
            .unwrap();
        let (m, v) = steps[2];
        let a = original
            .step(0.1, model.clone(), grads_for(&model, m, v))
            .unwrap();
        let b = restored
            .step(0.1, model.clone(), grads_for(&model, m, v))
            .unwrap();
        assert_eq!(to_vec(&a.weight.val()), to_vec(&b.weight.val()));
    }

    /// The intended use: gradients of K micro-batches of each batch give the mean and its
    /// variance. Noisy linear regression y = 2x + noise; M-SVAG (mb) fits the slope.
    #[test]
    fn trains_from_micro_batch_gradients() {
        let device = autodiff_device();
        let mut model = Linear {
            weight: Param::from_data(TensorData::from([[0.0_f32]]), &device),
            bias: None,
        };
        let mut optim = SvagConfig::m_svag().init_minibatch();
        let noise = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        for step in 0..200 {
            let micro: Vec<GradientsParams> = (0..4)
                .map(|k| {
                    let xs: Vec<f32> = (0..8).map(|i| noise(step * 97 + k * 13 + i)).collect();
                    let ys: Vec<f32> = xs
                        .iter()
                        .enumerate()
                        .map(|(i, x)| 2.0 * x + 0.3 * noise(i + k))
                        .collect();
                    let x = Tensor::<2>::from_data(TensorData::new(xs, [8, 1]), &device);
                    let y = Tensor::<2>::from_data(TensorData::new(ys, [8, 1]), &device);
                    let loss = (model.forward(x) - y).powi_scalar(2).mean();
                    GradientsParams::from_grads(loss.backward(), &model)
                })
                .collect();
            let moments = mean_and_variance(&model, &micro).unwrap();
            model = optim.step(0.1, model, moments).unwrap();
        }
        let slope = to_vec(&model.weight.val())[0];
        assert!((slope - 2.0).abs() < 0.1, "fitted slope {slope}");
    }
}

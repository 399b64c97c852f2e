use burn::config::Config;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

use crate::OptimError;
use crate::error::Check;
use crate::transform::{Decay, SkippedUpdates, ema, module_optimizer};

/// Configuration of [`Signum`]: sign descent with optional momentum (signSGD when
/// `momentum = 0`).
///
/// Defaults are MXNet's `Signum`, used in the paper's experiments: β = 0.9, no weight decay.
/// The learning rate (the paper's η, 0.01 there) is passed to each step, as for every burn
/// optimizer.
#[derive(Config, Debug)]
pub struct SignumConfig {
    /// Momentum β in `[0, 1)`: `m ← β·m + (1 − β)·g`. `0` is signSGD (no state kept).
    #[config(default = 0.9)]
    pub momentum: f32,
    /// Coupled weight decay λ ≥ 0: `g ← g + λ·x` before the momentum (MXNet's `wd`).
    #[config(default = 0.0)]
    pub weight_decay: f32,
    /// Decoupled weight decay λ_d ≥ 0: `x ← (1 − η·λ_d)·x` before the sign step (MXNet's
    /// `wd_lh`).
    #[config(default = 0.0)]
    pub decoupled_weight_decay: f32,
    /// Optional [gradient clipping](GradientClippingConfig), applied by the `ModuleOptimizer`
    /// before the step.
    pub grad_clipping: Option<GradientClippingConfig>,
}

/// Sign descent: signSGD and Signum (Bernstein et al., *signSGD: Compressed Optimisation for
/// Non-Convex Problems*, ICML 2018, <https://arxiv.org/abs/1802.04434>).
///
/// Per parameter `x` with gradient `g` and learning rate `η`:
///
/// ```text
/// g ← g + λ·x                       (coupled weight decay, optional)
/// m ← β·m + (1 − β)·g               (m starts at 0; skipped when β = 0)
/// x ← (1 − η·λ_d)·x                 (decoupled weight decay, optional)
/// x ← x − η·sign(m)                 (sign(g) when β = 0)
/// ```
///
/// A NaN or ±∞ gradient skips the update of that tensor and is counted (see
/// [`SkippedUpdates`]; [`skipped_updates`](Self::skipped_updates) or
/// [`SignumConfig::init_with_skips`] give the count).
///
/// `sign(0) = 0`: a coordinate whose (momentum) gradient is exactly zero does not move (burn's
/// `sign`, and MXNet's convention). Every step moves every other coordinate by exactly `η`, so the
/// learning rate is a step length in parameter space; it is typically 10× larger than SGD's.
///
/// **The "Dissecting Adam" names.** Balles & Hennig (ICML 2018) call signSGD *stochastic sign
/// descent* (SSD) and Signum with an exponential moving average *M-SSD*; bias correction of the
/// average cannot change a sign, so M-SSD is exactly Signum. [`SignumConfig::ssd`] and
/// [`SignumConfig::m_ssd`] build them under those names.
///
/// **When to use it.** When gradient noise is heavy-tailed or concentrated on few coordinates
/// (sign descent is then far more stable than SGD), and as the local rule of 1-bit compressed
/// data-parallel training with majority vote.
///
/// ```
/// use burn::optim::GradientsParams;
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Device, Tensor};
/// use kindling_optim::SignumConfig;
///
/// let device = Device::flex().autodiff();
/// let mut model = LinearConfig::new(4, 1).init(&device);
/// let mut optim = SignumConfig::new().with_momentum(0.9).init();
/// let x = Tensor::<2>::ones([8, 4], &device);
/// let loss = model.forward(x).powi_scalar(2).mean();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// model = optim.step(1e-2, model, grads);
/// ```
#[derive(Clone, Debug)]
pub struct Signum {
    momentum: f32,
    decay: Decay,
    skipped: SkippedUpdates,
}

/// State of [`Signum`] for one parameter: its momentum `m` (absent for signSGD).
#[derive(crate::RecordState, Clone, derive_new::new)]
pub struct SignumState<const D: usize> {
    /// Exponential moving average of the (decayed) gradients.
    pub momentum: Tensor<D>,
}

impl SignumConfig {
    /// signSGD: sign descent without momentum (`momentum = 0`).
    pub fn sign_sgd() -> Self {
        Self::new().with_momentum(0.0)
    }

    /// Stochastic sign descent (SSD) of Balles & Hennig: the same optimizer as signSGD.
    pub fn ssd() -> Self {
        Self::sign_sgd()
    }

    /// Momentum stochastic sign descent (M-SSD) of Balles & Hennig: Signum with β = 0.9 (the
    /// bias-corrected average they use has the same sign as Signum's momentum).
    pub fn m_ssd() -> Self {
        Self::new()
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), OptimError> {
        let check = Check {
            config: "SignumConfig",
        };
        check.unit_interval("momentum", self.momentum)?;
        self.decay().validate(&check)
    }

    fn decay(&self) -> Decay {
        Decay {
            coupled: self.weight_decay,
            decoupled: self.decoupled_weight_decay,
        }
    }

    /// The bare per-tensor optimizer (for [`ModuleOptimizer::with_group`]), or the validation
    /// error.
    pub fn try_build(&self) -> Result<Signum, OptimError> {
        self.validate()?;
        Ok(Signum {
            momentum: self.momentum,
            decay: self.decay(),
            skipped: SkippedUpdates::default(),
        })
    }

    /// The bare per-tensor optimizer.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn build(&self) -> Signum {
        self.try_build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A `ModuleOptimizer` for whole modules (with gradient clipping when configured), or the
    /// validation error.
    pub fn try_init(&self) -> Result<ModuleOptimizer, OptimError> {
        Ok(self.try_init_with_skips()?.0)
    }

    /// As [`try_init`](Self::try_init), with the count of updates skipped for non-finite
    /// gradients.
    pub fn try_init_with_skips(&self) -> Result<(ModuleOptimizer, SkippedUpdates), OptimError> {
        let optim = self.try_build()?;
        let skipped = optim.skipped_updates();
        Ok((module_optimizer(optim, &self.grad_clipping), skipped))
    }

    /// As [`init`](Self::init), with the count of updates skipped for non-finite gradients.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init_with_skips(&self) -> (ModuleOptimizer, SkippedUpdates) {
        self.try_init_with_skips().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A `ModuleOptimizer` for whole modules, as burn's own `XConfig::init`.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init(&self) -> ModuleOptimizer {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Signum {
    /// The count of updates this optimizer (and its clones) skipped for a non-finite gradient.
    pub fn skipped_updates(&self) -> SkippedUpdates {
        self.skipped.clone()
    }
}

impl Optimizer for Signum {
    type State<const D: usize> = SignumState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let grad = self.decay.couple(grad, &tensor);
        if !self.skipped.admit(&grad) {
            return (tensor, state);
        }
        let (direction, state) = if self.momentum == 0.0 {
            (grad, None)
        } else {
            let momentum = ema(state.map(|s| s.momentum), grad, self.momentum);
            (momentum.clone(), Some(SignumState::new(momentum)))
        };
        let tensor = self.decay.shrink(tensor, lr);
        (tensor - direction.sign().mul_scalar(lr), state)
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindling_testing::{assert_optimizer_resume, assert_tensor_close, device};

    fn t(values: [f32; 3]) -> Tensor<1> {
        Tensor::from_floats(values, &device())
    }

    const X0: [f32; 3] = [1.0, -2.0, 3.0];
    const GRADS: [[f32; 3]; 3] = [[0.5, -0.25, 0.0], [-0.1, 0.5, -2.0], [0.3, 0.2, 1.0]];

    fn run(optim: &Signum, lr: f64) -> Vec<(Tensor<1>, Option<SignumState<1>>)> {
        let mut x = t(X0);
        let mut state = None;
        let mut out = Vec::new();
        for g in GRADS {
            let (nx, ns) = optim.step(lr, x, t(g), state);
            out.push((nx.clone(), ns.clone()));
            (x, state) = (nx, ns);
        }
        out
    }

    /// Golden values from a direct transcription of the spec's update in Python (f64):
    /// `g ← g + λx; m ← βm + (1−β)g; x ← (1 − ηλ_d)x; x ← x − η·sign(m)` with η = 0.1, β = 0.9,
    /// λ = 0.1, λ_d = 0.05, x₀ = [1, −2, 3], gradients [[.5,−.25,0], [−.1,.5,−2], [.3,.2,1]].
    #[test]
    fn golden_three_steps_with_both_weight_decays() {
        let optim = SignumConfig::new()
            .with_weight_decay(0.1)
            .with_decoupled_weight_decay(0.05)
            .build();
        let steps = run(&optim, 0.1);
        let expected_x = [
            [0.895, -1.89, 2.885],
            [0.790525, -1.78055, 2.970575],
            [0.6865724, -1.6716472, 3.055_722],
        ];
        let expected_m = [
            [0.06, -0.045, 0.03],
            [0.05295, -0.0094, -0.14415],
            [0.0855602, -0.0062655, -2.93e-05],
        ];
        for ((x, state), (ex, em)) in steps.iter().zip(expected_x.iter().zip(expected_m)) {
            assert_tensor_close(x, ex, 1e-6);
            assert_tensor_close(&state.as_ref().unwrap().momentum, &em, 1e-6);
        }
    }

    /// signSGD (β = 0): every non-zero coordinate moves by exactly η against its gradient's
    /// sign; a zero gradient does not move (sign(0) = 0); no state is kept.
    #[test]
    fn golden_sign_sgd_and_sign_of_zero() {
        let steps = run(&SignumConfig::sign_sgd().build(), 0.1);
        let expected = [[0.9, -1.9, 3.0], [1.0, -2.0, 3.1], [0.9, -2.1, 3.0]];
        for ((x, state), e) in steps.iter().zip(expected) {
            assert_tensor_close(x, &e, 1e-6);
            assert!(state.is_none(), "signSGD keeps no momentum");
        }
    }

    /// The regression users asked for: an implementation that re-zeroes the momentum buffer
    /// every step silently turns Signum into signSGD. With gradients [1], [−0.5], [−0.5] and
    /// β = 0.9 the momentum stays positive (0.1, 0.04, −0.014), so Signum steps −η, −η, +η
    /// (hand computed) while signSGD steps −η, +η, +η.
    #[test]
    fn signum_momentum_survives_a_sign_flip() {
        let grads = [1.0_f32, -0.5, -0.5];
        let trajectory = |optim: Signum| {
            let mut x = Tensor::<1>::from_floats([0.0], &device());
            let mut state = None;
            let mut xs = Vec::new();
            for g in grads {
                let (nx, ns) = optim.step(0.1, x, Tensor::from_floats([g], &device()), state);
                xs.push(kindling_testing::to_vec(&nx)[0]);
                (x, state) = (nx, ns);
            }
            xs
        };
        let signum = trajectory(SignumConfig::new().build());
        let sign_sgd = trajectory(SignumConfig::sign_sgd().build());
        kindling_testing::assert_slices_close(&signum, &[-0.1, -0.2, -0.1], 1e-6);
        kindling_testing::assert_slices_close(&sign_sgd, &[-0.1, 0.0, 0.1], 1e-6);
    }

    #[test]
    fn paper_names_are_the_same_optimizer() {
        assert_eq!(SignumConfig::ssd().momentum, 0.0);
        assert_eq!(SignumConfig::m_ssd().momentum, 0.9);
        assert_eq!(SignumConfig::new().momentum, 0.9);
    }

    #[test]
    fn invalid_fields_are_named() {
        let err = SignumConfig::new()
            .with_momentum(1.0)
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "SignumConfig.momentum = 1 is invalid: must be in [0, 1)"
        );
        let err = SignumConfig::new()
            .with_weight_decay(-0.1)
            .try_init()
            .err()
            .unwrap();
        assert!(matches!(
            err,
            OptimError::InvalidField {
                field: "weight_decay",
                ..
            }
        ));
        let err = SignumConfig::new()
            .with_decoupled_weight_decay(f32::NAN)
            .try_build()
            .unwrap_err();
        assert!(matches!(
            err,
            OptimError::InvalidField {
                field: "decoupled_weight_decay",
                ..
            }
        ));
        let err = SignumConfig::new()
            .with_momentum(f32::NAN)
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            OptimError::InvalidField {
                field: "momentum",
                ..
            }
        ));
    }

    #[test]
    #[should_panic(expected = "SignumConfig.momentum = -0.5 is invalid")]
    fn init_panics_with_the_validation_message() {
        let _ = SignumConfig::new().with_momentum(-0.5).init();
    }

    #[test]
    fn save_load_continue_equals_uninterrupted() {
        assert_optimizer_resume(
            || {
                SignumConfig::new()
                    .with_weight_decay(0.01)
                    .with_decoupled_weight_decay(0.1)
                    .init()
            },
            1e-2,
        );
    }
}

use burn::config::Config;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

use crate::OptimError;
use crate::error::Check;
use crate::transform::{Decay, SkippedUpdates, module_optimizer};

/// The cap on the variance-of-average factor ρ (the authors' reference value).
pub const RHO_CAP: f64 = 0.9999;

/// ρ(β, t): the variance of an exponential moving average of `t` i.i.d. values, relative to the
/// variance of one value, after bias correction:
///
/// ```text
/// ρ(β, t) = (1 − β)²·(1 − β^{2t}) / ((1 − β^t)²·(1 − β²)),   capped at 0.9999
/// ```
///
/// `ρ(β, 1) = 1` (capped), `ρ(0.9, 2) = 0.50139`, and `ρ → (1 − β)/(1 + β)` as `t → ∞`.
///
/// # Panics
/// When `t = 0` (steps count from 1) or β is outside `[0, 1)`.
pub fn rho(beta: f64, t: u64) -> f64 {
    assert!(t >= 1, "steps count from 1");
    assert!((0.0..1.0).contains(&beta), "β = {beta} must be in [0, 1)");
    let t = t.min(i32::MAX as u64) as i32;
    let bt = beta.powi(t);
    let value = (1.0 - beta).powi(2) * (1.0 - bt * bt) / ((1.0 - bt).powi(2) * (1.0 - beta * beta));
    value.min(RHO_CAP)
}

/// Configuration of [`Svag`]: stochastic variance-adapted gradient (SVAG) and its momentum
/// version M-SVAG.
///
/// Defaults are the authors' reference: β = 0.9, M-SVAG (`momentum = true`), no weight decay.
#[derive(Config, Debug)]
pub struct SvagConfig {
    /// Averaging factor β in `[0, 1)` of the gradient's first and second moment estimates.
    #[config(default = 0.9)]
    pub beta: f32,
    /// `true` for M-SVAG (step along the averaged gradient `m`), `false` for SVAG (step along
    /// the current gradient `g`).
    #[config(default = true)]
    pub momentum: bool,
    /// Coupled weight decay λ ≥ 0: `g ← g + λ·x` before the moment estimates.
    #[config(default = 0.0)]
    pub weight_decay: f32,
    /// Decoupled weight decay λ_d ≥ 0: `x ← (1 − α·λ_d)·x` before the step.
    #[config(default = 0.0)]
    pub decoupled_weight_decay: f32,
    /// Optional [gradient clipping](GradientClippingConfig), applied before the step.
    pub grad_clipping: Option<GradientClippingConfig>,
}

/// SVAG and M-SVAG (Balles & Hennig, *Dissecting Adam: The Sign, Magnitude and Variance of
/// Stochastic Gradients*, ICML 2018, <https://arxiv.org/abs/1705.07774>).
///
/// Each coordinate's step is scaled by γ ∈ [0, 1], an estimate of the optimal factor
/// `E[g]² / E[g²]`: close to 1 where the gradient's signal dominates its noise, close to 0 where
/// noise dominates. Per parameter, with `t` counting steps from 1 and `m̃`, `ṽ` starting at 0:
///
/// ```text
/// m̃ ← β·m̃ + (1−β)·g ;   ṽ ← β·ṽ + (1−β)·g²
/// m = m̃/(1−β^t) ;  v = ṽ/(1−β^t)                   (the same correction for both)
/// ρ = ρ(β, t)   (see [`rho`]; capped at 0.9999)
/// s = (v − m²)/(1 − ρ)                              (variance estimate)
/// γ = m²/(m² + ρ·s)   (M-SVAG)        γ = m²/(m² + s)   (SVAG)
/// γ ← clip(γ, 0, 1), and γ = 0 where m = v = 0
/// x ← x − α·γ·m       (M-SVAG)        x ← x − α·γ·g     (SVAG)
/// ```
///
/// On the first step `s = 0`, so `γ = 1` and the update is exactly `α·g`. Weight decay works as
/// in [`Signum`](crate::Signum). A gradient with a NaN or ±∞ (or whose square overflows) skips
/// the update of that tensor and is counted ([`SkippedUpdates`]). The implementation keeps the discounted sums `S_m = m̃/(1−β)`,
/// `S_v = ṽ/(1−β)` and evaluates `γ = 1 / ((1−k) + k·c_t·S_v/S_m²)` (clamped to [0, 1]) with
/// `c_t = (1−β^t)/(1−β)` and `k = ρ/(1−ρ)` (M-SVAG) or `1/(1−ρ)` (SVAG): the same quantity with
/// the bias corrections multiplied out, so a step costs 16 tensor operations (Adam: 13).
///
/// **When to use it.** M-SVAG is the paper's recommended member of the family: Adam's variance
/// adaptation without its sign-like behaviour, often better on problems where Adam generalises
/// worse than SGD with momentum. Use the same learning rates as SGD.
///
/// The variant that takes the variance from per-example or micro-batch gradients instead of the
/// moving average is [`MinibatchSvag`](crate::MinibatchSvag).
///
/// ```
/// use burn::optim::GradientsParams;
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Device, Tensor};
/// use kindling_optim::SvagConfig;
///
/// let device = Device::flex().autodiff();
/// let mut model = LinearConfig::new(4, 1).init(&device);
/// let mut optim = SvagConfig::m_svag().init();
/// let x = Tensor::<2>::ones([8, 4], &device);
/// let loss = model.forward(x).powi_scalar(2).mean();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// model = optim.step(0.1, model, grads);
/// ```
#[derive(Clone, Debug)]
pub struct Svag {
    beta: f32,
    momentum: bool,
    decay: Decay,
    skipped: SkippedUpdates,
}

/// State of [`Svag`] for one parameter: the moving averages kept as discounted sums, so each
/// update costs two tensor ops fewer (`m̃ = (1−β)·m`, `ṽ = (1−β)·v` in the notation of [`Svag`]).
#[derive(crate::RecordState, Clone, derive_new::new)]
pub struct SvagState<const D: usize> {
    /// `Σ_i β^{t−i} g_i`: the gradients' moving average `m̃` divided by `1 − β`.
    pub m: Tensor<D>,
    /// `Σ_i β^{t−i} g_i²`: the squared gradients' moving average `ṽ` divided by `1 − β`.
    pub v: Tensor<D>,
    /// Number of steps taken (t).
    pub step: usize,
}

impl SvagConfig {
    /// SVAG: variance adaptation of the current gradient (`momentum = false`).
    pub fn svag() -> Self {
        Self::new().with_momentum(false)
    }

    /// M-SVAG: variance adaptation of the averaged gradient (the default).
    pub fn m_svag() -> Self {
        Self::new()
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), OptimError> {
        let check = Check {
            config: "SvagConfig",
        };
        check.unit_interval("beta", self.beta)?;
        self.decay().validate(&check)
    }

    pub(crate) fn decay(&self) -> Decay {
        Decay {
            coupled: self.weight_decay,
            decoupled: self.decoupled_weight_decay,
        }
    }

    /// The bare per-tensor optimizer, or the validation error.
    pub fn try_build(&self) -> Result<Svag, OptimError> {
        self.validate()?;
        Ok(Svag {
            beta: self.beta,
            momentum: self.momentum,
            decay: self.decay(),
            skipped: SkippedUpdates::default(),
        })
    }

    /// The bare per-tensor optimizer.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn build(&self) -> Svag {
        self.try_build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A `ModuleOptimizer` for whole modules, or the validation error.
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

impl Svag {
    /// The count of updates this optimizer (and its clones) skipped for a non-finite gradient.
    pub fn skipped_updates(&self) -> SkippedUpdates {
        self.skipped.clone()
    }

    /// The variance-adaptation factors γ ∈ [0, 1] that the next update of a parameter in
    /// `state` uses (for inspection: which coordinates the optimizer trusts).
    pub fn gamma<const D: usize>(&self, state: &SvagState<D>) -> Tensor<D> {
        let a = state.m.clone().square();
        if state.step <= 1 {
            // s = 0 exactly: γ = 1 where m ≠ 0 (and 0 where m = v = 0). Evaluating the general
            // formula would amplify rounding by k ≈ 10⁴ (ρ is at its cap).
            return a.clone().div(a.add_scalar(f32::MIN_POSITIVE));
        }
        let t = state.step as u64;
        let beta = self.beta as f64;
        let c_t = (1.0 - beta.powi(t.min(i32::MAX as u64) as i32)) / (1.0 - beta);
        let rho = rho(beta, t);
        let k = if self.momentum {
            rho / (1.0 - rho)
        } else {
            1.0 / (1.0 - rho)
        };
        // γ = 1 / ((1 − k) + k·c_t·S_v/S_m²). S_m = 0 gives 1/∞ = 0 (the spec's NaN → 0; the
        // tiny term keeps 0/0 out), and the clamp absorbs rounding that makes the variance
        // estimate slightly negative.
        state
            .v
            .clone()
            .add_scalar(f32::MIN_POSITIVE)
            .div(a)
            .mul_scalar(k * c_t)
            .add_scalar(1.0 - k)
            .recip()
            .clamp(0.0, 1.0)
    }
}

/// `β·s + x` (or `x` on the first step): a discounted sum.
fn discounted<const D: usize>(previous: Option<Tensor<D>>, x: Tensor<D>, beta: f32) -> Tensor<D> {
    match previous {
        Some(s) => s.mul_scalar(beta) + x,
        None => x,
    }
}

impl Optimizer for Svag {
    type State<const D: usize> = SvagState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let grad = self.decay.couple(grad, &tensor);
        let square = grad.clone().square();
        if !self.skipped.admit(&square) {
            return (tensor, state);
        }
        let (m, v, step) = match state {
            Some(s) => (Some(s.m), Some(s.v), s.step + 1),
            None => (None, None, 1),
        };
        let m = discounted(m, grad.clone(), self.beta);
        let v = discounted(v, square, self.beta);
        let state = SvagState::new(m, v, step);
        let update = if step == 1 {
            // s = 0 and m = g exactly, so γ = 1 and the update is α·g.
            grad.mul_scalar(lr)
        } else {
            let gamma = self.gamma(&state);
            if self.momentum {
                let beta = self.beta as f64;
                let correction = 1.0 - beta.powi(step.min(i32::MAX as usize) as i32);
                // α·γ·m with m = (1−β)·S_m/(1−β^t)
                gamma * state.m.clone().mul_scalar(lr * (1.0 - beta) / correction)
            } else {
                gamma * grad.mul_scalar(lr)
            }
        };
        let tensor = self.decay.shrink(tensor, lr);
        (tensor - update, Some(state))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.m = state.m.to_device(device);
        state.v = state.v.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindling_testing::{assert_optimizer_resume, assert_tensor_close, device, to_vec};

    fn t(values: [f32; 3]) -> Tensor<1> {
        Tensor::from_floats(values, &device())
    }

    const X0: [f32; 3] = [1.0, -2.0, 3.0];
    const GRADS: [[f32; 3]; 3] = [[0.5, -0.25, 0.0], [-0.1, 0.5, -2.0], [0.3, 0.2, 1.0]];

    /// Runs three steps, returning each step's parameters and the γ it used.
    fn run(optim: &Svag) -> Vec<(Vec<f32>, Vec<f32>)> {
        let mut x = t(X0);
        let mut state: Option<SvagState<1>> = None;
        let mut out = Vec::new();
        for g in GRADS {
            let (nx, ns) = optim.step(0.1, x, t(g), state);
            let ns = ns.unwrap();
            out.push((to_vec(&nx), to_vec(&optim.gamma(&ns))));
            (x, state) = (nx, Some(ns));
        }
        out
    }

    /// Golden values from a direct transcription of the spec's formulas in Python (f64): bias
    /// correction `1−β^t` for both moments, `ρ(β,t)` capped at 0.9999, `s = (v − m²)/(1 − ρ)`,
    /// `γ = m²/(m² + ρs)`, clip, NaN → 0; α = 0.1, β = 0.9, x₀ = [1, −2, 3], gradients
    /// [[.5,−.25,0], [−.1,.5,−2], [.3,.2,1]].
    #[test]
    fn golden_m_svag_three_steps() {
        let expected = [
            ([0.95, -1.975, 3.0], [1.0, 1.0, 0.0]),
            (
                [0.9449664, -1.9768721, 3.0552563],
                [0.2732545, 0.1293426, 0.5249344],
            ),
            (
                [0.9306628, -1.9830944, 3.0581107],
                [0.6302878, 0.3768186, 0.0966957],
            ),
        ];
        for ((x, gamma), (ex, eg)) in run(&SvagConfig::m_svag().build()).iter().zip(expected) {
            kindling_testing::assert_slices_close(x, &ex, 1e-5);
            kindling_testing::assert_slices_close(gamma, &eg, 1e-4);
        }
    }

    /// As above for SVAG (γ = m²/(m² + s), step along g) with coupled decay λ = 0.1 and
    /// decoupled decay λ_d = 0.05.
    #[test]
    fn golden_svag_three_steps_with_weight_decay() {
        let optim = SvagConfig::svag()
            .with_weight_decay(0.1)
            .with_decoupled_weight_decay(0.05)
            .build();
        let expected = [
            ([0.935, -1.945, 2.955], [1.0, 1.0, 1.0]),
            (
                [0.93052, -1.9355658, 2.9778983],
                [0.3000517, 0.009518, 0.2210226],
            ),
            (
                [0.9049791, -1.9258924, 2.9630085],
                [0.5314388, 0.0068477, 2.5e-06],
            ),
        ];
        for ((x, gamma), (ex, eg)) in run(&optim).iter().zip(expected) {
            kindling_testing::assert_slices_close(x, &ex, 1e-5);
            kindling_testing::assert_slices_close(gamma, &eg, 1e-4);
        }
    }

    /// The spec's reference values for ρ.
    #[test]
    fn rho_reference_values() {
        assert!((rho(0.9, 2) - 0.50139).abs() < 5e-6, "{}", rho(0.9, 2));
        assert_eq!(rho(0.9, 1), RHO_CAP, "ρ(β, 1) = 1 is capped");
        assert_eq!(rho(0.0, 1), RHO_CAP);
        let limit = (1.0 - 0.9) / (1.0 + 0.9);
        assert!((rho(0.9, 10_000) - limit).abs() < 1e-12);
        assert!((limit - 0.05263).abs() < 1e-5);
        // Monotone decreasing from the cap to the limit.
        let values: Vec<f64> = (1..200).map(|t| rho(0.9, t)).collect();
        assert!(values.windows(2).all(|w| w[1] <= w[0]));
    }

    /// On the first step s = 0, so γ = 1 and the update is exactly α·g, for both variants.
    #[test]
    fn first_step_is_exactly_alpha_g() {
        let g = [0.123_f32, -4.5, 1e-3];
        for config in [SvagConfig::m_svag(), SvagConfig::svag()] {
            let (x, state) = config.build().step(0.25, t([0.0; 3]), t(g), None);
            let expected: Vec<f32> = g.iter().map(|v| -0.25 * v).collect();
            assert_eq!(to_vec(&x), expected, "exact, not approximate");
            assert_eq!(to_vec(&config.build().gamma(&state.unwrap())), vec![1.0; 3]);
        }
    }

    /// γ ∈ [0, 1] always, including zero gradients (NaN → 0), constant gradients (s = 0, γ = 1)
    /// and gradients whose estimated variance rounds negative.
    #[test]
    fn gamma_stays_in_the_unit_interval() {
        let optim = SvagConfig::m_svag().build();
        let mut x = t([0.0; 3]);
        let mut state = None;
        for step in 0..50 {
            let g = [1.0, 0.0, if step % 2 == 0 { 1e-3 } else { -2e3 }];
            let (nx, ns) = optim.step(0.01, x, t(g), state);
            let gamma = to_vec(&optim.gamma(ns.as_ref().unwrap()));
            assert!(gamma.iter().all(|v| (0.0..=1.0).contains(v)), "{gamma:?}");
            assert_eq!(gamma[1], 0.0, "m = v = 0 gives γ = 0");
            assert!(
                gamma[0] > 0.999,
                "a noiseless gradient has γ = 1: {gamma:?}"
            );
            (x, state) = (nx, ns);
        }
    }

    #[test]
    fn invalid_fields_are_named() {
        let err = SvagConfig::new().with_beta(1.0).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "SvagConfig.beta = 1 is invalid: must be in [0, 1)"
        );
        let err = SvagConfig::new()
            .with_decoupled_weight_decay(-1.0)
            .try_init()
            .err()
            .unwrap();
        assert!(matches!(
            err,
            OptimError::InvalidField {
                field: "decoupled_weight_decay",
                ..
            }
        ));
    }

    #[test]
    fn save_load_continue_equals_uninterrupted() {
        assert_optimizer_resume(|| SvagConfig::m_svag().init(), 1e-2);
        assert_optimizer_resume(|| SvagConfig::svag().with_weight_decay(0.01).init(), 1e-2);
    }

    #[test]
    fn state_moves_between_devices() {
        let optim = SvagConfig::new().build();
        let (_, state) = optim.step(0.1, t(X0), t(GRADS[0]), None);
        let moved = Svag::to_device(state.unwrap(), &device());
        assert_tensor_close(&moved.m, &[0.5, -0.25, 0.0], 1e-6);
        assert_eq!(moved.step, 1);
    }
}

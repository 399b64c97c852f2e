//! Stochastic nested variance reduction (Zhou, Xu & Gu, *Stochastic Nested Variance Reduction for
//! Nonconvex Optimization*, NeurIPS 2018, <https://arxiv.org/abs/1806.07811>), with SVRG/SCSG as
//! its one-level case.

use burn::config::Config;
use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use std::collections::HashSet;

use burn::module::ParamId;
use burn::tensor::Tensor;

use crate::OptimError;
use crate::error::Check;
use crate::grads::{GradientMap, add, map, sub};
use crate::transform::SkippedUpdates;

/// Which point an SNVRG epoch reports as its output `y_s`.
///
/// The paper's Algorithm 1 returns two points: the last iterate `x_T`, from which the next epoch
/// starts, and `x_out`, drawn uniformly from `x_0..x_{T−1}`; its convergence guarantee (and
/// Algorithm 2's, which picks one epoch's output uniformly at the end) is about the random
/// points. The next epoch always starts from `x_T`, whichever rule is chosen.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum SnvrgOutput {
    /// The last iterate `x_T` (what practitioners report; the default).
    Last,
    /// An iterate `x_t` with `t` uniform in `0..T` (the paper's theory), drawn with the
    /// optimizer's seeded RNG.
    RandomIterate,
}

/// Configuration of [`Snvrg`] for data of `n` examples: `K` levels with loop lengths
/// `T_1..T_K`, a reference batch `B`, per-level batches `B_1..B_K`, and a step size.
///
/// Like every kindling config: [`validate`](Self::validate), the checked
/// [`try_build`](Self::try_build) returning an [`OptimError`] that names the field, and
/// [`build`](Self::build). There is no `init()`: SNVRG is not a burn `Optimizer` (see
/// [`Snvrg`] for why, and how to drive it).
#[derive(Config, Debug, PartialEq)]
pub struct SnvrgConfig {
    /// Number of examples `n` the oracle indexes (`0..n`).
    pub n: usize,
    /// Loop lengths `T_1..T_K` (`K = loop_lengths.len()` ≥ 1). An epoch runs `T = Π T_l` steps.
    pub loop_lengths: Vec<usize>,
    /// Reference batch size `B` for `g^(0)` (`B = n` computes the full gradient).
    pub batch: usize,
    /// Batch sizes `B_1..B_K` of the level corrections.
    pub level_batches: Vec<usize>,
    /// Step size η (the paper's theory: `1/(10·M)` for an `M`-smooth objective).
    pub step_size: f64,
    /// Seed of the batch sampling.
    #[config(default = 0)]
    pub seed: u64,
    /// The output rule of [`Snvrg::epoch_with_output`].
    #[config(default = "SnvrgOutput::Last")]
    pub output: SnvrgOutput,
}

/// Configuration of SVRG / SCSG: [`Snvrg`] with one level.
#[derive(Config, Debug, PartialEq)]
pub struct SvrgConfig {
    /// Number of examples `n` the oracle indexes (`0..n`).
    pub n: usize,
    /// Inner steps per epoch (`T_1`).
    pub inner_steps: usize,
    /// Reference batch `B`: `n` for SVRG (full gradient), less for SCSG.
    pub batch: usize,
    /// Batch of each inner correction (`B_1`).
    pub inner_batch: usize,
    /// Step size η.
    pub step_size: f64,
    /// Seed of the batch sampling.
    #[config(default = 0)]
    pub seed: u64,
    /// The output rule of [`Snvrg::epoch_with_output`].
    #[config(default = "SnvrgOutput::Last")]
    pub output: SnvrgOutput,
}

impl SvrgConfig {
    /// The equivalent one-level [`SnvrgConfig`].
    pub fn into_snvrg(self) -> SnvrgConfig {
        SnvrgConfig {
            n: self.n,
            loop_lengths: vec![self.inner_steps],
            batch: self.batch,
            level_batches: vec![self.inner_batch],
            step_size: self.step_size,
            seed: self.seed,
            output: self.output,
        }
    }

    /// Checks every field (as [`SnvrgConfig::validate`]).
    pub fn validate(&self) -> Result<(), OptimError> {
        self.clone().into_snvrg().validate()
    }

    /// The optimizer, or the validation error (see [`SnvrgConfig::try_build`]).
    pub fn try_build(&self) -> Result<Snvrg, OptimError> {
        self.clone().into_snvrg().try_build()
    }

    /// The optimizer.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn build(&self) -> Snvrg {
        self.clone().into_snvrg().build()
    }
}

impl SnvrgConfig {
    /// The paper's theory settings for `K` levels (state them as such; override what you need):
    /// `T_1 = 2`, `T_l = 2^{2^{l−2}}` for `l ≥ 2`, `B_l = 6^{K−l+1}·(Π_{s≥l} T_s)²` (capped at
    /// `n`), `B = n`, and `η = 1/(10·M)` for an `M`-smooth objective. (The paper takes
    /// `K ≈ log log B`.)
    pub fn theory(n: usize, levels: usize, smoothness: f64) -> Self {
        let t: Vec<usize> = (1..=levels)
            .map(|l| {
                if l == 1 {
                    2
                } else {
                    1usize << (1usize << (l - 2)).min(31)
                }
            })
            .collect();
        let b = (1..=levels)
            .map(|l| {
                let tail: f64 = t[l - 1..].iter().map(|&x| x as f64).product();
                let size = 6f64.powi((levels - l + 1) as i32) * tail * tail;
                (size.min(n as f64) as usize).max(1)
            })
            .collect();
        Self {
            n,
            loop_lengths: t,
            batch: n,
            level_batches: b,
            step_size: 1.0 / (10.0 * smoothness),
            seed: 0,
            output: SnvrgOutput::Last,
        }
    }

    /// Number of levels `K`.
    pub fn levels(&self) -> usize {
        self.loop_lengths.len()
    }

    /// Steps per epoch `T = Π T_l`.
    pub fn epoch_steps(&self) -> usize {
        self.loop_lengths.iter().product()
    }

    /// The level `r(t)` refreshed at step `t ≥ 1` of an epoch:
    /// `min { j ∈ 1..K : t mod Π_{l=j+1..K} T_l = 0 }` (empty product = 1).
    pub fn level_at(&self, t: usize) -> usize {
        let k = self.levels();
        (1..=k)
            .find(|&j| t.is_multiple_of(self.loop_lengths[j..].iter().product::<usize>()))
            .expect("j = K always divides")
    }

    /// Single-example gradient evaluations of one epoch: `B + Σ_{t≥1} 2·B_{r(t)}`.
    pub fn ifo_per_epoch(&self) -> u64 {
        self.batch as u64
            + (1..self.epoch_steps())
                .map(|t| 2 * self.level_batches[self.level_at(t) - 1] as u64)
                .sum::<u64>()
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), OptimError> {
        let n = self.n;
        let check = Check {
            config: "SnvrgConfig",
        };
        check.require(
            !self.loop_lengths.is_empty(),
            "loop_lengths",
            "[]",
            "needs at least one level",
        )?;
        check.require(
            self.loop_lengths.iter().all(|&t| t >= 1),
            "loop_lengths",
            format!("{:?}", self.loop_lengths),
            "every T_l must be ≥ 1",
        )?;
        check.require(
            self.level_batches.len() == self.loop_lengths.len(),
            "level_batches",
            format!("{:?}", self.level_batches),
            "needs one batch size per level",
        )?;
        check.require(n >= 1, "n", n, "the data must hold at least one example")?;
        check.require(
            (1..=n).contains(&self.batch),
            "batch",
            self.batch,
            "must be in 1..=n",
        )?;
        check.require(
            self.level_batches.iter().all(|b| (1..=n).contains(b)),
            "level_batches",
            format!("{:?}", self.level_batches),
            "every B_l must be in 1..=n",
        )?;
        check.require(
            self.step_size.is_finite() && self.step_size > 0.0,
            "step_size",
            self.step_size,
            "must be finite and > 0",
        )
    }

    /// The optimizer, or the validation error.
    pub fn try_build(&self) -> Result<Snvrg, OptimError> {
        self.validate()?;
        Ok(Snvrg {
            config: self.clone(),
            rng: ChaCha8Rng::seed_from_u64(self.seed),
            ifo: 0,
            epochs: 0,
            skipped: SkippedUpdates::default(),
        })
    }

    /// The optimizer.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn build(&self) -> Snvrg {
        self.try_build().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// SNVRG: nested variance reduction, driven by a gradient oracle in the style of burn's
/// `LBFGS::step`.
///
/// One epoch, with `T = Π T_l` steps, reference points `x^(0..K)` and reference gradients
/// `g^(0..K)`:
///
/// ```text
/// x^(l) ← x_0 for all l;  g^(0) ← mean_{i∈I, |I|=B} ∇f_i(x_0);  g^(l) ← 0 for l ≥ 1
/// for t = 0 .. T−1:
///     if t > 0:
///         r = min { j ∈ 1..K : t mod Π_{l=j+1..K} T_l = 0 }
///         x^(l) ← x_t for l ≥ r
///         g^(r) ← mean_{i∈I_r, |I_r|=B_r} [∇f_i(x^(r)) − ∇f_i(x^(r−1))]   (one fresh batch)
///         g^(l) ← 0 for l > r
///     v_t = Σ_l g^(l);   x_{t+1} = x_t − η·v_t
/// ```
///
/// The oracle `FnMut(&M, &[usize]) -> GradientsParams` returns the mean gradient over the given
/// example indices at the given module; SNVRG calls it at two reference points on the same batch.
/// Batches are drawn without replacement from `0..n` with the optimizer's seeded RNG, and every
/// single-example gradient is counted ([`ifo_calls`](Self::ifo_calls), the paper's x-axis).
///
/// A step direction with a NaN or ±∞ (from the oracle) leaves that parameter unchanged for the
/// step and is counted ([`skipped_updates`](Self::skipped_updates)). Each epoch reports an
/// output point under the configured [`SnvrgOutput`] rule
/// ([`epoch_with_output`](Self::epoch_with_output)).
///
/// Epochs are the unit of work and of checkpointing: between epochs the whole state is the
/// module, the RNG seed and the counters ([`SnvrgState`]).
///
/// **Not a burn `Optimizer`, so not for `Learner`.** burn's `Optimizer` sees one gradient of
/// the current parameters per step. SNVRG needs gradients of the *same batch* at up to `K + 1`
/// reference points (old copies of the model), batches that it chooses itself, and a
/// reference gradient over `B` examples at the start of every epoch. Neither `Learner` nor a
/// data loader can supply that, so `Snvrg` is driven like burn's `LBFGS::step`: you hand
/// [`epoch`](Self::epoch) the module and an oracle closure that evaluates the mean gradient of
/// any index set at any module (typically by slicing an in-memory data set), and call it once
/// per epoch in your own loop; save [`state`](Self::state) beside the module to resume.
///
/// ```
/// use burn::module::Param;
/// use burn::nn::Linear;
/// use burn::optim::GradientsParams;
/// use burn::tensor::{Device, Tensor, TensorData};
/// use kindling_optim::SnvrgConfig;
///
/// let device = Device::flex().autodiff();
/// let xs: Vec<f32> = (0..32).map(|i| i as f32 / 32.0).collect();
/// let model = Linear { weight: Param::from_data(TensorData::new(vec![0.0f32], [1, 1]), &device), bias: None };
/// // f_i(w) = ½ (w·x_i − 2·x_i)²
/// let oracle = |m: &Linear, idx: &[usize]| {
///     let x: Vec<f32> = idx.iter().map(|&i| xs[i]).collect();
///     let x = Tensor::<2>::from_data(TensorData::new(x, [idx.len(), 1]), &device);
///     let loss = (m.forward(x.clone()) - x * 2.0).powi_scalar(2).mean().mul_scalar(0.5);
///     GradientsParams::from_grads(loss.backward(), m)
/// };
/// let config = SnvrgConfig::new(32, vec![2, 4], 32, vec![16, 4], 0.5);
/// let mut snvrg = config.build();
/// let mut model = model;
/// for _ in 0..20 {
///     model = snvrg.epoch(model, oracle);
/// }
/// let w: f32 = model.weight.val().into_scalar();
/// assert!((w - 2.0).abs() < 1e-2);
/// ```
#[derive(Debug)]
pub struct Snvrg {
    config: SnvrgConfig,
    rng: ChaCha8Rng,
    ifo: u64,
    epochs: u64,
    skipped: SkippedUpdates,
}

/// What one epoch of [`Snvrg::epoch_with_output`] produced.
#[derive(Debug, Clone)]
pub struct SnvrgEpoch<M> {
    /// The last iterate `x_T`: the next epoch's start.
    pub next: M,
    /// The epoch's output `y_s` under the configured [`SnvrgOutput`] rule.
    pub output: M,
    /// The step `t` of the output (`T` for [`SnvrgOutput::Last`]).
    pub output_step: usize,
}

/// Drops the step direction of every parameter whose direction is not finite (counting it), so
/// the SGD step leaves that parameter unchanged.
struct FiniteOnly<'a>(&'a SkippedUpdates);

impl GradientMap for FiniteOnly<'_> {
    fn apply<const D: usize>(
        &mut self,
        _: ParamId,
        operands: Vec<Option<Tensor<D>>>,
    ) -> Option<Tensor<D>> {
        operands
            .into_iter()
            .next()
            .flatten()
            .filter(|v| self.0.admit(v))
    }
}

/// What [`Snvrg`] needs to resume between epochs (with the module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnvrgState {
    /// ChaCha8 stream position of the batch sampler.
    pub word_pos: u128,
    /// Single-example gradient evaluations so far.
    pub ifo_calls: u64,
    /// Epochs completed.
    pub epochs: u64,
}

impl Snvrg {
    /// The configuration.
    pub fn config(&self) -> &SnvrgConfig {
        &self.config
    }

    /// Single-example gradient evaluations (IFO calls) so far.
    pub fn ifo_calls(&self) -> u64 {
        self.ifo
    }

    /// Epochs completed.
    pub fn epochs(&self) -> u64 {
        self.epochs
    }

    /// The state to save with the module for resuming at an epoch boundary.
    pub fn state(&self) -> SnvrgState {
        SnvrgState {
            word_pos: self.rng.get_word_pos(),
            ifo_calls: self.ifo,
            epochs: self.epochs,
        }
    }

    /// Restores a state saved with [`state`](Self::state) (same configuration and seed).
    pub fn restore(&mut self, state: SnvrgState) {
        self.rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        self.rng.set_word_pos(state.word_pos);
        self.ifo = state.ifo_calls;
        self.epochs = state.epochs;
    }

    /// The count of parameter updates skipped because a step direction `v_t` held NaN or ±∞
    /// (see [`SkippedUpdates`]): the oracle returned a non-finite gradient.
    pub fn skipped_updates(&self) -> SkippedUpdates {
        self.skipped.clone()
    }

    /// `size` distinct indices of `0..n`, uniformly. Memory is proportional to `size`, not `n`:
    /// a partial Fisher–Yates shuffle when the sample is at least half the data, Floyd's
    /// algorithm otherwise (the order of a batch does not change its mean gradient).
    fn sample(&mut self, size: usize) -> Vec<usize> {
        let n = self.config.n;
        if 2 * size >= n {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..size {
                let j = self.rng.random_range(i..n);
                pool.swap(i, j);
            }
            pool.truncate(size);
            return pool;
        }
        let mut chosen = HashSet::with_capacity(size);
        let mut batch = Vec::with_capacity(size);
        for j in n - size..n {
            let t = self.rng.random_range(0..=j);
            let pick = if chosen.contains(&t) { j } else { t };
            chosen.insert(pick);
            batch.push(pick);
        }
        batch
    }

    /// Runs one epoch from `module` and returns the last iterate `x_T` (the next epoch's
    /// start).
    pub fn epoch<M, F>(&mut self, module: M, oracle: F) -> M
    where
        M: Module + Clone,
        F: FnMut(&M, &[usize]) -> GradientsParams,
    {
        self.epoch_with_output(module, oracle).next
    }

    /// Runs one epoch from `module` and returns the last iterate and the epoch's output under
    /// the configured [`SnvrgOutput`] rule. For the paper's Algorithm 2, continue from `next`,
    /// keep each epoch's `output`, and finish at one of them chosen uniformly.
    pub fn epoch_with_output<M, F>(&mut self, module: M, oracle: F) -> SnvrgEpoch<M>
    where
        M: Module + Clone,
        F: FnMut(&M, &[usize]) -> GradientsParams,
    {
        self.epoch_observed(module, oracle, |_, _| ())
    }

    /// As [`epoch_with_output`](Self::epoch_with_output), calling `observe(ifo_calls, x_{t+1})`
    /// after every step (to log or measure progress inside an epoch; the IFO count is the total
    /// so far, including the step's own gradients).
    pub fn epoch_observed<M, F, O>(
        &mut self,
        module: M,
        mut oracle: F,
        mut observe: O,
    ) -> SnvrgEpoch<M>
    where
        M: Module + Clone,
        F: FnMut(&M, &[usize]) -> GradientsParams,
        O: FnMut(u64, &M),
    {
        let steps = self.config.epoch_steps();
        let output_step = match self.config.output {
            SnvrgOutput::Last => steps,
            SnvrgOutput::RandomIterate => self.rng.random_range(0..steps),
        };
        let mut output = None;
        let k = self.config.levels();
        let mut sgd = SgdConfig::new().init();
        let mut x = module;
        let mut refs: Vec<M> = vec![x.clone(); k + 1];
        let batch = self.sample(self.config.batch);
        let mut g: Vec<Option<GradientsParams>> = (0..=k).map(|_| None).collect();
        g[0] = Some(oracle(&x, &batch));
        self.ifo += batch.len() as u64;
        for t in 0..steps {
            if t == output_step {
                output = Some(x.clone());
            }
            if t > 0 {
                let r = self.config.level_at(t);
                for reference in refs.iter_mut().skip(r) {
                    *reference = x.clone();
                }
                let idx = self.sample(self.config.level_batches[r - 1]);
                let here = oracle(&refs[r], &idx);
                let before = oracle(&refs[r - 1], &idx);
                self.ifo += 2 * idx.len() as u64;
                g[r] = Some(sub(&x, &here, &before));
                for level in g.iter_mut().skip(r + 1) {
                    *level = None;
                }
            }
            let v = g
                .iter()
                .flatten()
                .fold(GradientsParams::new(), |acc, gl| add(&x, &acc, gl));
            let (v, _) = map(&x, &[&v], FiniteOnly(&self.skipped));
            x = sgd.step(self.config.step_size, x, v);
            observe(self.ifo, &x);
        }
        self.epochs += 1;
        SnvrgEpoch {
            output: output.unwrap_or_else(|| x.clone()),
            next: x,
            output_step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::tensor::{Tensor, TensorData};
    use kindling_testing::{autodiff_device, to_vec};
    use std::cell::Cell;

    fn config(n: usize, t: Vec<usize>, b: usize, bl: Vec<usize>) -> SnvrgConfig {
        SnvrgConfig::new(n, t, b, bl, 0.1).with_seed(1)
    }

    #[test]
    fn r_schedule_for_two_and_three_levels() {
        let c2 = config(8, vec![3, 4], 8, vec![4, 2]);
        let r2: Vec<usize> = (1..12).map(|t| c2.level_at(t)).collect();
        assert_eq!(r2, vec![2, 2, 2, 1, 2, 2, 2, 1, 2, 2, 2]);
        let c3 = config(8, vec![2, 3, 4], 8, vec![4, 2, 1]);
        let r3: Vec<usize> = (1..24).map(|t| c3.level_at(t)).collect();
        let expected: Vec<usize> = (1..24)
            .map(|t| {
                if t % 12 == 0 {
                    1
                } else if t % 4 == 0 {
                    2
                } else {
                    3
                }
            })
            .collect();
        assert_eq!(r3, expected);
    }

    #[test]
    fn theory_settings() {
        let c = SnvrgConfig::theory(10_000, 2, 4.0);
        assert_eq!(c.loop_lengths, vec![2, 2]);
        assert_eq!(c.level_batches, vec![576, 24]);
        assert_eq!(c.batch, 10_000);
        assert!((c.step_size - 0.025).abs() < 1e-12);
        let c = SnvrgConfig::theory(10_000, 3, 1.0);
        assert_eq!(c.loop_lengths, vec![2, 2, 4]);
        assert_eq!(
            c.level_batches,
            vec![10_000, 2304, 96],
            "B_1 = 55296 is capped at n"
        );
    }

    #[test]
    fn invalid_settings_are_named() {
        let err = config(8, vec![2, 0], 8, vec![4, 2])
            .try_build()
            .unwrap_err();
        assert!(err.to_string().contains("loop_lengths"), "{err}");
        let err = config(8, vec![2, 2], 9, vec![4, 2])
            .try_build()
            .unwrap_err();
        assert!(matches!(
            err,
            OptimError::InvalidField { field: "batch", .. }
        ));
        let err = config(8, vec![2, 2], 8, vec![4]).try_build().unwrap_err();
        assert!(matches!(
            err,
            OptimError::InvalidField {
                field: "level_batches",
                ..
            }
        ));
        let mut c = config(8, vec![2], 8, vec![4]);
        c.step_size = f64::NAN;
        assert!(matches!(
            c.try_build(),
            Err(OptimError::InvalidField {
                field: "step_size",
                ..
            })
        ));
    }

    /// `f_i(w) = ½ (w·x_i − y_i)²` with a scalar weight: a finite sum with known gradients.
    fn problem(n: usize) -> (Vec<f32>, Vec<f32>) {
        let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 17) as f32 / 8.0) - 1.0).collect();
        let y: Vec<f32> = x.iter().map(|v| 1.5 * v + 0.3 * (v * 7.0).sin()).collect();
        (x, y)
    }

    fn scalar_model(w: f32) -> Linear {
        Linear {
            weight: Param::from_data(TensorData::new(vec![w], [1, 1]), &autodiff_device()),
            bias: None,
        }
    }

    fn oracle<'a>(
        x: &'a [f32],
        y: &'a [f32],
        calls: &'a Cell<usize>,
    ) -> impl FnMut(&Linear, &[usize]) -> GradientsParams + 'a {
        move |m, idx| {
            calls.set(calls.get() + idx.len());
            let device = autodiff_device();
            let xs: Vec<f32> = idx.iter().map(|&i| x[i]).collect();
            let ys: Vec<f32> = idx.iter().map(|&i| y[i]).collect();
            let xs = Tensor::<2>::from_data(TensorData::new(xs, [idx.len(), 1]), &device);
            let ys = Tensor::<2>::from_data(TensorData::new(ys, [idx.len(), 1]), &device);
            let loss = (m.forward(xs) - ys).powi_scalar(2).mean().mul_scalar(0.5);
            GradientsParams::from_grads(loss.backward(), m)
        }
    }

    /// The count of single-example gradients per epoch is B + Σ_{t≥1} 2·B_{r(t)}: for T = (2, 3),
    /// B = 20, B = (6, 2): 20 + 2·6 (t = 3) + 4·2·2 (t = 1, 2, 4, 5) = 48.
    #[test]
    fn ifo_count_matches_the_formula() {
        let (x, y) = problem(20);
        let calls = Cell::new(0);
        let c = config(20, vec![2, 3], 20, vec![6, 2]);
        assert_eq!(c.ifo_per_epoch(), 48);
        let mut snvrg = c.build();
        let model = snvrg.epoch(scalar_model(0.0), oracle(&x, &y, &calls));
        let _ = snvrg.epoch(model, oracle(&x, &y, &calls));
        assert_eq!(snvrg.ifo_calls(), 96);
        assert_eq!(calls.get(), 96);
    }

    /// With B = B_l = n every level correction is an exact full-gradient difference, so v_t is
    /// the full gradient ∇F(x_t) and SNVRG is gradient descent (up to float rounding).
    #[test]
    fn full_batch_snvrg_is_gradient_descent() {
        let n = 16;
        let (x, y) = problem(n);
        let calls = Cell::new(0);
        let mut snvrg = config(n, vec![2, 3, 2], n, vec![n, n, n]).build();
        let snvrg_model = snvrg.epoch(scalar_model(0.0), oracle(&x, &y, &calls));
        let mut gd = scalar_model(0.0);
        let mut sgd = SgdConfig::new().init();
        let all: Vec<usize> = (0..n).collect();
        let mut full = oracle(&x, &y, &calls);
        for _ in 0..12 {
            let g = full(&gd, &all);
            gd = sgd.step(0.1, gd, g);
        }
        let a = to_vec(&snvrg_model.weight.val())[0];
        let b = to_vec(&gd.weight.val())[0];
        assert!((a - b).abs() < 1e-5, "SNVRG {a} vs GD {b}");
    }

    /// Epochs are the unit of resumption: restoring the state reproduces the next epoch.
    #[test]
    fn resume_between_epochs_reproduces_the_run() {
        let (x, y) = problem(32);
        let calls = Cell::new(0);
        let c = config(32, vec![2, 4], 16, vec![8, 2]);
        let mut a = c.build();
        let m = a.epoch(scalar_model(0.0), oracle(&x, &y, &calls));
        let saved = (a.state(), to_vec(&m.weight.val()));
        let next = a.epoch(m, oracle(&x, &y, &calls));
        let mut b = c.build();
        b.restore(saved.0);
        let resumed = b.epoch(scalar_model(saved.1[0]), oracle(&x, &y, &calls));
        assert_eq!(to_vec(&next.weight.val()), to_vec(&resumed.weight.val()));
        assert_eq!(a.ifo_calls(), b.ifo_calls());
        assert_eq!(b.epochs(), 2);
    }

    /// The random output is one of the epoch's iterates x_0..x_{T−1}, drawn uniformly: with full
    /// batches SNVRG is gradient descent, so the output must equal GD's iterate at its step, and
    /// every step 0..T is drawn over many epochs. The next epoch continues from x_T either way.
    #[test]
    fn random_output_is_a_uniform_iterate_of_the_epoch() {
        let n = 16;
        let (x, y) = problem(n);
        let calls = Cell::new(0);
        let all: Vec<usize> = (0..n).collect();
        let mut full = oracle(&x, &y, &calls);
        let mut gd = vec![scalar_model(0.0)];
        let mut sgd = SgdConfig::new().init();
        for _ in 0..4 {
            let last = gd.last().unwrap().clone();
            let g = full(&last, &all);
            gd.push(sgd.step(0.1, last, g));
        }
        let value = |m: &Linear| to_vec(&m.weight.val())[0];
        let mut seen = [0usize; 4];
        let mut snvrg = config(n, vec![2, 2], n, vec![n, n])
            .with_output(SnvrgOutput::RandomIterate)
            .build();
        for _ in 0..400 {
            let epoch = snvrg.epoch_with_output(scalar_model(0.0), oracle(&x, &y, &calls));
            assert!((value(&epoch.output) - value(&gd[epoch.output_step])).abs() < 1e-5);
            assert!((value(&epoch.next) - value(&gd[4])).abs() < 1e-5);
            seen[epoch.output_step] += 1;
        }
        // Binomial(400, 1/4): mean 100, sd 8.7; ±35 is 4 sd.
        assert!(seen.iter().all(|&c| (65..=135).contains(&c)), "{seen:?}");
        let last = config(n, vec![2, 2], n, vec![n, n])
            .build()
            .epoch_with_output(scalar_model(0.0), oracle(&x, &y, &calls));
        assert_eq!(last.output_step, 4);
        assert_eq!(value(&last.output), value(&last.next));
    }

    /// Batches are distinct indices drawn uniformly, on both sampling paths (Floyd's algorithm
    /// for small batches, a partial shuffle for large ones).
    #[test]
    fn batches_are_uniform_samples_without_replacement() {
        for size in [3usize, 7] {
            let mut snvrg = config(10, vec![1], 10, vec![1]).build();
            let mut counts = [0usize; 10];
            let draws = 20_000;
            for _ in 0..draws {
                let batch = snvrg.sample(size);
                assert_eq!(batch.len(), size);
                let mut sorted = batch.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), size, "distinct: {batch:?}");
                for i in batch {
                    counts[i] += 1;
                }
            }
            // Each index appears with probability size/10; 5 sd of the binomial count.
            let p = size as f64 / 10.0;
            let mean = draws as f64 * p;
            let sd = (draws as f64 * p * (1.0 - p)).sqrt();
            for c in counts {
                assert!((c as f64 - mean).abs() < 5.0 * sd, "{counts:?}");
            }
        }
    }

    /// The observer sees every step with the running IFO count.
    #[test]
    fn the_observer_sees_every_step() {
        let (x, y) = problem(20);
        let calls = Cell::new(0);
        let c = config(20, vec![2, 3], 20, vec![6, 2]);
        let mut seen = Vec::new();
        let _ = c.build().epoch_observed(
            scalar_model(0.0),
            oracle(&x, &y, &calls),
            |ifo, _: &Linear| seen.push(ifo),
        );
        assert_eq!(seen, vec![20, 24, 28, 40, 44, 48]);
    }
}

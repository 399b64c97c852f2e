//! Training a Deductron: by gradients (the paper's recipe, with any burn optimizer) and by
//! simulated annealing over quantised weights.

use std::ops::ControlFlow;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
#[cfg(test)]
use burn::tensor::Tensor;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::wlang::{Frame, Sample};
use crate::{Deductron, DeductronConfig, DeductronError};

/// The gradient-training recipe of the reference code: full-sequence steps on the sum of squared
/// errors plus small L2 penalties, until the SSE falls below a target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientTraining {
    /// Learning rate (the reference: 0.01 with Adam).
    pub lr: f64,
    /// Largest number of steps.
    pub max_steps: usize,
    /// Stop once the SSE is below this (the reference: 0.1).
    pub target_sse: f32,
    /// L2 penalty on `W1` and `B1` (the reference: 1e-4).
    pub l2_input: f32,
    /// L2 penalty on `W2` and `B2` (the reference: 1e-5).
    pub l2_output: f32,
}

impl Default for GradientTraining {
    fn default() -> Self {
        Self {
            lr: 0.01,
            max_steps: 5000,
            target_sse: 0.1,
            l2_input: 1e-4,
            l2_output: 1e-5,
        }
    }
}

/// Where a training run stands (passed to progress callbacks, and returned at the end).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Steps (gradient training) or iterations (annealing) done.
    pub step: usize,
    /// Current sum of squared errors (annealing: of the current state).
    pub sse: f32,
    /// Classification errors `Σ|round(y) − target|` at this point.
    pub errors: usize,
}

/// Trains `model` on `sample` with `optim` by the [`GradientTraining`] recipe. `progress` is
/// called after every step; returning `ControlFlow::Break` stops early. Returns the trained
/// model and the last progress.
pub fn train_gradient(
    mut model: Deductron,
    optim: &mut ModuleOptimizer,
    sample: &Sample,
    recipe: GradientTraining,
    mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> (Deductron, Progress) {
    let device = model.w1.val().device();
    let x = sample.inputs(&device);
    let targets = sample.targets(&device);
    let mut last = Progress {
        step: 0,
        sse: f32::INFINITY,
        errors: usize::MAX,
    };
    for step in 1..=recipe.max_steps {
        let out = model.forward(x.clone());
        let sse = (out.y.clone() - targets.clone()).square().sum();
        let penalty = model
            .w1
            .val()
            .square()
            .sum()
            .add(model.b1.val().square().sum())
            .mul_scalar(recipe.l2_input)
            + model
                .w2
                .val()
                .square()
                .sum()
                .add(model.b2.val().square().sum())
                .mul_scalar(recipe.l2_output);
        last = Progress {
            step,
            sse: sse.clone().into_scalar::<f32>(),
            errors: crate::wlang::errors(&out.y.inner(), &targets.clone().inner()),
        };
        if last.sse < recipe.target_sse || progress(&last).is_break() {
            break;
        }
        let grads = GradientsParams::from_grads((sse + penalty).backward(), &model);
        model = optim.step(recipe.lr, model, grads);
    }
    (model, last)
}

/// Simulated annealing over quantised weights (the paper's second training method): every weight
/// is in {−1, 0, 1} and every bias in {0, …, 5} used as `value − 0.5`.
///
/// Each iteration changes one random weight to another allowed value and accepts the change with
/// the Metropolis probability `min(1, exp(−β·ΔE))`, where `E` is the SSE of the network evaluated
/// with sigmoid sharpness β — the same β is the inverse temperature. β rises from 0 by
/// `beta_step` per iteration up to `beta_max`; after `restart_after` consecutive rejections the
/// search restarts from the best state seen, with the schedule restarted (β from 0). Biases are
/// `level − 0.5` and the sigmoids have no shift (`shift = 0`), so every pre-activation is a
/// half-integer and no unit sits undecided at σ = 1/2. The network is small, so the energy is evaluated on
/// the host in f64 (the same recurrence as [`Deductron::forward`], tested against it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Annealer {
    /// Memory cells `m` (the paper finds a decoder of `small` with m = 3).
    pub n_memory: usize,
    /// Final sharpness / inverse temperature (10, as the exact network).
    pub beta_max: f32,
    /// Increase of β per iteration.
    pub beta_step: f32,
    /// Iteration budget.
    pub max_iterations: usize,
    /// Consecutive rejections after which the search returns to the best state and reheats.
    pub restart_after: usize,
    /// Shift c of the sigmoids (0: with biases `level − 0.5` pre-activations are half-integers).
    pub shift: f32,
    /// Seed of the initial state and of the proposals.
    pub seed: u64,
}

impl Default for Annealer {
    fn default() -> Self {
        Self {
            n_memory: 3,
            beta_max: 10.0,
            beta_step: 0.002,
            max_iterations: 300_000,
            restart_after: 500,
            shift: 0.0,
            seed: 0,
        }
    }
}

/// What [`Annealer::run`] found.
#[derive(Debug)]
pub struct AnnealResult {
    /// The best network (β = `beta_max`).
    pub model: Deductron,
    /// Its SSE at β = `beta_max`.
    pub sse: f32,
    /// Its classification errors.
    pub errors: usize,
    /// Iterations run.
    pub iterations: usize,
}

/// Quantised weights: `W1` and `W2` entries in {−1, 0, 1}, bias levels in 0..=5.
#[derive(Debug, Clone, PartialEq)]
struct Quantised {
    w1: Vec<i8>,
    b1: Vec<u8>,
    w2: Vec<i8>,
    b2: Vec<u8>,
}

impl Quantised {
    fn len(&self) -> usize {
        self.w1.len() + self.b1.len() + self.w2.len() + self.b2.len()
    }

    /// Changes weight `i` to a different allowed value.
    fn perturb(&mut self, i: usize, rng: &mut ChaCha8Rng) {
        let (a, b, c) = (self.w1.len(), self.b1.len(), self.w2.len());
        let new_weight = |old: i8, rng: &mut ChaCha8Rng| loop {
            let v = rng.random_range(-1..=1);
            if v != old {
                return v;
            }
        };
        let new_bias = |old: u8, rng: &mut ChaCha8Rng| loop {
            let v = rng.random_range(0..=5);
            if v != old {
                return v;
            }
        };
        if i < a {
            self.w1[i] = new_weight(self.w1[i], rng);
        } else if i < a + b {
            self.b1[i - a] = new_bias(self.b1[i - a], rng);
        } else if i < a + b + c {
            self.w2[i - a - b] = new_weight(self.w2[i - a - b], rng);
        } else {
            let j = i - a - b - c;
            self.b2[j] = new_bias(self.b2[j], rng);
        }
    }

    fn weights(&self) -> HostWeights {
        HostWeights {
            w1: self.w1.iter().map(|&v| v as f64).collect(),
            b1: self.b1.iter().map(|&v| v as f64 - 0.5).collect(),
            w2: self.w2.iter().map(|&v| v as f64).collect(),
            b2: self.b2.iter().map(|&v| v as f64 - 0.5).collect(),
        }
    }
}

/// Row-major weights for the host forward pass.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostWeights {
    pub(crate) w1: Vec<f64>,
    pub(crate) b1: Vec<f64>,
    pub(crate) w2: Vec<f64>,
    pub(crate) b2: Vec<f64>,
}

/// The Deductron recurrence on the host: outputs `[time][n_out]` for `frames`.
pub(crate) fn host_forward(
    w: &HostWeights,
    beta: f64,
    shift: f64,
    frames: &[Frame],
) -> Vec<Vec<f64>> {
    let m = w.b1.len() / 2;
    let n_in = w.w1.len() / (2 * m);
    let n_out = w.b2.len();
    let sigma = |a: f64| 1.0 / (1.0 + (-beta * (a - shift)).exp());
    let mut z = vec![0.0; m];
    let mut h_prev: Option<Vec<f64>> = None;
    let mut out = Vec::with_capacity(frames.len());
    for x in frames {
        if let Some(h) = &h_prev {
            for k in 0..m {
                let (l, r) = (h[k], h[m + k]);
                z[k] = l * r * z[k] + (1.0 - l);
            }
        }
        out.push(
            (0..n_out)
                .map(|o| {
                    let a: f64 = (0..m).map(|k| w.w2[o * m + k] * z[k]).sum::<f64>() + w.b2[o];
                    1.0 - sigma(a)
                })
                .collect(),
        );
        h_prev = Some(
            (0..2 * m)
                .map(|j| {
                    let a: f64 = (0..n_in)
                        .map(|i| w.w1[j * n_in + i] * x[i] as f64)
                        .sum::<f64>()
                        + w.b1[j];
                    sigma(a)
                })
                .collect(),
        );
    }
    out
}

fn sse_and_errors(outputs: &[Vec<f64>], sample: &Sample) -> (f64, usize) {
    let mut sse = 0.0;
    let mut errors = 0;
    for (y, t) in outputs.iter().zip(&sample.targets) {
        for (a, b) in y.iter().zip(t) {
            sse += (a - *b as f64).powi(2);
            errors += (a.round() - *b as f64).abs() as usize;
        }
    }
    (sse, errors)
}

impl Annealer {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), DeductronError> {
        let fail = |field, value: String, reason| DeductronError::InvalidField {
            config: "Annealer",
            field,
            value,
            reason,
        };
        if self.n_memory == 0 {
            return Err(fail("n_memory", "0".into(), "must be ≥ 1"));
        }
        if !(self.beta_max.is_finite() && self.beta_max > 0.0) {
            return Err(fail(
                "beta_max",
                self.beta_max.to_string(),
                "must be finite and > 0",
            ));
        }
        if !(self.beta_step.is_finite() && self.beta_step > 0.0) {
            return Err(fail(
                "beta_step",
                self.beta_step.to_string(),
                "must be finite and > 0",
            ));
        }
        if self.restart_after == 0 {
            return Err(fail("restart_after", "0".into(), "must be ≥ 1"));
        }
        Ok(())
    }

    /// Anneals a decoder of `sample`. `progress` is called every 1000 iterations and at the end
    /// (with the current state's SSE); returning `Break` stops early. The search also stops as
    /// soon as the best state has zero errors and β has reached `beta_max`.
    pub fn run(
        &self,
        sample: &Sample,
        device: &Device,
        mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<AnnealResult, DeductronError> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let m = self.n_memory;
        let n_in = 6;
        let mut state = Quantised {
            w1: (0..2 * m * n_in)
                .map(|_| rng.random_range(-1..=1))
                .collect(),
            b1: (0..2 * m).map(|_| rng.random_range(0..=5)).collect(),
            w2: (0..2 * m).map(|_| rng.random_range(-1..=1)).collect(),
            b2: (0..2).map(|_| rng.random_range(0..=5)).collect(),
        };
        let shift = self.shift as f64;
        let energy = |q: &Quantised, beta: f64| {
            sse_and_errors(
                &host_forward(&q.weights(), beta, shift, &sample.inputs),
                sample,
            )
        };
        let mut beta = 0.0_f64;
        let mut current = energy(&state, beta).0;
        let mut best = (state.clone(), f64::INFINITY);
        let mut rejections = 0;
        let mut iterations = 0;
        for it in 1..=self.max_iterations {
            iterations = it;
            if beta < self.beta_max as f64 {
                beta = (beta + self.beta_step as f64).min(self.beta_max as f64);
                // Re-evaluate at the new β so ΔE compares like with like.
                current = energy(&state, beta).0;
            }
            let mut proposal = state.clone();
            proposal.perturb(rng.random_range(0..state.len()), &mut rng);
            let candidate = energy(&proposal, beta).0;
            let delta = candidate - current;
            let mut errors = None;
            if delta <= 0.0 || rng.random::<f64>() < (-beta * delta).exp() {
                state = proposal;
                current = candidate;
                rejections = 0;
                let at_max = energy(&state, self.beta_max as f64);
                if at_max.0 < best.1 {
                    best = (state.clone(), at_max.0);
                }
                errors = Some(at_max.1);
            } else {
                rejections += 1;
            }
            if rejections >= self.restart_after {
                // Frozen: restart the schedule (β from 0) from the best state seen.
                state = best.0.clone();
                beta = 0.0;
                current = energy(&state, beta).0;
                rejections = 0;
            }
            let done = errors == Some(0) && beta >= self.beta_max as f64;
            if it % 1000 == 0 || done {
                let p = Progress {
                    step: it,
                    sse: current as f32,
                    errors: errors.unwrap_or_else(|| energy(&state, self.beta_max as f64).1),
                };
                if progress(&p).is_break() || done {
                    break;
                }
            }
        }
        let (sse, errors) = energy(&best.0, self.beta_max as f64);
        let config = DeductronConfig::new()
            .with_n_memory(m)
            .with_beta(self.beta_max)
            .with_shift(self.shift);
        let w = best.0.weights();
        let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        let model = Deductron::from_weights(
            &config,
            (to32(w.w1), to32(w.b1), to32(w.w2), to32(w.b2)),
            device,
        );
        Ok(AnnealResult {
            model,
            sse: sse as f32,
            errors,
            iterations,
        })
    }
}

/// The host forward pass of a tensor model (for tests of the annealer's energy).
#[cfg(test)]
pub(crate) fn host_weights(model: &Deductron) -> HostWeights {
    let read = |t: Tensor<1>| -> Vec<f64> { t.try_into_vec_as::<f64>().expect("weights") };
    HostWeights {
        w1: read(model.w1.val().flatten(0, 1)),
        b1: read(model.b1.val()),
        w2: read(model.w2.val().flatten(0, 1)),
        b2: read(model.b2.val()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wlang;

    /// The annealer's host energy uses the same recurrence as the tensor module.
    #[test]
    fn host_forward_matches_the_tensor_forward() {
        let device = kindling_testing::device();
        for model in [
            Deductron::exact(&device),
            DeductronConfig::new()
                .with_n_memory(3)
                .init_with_seed(5, &device),
        ] {
            let sample = wlang::small();
            let host = host_forward(
                &host_weights(&model),
                model.beta as f64,
                model.shift as f64,
                &sample.inputs,
            );
            let tensor: Vec<f32> = model
                .forward(sample.inputs(&device))
                .y
                .try_into_vec_as()
                .unwrap();
            for (h, t) in host.iter().flatten().zip(&tensor) {
                assert!((*h as f32 - t).abs() < 1e-5, "{h} vs {t}");
            }
        }
    }
}

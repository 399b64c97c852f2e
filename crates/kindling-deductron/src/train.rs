//! Training a Deductron: by gradients (the paper's recipe, with any burn optimizer) and by
//! simulated annealing over quantised weights.

use std::ops::ControlFlow;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::wlang::{Frame, Sample};
use crate::{Deductron, DeductronConfig, DeductronError, DeductronInit};

/// A gradient-training recipe: the network's sharpness, shift and initialisation, the optimizer's
/// learning rate, the step budget and stopping rule, and the L2 penalties.
///
/// The default is the authors' recipe for `small` (their TensorFlow code): β = 1, shift 0,
/// Glorot-uniform weights and zero biases, Adam at lr 0.01, until the SSE falls below 0.1 or
/// 20 000 steps, penalties 1e-4 on `W1`, `B1` and 1e-5 on `W2`, `B2`. [`combined`](Self::combined)
/// is theirs for the combined data (lr 1e-3, up to 600 000 steps, m = 4 in their runs), and
/// [`sharp`](Self::sharp) trains at the paper's β = 10 (the hand-built network's sharpness).
/// Build the network with [`config`](Self::config), so that it has the recipe's β and shift.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientTraining {
    /// Sharpness β of the trained network (the authors train at 1).
    pub beta: f32,
    /// Shift c of the trained network (the authors train at 0).
    pub shift: f32,
    /// Initialisation of the trained network.
    pub init: DeductronInit,
    /// Learning rate (the reference: 0.01 with Adam on `small`, 1e-3 on the combined data).
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
            beta: 1.0,
            shift: 0.0,
            init: DeductronInit::GlorotUniform,
            lr: 0.01,
            max_steps: 20_000,
            target_sse: 0.1,
            l2_input: 1e-4,
            l2_output: 1e-5,
        }
    }
}

impl GradientTraining {
    /// The authors' recipe for the combined data: as the default with Adam at lr 1e-3 and up
    /// to 600 000 steps (use m = 4, as they did).
    pub fn combined() -> Self {
        Self {
            lr: 1e-3,
            max_steps: 600_000,
            ..Self::default()
        }
    }

    /// Training at the paper's sharpness β = 10 and shift ½ (the hand-built network's), from
    /// small weights around the sigmoids' steepest point, 5 000 steps at lr 0.01: the recipe
    /// this crate used before it followed the authors. Sharper sigmoids saturate sooner, so it
    /// stalls on more seeds; kept as an option.
    pub fn sharp() -> Self {
        Self {
            beta: 10.0,
            shift: 0.5,
            init: DeductronInit::NearThreshold,
            max_steps: 5_000,
            ..Self::default()
        }
    }

    /// The network configuration this recipe trains: `n_memory` cells, the recipe's β, shift
    /// and initialisation (6 inputs, 2 outputs: the W-language).
    pub fn config(&self, n_memory: usize) -> DeductronConfig {
        DeductronConfig::new()
            .with_n_memory(n_memory)
            .with_beta(self.beta)
            .with_shift(self.shift)
            .with_init(self.init)
    }
}

/// Where a training run stands (passed to progress callbacks, and returned at the end).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Steps (gradient training) or iterations (annealing) done.
    pub step: usize,
    /// Current sum of squared errors (annealing: of the best state, at `beta_max`).
    pub sse: f32,
    /// Classification errors `Σ|round(y) − target|` at this point.
    pub errors: usize,
}

/// Trains `model` on `sample` with `optim` by a [`GradientTraining`] recipe (build the model
/// with [`GradientTraining::config`]). Each step computes the SSE plus the L2 penalties and
/// their exact gradients by backpropagation through time on the host in f64 (the network has a
/// few dozen weights and the sequence is one long recurrence, so this is hundreds of times
/// faster than one tensor operation per frame, and it is tested against burn's autodiff), then
/// `optim` updates the module like any burn optimizer. `progress` is called after every step;
/// returning `ControlFlow::Break` stops early. Returns the trained model and the last progress
/// (the SSE and errors of the model the step started from).
pub fn train_gradient(
    mut model: Deductron,
    optim: &mut ModuleOptimizer,
    sample: &Sample,
    recipe: GradientTraining,
    mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> (Deductron, Progress) {
    let device = model.w1.val().device().inner();
    let (beta, shift) = (model.beta as f64, model.shift as f64);
    let [m2, n_in] = model.w1.dims();
    let [n_out, m] = model.w2.dims();
    let mut last = Progress {
        step: 0,
        sse: f32::INFINITY,
        errors: usize::MAX,
    };
    for step in 1..=recipe.max_steps {
        let weights = host_weights(&model);
        let trace = HostTrace::new(&weights, beta, shift, &sample.inputs);
        let (sse, errors) = trace.sse_and_errors(sample);
        last = Progress {
            step,
            sse: sse as f32,
            errors,
        };
        if last.sse < recipe.target_sse || progress(&last).is_break() {
            break;
        }
        let grads = host_backward(&weights, &trace, beta, sample);
        // The SSE's gradient plus the L2 penalty's, `g + 2λw`, as a tensor of `shape`.
        fn penalised<const D: usize>(
            g: &[f64],
            w: &[f64],
            l2: f32,
            shape: [usize; D],
            device: &Device,
        ) -> Tensor<D> {
            let values: Vec<f32> = g
                .iter()
                .zip(w)
                .map(|(g, w)| (g + 2.0 * l2 as f64 * w) as f32)
                .collect();
            Tensor::from_data(TensorData::new(values, shape), device)
        }
        let (l2_in, l2_out) = (recipe.l2_input, recipe.l2_output);
        let mut params = GradientsParams::new();
        let w1 = penalised(&grads.w1, &weights.w1, l2_in, [m2, n_in], &device);
        params.register(model.w1.id, w1);
        let b1 = penalised(&grads.b1, &weights.b1, l2_in, [m2], &device);
        params.register(model.b1.id, b1);
        let w2 = penalised(&grads.w2, &weights.w2, l2_out, [n_out, m], &device);
        params.register(model.w2.id, w2);
        let b2 = penalised(&grads.b2, &weights.b2, l2_out, [n_out], &device);
        params.register(model.b2.id, b2);
        model = optim.step(recipe.lr, model, params);
    }
    (model, last)
}

/// The exact gradients of the SSE `Σ_t Σ_k (y_{t,k} − target_{t,k})²` with respect to every
/// weight of the forward pass `trace` (made with the same weights `w` and β), by
/// backpropagation through time (f64, row-major like [`HostWeights`]).
pub(crate) fn host_backward(
    w: &HostWeights,
    trace: &HostTrace,
    beta: f64,
    sample: &Sample,
) -> HostWeights {
    let (m, n_out) = (trace.m, trace.n_out);
    let n_in = w.w1.len() / (2 * m);
    let frames = &sample.inputs;
    let (h, z) = (&trace.h, &trace.z);
    let mut g = HostWeights {
        w1: vec![0.0; w.w1.len()],
        b1: vec![0.0; w.b1.len()],
        w2: vec![0.0; w.w2.len()],
        b2: vec![0.0; w.b2.len()],
    };
    // dL/dz_{t+1} carried backwards through the recurrence.
    let mut carry = vec![0.0; m];
    for t in (0..frames.len()).rev() {
        // Output layer: y = 1 − σ(o), dL/do = −2(y − T)·β·s(1 − s).
        let mut gz = carry.clone();
        for o in 0..n_out {
            let st = trace.s[t * n_out + o];
            let error = trace.output(t, o) - sample.targets[t][o] as f64;
            let d_o = -2.0 * error * beta * st * (1.0 - st);
            g.b2[o] += d_o;
            for k in 0..m {
                g.w2[o * m + k] += d_o * z[t * m + k];
                gz[k] += d_o * w.w2[o * m + k];
            }
        }
        // z_t = l_{t−1} r_{t−1} z_{t−1} + 1 − l_{t−1}: gradients into h_{t−1} and z_{t−1}.
        if t == 0 {
            break;
        }
        let prev = &h[(t - 1) * 2 * m..t * 2 * m];
        for k in 0..m {
            let (l, r, zp) = (prev[k], prev[m + k], z[(t - 1) * m + k]);
            let dl = gz[k] * (r * zp - 1.0);
            let dr = gz[k] * l * zp;
            carry[k] = gz[k] * l * r;
            for (j, dh) in [(k, dl), (m + k, dr)] {
                let da = dh * beta * prev[j] * (1.0 - prev[j]);
                g.b1[j] += da;
                let row = &mut g.w1[j * n_in..(j + 1) * n_in];
                for (gw, x) in row.iter_mut().zip(&frames[t - 1]) {
                    *gw += da * *x as f64;
                }
            }
        }
    }
    g
}

/// Simulated annealing over quantised weights (the paper's second training method): every weight
/// is in {−1, 0, 1} and every bias in {0, …, 5} used as `value − 0.5`.
///
/// As the authors' reference code does it: each iteration picks one of the four groups `W1`,
/// `B1`, `W2`, `B2` uniformly, one entry of it uniformly, and sets it to an allowed value drawn
/// uniformly — possibly its current value (a no-op proposal, always accepted). The change is
/// accepted with the Metropolis probability `min(1, exp(−β·ΔE))`, where `E` is the SSE of the
/// network evaluated with sigmoid sharpness β — the same β is the inverse temperature. β rises
/// from 0 by `beta_step` per iteration up to `beta_max`. After `restart_after` consecutive
/// rejections (8192, the authors' value) the search restarts from the best state seen, at the β
/// where that state was found (not from β = 0, which would accept every proposal and throw the
/// state away).
///
/// **Two changes from the reference, kept on purpose.** When a chain has found no better state
/// for `fresh_start_after` iterations, a fresh chain starts from a random state (one chain
/// succeeds or stalls within a few ten thousand iterations on the combined data, so several
/// chains in one budget succeed far more often than one long chain). And the best state is
/// judged by its SSE at
/// `beta_max`, the sharpness the final network runs at, rather than by its energy at whatever β
/// it was found at (a state found at small β has a small energy only because every output is
/// near ½). Biases are `level − 0.5` and the sigmoids have no shift (`shift = 0`), so every
/// pre-activation is a half-integer and no unit sits undecided at σ = ½ (the reference uses
/// shift ½, where integer pre-activations sit exactly there). The network is small, so the
/// energy is evaluated on the host in f64 (the same recurrence as [`Deductron::forward`], tested
/// against it).
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
    /// Consecutive rejections after which the search returns to the best state, at the β where
    /// it was found (the reference: 8192).
    pub restart_after: usize,
    /// Iterations without a new best state of the current chain after which the search starts
    /// a fresh chain from a random state at β = 0 (the best state over all chains is kept).
    /// `usize::MAX` runs one chain, as the reference does.
    pub fresh_start_after: usize,
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
            beta_step: 0.0005,
            max_iterations: 1_000_000,
            restart_after: 8192,
            fresh_start_after: 30_000,
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
    /// The reference proposal: a group (`W1`, `B1`, `W2`, `B2`) uniformly, an entry of it
    /// uniformly, and a new allowed value uniformly (possibly the current one).
    fn propose(&mut self, rng: &mut ChaCha8Rng) {
        match rng.random_range(0..4) {
            0 => {
                let i = rng.random_range(0..self.w1.len());
                self.w1[i] = rng.random_range(-1..=1);
            }
            1 => {
                let i = rng.random_range(0..self.b1.len());
                self.b1[i] = rng.random_range(0..=5);
            }
            2 => {
                let i = rng.random_range(0..self.w2.len());
                self.w2[i] = rng.random_range(-1..=1);
            }
            _ => {
                let i = rng.random_range(0..self.b2.len());
                self.b2[i] = rng.random_range(0..=5);
            }
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

/// The Deductron recurrence on the host in f64 (the same as [`Deductron::forward`], tested
/// against it), keeping what backpropagation needs: per frame `t`, row-major, the hidden
/// activations `h_t` (`2m`), the memory `z_t` (`m`) and the output sigmoids
/// `s_t = σ(W2·z_t + B2)` (`n_out`; the outputs are `y_t = 1 − s_t`).
pub(crate) struct HostTrace {
    m: usize,
    n_out: usize,
    h: Vec<f64>,
    z: Vec<f64>,
    s: Vec<f64>,
}

impl HostTrace {
    pub(crate) fn new(w: &HostWeights, beta: f64, shift: f64, frames: &[Frame]) -> Self {
        let m = w.b1.len() / 2;
        let n_in = w.w1.len() / (2 * m);
        let n_out = w.b2.len();
        let time = frames.len();
        let sigma = |a: f64| 1.0 / (1.0 + (-beta * (a - shift)).exp());
        let mut h = Vec::with_capacity(time * 2 * m);
        for x in frames {
            h.extend((0..2 * m).map(|j| {
                let a: f64 = (0..n_in)
                    .map(|i| w.w1[j * n_in + i] * x[i] as f64)
                    .sum::<f64>()
                    + w.b1[j];
                sigma(a)
            }));
        }
        let mut z = vec![0.0; time * m];
        for t in 1..time {
            for k in 0..m {
                let (l, r) = (h[(t - 1) * 2 * m + k], h[(t - 1) * 2 * m + m + k]);
                z[t * m + k] = l * r * z[(t - 1) * m + k] + (1.0 - l);
            }
        }
        let mut s = Vec::with_capacity(time * n_out);
        for zt in z.chunks_exact(m) {
            s.extend((0..n_out).map(|o| {
                let a: f64 = (0..m).map(|k| w.w2[o * m + k] * zt[k]).sum::<f64>() + w.b2[o];
                sigma(a)
            }));
        }
        Self { m, n_out, h, z, s }
    }

    /// The output `y_{t,o} = 1 − s_{t,o}`.
    fn output(&self, t: usize, o: usize) -> f64 {
        1.0 - self.s[t * self.n_out + o]
    }

    /// The SSE against `sample`'s targets and the classification errors `Σ|round(y) − target|`.
    fn sse_and_errors(&self, sample: &Sample) -> (f64, usize) {
        let mut sse = 0.0;
        let mut errors = 0;
        for (t, target) in sample.targets.iter().enumerate() {
            for (o, b) in target.iter().enumerate() {
                let a = self.output(t, o);
                sse += (a - *b as f64).powi(2);
                errors += (a.round() - *b as f64).abs() as usize;
            }
        }
        (sse, errors)
    }
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
    /// (with the best state's SSE and errors at `beta_max`); returning `Break` stops early. The
    /// search also stops as soon as the best state has zero errors at `beta_max`.
    pub fn run(
        &self,
        sample: &Sample,
        device: &Device,
        mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<AnnealResult, DeductronError> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let m = self.n_memory;
        let random_state = |rng: &mut ChaCha8Rng| Quantised {
            w1: (0..2 * m * 6).map(|_| rng.random_range(-1..=1)).collect(),
            b1: (0..2 * m).map(|_| rng.random_range(0..=5)).collect(),
            w2: (0..2 * m).map(|_| rng.random_range(-1..=1)).collect(),
            b2: (0..2).map(|_| rng.random_range(0..=5)).collect(),
        };
        let shift = self.shift as f64;
        let beta_max = self.beta_max as f64;
        let energy = |q: &Quantised, beta: f64| {
            HostTrace::new(&q.weights(), beta, shift, &sample.inputs).sse_and_errors(sample)
        };
        let mut state = random_state(&mut rng);
        let mut beta = 0.0_f64;
        let mut current = energy(&state, beta).0;
        // The chain's best: (state, its SSE at β_max, the β where it was found), and the best
        // over all chains with its errors.
        let mut chain_best = (state.clone(), f64::INFINITY, 0.0_f64);
        let mut best = (state.clone(), f64::INFINITY, usize::MAX);
        let mut since_improvement = 0;
        let mut rejections = 0;
        let mut iterations = 0;
        for it in 1..=self.max_iterations {
            iterations = it;
            if since_improvement >= self.fresh_start_after {
                // This chain has stalled for good: a fresh random state, β from 0.
                state = random_state(&mut rng);
                beta = 0.0;
                chain_best = (state.clone(), f64::INFINITY, 0.0);
                since_improvement = 0;
                rejections = 0;
            }
            if beta < beta_max {
                beta = (beta + self.beta_step as f64).min(beta_max);
                // Re-evaluate at the new β so ΔE compares like with like.
                current = energy(&state, beta).0;
            }
            since_improvement += 1;
            let mut proposal = state.clone();
            proposal.propose(&mut rng);
            let accepted = proposal == state || {
                let candidate = energy(&proposal, beta);
                let delta = candidate.0 - current;
                let accept = delta <= 0.0 || rng.random::<f64>() < (-beta * delta).exp();
                if accept {
                    state = proposal;
                    current = candidate.0;
                    // Once β has reached β_max the candidate's energy is already the one there.
                    let (sse, errors) = if beta == beta_max {
                        candidate
                    } else {
                        energy(&state, beta_max)
                    };
                    if sse < chain_best.1 {
                        // Only a clear gain (1%) counts as progress of the chain.
                        if sse < 0.99 * chain_best.1 {
                            since_improvement = 0;
                        }
                        chain_best = (state.clone(), sse, beta);
                    }
                    if sse < best.1 {
                        best = (state.clone(), sse, errors);
                    }
                }
                accept
            };
            if accepted {
                rejections = 0;
            } else {
                rejections += 1;
            }
            if rejections >= self.restart_after {
                // Frozen: continue from the chain's best state, at the β where it was found.
                state = chain_best.0.clone();
                beta = chain_best.2;
                current = energy(&state, beta).0;
                rejections = 0;
            }
            let done = best.2 == 0;
            if it % 1000 == 0 || done {
                let p = Progress {
                    step: it,
                    sse: best.1 as f32,
                    errors: best.2,
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

/// A module's weights on the host in f64.
/// All four tensors are read back in one transfer (one device sync per training step on GPU
/// backends, not four).
pub(crate) fn host_weights(model: &Deductron) -> HostWeights {
    let parts = [
        model.w1.val().flatten::<1>(0, 1),
        model.b1.val(),
        model.w2.val().flatten::<1>(0, 1),
        model.b2.val(),
    ];
    let sizes: Vec<usize> = parts.iter().map(|t| t.dims()[0]).collect();
    let all: Vec<f64> = Tensor::cat(parts.to_vec(), 0)
        .try_into_vec_as::<f64>()
        .expect("weights");
    let mut rest = all.as_slice();
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head.to_vec()
    };
    HostWeights {
        w1: take(sizes[0]),
        b1: take(sizes[1]),
        w2: take(sizes[2]),
        b2: take(sizes[3]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wlang;

    /// The host forward pass (the annealer's energy, the gradients' trace) uses the same
    /// recurrence as the tensor module.
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
            let host = HostTrace::new(
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
            assert_eq!(tensor.len(), host.s.len());
            for (i, t) in tensor.iter().enumerate() {
                let h = host.output(i / 2, i % 2);
                assert!((h as f32 - t).abs() < 1e-5, "{h} vs {t}");
            }
        }
    }

    /// The host backpropagation through time gives burn autodiff's gradients of the SSE (both
    /// recipes' sharpness, on `small`), to f32 precision.
    #[test]
    fn host_gradients_match_autodiff() {
        let device = kindling_testing::autodiff_device();
        let sample = wlang::small();
        for (recipe, seed) in [
            (GradientTraining::default(), 3),
            (GradientTraining::sharp(), 4),
        ] {
            let model = recipe.config(3).init_with_seed(seed, &device);
            let sse = model.sse(sample.inputs(&device), sample.targets(&device));
            let grads = GradientsParams::from_grads(sse.backward(), &model);
            let weights = host_weights(&model);
            let (beta, shift) = (model.beta as f64, model.shift as f64);
            let trace = HostTrace::new(&weights, beta, shift, &sample.inputs);
            let host = host_backward(&weights, &trace, beta, &sample);
            let read2 = |id| -> Vec<f32> {
                grads
                    .get::<2>(id)
                    .unwrap()
                    .flatten::<1>(0, 1)
                    .try_into_vec_as()
                    .unwrap()
            };
            let read1 = |id| -> Vec<f32> { grads.get::<1>(id).unwrap().try_into_vec_as().unwrap() };
            for (auto, host) in [
                (read2(model.w1.id), &host.w1),
                (read1(model.b1.id), &host.b1),
                (read2(model.w2.id), &host.w2),
                (read1(model.b2.id), &host.b2),
            ] {
                let scale = host.iter().fold(1e-3_f64, |m, v| m.max(v.abs()));
                for (a, h) in auto.iter().zip(host) {
                    assert!(
                        ((*a as f64) - h).abs() < 1e-4 * scale,
                        "autodiff {a} vs host {h} (β = {})",
                        recipe.beta
                    );
                }
            }
        }
    }
}

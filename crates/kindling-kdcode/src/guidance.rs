//! Learning codes with *distillation guidance* (the paper's §4): pull the KD embedding toward a
//! full embedding table, either a pretrained one (PDG: [`distill`] the table first, then fine-tune
//! end to end, optionally keeping [`guidance_loss`] in the objective) or one trained jointly with
//! it (ODG: [`online_guidance_loss`] against the current full table).
//!
//! The loss is the *relative* squared error, dimensionless and independent of K, D and the
//! table's magnitude; the step sizes that make it converge are derived in
//! [`MixedOptimizerConfig`], not tuned per table.

use burn::config::Config;
use burn::module::ParamGroup;
use burn::nn::Embedding;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;

use crate::{KdEmbedding, KdError};

/// Guidance toward target rows: the relative squared error of the batch,
///
/// ```text
/// L = Σ_i ‖e_i − t_i‖² / Σ_i ‖t_i‖²      over the ids [n] of the batch, t = targets [n, d] (no gradient)
/// ```
///
/// It is 1 for the all-zero embedding and 0 for a perfect one, whatever the table's magnitude,
/// K or D, so it adds to a task loss with a weight that means the same for every table (the
/// reference's `λ = 1000` on a sum has no such meaning). Its square root over all rows is the
/// relative reconstruction error ([`crate::eval::relative_error`]).
pub fn guidance_loss(
    embedding: &KdEmbedding,
    ids: Tensor<1, Int>,
    targets: Tensor<2>,
) -> Tensor<1> {
    let n = ids.dims()[0];
    let e = embedding.forward(ids.reshape([1, n])).squeeze_dim::<2>(0);
    relative_squared_error(e, targets)
}

/// `Σ‖e − t‖² / Σ‖t‖²`, the targets taken as constants.
fn relative_squared_error(e: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let targets = targets.detach();
    let norm = targets.clone().square().sum().clamp_min(f32::MIN_POSITIVE);
    (e - targets).square().sum().div(norm)
}

/// Online distillation guidance (ODG): [`guidance_loss`] toward the rows of a full `Embedding`
/// trained jointly on the task (its rows are targets, so this term trains only the codes; the
/// full table learns from its own task loss).
pub fn online_guidance_loss(
    codes: &KdEmbedding,
    full: &Embedding,
    ids: Tensor<1, Int>,
) -> Tensor<1> {
    let targets = full.weight.val().select(0, ids.clone());
    guidance_loss(codes, ids, targets)
}

/// The reference's mixed optimizer, with its step sizes derived instead of tuned: Adam on the
/// code logits, plain SGD on the code-embedding tables, Adam on the composition (LSTM, linear
/// map, batch norm). Pass a step learning rate of 1.0 (or a schedule's factor) to `step`: the
/// rates are in this config.
///
/// **The tables' rate.** For linear composition `e_i = (1/D) Σ_j W_j[c_ij]` and the relative loss
/// `L = Σ_i ‖e_i − t_i‖² / Σ_i ‖t_i‖²` over a batch of `n` rows, the gradient of row `W_j[k]` is
/// `2/(D·n·m) · Σ_{i: c_ij = k} r_i` with `m = mean_i ‖t_i‖²` and residual `r_i = e_i − t_i`.
/// About `n/K` rows use each code, so an SGD step of rate `η` moves `W_j[k]` by
/// `η·2/(D·K·m) · r̄_jk`, and all `D` rows of a symbol move together: its embedding moves by
/// `η·2/(D·K·m) · r̄`. Removing the fraction `γ` of the mean residual per step needs
///
/// ```text
/// η = γ · D · K · m / 2
/// ```
///
/// — the same step for every K, D, batch size and table magnitude (the tables scale with the
/// target, as SGD on a squared error is equivariant to it). `γ = table_step` (default 0.5);
/// stable below 1. The derivation assumes every code is used by `n/K` rows; [`distill`] makes
/// that exact by scaling each table row's gradient by `(n/K)/count`, so a popular code does not
/// overshoot (and a rare one is not starved). For recurrent composition the same rate is a starting point, not a
/// derivation.
#[derive(Config, Debug, PartialEq)]
pub struct MixedOptimizerConfig {
    /// Adam's learning rate on the code logits (a logit moves about this much per step, so from
    /// N(0, 0.1²) logits codes can change within tens of steps). [`distill`]'s default exact code
    /// update does not use it; straight-through code updates and fine-tuning do.
    #[config(default = 1e-2)]
    pub logit_learning_rate: f64,
    /// γ: the fraction of the mean residual one SGD step on the tables removes.
    #[config(default = 0.5)]
    pub table_step: f64,
    /// Adam's learning rate on the composition's parameters.
    #[config(default = 1e-3)]
    pub composition_learning_rate: f64,
}

impl MixedOptimizerConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), KdError> {
        for (field, v) in [
            ("logit_learning_rate", self.logit_learning_rate),
            ("table_step", self.table_step),
            ("composition_learning_rate", self.composition_learning_rate),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(KdError::InvalidField {
                    config: "MixedOptimizerConfig",
                    field,
                    value: v.to_string(),
                    reason: "must be finite and ≥ 0",
                });
            }
        }
        Ok(())
    }

    /// The SGD rate of the tables for `embedding` and targets of mean squared row norm
    /// `target_mean_square`: `γ·D·K·m/2`.
    pub fn table_learning_rate(&self, embedding: &KdEmbedding, target_mean_square: f64) -> f64 {
        self.table_step
            * embedding.code_length() as f64
            * embedding.choices() as f64
            * target_mean_square
            / 2.0
    }

    /// The optimizer for `embedding` guided toward `targets` (`[n, d]`, the table or a sample
    /// of its rows: only their mean squared norm is used), or the validation error.
    pub fn try_init(
        &self,
        embedding: &KdEmbedding,
        targets: &Tensor<2>,
    ) -> Result<ModuleOptimizer, KdError> {
        self.validate()?;
        let m = targets
            .clone()
            .square()
            .sum_dim(1)
            .mean()
            .into_scalar::<f64>();
        if !(m.is_finite() && m > 0.0) {
            return Err(KdError::InvalidTable {
                reason: format!("mean squared row norm is {m}; it must be finite and > 0"),
            });
        }
        let scaled = |inner, scale| Scaled { inner, scale };
        Ok(ModuleOptimizer::from(scaled(
            AdamConfig::new().build(),
            self.composition_learning_rate,
        ))
        .with_group(
            ParamGroup::from_predicate("code_logits"),
            scaled(AdamConfig::new().build(), self.logit_learning_rate),
            None,
        )
        .with_group(
            ParamGroup::from_predicate("tables"),
            Scaled {
                inner: SgdConfig::new().build(),
                scale: self.table_learning_rate(embedding, m),
            },
            None,
        ))
    }

    /// As [`try_init`](Self::try_init).
    ///
    /// # Panics
    /// When the configuration or the targets are invalid.
    pub fn init(&self, embedding: &KdEmbedding, targets: &Tensor<2>) -> ModuleOptimizer {
        self.try_init(embedding, targets)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// An optimizer whose steps are scaled by a constant (one group of the mixed optimizer).
#[derive(Clone)]
struct Scaled<O> {
    inner: O,
    scale: f64,
}

impl<O: burn::optim::Optimizer> burn::optim::Optimizer for Scaled<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: burn::optim::LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        self.inner.step(lr * self.scale, tensor, grad, state)
    }

    fn to_device<const D: usize>(
        state: Self::State<D>,
        device: &burn::tensor::Device,
    ) -> Self::State<D> {
        O::to_device(state, device)
    }
}

/// How [`distill`] learns codes from a table.
#[derive(Config, Debug, PartialEq)]
pub struct DistillConfig {
    /// Rows per mini-batch (all rows when larger than the table).
    #[config(default = 512)]
    pub batch_size: usize,
    /// Optimizer steps.
    #[config(default = 1000)]
    pub steps: usize,
    /// The mixed optimizer.
    #[config(default = "MixedOptimizerConfig::new()")]
    pub optimizer: MixedOptimizerConfig,
    /// Seed of the row order (and of the RQ start's k-means).
    #[config(default = 0)]
    pub seed: u64,
    /// Where the codes start.
    #[config(default = "DistillStart::Random")]
    pub start: DistillStart,
    /// How the codes of a batch's rows are updated.
    #[config(default = "CodeUpdate::Exact")]
    pub code_update: CodeUpdate,
    /// With [`CodeUpdate::Exact`]: a visited row's logits become `code_margin` on the chosen
    /// code of each dimension and 0 on the other choices, so the fine-tuning that follows
    /// (straight-through, Adam moving a logit by about its learning rate a step) starts from the
    /// distilled codes and changes one only on a sustained gradient: at τ = 1 the softmax puts
    /// `e^m / (e^m + K − 1)` on it (0.57 for K = 16 at the default 3).
    #[config(default = 3.0)]
    pub code_margin: f32,
}

/// How [`distill`] updates the codes of each batch's rows.
///
/// Straight-through passes `∂L/∂c_ijk` — the loss's slope in the one-hot entry — through the
/// softmax to Adam on the code logits (the paper's estimator). For a composition linear in the
/// codes, `e_i = Σ_j M_j[c_ij] + b`, that slope is `2s·r_i·M_j[k]` (`s = 1/Σ‖t‖²`,
/// `r_i = e_i − t_i`): linear in the choice, it drops the quadratic term and favours large rows
/// along the residual even when switching to them overshoots, and Adam moves every improving
/// choice's logit at the same rate, so the best alternative does not overtake the others.
/// Measured on a 30 000 × 384 table from the RQ start, it moves codes away from RQ's and loses
/// neighbour overlap.
///
/// The exact update minimises the loss itself, one dimension at a time (iterated conditional
/// modes, as in additive quantisation): for `j = 1 … D`, row `i` takes
///
/// ```text
/// c_ij = argmin_k ‖r_i − M_j[c_ij] + M_j[k]‖² = argmin_k 2·(r_i − M_j[c_ij])·M_j[k] + ‖M_j[k]‖²
/// ```
///
/// and its residual is updated before the next dimension, so a row's loss never rises. The codes
/// are written into the row's logits with [`DistillConfig::code_margin`], then the tables and
/// the composition take their gradient step at the new codes. It costs three `[n, K] × [K, d]`-sized products per dimension and step.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum CodeUpdate {
    /// Adam on the code logits with the straight-through gradient (the paper's).
    StraightThrough,
    /// Exact coordinate descent on the codes where the composition is linear in them (linear
    /// composition without batch norm); other compositions use straight-through.
    Exact,
}

impl DistillConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), KdError> {
        for (field, v) in [("batch_size", self.batch_size), ("steps", self.steps)] {
            if v == 0 {
                return Err(KdError::InvalidField {
                    config: "DistillConfig",
                    field,
                    value: "0".into(),
                    reason: "must be ≥ 1",
                });
            }
        }
        if !(self.code_margin.is_finite() && self.code_margin >= 0.0) {
            return Err(KdError::InvalidField {
                config: "DistillConfig",
                field: "code_margin",
                value: self.code_margin.to_string(),
                reason: "must be finite and ≥ 0",
            });
        }
        self.optimizer.validate()
    }
}

/// Where [`distill`] starts the codes.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum DistillStart {
    /// The embedding's own (random) code logits and tables.
    Random,
    /// Residual quantisation of the table ([`crate::eval::QuantizerConfig::residual`], `K` centroids
    /// per stage, `D` stages, 10 Lloyd rounds): each symbol's logits are `margin` on its RQ code
    /// and 0 on the other choices, and the tables are `D ×` the RQ centroids, so the mean composition starts at
    /// RQ's reconstruction and the gradient steps then refine codes and tables jointly, which
    /// greedy RQ cannot. Needs linear composition with per-dimension tables and `d' = d`.
    Residual {
        /// The head start of the RQ code over the other logits.
        margin: f32,
    },
}

/// What [`distill`] reports after each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillProgress {
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// The batch's [`guidance_loss`] before the step (relative squared error).
    pub loss: f64,
    /// The temperature the step used.
    pub temperature: f32,
}

/// Pre-trained distillation guidance, first stage: learns `embedding`'s codes, tables and
/// composition so that it reproduces `table` (`[V, d_model]`), minimising [`guidance_loss`] over
/// shuffled mini-batches of rows, starting from the embedding's codes with its output rescaled
/// to the table's root-mean-square entry ([`KdEmbedding::with_output_scale`]). The temperature
/// follows the embedding's schedule: one [`KdEmbedding::decay_temperature`] per step, and
/// Gumbel noise when the embedding's relaxation is Gumbel. `observe` sees every step.
///
/// Each step first updates the batch's codes ([`DistillConfig::code_update`]): by default one
/// sweep of exact coordinate descent on the loss ([`CodeUpdate::Exact`]), written into the
/// logits; then the tables and the composition take one step of the [`MixedOptimizerConfig`]'s
/// optimizer at the new codes. With [`CodeUpdate::StraightThrough`] (and for compositions the
/// exact update does not cover) the code logits take the straight-through gradient instead,
/// with one difference from the mixed optimizer that matters at scale: the code logits (`V·D·K`
/// floats, larger than the table) are updated only on the rows of the batch — Adam with per-row
/// moments and step counts ("lazy" Adam) — so a step costs time in proportion to the batch, not
/// the vocabulary, and a row's logits move by about the logit learning rate each time it is
/// visited rather than decaying between visits.
///
/// `embedding` must live on an autodiff device; `table` may be on it or on its inner device.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use kindling_kdcode::guidance::{DistillConfig, distill};
/// use kindling_kdcode::{KdEmbeddingConfig, eval};
///
/// let device = Device::flex().autodiff();
/// let table = Tensor::<2>::random([200, 16], Distribution::Normal(0.0, 1.0), &device);
/// let embedding = KdEmbeddingConfig::new(200, 16).with_d_code(16).init_with_seed(0, &device);
/// let config = DistillConfig::new().with_steps(100).with_batch_size(64);
/// let distilled = distill(embedding, &table, &config, |_| {}).unwrap();
/// assert!(eval::relative_error(&distilled.table(), &table) < 0.9);
/// ```
pub fn distill(
    embedding: KdEmbedding,
    table: &Tensor<2>,
    config: &DistillConfig,
    mut observe: impl FnMut(&DistillProgress),
) -> Result<KdEmbedding, KdError> {
    config.validate()?;
    let device = embedding.code_logits.device();
    let [v, d] = table.dims();
    let expected = [embedding.vocab(), embedding.d_model()];
    if [v, d] != expected {
        return Err(KdError::InvalidTable {
            reason: format!(
                "the table is {v} × {d}; the embedding is {} × {}",
                expected[0], expected[1]
            ),
        });
    }
    let table = table.clone().to_device(&device);
    let mut embedding = match config.start {
        DistillStart::Random => {
            // Start at the table's scale: the tables' rate removes a fraction of the residual
            // per step, so a start at the wrong scale only costs steps.
            let rms = table.clone().square().mean().sqrt().into_scalar::<f32>();
            embedding.with_output_scale(rms)
        }
        DistillStart::Residual { margin } => {
            residual_start(embedding, &table, margin, config.seed)?
        }
    };
    let mut optim = config.optimizer.try_init(&embedding, &table)?;
    let [_, code_length, choices] = embedding.code_logits.dims();
    let mut logits = RowAdam::new(
        embedding
            .code_logits
            .val()
            .into_data()
            .iter::<f32>()
            .collect(),
        code_length * choices,
        config.optimizer.logit_learning_rate,
    );
    let batch = config.batch_size.min(v);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<i64> = (0..v as i64).collect();
    let mut cursor = v;
    for step in 0..config.steps {
        if cursor + batch > v {
            order.shuffle(&mut rng);
            cursor = 0;
        }
        let rows = &order[cursor..cursor + batch];
        cursor += batch;
        let ids = Tensor::<1, Int>::from_data(TensorData::new(rows.to_vec(), [batch]), &device);
        let targets = table.clone().select(0, ids);
        let exact = config.code_update == CodeUpdate::Exact && exact_applies(&embedding);
        let batch_logits = Tensor::<3>::from_data(
            TensorData::new(logits.gather(rows), [batch, code_length, choices]),
            &device,
        );
        let (codes, batch_logits) = if exact {
            let codes = crate::relax::one_hot_argmax(batch_logits);
            let codes = exact_sweep(&embedding, codes, targets.clone());
            logits.set_codes(rows, &codes, config.code_margin);
            (codes, None)
        } else {
            let batch_logits = batch_logits.require_grad();
            (embedding.relax(batch_logits.clone()), Some(batch_logits))
        };
        let usage = code_usage(codes.clone().detach(), embedding.tables.dims()[0]);
        let e = embedding.composer.compose(codes, embedding.tables.val());
        let loss = relative_squared_error(e, targets);
        let progress = DistillProgress {
            step: step + 1,
            steps: config.steps,
            loss: loss.clone().into_scalar::<f64>(),
            temperature: embedding.temperature,
        };
        // Every rate decays linearly to zero over the run, so the codes settle.
        let decay = 1.0 - step as f64 / config.steps as f64;
        let mut grads = loss.backward();
        if let Some(grad) = batch_logits.and_then(|z| z.grad_remove(&mut grads)) {
            let grad: Vec<f32> = grad.into_data().iter::<f32>().collect();
            logits.step(rows, &grad, decay as f32);
        }
        let mut grads = GradientsParams::from_grads(grads, &embedding);
        let id = embedding.tables.id;
        if let Some(grad) = grads.remove::<3>(id) {
            // The derivation's step for every code, used by many rows or few: scale row
            // (j, k) of the gradient by (n/K) / count_jk.
            grads.register(id, grad * usage);
        }
        embedding = optim.step(decay, embedding, grads);
        embedding.decay_temperature();
        observe(&progress);
    }
    let values = logits.values;
    embedding.code_logits = embedding.code_logits.map(|_| {
        Tensor::<3>::from_data(TensorData::new(values, [v, code_length, choices]), &device)
            .set_require_grad(true)
    });
    Ok(embedding)
}

/// Whether [`CodeUpdate::Exact`] applies to `embedding`: a composition linear in the codes.
fn exact_applies(embedding: &KdEmbedding) -> bool {
    let composer = &embedding.composer;
    composer.lstm.is_none() && composer.norm.is_none()
}

/// One sweep of exact coordinate descent ([`CodeUpdate::Exact`]) over the `D` dimensions of the
/// one-hot codes `[n, D, K]` toward `targets` `[n, d]`: the updated one-hot codes.
fn exact_sweep(embedding: &KdEmbedding, codes: Tensor<3>, targets: Tensor<2>) -> Tensor<3> {
    let [n, d, k] = codes.dims();
    let tables = embedding.tables.val().detach();
    let [tables_d, _, dc] = tables.dims();
    // M_j[k]: the composition's linear image of one-hot (j, k), `[D|1, K, d]`.
    let rows = tables
        .clone()
        .reshape([tables_d * k, dc])
        .div_scalar(d as f32);
    let rows = match &embedding.composer.output {
        Some(linear) => rows.matmul(linear.weight.val().detach()),
        None => rows,
    };
    let width = rows.dims()[1];
    let images = rows.reshape([tables_d, k, width]);
    let norms = images.clone().square().sum_dim(2).reshape([tables_d, k]);
    let mut residual =
        embedding.composer.compose(codes.clone(), tables).detach() - targets.detach();
    let mut columns = codes.chunk(d, 1);
    for (j, column) in columns.iter_mut().enumerate() {
        let t = if tables_d == 1 { 0 } else { j };
        let image = images.clone().narrow(0, t, 1).reshape([k, width]);
        let norm = norms.clone().narrow(0, t, 1);
        let one_hot = column.clone().reshape([n, k]);
        let without = residual - one_hot.matmul(image.clone());
        let scores = without
            .clone()
            .matmul(image.clone().transpose())
            .mul_scalar(2.0)
            + norm;
        let best = crate::relax::one_hot_argmax(scores.neg());
        residual = without + best.clone().matmul(image);
        *column = best.reshape([n, 1, k]);
    }
    Tensor::cat(columns, 1)
}

/// `(n/K) / count` for each table row `[D|1, K, 1]`, where `count` is how many of the batch's
/// `n` one-hot codes `[n, D, K]` use it (at least 1).
fn code_usage(codes: Tensor<3>, tables_d: usize) -> Tensor<3> {
    let [n, d, k] = codes.dims();
    let counts = codes.sum_dim(0).reshape([d, k]);
    let counts = if tables_d == 1 {
        counts.sum_dim(0)
    } else {
        counts
    };
    counts
        .clamp_min(1.0)
        .recip()
        .mul_scalar(n as f32 / k as f32)
        .reshape([tables_d, k, 1])
}

/// The RQ start of [`DistillStart::Residual`].
fn residual_start(
    mut embedding: KdEmbedding,
    table: &Tensor<2>,
    margin: f32,
    seed: u64,
) -> Result<KdEmbedding, KdError> {
    let [v, d, k] = embedding.code_logits.dims();
    let [tables_d, _, dc] = embedding.tables.dims();
    let width = table.dims()[1];
    if embedding.composer.lstm.is_some()
        || embedding.composer.output.is_some()
        || embedding.composer.norm.is_some()
        || tables_d != d
        || dc != width
    {
        return Err(KdError::InvalidField {
            config: "DistillConfig",
            field: "start",
            value: "Residual".into(),
            reason: "the RQ start needs linear composition, per-dimension tables, d' = d and no batch norm",
        });
    }
    if !(margin.is_finite() && margin >= 0.0) {
        return Err(KdError::InvalidField {
            config: "DistillConfig",
            field: "start",
            value: format!("Residual {{ margin: {margin} }}"),
            reason: "margin must be finite and ≥ 0",
        });
    }
    let device = embedding.code_logits.device();
    let rq = crate::eval::QuantizerConfig::new(k, d)
        .with_seed(seed)
        .residual(&table.clone().inner())?;
    // Exactly the RQ code at the start: `margin` on it, 0 on every other choice (the random
    // init's logits would put some codes elsewhere whenever the margin is small).
    let mut logits = vec![0.0f32; v * d * k];
    for (i, &c) in rq.codes.iter().enumerate() {
        logits[i * k + c as usize] = margin;
    }
    let tables: Vec<f32> = rq.codebooks.iter().map(|x| x * d as f32).collect();
    embedding.code_logits = embedding.code_logits.map(|_| {
        Tensor::<3>::from_data(TensorData::new(logits, [v, d, k]), &device).set_require_grad(true)
    });
    embedding.tables = embedding.tables.map(|_| {
        Tensor::<3>::from_data(TensorData::new(tables, [d, k, dc]), &device).set_require_grad(true)
    });
    Ok(embedding)
}

/// Adam on the rows of a `[rows, width]` host matrix, with per-row moments and step counts:
/// a row is updated only when it is in the batch, and its bias correction counts its own
/// updates (lazy Adam, as PyTorch's `SparseAdam`).
struct RowAdam {
    values: Vec<f32>,
    first: Vec<f32>,
    second: Vec<f32>,
    steps: Vec<u32>,
    width: usize,
    learning_rate: f32,
}

impl RowAdam {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPSILON: f32 = 1e-8;

    fn new(values: Vec<f32>, width: usize, learning_rate: f64) -> Self {
        let n = values.len();
        Self {
            values,
            first: vec![0.0; n],
            second: vec![0.0; n],
            steps: vec![0; n / width],
            width,
            learning_rate: learning_rate as f32,
        }
    }

    /// The rows `rows`, concatenated.
    fn gather(&self, rows: &[i64]) -> Vec<f32> {
        let w = self.width;
        rows.iter()
            .flat_map(|&r| &self.values[r as usize * w..(r as usize + 1) * w])
            .copied()
            .collect()
    }

    /// Sets each of `rows` to `margin` on its one-hot code `codes` (`[rows, D, K]`) and 0
    /// elsewhere, with fresh Adam moments.
    fn set_codes(&mut self, rows: &[i64], codes: &Tensor<3>, margin: f32) {
        let hot: Vec<f32> = codes.clone().into_data().iter::<f32>().collect();
        let w = self.width;
        for (&r, hot) in rows.iter().zip(hot.chunks_exact(w)) {
            let at = r as usize * w..(r as usize + 1) * w;
            for (z, &h) in self.values[at.clone()].iter_mut().zip(hot) {
                *z = if h > 0.5 { margin } else { 0.0 };
            }
            self.first[at.clone()].fill(0.0);
            self.second[at].fill(0.0);
            self.steps[r as usize] = 0;
        }
    }

    /// One Adam step at `factor ×` the learning rate on each of `rows` with its gradient row
    /// (`grad` is `[rows.len(), width]`).
    fn step(&mut self, rows: &[i64], grad: &[f32], factor: f32) {
        let lr = self.learning_rate * factor;
        let w = self.width;
        for (&r, g) in rows.iter().zip(grad.chunks_exact(w)) {
            let r = r as usize;
            self.steps[r] += 1;
            let t = self.steps[r] as i32;
            let c1 = 1.0 - Self::BETA1.powi(t);
            let c2 = 1.0 - Self::BETA2.powi(t);
            let span = r * w..(r + 1) * w;
            for (((x, m), s), &g) in self.values[span.clone()]
                .iter_mut()
                .zip(&mut self.first[span.clone()])
                .zip(&mut self.second[span])
                .zip(g)
            {
                *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
                *s = Self::BETA2 * *s + (1.0 - Self::BETA2) * g * g;
                *x -= lr * (*m / c1) / ((*s / c2).sqrt() + Self::EPSILON);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KdEmbeddingConfig;
    use crate::relax::one_hot_argmax;
    use burn::tensor::Distribution;

    /// Each row's squared error `[n]` of `codes` against `targets`.
    fn row_losses(e: &KdEmbedding, codes: Tensor<3>, targets: &Tensor<2>) -> Vec<f32> {
        let out = e.composer.compose(codes, e.tables.val()) - targets.clone();
        out.square().sum_dim(1).into_data().iter::<f32>().collect()
    }

    /// One sweep never raises a row's loss, and its last dimension's choice is the brute-force
    /// best given the others — with per-dimension tables, shared tables, and an output map.
    #[test]
    fn the_exact_sweep_is_coordinate_descent() {
        let device = kindling_testing::device();
        let (v, d, k, dims) = (40, 12, 5, 4);
        for (d_code, shared) in [(12, false), (12, true), (6, false)] {
            let e = KdEmbeddingConfig::new(v, d)
                .with_choices(k)
                .with_code_length(dims)
                .with_d_code(d_code)
                .with_shared_tables(shared)
                .init_with_seed(3, &device);
            let targets = Tensor::<2>::random([v, d], Distribution::Normal(0.0, 1.0), &device);
            let codes = one_hot_argmax(e.code_logits.val());
            let after = exact_sweep(&e, codes.clone(), targets.clone());
            let (before_loss, after_loss) = (
                row_losses(&e, codes.clone(), &targets),
                row_losses(&e, after.clone(), &targets),
            );
            assert!(
                before_loss
                    .iter()
                    .zip(&after_loss)
                    .all(|(b, a)| *a <= b + 1e-4 * b.max(1.0)),
                "{before_loss:?} → {after_loss:?}"
            );
            assert!(after_loss.iter().sum::<f32>() < 0.9 * before_loss.iter().sum::<f32>());
            let chosen: Vec<i64> = after.clone().argmax(2).into_data().iter::<i64>().collect();
            for row in 0..v {
                let losses: Vec<f32> = (0..k)
                    .map(|c| {
                        let mut codes: Vec<i64> = chosen[row * dims..(row + 1) * dims].to_vec();
                        codes[dims - 1] = c as i64;
                        let hot: Vec<f32> = codes
                            .iter()
                            .flat_map(|&x| (0..k).map(move |i| f32::from(i as i64 == x)))
                            .collect();
                        let one =
                            Tensor::<3>::from_data(TensorData::new(hot, [1, dims, k]), &device);
                        let target = targets.clone().narrow(0, row, 1);
                        row_losses(&e, one, &target)[0]
                    })
                    .collect();
                let best = losses[chosen[row * dims + dims - 1] as usize];
                assert!(
                    losses.iter().all(|&l| best <= l + 1e-4 * l.max(1.0)),
                    "row {row}: chose {best}, options {losses:?}"
                );
            }
        }
    }
}

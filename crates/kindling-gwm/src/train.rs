use std::ops::ControlFlow;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use crate::PictureGwm;
use crate::languages::PictureSet;

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// `½(f(P) − y)²`, with `y = 1` in the language and 0 outside; a picture is classified a
    /// member when `f(P) > ½`.
    Regression,
    /// The logistic loss `log(1 + exp(−(2y − 1)·f(P)))`; a member when `f(P) > 0`.
    Logistic,
}

impl Objective {
    /// The mean loss of values `f` against labels `y`.
    pub fn loss(self, f: Tensor<1>, y: Tensor<1>) -> Tensor<1> {
        match self {
            Objective::Regression => (f - y).square().mean().mul_scalar(0.5),
            Objective::Logistic => {
                let sign = y.mul_scalar(2.0).sub_scalar(1.0);
                burn::tensor::activation::softplus((f * sign).neg(), 1.0).mean()
            }
        }
    }

    /// The decision threshold on `f`.
    pub fn threshold(self) -> f32 {
        match self {
            Objective::Regression => 0.5,
            Objective::Logistic => 0.0,
        }
    }
}

/// Settings of [`train`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Training {
    /// Passes over the training set.
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
    /// Mini-batch size (`None`: the whole set).
    pub batch: Option<usize>,
    /// The objective.
    pub objective: Objective,
}

impl Default for Training {
    fn default() -> Self {
        Self {
            epochs: 300,
            lr: 0.02,
            batch: None,
            objective: Objective::Regression,
        }
    }
}

/// Trains `model` on `set` with any burn optimizer. `progress(epoch, loss)` is called after each
/// epoch; `Break` stops early. Returns the model and the per-epoch mean losses.
pub fn train(
    model: PictureGwm,
    optim: &mut ModuleOptimizer,
    set: &PictureSet,
    settings: Training,
    progress: impl FnMut(usize, f32) -> ControlFlow<()>,
) -> (PictureGwm, Vec<f32>) {
    train_sizes(model, optim, core::slice::from_ref(set), settings, progress)
}

/// Trains `model` on pictures of several sizes at once: `sets` holds one [`PictureSet`] per
/// size. Each epoch takes the sets' mini-batches in turn (batch 1 of every set, then batch 2 of
/// every set, …), so every step sees one size and no size dominates the end of an epoch; the
/// tied tensors are thereby fitted for repeated use at different positions and sizes. The loss
/// reported per epoch is the mean over all pictures. Empty sets are skipped.
pub fn train_sizes(
    mut model: PictureGwm,
    optim: &mut ModuleOptimizer,
    sets: &[PictureSet],
    settings: Training,
    mut progress: impl FnMut(usize, f32) -> ControlFlow<()>,
) -> (PictureGwm, Vec<f32>) {
    let device = model.tensors[0].val().device();
    let sets: Vec<_> = sets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let n = s.len();
            let batch = settings.batch.unwrap_or(n).clamp(1, n);
            (s.tensors(&device), n, batch)
        })
        .collect();
    let rounds = sets
        .iter()
        .map(|(_, n, batch)| n.div_ceil(*batch))
        .max()
        .unwrap_or(0);
    let mut losses = Vec::with_capacity(settings.epochs);
    for epoch in 0..settings.epochs {
        let mut total = 0.0;
        let mut count = 0;
        for round in 0..rounds {
            for ((pictures, labels), n, batch) in &sets {
                let start = round * batch;
                if start >= *n {
                    continue;
                }
                let end = (start + batch).min(*n);
                let [_, h, w] = pictures.dims();
                let x = pictures.clone().slice([start..end, 0..h, 0..w]);
                let y = labels.clone().slice(start..end);
                let loss = settings.objective.loss(model.forward(x), y);
                total += loss.clone().into_scalar::<f32>() * (end - start) as f32;
                count += end - start;
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(settings.lr, model, grads);
            }
        }
        let mean = total / count.max(1) as f32;
        losses.push(mean);
        if progress(epoch, mean).is_break() {
            break;
        }
    }
    (model, losses)
}

/// The area under the ROC curve of the model's values: the probability that a random member of
/// `positives` gets a higher value than a random picture of `negatives` (ties count ½). 1 is a
/// perfect ranking, 0.5 chance. It does not depend on a threshold, so it measures transfer to
/// another picture size even when the value scale has drifted. `NaN` when either set is empty.
pub fn auc(model: &PictureGwm, positives: &PictureSet, negatives: &PictureSet) -> f64 {
    if positives.is_empty() || negatives.is_empty() {
        return f64::NAN;
    }
    let device = model.tensors[0].val().device();
    let values = |set: &PictureSet| -> Vec<f32> {
        let (pictures, _) = set.tensors(&device);
        model.forward(pictures).try_into_vec_as().expect("values")
    };
    let mut scored: Vec<(f32, bool)> = values(positives)
        .into_iter()
        .map(|v| (v, true))
        .chain(values(negatives).into_iter().map(|v| (v, false)))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann–Whitney: the sum of the positives' ranks (ties share their mean rank).
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * scored[i..j].iter().filter(|s| s.1).count() as f64;
        i = j;
    }
    let (p, n) = (positives.len() as f64, negatives.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// Fraction of `set` classified correctly (pictures of any size the model accepts).
pub fn accuracy(model: &PictureGwm, set: &PictureSet, objective: Objective) -> f32 {
    if set.is_empty() {
        return f32::NAN;
    }
    let device = model.tensors[0].val().device();
    let (pictures, labels) = set.tensors(&device);
    let predicted = model
        .forward(pictures)
        .greater_elem(objective.threshold())
        .float();
    let correct = predicted.equal(labels).int().sum().into_scalar::<i64>();
    correct as f32 / set.len() as f32
}

/// The pictures of `set` the model gets wrong.
pub fn mistakes<'a>(
    model: &PictureGwm,
    set: &'a PictureSet,
    objective: Objective,
) -> Vec<(&'a crate::languages::Picture, f32)> {
    if set.is_empty() {
        return Vec::new();
    }
    let device = model.tensors[0].val().device();
    let (pictures, _) = set.tensors(&device);
    let values: Vec<f32> = model.forward(pictures).try_into_vec_as().expect("values");
    set.pictures
        .iter()
        .zip(&set.labels)
        .zip(values)
        .filter(|((_, y), f)| (*f > objective.threshold()) != (**y > 0.5))
        .map(|((p, _), f)| (p, f))
        .collect()
}

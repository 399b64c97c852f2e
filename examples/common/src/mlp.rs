//! A small multilayer perceptron for the digits, with seeded host-side initialisation so runs are
//! reproducible on every backend, and a plain training loop shared by the examples.

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, Relu};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::digits::{CLASSES, DigitsSet, PIXELS};

/// `64 → hidden → 10` with a ReLU: about 4.8 k parameters at the default 64 hidden units.
#[derive(Module, Debug)]
pub struct Mlp {
    hidden: Linear,
    activation: Relu,
    output: Linear,
}

impl Mlp {
    /// A new network whose weights are drawn from `seed` (uniform in ±1/√fan_in, burn's
    /// default scheme), the same on every backend.
    pub fn new(hidden: usize, seed: u64, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Self {
            hidden: seeded_linear(PIXELS, hidden, &mut rng, device),
            activation: Relu::new(),
            output: seeded_linear(hidden, CLASSES, &mut rng, device),
        }
    }

    /// The same network with the hidden layer frozen (`no_grad`): only the output layer trains.
    pub fn freeze_hidden(mut self) -> Self {
        self.hidden = self.hidden.no_grad();
        self
    }

    /// Class scores `[batch, 10]` for images `[batch, 64]`.
    pub fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        let x = self.activation.forward(self.hidden.forward(images));
        self.output.forward(x)
    }

    /// The hidden layer (`64 → hidden`).
    pub fn hidden(&self) -> &Linear {
        &self.hidden
    }

    /// The output layer (`hidden → 10`).
    pub fn output(&self) -> &Linear {
        &self.output
    }

    /// Mean cross-entropy over a set.
    pub fn loss(&self, set: &DigitsSet) -> Tensor<1> {
        cross_entropy(self.forward(set.images.clone()), set.labels.clone())
    }

    /// Fraction of a set classified correctly.
    pub fn accuracy(&self, set: &DigitsSet) -> f32 {
        let predicted: Tensor<1, Int> = self.forward(set.images.clone()).argmax(1).flatten(0, 1);
        let correct = predicted
            .equal(set.labels.clone())
            .int()
            .sum()
            .into_scalar::<i64>();
        correct as f32 / set.len() as f32
    }
}

/// Mean cross-entropy of class scores `[batch, 10]` against labels `[batch]`.
pub(crate) fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, labels)
}

fn seeded_linear(fan_in: usize, fan_out: usize, rng: &mut ChaCha8Rng, device: &Device) -> Linear {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
    let weight = draw(fan_in * fan_out);
    let bias = draw(fan_out);
    Linear {
        weight: Param::from_data(TensorData::new(weight, [fan_in, fan_out]), device),
        bias: Some(Param::from_data(TensorData::new(bias, [fan_out]), device)),
    }
}

// ANCHOR: train_epoch
/// One epoch of mini-batch training in a plain loop: the set is visited in a seeded random
/// order, in batches of `batch_size`. Returns the trained model and the mean training loss.
pub fn train_epoch(
    mut model: Mlp,
    optimizer: &mut ModuleOptimizer,
    set: &DigitsSet,
    batch_size: usize,
    lr: f64,
    seed: u64,
) -> (Mlp, f32) {
    let device = set.images.device();
    let mut order: Vec<i64> = (0..set.len() as i64).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut ChaCha8Rng::seed_from_u64(seed));
    let order = Tensor::<1, Int>::from_data(TensorData::new(order, [set.len()]), &device);
    let shuffled = DigitsSet {
        images: set.images.clone().select(0, order.clone()),
        labels: set.labels.clone().select(0, order),
    };
    let mut total = 0.0;
    let mut batches = 0;
    for start in (0..set.len()).step_by(batch_size) {
        let batch = shuffled.slice(start..(start + batch_size).min(set.len()));
        let loss = model.loss(&batch);
        total += loss.clone().into_scalar::<f32>();
        batches += 1;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(lr, model, grads);
    }
    (model, total / batches as f32)
}
// ANCHOR_END: train_epoch

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digits::Digits;
    use burn::optim::AdamConfig;

    #[test]
    fn seeded_init_is_reproducible() {
        let device = kindling_testing::device();
        let a = Mlp::new(16, 3, &device);
        let b = Mlp::new(16, 3, &device);
        let w = |m: &Mlp| kindling_testing::to_vec(&m.hidden.weight.val());
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&Mlp::new(16, 4, &device)));
    }

    #[test]
    fn a_few_epochs_of_adam_learn_the_digits() {
        let device = kindling_testing::autodiff_device();
        let split = Digits::load().unwrap().split(0.25, 1, &device);
        let mut model = Mlp::new(32, 1, &device);
        let mut optim = AdamConfig::new().init();
        let chance = model.accuracy(&split.test);
        let mut losses = Vec::new();
        for epoch in 0..4 {
            let (m, loss) = train_epoch(model, &mut optim, &split.train, 64, 1e-2, epoch);
            model = m;
            losses.push(loss);
        }
        let acc = model.accuracy(&split.test);
        assert!(losses[3] < losses[0], "{losses:?}");
        assert!(
            acc > 0.85 && acc > chance,
            "test accuracy {acc} (before training {chance})"
        );
    }
}

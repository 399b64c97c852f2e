//! The digits and the [`Mlp`] in burn-train's terms, for the examples and tests that train with
//! a `Learner`: one image as a dataset item, a batcher that stacks items into a [`DigitsSet`],
//! and the MLP's `TrainStep` / `InferenceStep` (mean cross-entropy, classification output). The
//! examples render `Learner` runs with `kindling_optim::EpochRenderer`.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};

use crate::digits::{Digits, DigitsSet, PIXELS};
use crate::mlp::{Mlp, cross_entropy};

/// One image and its label, as a dataset item.
#[derive(Debug, Clone, PartialEq)]
pub struct DigitItem {
    /// 64 pixel values in `[0, 1]`.
    pub pixels: [f32; PIXELS],
    /// 0..=9.
    pub label: u8,
}

impl Digits {
    /// The images at `indices`, in that order, as dataset items (for burn's `InMemDataset`).
    pub fn items(&self, indices: &[usize]) -> Vec<DigitItem> {
        indices
            .iter()
            .map(|&i| DigitItem {
                pixels: self.pixels[i * PIXELS..(i + 1) * PIXELS]
                    .try_into()
                    .expect("64 pixels"),
                label: self.labels[i],
            })
            .collect()
    }
}

/// Stacks items into a batch on the loader's device.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigitsBatcher;

impl Batcher<DigitItem, DigitsSet> for DigitsBatcher {
    fn batch(&self, items: Vec<DigitItem>, device: &Device) -> DigitsSet {
        let n = items.len();
        let pixels: Vec<f32> = items.iter().flat_map(|item| item.pixels).collect();
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        DigitsSet {
            images: Tensor::from_data(TensorData::new(pixels, [n, PIXELS]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

impl Mlp {
    fn classify(&self, batch: DigitsSet) -> ClassificationOutput {
        let output = self.forward(batch.images);
        let loss = cross_entropy(output.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, output, batch.labels)
    }
}

impl TrainStep for Mlp {
    type Input = DigitsSet;
    type Output = ClassificationOutput;

    fn step(&self, batch: DigitsSet) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Mlp {
    type Input = DigitsSet;
    type Output = ClassificationOutput;

    fn step(&self, batch: DigitsSet) -> ClassificationOutput {
        self.classify(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_the_items_in_order() {
        let digits = Digits::load().unwrap();
        let device = Device::flex();
        let items = digits.items(&[5, 0, 9]);
        let batch = DigitsBatcher.batch(items, &device);
        let expected = digits.subset(&[5, 0, 9], &device);
        assert_eq!(batch.images.into_data(), expected.images.into_data());
        assert_eq!(batch.labels.into_data(), expected.labels.into_data());
    }
}

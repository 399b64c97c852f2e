//! The digits and the [`Mlp`] in burn-train's terms, for the examples and tests that train with
//! a `Learner`: one image as a dataset item, a batcher that stacks items into a [`DigitsSet`],
//! the MLP's `TrainStep` / `InferenceStep` (mean cross-entropy, classification output), and a
//! renderer that prints one line of metrics per epoch and split.

use std::collections::HashMap;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
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

/// A quiet burn-train renderer: at the end of each split that updated metrics it prints one line
/// with the epoch's value of each of them, e.g.
/// `epoch 2 valid  Accuracy 95.81 %`. Use it with `SupervisedTraining::renderer`.
#[derive(Debug, Default)]
pub struct EpochRenderer {
    names: HashMap<MetricId, String>,
    /// (metric, epoch value) in the order they first reported in this split.
    values: Vec<(MetricId, String)>,
    epoch: usize,
    split: String,
}

impl EpochRenderer {
    /// A renderer with nothing to show yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn record(&mut self, state: MetricState) {
        let MetricState::Numeric(entry, _) = state else {
            return;
        };
        // burn formats numeric entries as "epoch <running> <unit> - batch <current> <unit>".
        let formatted = &entry.serialized_entry.formatted;
        let running = formatted
            .strip_prefix("epoch ")
            .and_then(|rest| rest.split(" - batch").next())
            .unwrap_or(formatted)
            .to_string();
        match self
            .values
            .iter_mut()
            .find(|(id, _)| *id == entry.metric_id)
        {
            Some((_, value)) => *value = running,
            None => self.values.push((entry.metric_id, running)),
        }
    }
}

impl MetricsRendererTraining for EpochRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }
}

impl TrainingProgressLogger for EpochRenderer {
    fn start(
        &mut self,
        _total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epoch = starting_epoch.saturating_sub(1);
    }

    fn update_epoch(&mut self, _epoch: usize) {}

    fn start_split(&mut self, split: &str, _total_items: usize) {
        if split == "train" {
            self.epoch += 1;
        }
        self.split = split.to_string();
        self.values.clear();
    }

    fn update_split(&mut self, _items_processed: usize) {}

    fn end_split(&mut self) {
        if self.values.is_empty() {
            return;
        }
        let line: Vec<String> = self
            .values
            .iter()
            .map(|(id, value)| {
                let name = self.names.get(id).map_or("?", String::as_str);
                format!("{name} {value}")
            })
            .collect();
        println!(
            "epoch {} {:<5}  {}",
            self.epoch,
            self.split,
            line.join(" · ")
        );
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for EpochRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}

    fn start_test(&mut self, name: &str, total_items: usize) {
        self.start_split(name, total_items);
    }

    fn update_test_progress(&mut self, _items_processed: usize) {}

    fn end_test(&mut self) {
        self.end_split();
    }

    fn end_global_progress(&mut self) {}

    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for EpochRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.record(state);
    }
}

impl MetricsRenderer for EpochRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
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

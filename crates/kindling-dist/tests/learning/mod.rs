//! Shared by the `Learner` tests (worker threads and MPI): the digits as dataset items, their
//! loaders, and a quiet `SupervisedTraining` with a `CompressedDdp` strategy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::train::{SupervisedTraining, TrainingStrategy};
use kindling_dist::{CompressedDdp, Reducer};
use kindling_examples_common::digits::{Digits, DigitsSet};
use kindling_examples_common::learner::{DigitItem, DigitsBatcher};
use kindling_examples_common::mlp::Mlp;

/// Per-worker batch size.
pub const BATCH: usize = 32;

/// The digits' training and validation items (the 75/25 split of seed 0).
pub struct Data {
    /// Training items.
    pub train: Vec<DigitItem>,
    /// Validation items.
    pub valid: Vec<DigitItem>,
}

/// The split, as items.
pub fn data() -> Data {
    let digits = Digits::load().unwrap();
    let (train, valid) = digits.split_indices(0.25, 0);
    Data {
        train: digits.items(&train),
        valid: digits.items(&valid),
    }
}

/// Batches in order (no shuffling), so runs are reproducible and comparable with a plain loop.
pub fn loader(items: &[DigitItem]) -> Arc<dyn DataLoader<DigitsSet>> {
    DataLoaderBuilder::new(DigitsBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new(items.to_vec()))
}

/// A fresh scratch directory for one run's artifacts.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kindling-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `epochs` of training on the digits with `strategy`, without the application logger.
pub fn training<R: Reducer + Clone + 'static>(
    dir: &Path,
    data: &Data,
    strategy: Arc<CompressedDdp<R>>,
    epochs: usize,
) -> SupervisedTraining<Mlp> {
    SupervisedTraining::new(dir, loader(&data.train), loader(&data.valid))
        .num_epochs(epochs)
        .with_application_logger(None)
        .with_training_strategy(TrainingStrategy::Custom(strategy))
}

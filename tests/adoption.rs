//! The four ways a burn user adopts kindling, as the book's "Using kindling in your project" page
//! shows them (included from this file between `ANCHOR` markers, so every snippet there is
//! compiled and run): an optimizer inside `Learner`, a codec on its own, data-parallel training
//! with `CompressedDdp`, and a module in place of a burn layer. Each runs on the device
//! `kindling-testing` selects and checks that it did what the page claims.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use kindling_examples_common::digits::{Digits, DigitsSet};
use kindling_examples_common::learner::{DigitItem, DigitsBatcher};
use kindling_examples_common::mlp::Mlp;

/// The digits' 75/25 split as items, and a loader of them.
fn digits() -> (Vec<DigitItem>, Vec<DigitItem>) {
    let digits = Digits::load().unwrap();
    let (train, valid) = digits.split_indices(0.25, 0);
    (digits.items(&train), digits.items(&valid))
}

fn loader(items: &[DigitItem]) -> Arc<dyn DataLoader<DigitsSet>> {
    DataLoaderBuilder::new(DigitsBatcher)
        .batch_size(32)
        .shuffle(0)
        .build(InMemDataset::new(items.to_vec()))
}

fn accuracy(model: &Mlp, items: &[DigitItem]) -> f32 {
    let device = kindling_testing::device();
    model
        .clone()
        .fork(&device)
        .accuracy(&DigitsBatcher.batch(items.to_vec(), &device))
}

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kindling-adoption-{name}-{}", std::process::id()))
}

#[test]
fn an_optimizer_inside_learner() {
    let (train, valid) = digits();
    let device = kindling_testing::autodiff_device();
    let dir = scratch("optimizer");
    let model = Mlp::new(64, 0, &device);
    // ANCHOR: optimizer
    use kindling_optim::{EpochRenderer, SignumConfig};

    let optim = SignumConfig::new().with_momentum(0.9).init(); // like AdamConfig::new().init()
    let result = SupervisedTraining::new(&dir, loader(&train), loader(&valid))
        .num_epochs(3)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .renderer(Box::new(EpochRenderer::new())) // one line per epoch and split
        .with_application_logger(None)
        .launch(Learner::new(model, optim, 1e-3));
    // ANCHOR_END: optimizer
    let _ = std::fs::remove_dir_all(&dir);
    let acc = accuracy(&result.model, &valid);
    assert!(acc > 0.85, "Signum in Learner: held-out accuracy {acc}");
}

#[test]
fn a_codec_on_its_own() {
    let device = kindling_testing::device();
    // ANCHOR: codec
    use kindling_compress::rand::{SeedableRng, rngs::ChaCha8Rng};
    use kindling_compress::{Compressor, Payload, Qsgd};

    let grad = Tensor::<2>::random([256, 64], burn::tensor::Distribution::Default, &device);
    let mut codec = Qsgd::new(16).unwrap().with_bucket(512).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0); // kindling_compress re-exports burn's rand
    let payload = codec.compress(grad.clone(), &mut rng).unwrap();
    let bytes = payload.into_bytes(); // what crosses the network: 4.6 bits per entry here
    let decoded: Tensor<2> = codec
        .decompress(&Payload::from_bytes(bytes.clone()).unwrap(), &device)
        .unwrap(); // an unbiased estimate of `grad`
    // ANCHOR_END: codec
    assert_eq!(decoded.dims(), [256, 64]);
    let bits = 8.0 * bytes.len() as f64 / (256.0 * 64.0);
    assert!(bits < 6.0, "{bits} bits per entry");
}

#[test]
fn compressed_data_parallel_training() {
    let (train, valid) = digits();
    let device = kindling_testing::autodiff_device();
    let dir = scratch("ddp");
    let model = Mlp::new(64, 0, &device);
    // ANCHOR: ddp
    use burn::optim::SgdConfig;
    use kindling_compress::Qsgd;
    use kindling_dist::{CompressedDdp, ExchangeMetric, Gathered};

    // Four workers (threads here; `CompressedDdp::with_communicator(Mpi::init()?, …)` for one
    // process per rank under mpirun), each on its own shard, agreeing through QSGD.
    let qsgd = Gathered::new(Qsgd::new(16).unwrap().with_bucket(512).unwrap());
    let ddp = Arc::new(CompressedDdp::new(vec![device.clone(); 4], qsgd).unwrap());
    let result = SupervisedTraining::new(&dir, loader(&train), loader(&valid))
        .num_epochs(3)
        .metric_train_numeric(LossMetric::new())
        .metric_train_numeric(ExchangeMetric::compression_ratio(&ddp))
        .with_training_strategy(TrainingStrategy::Custom(ddp.clone()))
        .with_application_logger(None)
        .launch(Learner::new(model, SgdConfig::new().init(), 0.5));
    println!("{:.1}× less traffic than dense", ddp.totals().ratio());
    // ANCHOR_END: ddp
    let _ = std::fs::remove_dir_all(&dir);
    assert!(result.error.is_none(), "{:?}", result.error);
    let acc = accuracy(&result.model, &valid);
    assert!(acc > 0.85, "CompressedDdp: held-out accuracy {acc}");
    assert!(ddp.totals().ratio() > 5.0, "{}", ddp.totals().ratio());
}

#[test]
fn a_module_in_place_of_a_burn_layer() {
    let device: Device = kindling_testing::autodiff_device();
    // ANCHOR: module
    use kindling_kdcode::{CompactKdEmbedding, KdEmbeddingConfig};

    // burn: EmbeddingConfig::new(10_000, 64).init(&device)
    let embedding = KdEmbeddingConfig::new(10_000, 64)
        .with_choices(16)
        .with_code_length(8)
        .init(&device);
    let ids = Tensor::<2, Int>::from_ints([[3, 14, 159], [2, 65, 358]], &device);
    let vectors = embedding.forward(ids); // [2, 3, 64], trainable end to end
    // After training: 8 codes of 4 bits per word, small tables, the composition.
    let compact = CompactKdEmbedding::from_trained(&embedding);
    // ANCHOR_END: module
    assert_eq!(vectors.dims(), [2, 3, 64]);
    let report = compact.size_report();
    assert!(report.ratio() > 5.0, "{report}");
}

//! `CompressedDdp` inside burn-train's `Learner`: it trains, it is the plain data-parallel loop
//! step for step, its metrics reach burn's metric store, resuming from a checkpoint reproduces the
//! uninterrupted run, and a failing or hung worker ends the run with an error naming its rank.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::Device;
use burn::train::logger::{InMemoryMetricLogger, MetricLogger};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{AccuracyMetric, LossMetric, MetricDefinition, NumericEntry};
use burn::train::{Learner, LearningResult, SupervisedTraining, TrainingError, TrainingStrategy};
use kindling_compress::Qsgd;
use kindling_compress::powersgd::PowerSgdConfig;
use kindling_dist::*;
use kindling_examples_common::digits::DigitsSet;
use kindling_examples_common::learner::{DigitItem, DigitsBatcher};
use kindling_examples_common::mlp::Mlp;

mod learning;
use learning::*;

const WORKERS: usize = 4;

/// A metric logger the test can read after `launch` has consumed the builder.
#[derive(Clone, Default)]
struct SharedLogger(Arc<Mutex<InMemoryMetricLogger>>);

impl MetricLogger for SharedLogger {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        self.0.lock().unwrap().log(update, epoch, split)
    }
    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        self.0.lock().unwrap().read_numeric(name, epoch, split)
    }
    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.0.lock().unwrap().log_metric_definition(definition)
    }
    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        self.0.lock().unwrap().log_epoch_summary(summary)
    }
}

fn devices() -> Vec<Device> {
    vec![kindling_testing::autodiff_device(); WORKERS]
}

fn accuracy(result: &LearningResult<Mlp>, data: &Data) -> f32 {
    let device = kindling_testing::device();
    let valid = DigitsBatcher.batch(data.valid.clone(), &device);
    result.model.clone().fork(&device).accuracy(&valid)
}

#[test]
fn qsgd_trains_the_digits_inside_a_learner_and_reports_its_traffic() {
    let data = data();
    let dir = scratch("learner-qsgd");
    let ddp = Arc::new(
        CompressedDdp::new(devices(), Gathered::new(Qsgd::new(16).unwrap()))
            .unwrap()
            .seed(3),
    );
    let logger = SharedLogger::default();
    let result = training(&dir, &data, ddp.clone(), 3)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .metric_train_numeric(ExchangeMetric::wire_megabytes(&ddp))
        .metric_train_numeric(ExchangeMetric::compression_ratio(&ddp))
        .with_metric_logger(logger.clone())
        .launch(Learner::new(
            Mlp::new(64, 1, &devices()[0]),
            SgdConfig::new().init(),
            0.5,
        ));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(result.error.is_none(), "{:?}", result.error);

    let accuracy = accuracy(&result, &data);
    assert!(accuracy > 0.85, "accuracy after 3 epochs: {accuracy}");

    // 1348 training items: 4 shards of 337, 11 batches each (10 of 32, one of 17), 3 epochs.
    let totals = ddp.totals();
    let steps = 3 * 11;
    let params = 64 * 64 + 64 + 64 * 10 + 10;
    assert_eq!(totals.raw_bytes, (4 * params * steps) as u64);
    assert!(totals.ratio() > 5.0, "QSGD s=16 ratio {}", totals.ratio());

    // The metrics reach burn's store: one entry per step, adding up to the strategy's totals.
    let mut logger = logger;
    let mut wire_mb = 0.0;
    for epoch in 1..=3 {
        let mut read = |name: &str| -> (Vec<f64>, f64) {
            let entries = logger.read_numeric(name, epoch, &Split::Train).unwrap();
            let (steps, last): (Vec<_>, Vec<_>) = entries
                .iter()
                .partition(|e| !matches!(e, NumericEntry::Final(_)));
            assert_eq!((steps.len(), last.len()), (11, 1), "{name}, epoch {epoch}");
            (
                steps.iter().map(|e| e.current()).collect(),
                last[0].current(),
            )
        };
        let (step_mb, epoch_mb) = read("Wire MB");
        wire_mb += step_mb.iter().sum::<f64>();
        assert!((epoch_mb - step_mb.iter().sum::<f64>() / 11.0).abs() < 1e-9);
        let (_, epoch_ratio) = read("Compression Ratio");
        assert!((epoch_ratio - totals.ratio()).abs() < 0.05 * totals.ratio());
    }
    assert!((wire_mb - totals.wire_bytes as f64 / 1e6).abs() < 1e-6);
}

/// With dense all-reduce and SGD the strategy is exactly the plain data-parallel loop over the
/// same shards and batches: the same parameters bit for bit.
#[test]
fn a_learner_run_is_the_plain_loop_step_for_step() {
    let data = data();
    let dir = scratch("learner-plain");
    let ddp = Arc::new(CompressedDdp::new(devices(), Dense::new()).unwrap());
    let lr = 0.3;
    let result = training(&dir, &data, ddp, 2)
        .with_metric_logger(InMemoryMetricLogger::new())
        .launch(Learner::new(
            Mlp::new(32, 2, &devices()[0]),
            SgdConfig::new().init(),
            lr,
        ));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(result.error.is_none(), "{:?}", result.error);

    let per = data.train.len() / WORKERS;
    let train = Arc::new(data.train);
    let plain = run_workers(WORKERS, std::time::Duration::from_secs(60), move |group| {
        let device = kindling_testing::autodiff_device();
        let rank = group.rank();
        let shard = &train[rank * per..(rank + 1) * per];
        let mut trainer = DataParallel::new(group, Dense::new(), 0);
        let mut model = Mlp::new(32, 2, &device);
        let mut optim = SgdConfig::new().init();
        for _ in 0..2 {
            for batch in shard.chunks(BATCH) {
                let batch = DigitsBatcher.batch(batch.to_vec(), &device);
                let grads = GradientsParams::from_grads(model.loss(&batch).backward(), &model);
                model = trainer.step(model, grads, &mut optim, lr)?.0;
            }
        }
        Ok(fingerprint(&model))
    })
    .unwrap();
    assert_eq!(fingerprint(&result.model), plain[0]);
}

/// With `grads_accumulation(2)` a rank exchanges once per two batches, and once more for an
/// epoch's odd last batch: 11 batches a shard make 6 exchanges an epoch.
#[test]
fn gradient_accumulation_exchanges_once_per_accumulated_step() {
    let data = data();
    let dir = scratch("learner-accumulate");
    let ddp = Arc::new(CompressedDdp::new(devices(), Dense::new()).unwrap());
    let result = training(&dir, &data, ddp.clone(), 2)
        .with_metric_logger(InMemoryMetricLogger::new())
        .grads_accumulation(2)
        .launch(Learner::new(
            Mlp::new(8, 0, &devices()[0]),
            SgdConfig::new().init(),
            0.1,
        ));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(result.error.is_none(), "{:?}", result.error);
    let params = 64 * 8 + 8 + 8 * 10 + 10;
    assert_eq!(ddp.totals().raw_bytes, (4 * params * 6 * 2) as u64);
}

/// PowerSGD (error feedback, warm-started Q) with Adam: stopping after epoch 1 and launching again
/// from the learner's checkpoint and the strategy's state directory gives the uninterrupted run's
/// parameters bit for bit.
#[test]
fn resuming_from_a_checkpoint_reproduces_the_uninterrupted_run() {
    let data = data();
    let powersgd = || {
        PowerSgd::new(
            PowerSgdConfig::new(2)
                .unwrap()
                .with_min_compression_rate(1.0)
                .unwrap(),
        )
    };
    let run = |name: &str, epochs: usize, resume: bool| {
        let dir = scratch(name);
        let ddp = Arc::new(
            CompressedDdp::new(devices(), powersgd())
                .unwrap()
                .state_dir(dir.join("reducer")),
        );
        let learner = || {
            Learner::new(
                Mlp::new(32, 4, &devices()[0]),
                AdamConfig::new().init(),
                1e-2,
            )
        };
        let first = training(&dir, &data, ddp.clone(), if resume { 1 } else { epochs })
            .with_metric_logger(InMemoryMetricLogger::new())
            .with_default_checkpointers()
            .launch(learner());
        assert!(first.error.is_none(), "{:?}", first.error);
        let result = if resume {
            let again = Arc::new(
                CompressedDdp::new(devices(), powersgd())
                    .unwrap()
                    .state_dir(dir.join("reducer")),
            );
            training(&dir, &data, again, epochs)
                .with_metric_logger(InMemoryMetricLogger::new())
                .with_default_checkpointers()
                .checkpoint(1)
                .launch(learner())
        } else {
            first
        };
        assert!(result.error.is_none(), "{:?}", result.error);
        let _ = std::fs::remove_dir_all(&dir);
        fingerprint(&result.model)
    };
    assert_eq!(
        run("learner-whole", 2, false),
        run("learner-resumed", 2, true)
    );
}

/// A NaN in one rank's shard makes that rank's QSGD encoding fail: every rank stops, and the
/// learning result carries that rank's error (the others' "a peer failed" follow from it).
#[test]
fn a_failing_worker_ends_the_run_with_its_rank_in_the_error() {
    let mut data = data();
    let per = data.train.len() / WORKERS;
    data.train[2 * per + 5].pixels[7] = f32::NAN;
    let dir = scratch("learner-fault");
    let ddp = Arc::new(
        CompressedDdp::new(devices(), Gathered::new(Qsgd::new(4).unwrap()))
            .unwrap()
            .timeout(std::time::Duration::from_secs(30)),
    );
    let result = training(&dir, &data, ddp, 2)
        .with_metric_logger(InMemoryMetricLogger::new())
        .launch(Learner::new(
            Mlp::new(16, 0, &devices()[0]),
            SgdConfig::new().init(),
            0.1,
        ));
    let _ = std::fs::remove_dir_all(&dir);
    let error = result.error.expect("the run fails");
    let TrainingError::Workers(failures) = error.as_ref() else {
        panic!("expected worker failures, got {error}");
    };
    assert_eq!(
        failures.len(),
        1,
        "only the root cause is reported: {error}"
    );
    assert_eq!(failures[0].device_id, 2, "{error}");
    assert!(failures[0].message.contains("cannot encode"), "{error}");
}

/// A rank stuck outside every collective (its data loader hangs) is abandoned: the launch
/// returns within four timeouts of the hang with an error naming that rank alone, although the
/// hung thread sleeps on.
#[test]
fn a_hung_worker_is_abandoned_within_the_bound() {
    const MARK: f32 = -1.0;
    #[derive(Clone)]
    struct HangOnMark;
    impl Batcher<DigitItem, DigitsSet> for HangOnMark {
        fn batch(&self, items: Vec<DigitItem>, device: &Device) -> DigitsSet {
            if items.iter().any(|item| item.pixels[0] == MARK) {
                std::thread::sleep(Duration::from_secs(600));
            }
            DigitsBatcher.batch(items, device)
        }
    }
    let mut data = data();
    let per = data.train.len() / WORKERS;
    data.train[per + 5].pixels[0] = MARK;
    let dir = scratch("learner-hang");
    let timeout = Duration::from_secs(2);
    let ddp = Arc::new(
        CompressedDdp::new(devices(), Gathered::new(Qsgd::new(4).unwrap()))
            .unwrap()
            .timeout(timeout),
    );
    let train = DataLoaderBuilder::new(HangOnMark)
        .batch_size(BATCH)
        .build(InMemDataset::new(data.train.clone()));
    let start = Instant::now();
    let result = SupervisedTraining::new(&dir, train, loader(&data.valid))
        .num_epochs(1)
        .with_application_logger(None)
        .with_training_strategy(TrainingStrategy::Custom(ddp))
        .with_metric_logger(InMemoryMetricLogger::new())
        .launch(Learner::new(
            Mlp::new(16, 0, &devices()[0]),
            SgdConfig::new().init(),
            0.1,
        ));
    let elapsed = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let error = result.error.expect("the run fails");
    let TrainingError::Workers(failures) = error.as_ref() else {
        panic!("expected worker failures, got {error}");
    };
    assert_eq!(failures.len(), 1, "only the hung rank is reported: {error}");
    assert_eq!(failures[0].device_id, 1, "{error}");
    assert!(failures[0].message.contains("abandoned"), "{error}");
    // Set-up (four learners, the broadcast) takes well under 5 s in a debug build.
    assert!(
        elapsed < 4 * timeout + Duration::from_secs(5),
        "returned after {elapsed:?}"
    );
}

/// A protocol that leaves each rank's gradient as it is (no exchange) lets the replicas drift:
/// the per-step fingerprint check stops every rank at the next step, naming the rank that
/// differs; with the check off, the same run ends "successfully" with drifted replicas.
#[test]
fn diverged_replicas_stop_the_run_at_the_next_step() {
    #[derive(Clone)]
    struct NoExchange;
    impl Reducer for NoExchange {
        fn name(&self) -> String {
            "no exchange".into()
        }
        fn reduce<M: Module>(
            &mut self,
            _: &M,
            grads: GradientsParams,
            _: &mut dyn Communicator,
            _: &mut rand::rngs::ChaCha8Rng,
        ) -> Result<(GradientsParams, StepStats), DistError> {
            Ok((grads, StepStats::default()))
        }
    }
    let data = data();
    let run = |check: bool| {
        let dir = scratch(&format!("learner-diverge-{check}"));
        let ddp = Arc::new(
            CompressedDdp::new(devices(), NoExchange)
                .unwrap()
                .check_replicas(check),
        );
        let result = training(&dir, &data, ddp, 1)
            .with_metric_logger(InMemoryMetricLogger::new())
            .launch(Learner::new(
                Mlp::new(8, 0, &devices()[0]),
                SgdConfig::new().init(),
                0.1,
            ));
        let _ = std::fs::remove_dir_all(&dir);
        result.error
    };
    let error = run(true).expect("the drift is caught");
    let text = error.to_string();
    assert!(
        text.contains("replicas diverged in epoch 1 before batch 1"),
        "{text}"
    );
    assert!(run(false).is_none(), "without the check nothing notices");
}

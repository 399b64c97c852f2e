//! The exchange overhead per step: one data-parallel step's `Reducer::reduce` on a `LocalGroup`
//! of 4 workers, each with its own 1 M-entry gradient split into 20 tensors (20 weight matrices
//! of 50 × 1000), on Flex, for each protocol against `Dense`. Each row keeps one group (4
//! threads, each holding its reducer) for all its samples, so the rows time the steady state of
//! training: PowerSGD's `Q` and residual and error feedback's residual are warm after divan's
//! first samples, as after a training run's first step. A sample is one step on every worker,
//! started and awaited through channels (`barrier` is that overhead alone, the floor to
//! subtract). The `…_per_tensor` rows run the bucketed protocols with one collective per tensor
//! (buckets of 1 byte) instead of one per 25 MiB bucket. `KINDLING_EXCHANGE_WORKERS=2` runs
//! groups of 2 instead, one worker per core on a 2-core machine.
//!
//! Every row runs at three links: `memory` (the plain group: collectives cost their copies, and
//! each payload is decoded by one rank and shared, see `Communicator::shares_memory`), and
//! `10gbit` and `1gbit` (an emulated link, [`run_workers_emulating`], 50 µs latency: each
//! collective also takes the time that link would take to move its bytes, during which encoding
//! and decoding go on). In memory a codec's work has no wire time to win back; on a link it
//! pays when its encoding and decoding take less than the dense bytes' wire time.
//!
//! `cargo bench -p kindling-dist`; the ratios to `dense` at the same link are the figures to
//! report.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::module::Param;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use kindling_compress::powersgd::PowerSgdConfig;
use kindling_compress::{Count, ErrorFeedback, Qsgd, TernGrad, TopK};
use kindling_dist::*;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// The workers of every group: 4, or `KINDLING_EXCHANGE_WORKERS` (to run one per core on a
/// machine with fewer than 4 cores; the figures are for 4).
fn workers() -> usize {
    std::env::var("KINDLING_EXCHANGE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|&w| w > 0)
        .unwrap_or(4)
}
const TENSORS: usize = 20;
const ROWS: usize = 50;
const COLS: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(120);
/// The links every row runs at.
const LINKS: [&str; 3] = ["memory", "10gbit", "1gbit"];

// ANCHOR: emulated
/// The emulated link called `name` (`None`: in memory).
fn link(name: &str) -> Option<NetworkModel> {
    let bits = match name {
        "memory" => return None,
        "10gbit" => 10e9,
        "1gbit" => 1e9,
        other => panic!("no link {other}"),
    };
    Some(NetworkModel::new(workers(), bits, 50e-6, Topology::AllGather).expect("a valid link"))
}

/// `work` on a fresh group of [`workers`], on `link`.
fn run<T: Send + 'static>(
    link: Option<NetworkModel>,
    work: impl Fn(LocalGroup) -> Result<T, DistError> + Send + Sync + 'static,
) -> Vec<T> {
    match link {
        None => run_workers(workers(), TIMEOUT, work),
        Some(link) => run_workers_emulating(link, TIMEOUT, work),
    }
    .expect("exchange")
}
// ANCHOR_END: emulated

fn main() {
    keep_freed_memory();
    for name in LINKS {
        overlap_report(name);
    }
    divan::main();
}

/// Makes glibc's malloc keep freed buffers for reuse instead of returning them to the system.
/// By default a freed block of more than 128 KiB (a gradient, a bucket) goes back to the system,
/// with a threshold that then moves with the program's history, so a step's next buffers may
/// fault in fresh pages or may not: consecutive runs of this bench measured `dense` in memory at
/// 7 and at 18 ms. Fixed thresholds (mmap above 32 MiB, trim above 1 GiB) make every row time
/// the protocol's work, as a caching allocator (jemalloc, mimalloc) would in training.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: glibc's mallopt, called before any other thread exists.
        let set = unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
        };
        assert!(set, "mallopt refused the thresholds");
    }
}

/// Rank 0's figures of one step.
#[derive(Clone, Copy)]
struct Step {
    /// Rank 0's wire bytes.
    wire_bytes: u64,
    /// Rank 0's time in `reduce`, ms.
    step_ms: f64,
    /// Its encode + decode time, ms.
    coding_ms: f64,
    /// The step's wire time: its counted traffic on the link ([`NetworkModel::seconds_sent`]);
    /// in memory, its time in collectives. Ms.
    wire_ms: f64,
}

/// [`workers`] threads on a link, each holding its reducer across steps; [`Group::step`] runs
/// one exchange on every worker.
struct Group {
    go: Vec<Sender<bool>>,
    done: Receiver<Step>,
    workers: Option<JoinHandle<()>>,
}

impl Group {
    fn new<R: Reducer + 'static>(
        link_name: &str,
        make: impl Fn() -> R + Send + Sync + 'static,
    ) -> Self {
        let model = link(link_name);
        let (layers, grads) = setup();
        let (go, receivers): (Vec<_>, Vec<_>) = (0..workers()).map(|_| channel()).unzip();
        let receivers = Arc::new(Mutex::new(
            receivers.into_iter().map(Some).collect::<Vec<_>>(),
        ));
        let (report, done) = channel();
        let workers = std::thread::spawn(move || {
            run(model, move |mut group| {
                let rank = group.rank();
                let go: Receiver<bool> = receivers.lock().unwrap()[rank].take().unwrap();
                let mut reducer = make();
                let mut rng = ChaCha8Rng::seed_from_u64(rank as u64);
                while go.recv() == Ok(true) {
                    let mut g = GradientsParams::new();
                    for (layer, grad) in layers.iter().zip(&grads[rank]) {
                        g.register(layer.weight.id, grad.clone());
                    }
                    let before = group.traffic();
                    let start = Instant::now();
                    let (agreed, stats) = reducer.reduce(&layers, g, &mut group, &mut rng)?;
                    for layer in &layers {
                        let out: Tensor<2> = agreed.get(layer.weight.id).expect("aggregated");
                        out.device().sync().expect("sync");
                    }
                    let step_ms = start.elapsed().as_secs_f64() * 1e3;
                    let after = group.traffic();
                    let (sent, rounds) = (after.sent - before.sent, after.rounds - before.rounds);
                    let wire_ms = match model {
                        Some(link) => link.seconds_sent(sent, rounds) * 1e3,
                        None => stats.exchange.as_secs_f64() * 1e3,
                    };
                    if rank == 0 {
                        let coding_ms = (stats.encode + stats.decode).as_secs_f64() * 1e3;
                        let step = Step {
                            wire_bytes: stats.wire_bytes,
                            step_ms,
                            coding_ms,
                            wire_ms,
                        };
                        report.send(step).expect("bench listening");
                    }
                    group.barrier()?;
                }
                Ok(())
            });
        });
        Self {
            go,
            done,
            workers: Some(workers),
        }
    }

    /// One step on every worker; rank 0's figures.
    fn step(&self) -> Step {
        for go in &self.go {
            go.send(true).expect("workers running");
        }
        self.done.recv().expect("a step")
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for go in &self.go {
            let _ = go.send(false);
        }
        if let Some(workers) = self.workers.take() {
            workers.join().expect("workers");
        }
    }
}

/// Rank 0's step time against its encode + decode time and the step's wire time, median of 5
/// steps after 2 warm-up steps, one line per protocol and link (the exchange runs on a
/// communication thread, overlapped with encoding and decoding):
/// `overlap link=… protocol=NAME step_ms=… encode_decode_ms=… wire_ms=… step_over_max=…`.
fn overlap_report(link_name: &str) {
    fn report<R: Reducer + 'static>(
        link_name: &str,
        name: &str,
        make: impl Fn() -> R + Send + Sync + 'static,
    ) {
        let group = Group::new(link_name, make);
        for _ in 0..2 {
            group.step();
        }
        let mut steps: Vec<Step> = (0..5).map(|_| group.step()).collect();
        steps.sort_by(|a, b| a.step_ms.total_cmp(&b.step_ms));
        let Step {
            step_ms,
            coding_ms,
            wire_ms,
            ..
        } = steps[2];
        println!(
            "overlap link={link_name} protocol={name} step_ms={step_ms:.2} \
             encode_decode_ms={coding_ms:.2} wire_ms={wire_ms:.2} step_over_max={:.2}",
            step_ms / coding_ms.max(wire_ms)
        );
    }
    report(link_name, "dense", Dense::new);
    report(link_name, "qsgd_s16_b512", || {
        Gathered::new(Qsgd::new(16).unwrap().with_bucket(512).unwrap())
    });
    report(link_name, "terngrad_shared", || {
        TernGradShared::new(TernGrad::new())
    });
    report(link_name, "majority_vote", MajorityVote::new);
    report(link_name, "powersgd_rank2", || {
        PowerSgd::new(PowerSgdConfig::new(2).unwrap())
    });
    report(link_name, "ef_top_k_1pct", || {
        Gathered::new(ErrorFeedback::new(
            TopK::new(Count::Fraction(0.01)).unwrap(),
        ))
    });
}

/// The model (20 bias-free layers) and each worker's gradient of every layer.
fn setup() -> (Vec<Linear>, Vec<Vec<Tensor<2>>>) {
    let device = Device::flex();
    device.seed(3);
    let layers = (0..TENSORS)
        .map(|_| Linear {
            weight: Param::from_tensor(Tensor::zeros([ROWS, COLS], &device)),
            bias: None,
        })
        .collect();
    let grads = (0..workers())
        .map(|_| {
            (0..TENSORS)
                .map(|_| Tensor::random([ROWS, COLS], Distribution::Normal(0.0, 1.0), &device))
                .collect()
        })
        .collect();
    (layers, grads)
}

/// Divan's samples of `make`'s protocol on `link_name`: one step on every worker each, on one
/// group kept for the whole row.
fn bench<R: Reducer + 'static>(
    b: divan::Bencher,
    link_name: &str,
    make: impl Fn() -> R + Send + Sync + 'static,
) {
    let group = Group::new(link_name, make);
    b.bench_local(|| group.step().wire_bytes);
}

/// The floor of a sample: starting a step on every worker and hearing back, with no exchange.
#[divan::bench(sample_count = 10)]
fn barrier(b: divan::Bencher) {
    bench(b, "memory", NoExchange::default);
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn dense(b: divan::Bencher, link_name: &str) {
    bench(b, link_name, Dense::new);
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn dense_per_tensor(b: divan::Bencher, link_name: &str) {
    bench(b, link_name, || Dense::new().with_bucket_bytes(1).unwrap());
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn qsgd_s16_b512_per_tensor(b: divan::Bencher, link_name: &str) {
    bench(b, link_name, || {
        Gathered::new(Qsgd::new(16).unwrap().with_bucket(512).unwrap())
            .with_bucket_bytes(1)
            .unwrap()
    });
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn qsgd_s16_b512(b: divan::Bencher, link_name: &str) {
    bench(b, link_name, || {
        Gathered::new(Qsgd::new(16).unwrap().with_bucket(512).unwrap())
    });
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn terngrad_shared(b: divan::Bencher, link_name: &str) {
    bench(b, link_name, || TernGradShared::new(TernGrad::new()));
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn majority_vote(b: divan::Bencher, link_name: &str) {
    bench(b, link_name, MajorityVote::new);
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn ef_top_k_1pct(b: divan::Bencher, link_name: &str) {
    bench(b, link_name, || {
        Gathered::new(ErrorFeedback::new(
            TopK::new(Count::Fraction(0.01)).unwrap(),
        ))
    });
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn powersgd_rank2(b: divan::Bencher, link_name: &str) {
    bench(b, link_name, || {
        PowerSgd::new(PowerSgdConfig::new(2).unwrap())
    });
}

/// A reducer that exchanges nothing (each worker keeps its own gradient): the `barrier` row.
#[derive(Default)]
struct NoExchange;

impl Reducer for NoExchange {
    fn name(&self) -> String {
        "no exchange".into()
    }

    fn reduce<M: burn::module::Module>(
        &mut self,
        _module: &M,
        grads: GradientsParams,
        _comm: &mut dyn Communicator,
        _rng: &mut ChaCha8Rng,
    ) -> Result<(GradientsParams, StepStats), DistError> {
        Ok((grads, StepStats::default()))
    }
}

//! The exchange overhead per step: one data-parallel step's `Reducer::reduce` on a `LocalGroup`
//! of 4 workers, each with its own 1 M-entry gradient split into 20 tensors (20 weight matrices
//! of 50 × 1000), on Flex, for each protocol against `Dense`. Each sample spawns the group
//! (4 threads) and builds fresh reducers, so PowerSGD pays its first-step initialisation and
//! `spawn only` (the same group doing one barrier) is the floor to subtract. The `…_per_tensor`
//! rows run the bucketed protocols with one collective per tensor (buckets of 1 byte) instead of
//! one per 25 MiB bucket.
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

use std::sync::Arc;
use std::time::Duration;

use burn::module::Param;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use kindling_compress::powersgd::PowerSgdConfig;
use kindling_compress::{Count, ErrorFeedback, Qsgd, TernGrad, TopK};
use kindling_dist::*;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

const WORKERS: usize = 4;
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
    Some(NetworkModel::new(WORKERS, bits, 50e-6, Topology::AllGather).expect("a valid link"))
}

/// `work` on a fresh group of [`WORKERS`], on `link`.
fn run<T: Send + 'static>(
    link: Option<NetworkModel>,
    work: impl Fn(LocalGroup) -> Result<T, DistError> + Send + Sync + 'static,
) -> Vec<T> {
    match link {
        None => run_workers(WORKERS, TIMEOUT, work),
        Some(link) => run_workers_emulating(link, TIMEOUT, work),
    }
    .expect("exchange")
}
// ANCHOR_END: emulated

fn main() {
    for name in LINKS {
        overlap_report(name);
    }
    divan::main();
}

/// Rank 0's step time against its encode + decode time and the step's wire time (its counted
/// traffic on the link, [`NetworkModel::seconds_sent`]; in memory, its time in collectives),
/// median of 5 steps, one line per protocol and link (the exchange runs on a communication
/// thread, overlapped with encoding and decoding):
/// `overlap link=… protocol=NAME step_ms=… encode_decode_ms=… wire_ms=… step_over_max=…`.
fn overlap_report(link_name: &str) {
    fn report<R: Reducer + 'static>(
        link_name: &str,
        name: &str,
        make: impl Fn() -> R + Send + Sync + 'static,
    ) {
        let (layers, grads) = setup();
        let (layers, grads, make) = (Arc::new(layers), Arc::new(grads), Arc::new(make));
        let model = link(link_name);
        let mut samples: Vec<(f64, f64, f64)> = (0..5)
            .map(|_| {
                let (layers, grads, make) = (layers.clone(), grads.clone(), make.clone());
                run(model, move |mut group| {
                    let rank = group.rank();
                    let mut g = GradientsParams::new();
                    for (layer, grad) in layers.iter().zip(&grads[rank]) {
                        g.register(layer.weight.id, grad.clone());
                    }
                    let mut rng = ChaCha8Rng::seed_from_u64(rank as u64);
                    let before = group.traffic();
                    let start = std::time::Instant::now();
                    let (_, stats) = make().reduce(&*layers, g, &mut group, &mut rng)?;
                    let step = start.elapsed().as_secs_f64() * 1e3;
                    let after = group.traffic();
                    let coding = (stats.encode + stats.decode).as_secs_f64() * 1e3;
                    let (sent, rounds) = (after.sent - before.sent, after.rounds - before.rounds);
                    let wire = match model {
                        Some(link) => link.seconds_sent(sent, rounds) * 1e3,
                        None => stats.exchange.as_secs_f64() * 1e3,
                    };
                    Ok((step, coding, wire))
                })[0]
            })
            .collect();
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (step, coding, wire) = samples[2];
        println!(
            "overlap link={link_name} protocol={name} step_ms={step:.2} \
             encode_decode_ms={coding:.2} wire_ms={wire:.2} step_over_max={:.2}",
            step / coding.max(wire)
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
    let grads = (0..WORKERS)
        .map(|_| {
            (0..TENSORS)
                .map(|_| Tensor::random([ROWS, COLS], Distribution::Normal(0.0, 1.0), &device))
                .collect()
        })
        .collect();
    (layers, grads)
}

/// One exchange on a fresh group on `link`; returns rank 0's wire bytes.
fn exchange<R: Reducer + 'static>(
    link: Option<NetworkModel>,
    layers: &Arc<Vec<Linear>>,
    grads: &Arc<Vec<Vec<Tensor<2>>>>,
    make: &Arc<impl Fn() -> R + Send + Sync + 'static>,
) -> u64 {
    let (layers, grads, make) = (layers.clone(), grads.clone(), make.clone());
    let wire = run(link, move |mut group| {
        let rank = group.rank();
        let mut g = GradientsParams::new();
        for (layer, grad) in layers.iter().zip(&grads[rank]) {
            g.register(layer.weight.id, grad.clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(rank as u64);
        let (agreed, stats) = make().reduce(&*layers, g, &mut group, &mut rng)?;
        for layer in layers.iter() {
            let out: Tensor<2> = agreed.get(layer.weight.id).expect("aggregated gradient");
            out.device().sync().expect("sync");
        }
        Ok(stats.wire_bytes)
    });
    wire[0]
}

fn bench<R: Reducer + 'static>(
    b: divan::Bencher,
    link_name: &str,
    make: impl Fn() -> R + Send + Sync + 'static,
) {
    let (layers, grads) = setup();
    let (layers, grads, make) = (Arc::new(layers), Arc::new(grads), Arc::new(make));
    let model = link(link_name);
    b.bench_local(|| exchange(model, &layers, &grads, &make));
}

#[divan::bench(sample_count = 10, args = LINKS)]
fn spawn_only(b: divan::Bencher, link_name: &str) {
    let model = link(link_name);
    b.bench_local(|| run(model, |mut group| group.barrier()));
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

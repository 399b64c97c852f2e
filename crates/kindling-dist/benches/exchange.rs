//! The exchange overhead per step: one data-parallel step's `Reducer::reduce` on a `LocalGroup`
//! of 4 workers, each with its own 1 M-entry gradient split into 20 tensors (20 weight matrices
//! of 50 × 1000), on Flex, for each protocol against `Dense`. Each sample spawns the group
//! (4 threads) and builds fresh reducers, so PowerSGD pays its first-step initialisation and
//! `spawn only` (the same group doing one barrier) is the floor to subtract. The `…_per_tensor`
//! rows run the bucketed protocols with one collective per tensor (buckets of 1 byte) instead of
//! one per 25 MiB bucket.
//!
//! `cargo bench -p kindling-dist`; the ratios to `dense` are the figures to report.

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

fn main() {
    overlap_report();
    divan::main();
}

/// Rank 0's step time against its encode + decode time and its time in collectives (the
/// exchange runs on a communication thread, overlapped with encoding and decoding), median of
/// 5 steps, one line per protocol:
/// `overlap protocol=NAME step_ms=… encode_decode_ms=… exchange_ms=… step_over_max=…`.
fn overlap_report() {
    fn report<R: Reducer + 'static>(name: &str, make: impl Fn() -> R + Send + Sync + 'static) {
        let (layers, grads) = setup();
        let (layers, grads, make) = (Arc::new(layers), Arc::new(grads), Arc::new(make));
        let mut samples: Vec<(f64, f64, f64)> = (0..5)
            .map(|_| {
                let (layers, grads, make) = (layers.clone(), grads.clone(), make.clone());
                run_workers(WORKERS, TIMEOUT, move |mut group| {
                    let rank = group.rank();
                    let mut g = GradientsParams::new();
                    for (layer, grad) in layers.iter().zip(&grads[rank]) {
                        g.register(layer.weight.id, grad.clone());
                    }
                    let mut rng = ChaCha8Rng::seed_from_u64(rank as u64);
                    let start = std::time::Instant::now();
                    let (_, stats) = make().reduce(&*layers, g, &mut group, &mut rng)?;
                    let step = start.elapsed().as_secs_f64() * 1e3;
                    let coding = (stats.encode + stats.decode).as_secs_f64() * 1e3;
                    Ok((step, coding, stats.exchange.as_secs_f64() * 1e3))
                })
                .expect("exchange")[0]
            })
            .collect();
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (step, coding, wire) = samples[2];
        println!(
            "overlap protocol={name} step_ms={step:.2} encode_decode_ms={coding:.2} \
             exchange_ms={wire:.2} step_over_max={:.2}",
            step / coding.max(wire)
        );
    }
    report("qsgd_s16_b512", || {
        Gathered::new(Qsgd::new(16).unwrap().with_bucket(512).unwrap())
    });
    report("terngrad_shared", || TernGradShared::new(TernGrad::new()));
    report("majority_vote", MajorityVote::new);
    report("ef_top_k_1pct", || {
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

/// One exchange on a fresh group; returns rank 0's wire bytes.
fn exchange<R: Reducer + 'static>(
    layers: &Arc<Vec<Linear>>,
    grads: &Arc<Vec<Vec<Tensor<2>>>>,
    make: &Arc<impl Fn() -> R + Send + Sync + 'static>,
) -> u64 {
    let (layers, grads, make) = (layers.clone(), grads.clone(), make.clone());
    let wire = run_workers(WORKERS, TIMEOUT, move |mut group| {
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
    })
    .expect("exchange");
    wire[0]
}

fn bench<R: Reducer + 'static>(b: divan::Bencher, make: impl Fn() -> R + Send + Sync + 'static) {
    let (layers, grads) = setup();
    let (layers, grads, make) = (Arc::new(layers), Arc::new(grads), Arc::new(make));
    b.bench_local(|| exchange(&layers, &grads, &make));
}

#[divan::bench(sample_count = 10)]
fn spawn_only(b: divan::Bencher) {
    b.bench_local(|| {
        run_workers(WORKERS, TIMEOUT, |mut group| group.barrier()).expect("barrier");
    });
}

#[divan::bench(sample_count = 10)]
fn dense(b: divan::Bencher) {
    bench(b, Dense::new);
}

#[divan::bench(sample_count = 10)]
fn dense_per_tensor(b: divan::Bencher) {
    bench(b, || Dense::new().with_bucket_bytes(1).unwrap());
}

#[divan::bench(sample_count = 10)]
fn qsgd_s16_b512_per_tensor(b: divan::Bencher) {
    bench(b, || {
        Gathered::new(Qsgd::new(16).unwrap().with_bucket(512).unwrap())
            .with_bucket_bytes(1)
            .unwrap()
    });
}

#[divan::bench(sample_count = 10)]
fn qsgd_s16_b512(b: divan::Bencher) {
    bench(b, || {
        Gathered::new(Qsgd::new(16).unwrap().with_bucket(512).unwrap())
    });
}

#[divan::bench(sample_count = 10)]
fn terngrad_shared(b: divan::Bencher) {
    bench(b, || TernGradShared::new(TernGrad::new()));
}

#[divan::bench(sample_count = 10)]
fn majority_vote(b: divan::Bencher) {
    bench(b, MajorityVote::new);
}

#[divan::bench(sample_count = 10)]
fn ef_top_k_1pct(b: divan::Bencher) {
    bench(b, || {
        Gathered::new(ErrorFeedback::new(
            TopK::new(Count::Fraction(0.01)).unwrap(),
        ))
    });
}

#[divan::bench(sample_count = 10)]
fn powersgd_rank2(b: divan::Bencher) {
    bench(b, || PowerSgd::new(PowerSgdConfig::new(2).unwrap()));
}

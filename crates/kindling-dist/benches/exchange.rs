//! The exchange overhead per step: one data-parallel step's `Reducer::reduce` on a `LocalGroup`
//! of 4 workers, each with its own 1 M-entry gradient (a 1000 × 1000 weight matrix), on Flex,
//! for each protocol against `Dense`. Each sample spawns the group (4 threads) and builds fresh
//! reducers, so PowerSGD pays its first-step initialisation and `spawn only` (the same group
//! doing one barrier) is the floor to subtract.
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
const SIDE: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(120);

fn main() {
    divan::main();
}

/// The layer and one gradient per worker.
fn setup() -> (Linear, Vec<Tensor<2>>) {
    let device = Device::flex();
    device.seed(3);
    let layer = Linear {
        weight: Param::from_tensor(Tensor::zeros([SIDE, SIDE], &device)),
        bias: None,
    };
    let grads = (0..WORKERS)
        .map(|_| Tensor::random([SIDE, SIDE], Distribution::Normal(0.0, 1.0), &device))
        .collect();
    (layer, grads)
}

/// One exchange on a fresh group; returns rank 0's wire bytes.
fn exchange<R: Reducer + 'static>(
    layer: &Arc<Linear>,
    grads: &Arc<Vec<Tensor<2>>>,
    make: &Arc<impl Fn() -> R + Send + Sync + 'static>,
) -> u64 {
    let (layer, grads, make) = (layer.clone(), grads.clone(), make.clone());
    let wire = run_workers(WORKERS, TIMEOUT, move |mut group| {
        let rank = group.rank();
        let mut g = GradientsParams::new();
        g.register(layer.weight.id, grads[rank].clone());
        let mut rng = ChaCha8Rng::seed_from_u64(rank as u64);
        let (agreed, stats) = make().reduce(&*layer, g, &mut group, &mut rng)?;
        let out: Tensor<2> = agreed.get(layer.weight.id).expect("aggregated gradient");
        out.device().sync().expect("sync");
        Ok(stats.wire_bytes)
    })
    .expect("exchange");
    wire[0]
}

fn bench<R: Reducer + 'static>(b: divan::Bencher, make: impl Fn() -> R + Send + Sync + 'static) {
    let (layer, grads) = setup();
    let (layer, grads, make) = (Arc::new(layer), Arc::new(grads), Arc::new(make));
    b.bench_local(|| exchange(&layer, &grads, &make));
}

#[divan::bench(sample_count = 10)]
fn spawn_only(b: divan::Bencher) {
    b.bench_local(|| {
        run_workers(WORKERS, TIMEOUT, |mut group| group.barrier()).expect("barrier");
    });
}

#[divan::bench(sample_count = 10)]
fn dense(b: divan::Bencher) {
    bench(b, || Dense);
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
    bench(b, || MajorityVote);
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

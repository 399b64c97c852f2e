//! SNVRG's bookkeeping (batch sampling, reference copies, gradient arithmetic, the update)
//! against the gradient evaluations it needs, per step, on a 1024 → 1024 linear model with a
//! batch of 64 (Flex).
//!
//! `cargo bench -p kindling-optim --bench snvrg` prints the overhead ratio
//! `(epoch time − oracle time) / oracle time`.

use std::cell::Cell;
use std::time::{Duration, Instant};

use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use kindling_optim::SnvrgConfig;

fn main() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let n = 512;
    let x = Tensor::<2>::random([n, 1024], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<2>::random([n, 1024], Distribution::Normal(0.0, 1.0), &device);
    let mut model: Linear = LinearConfig::new(1024, 1024).init(&device);
    let oracle_time = Cell::new(Duration::ZERO);
    let oracle = |m: &Linear, idx: &[usize]| {
        let start = Instant::now();
        let index = Tensor::<1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(idx.iter().map(|&i| i as i64).collect(), [idx.len()]),
            &device,
        );
        let xb = x.clone().select(0, index.clone());
        let yb = y.clone().select(0, index);
        let loss = (m.forward(xb) - yb).powi_scalar(2).mean();
        let g = GradientsParams::from_grads(loss.backward(), m);
        device.sync().expect("sync");
        oracle_time.set(oracle_time.get() + start.elapsed());
        g
    };
    let config = SnvrgConfig {
        n,
        loop_lengths: vec![2, 4],
        batch: 64,
        level_batches: vec![64, 64],
        step_size: 1e-3,
        seed: 0,
        output: kindling_optim::SnvrgOutput::Last,
    };
    let mut snvrg = config.build();
    model = snvrg.epoch(model, oracle);
    oracle_time.set(Duration::ZERO);
    let start = Instant::now();
    let epochs = 5;
    for _ in 0..epochs {
        model = snvrg.epoch(model, oracle);
    }
    let total = start.elapsed();
    let steps = epochs * 8;
    let oracle = oracle_time.get();
    println!(
        "SNVRG (K = 2, T = (2, 4), batches of 64) on a 1024×1024 linear model: {:.2} ms per step, \
         of which {:.2} ms in the gradient oracle",
        total.as_secs_f64() * 1e3 / steps as f64,
        oracle.as_secs_f64() * 1e3 / steps as f64
    );
    println!(
        "bookkeeping overhead / gradient evaluations = {:.3}",
        (total.as_secs_f64() - oracle.as_secs_f64()) / oracle.as_secs_f64()
    );
    drop(model);
}

//! Optimizer step time on ~10.5 M parameters (10 × 1024² + 10 × 1024, a stack of ten 1024-wide
//! layers), on Flex, for Signum, M-SVAG and burn's Lion and Adam, in the same run.
//!
//! `cargo bench -p kindling-optim` prints divan's table, then the ratios Signum/Lion and
//! M-SVAG/Adam from medians of the same workload (targets: ≤ 1.0× and ≤ 1.3×).

use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, LionConfig, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor};
use kindling_optim::{SignumConfig, SvagConfig};

#[derive(Module, Debug)]
struct Stack {
    weights: Vec<Param<Tensor<2>>>,
    biases: Vec<Param<Tensor<1>>>,
}

const LAYERS: usize = 10;
const WIDTH: usize = 1024;

struct Workload {
    model: Option<Stack>,
    grads: Vec<Tensor<2>>,
    bias_grads: Vec<Tensor<1>>,
    optim: ModuleOptimizer,
}

impl Workload {
    fn new(optim: ModuleOptimizer) -> Self {
        // Parameters live on an autodiff device (as in training); gradients on its inner device.
        let device = Device::flex().autodiff();
        let inner = device.clone().inner();
        let normal = Distribution::Normal(0.0, 1.0);
        let model = Stack {
            weights: (0..LAYERS)
                .map(|_| Param::from_tensor(Tensor::random([WIDTH, WIDTH], normal, &device)))
                .collect(),
            biases: (0..LAYERS)
                .map(|_| Param::from_tensor(Tensor::random([WIDTH], normal, &device)))
                .collect(),
        };
        let mut w = Self {
            model: Some(model),
            grads: (0..LAYERS)
                .map(|_| Tensor::random([WIDTH, WIDTH], normal, &inner))
                .collect(),
            bias_grads: (0..LAYERS)
                .map(|_| Tensor::random([WIDTH], normal, &inner))
                .collect(),
            optim,
        };
        // Warm-up step: every optimizer then runs with its state allocated.
        w.step();
        w
    }

    fn step(&mut self) {
        let model = self.model.take().expect("model");
        let mut grads = GradientsParams::new();
        for (p, g) in model.weights.iter().zip(&self.grads) {
            grads.register(p.id, g.clone());
        }
        for (p, g) in model.biases.iter().zip(&self.bias_grads) {
            grads.register(p.id, g.clone());
        }
        let model = self.optim.step(1e-3, model, grads);
        model.weights[0].val().device().sync().expect("sync");
        self.model = Some(model);
    }
}

fn optimizer(name: &str) -> ModuleOptimizer {
    match name {
        "signum" => SignumConfig::new().init(),
        "m_svag" => SvagConfig::m_svag().init(),
        "lion" => LionConfig::new().init(),
        "adam" => AdamConfig::new().init(),
        _ => unreachable!("unknown optimizer {name}"),
    }
}

const NAMES: [&str; 4] = ["signum", "lion", "m_svag", "adam"];

#[divan::bench(args = NAMES, sample_count = 10)]
fn step_10m_params(bencher: divan::Bencher, name: &str) {
    let mut work = Workload::new(optimizer(name));
    bencher.bench_local(|| work.step());
}

fn median_seconds(name: &str) -> f64 {
    let mut work = Workload::new(optimizer(name));
    let mut times: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            work.step();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    divan::main();
    let t: Vec<f64> = NAMES.iter().map(|n| median_seconds(n)).collect();
    println!("\nmedian step time on 10.5 M parameters (Flex):");
    for (n, s) in NAMES.iter().zip(&t) {
        println!("  {n:<8} {:>8.2} ms", s * 1e3);
    }
    println!("  Signum / Lion  = {:.2}×  (target ≤ 1.0×)", t[0] / t[1]);
    println!("  M-SVAG / Adam  = {:.2}×  (target ≤ 1.3×)", t[2] / t[3]);
}

//! Contraction time of a picture GWM against picture width (the d^w growth of the carried
//! tensor), for bond dimensions 2 and 3, batch of 32 square-ish pictures of height 8, on Flex.
//!
//! `cargo bench -p kindling-gwm` prints divan's table.

use burn::tensor::{Device, Int, Tensor};
use kindling_gwm::PictureGwmConfig;

fn pictures(w: usize) -> Tensor<3, Int> {
    let device = Device::flex();
    device.seed(0);
    Tensor::<3>::random(
        [32, 8, w],
        burn::tensor::Distribution::Bernoulli(0.5),
        &device,
    )
    .int()
}

#[divan::bench(args = [2, 3, 4, 5, 6, 7, 8], sample_count = 5)]
fn bond_2(bencher: divan::Bencher, w: usize) {
    let model = PictureGwmConfig::new()
        .with_bond(2)
        .init_with_seed(0, &Device::flex());
    let p = pictures(w);
    bencher.bench_local(|| model.forward(p.clone()).into_data());
}

#[divan::bench(args = [2, 3, 4, 5, 6], sample_count = 5)]
fn bond_3(bencher: divan::Bencher, w: usize) {
    let model = PictureGwmConfig::new()
        .with_bond(3)
        .init_with_seed(0, &Device::flex());
    let p = pictures(w);
    bencher.bench_local(|| model.forward(p.clone()).into_data());
}

fn main() {
    divan::main();
}

//! A stand-in for a pretrained token-embedding table, for tests and demonstrations where no real
//! one can be downloaded.

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

/// A `[V, d]` table with the statistics that make real pretrained embedding tables (word2vec,
/// GloVe, BERT-family token tables) hard to compress: a shared mean direction, an anisotropic
/// power-law spectrum (the `k`-th principal direction has standard deviation ∝ `k^−0.6`, in a
/// random basis, so no coordinate axis is special), semantic clusters of about 50 rows that are
/// only loosely separated, and row norms varying by about ±25%. Rows have norm about 1. A pure
/// function of `seed`.
pub fn pretrained_like_table(v: usize, d: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clusters = v.div_ceil(50).max(1);
    // Cluster of row i: a seeded shuffle, so frequent (low) ids are not grouped.
    let mut cluster_of: Vec<usize> = (0..v).map(|i| i % clusters).collect();
    cluster_of.shuffle(&mut rng);
    let mut normal = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                let u2: f64 = rng.random();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    };
    let centers = normal(clusters * d);
    let spread = normal(v * d);
    let scales = normal(v);
    let spectrum: Vec<f32> = (0..d).map(|k| ((k + 1) as f32).powf(-0.6)).collect();
    let total: f32 = spectrum.iter().map(|s| s * s).sum::<f32>().sqrt();
    let latent: Vec<f32> = (0..v)
        .flat_map(|i| {
            let c = cluster_of[i];
            let scale = (0.25 * scales[i]).exp() / total;
            (0..d)
                .map(|k| scale * spectrum[k] * (0.8 * centers[c * d + k] + 0.6 * spread[i * d + k]))
                .collect::<Vec<_>>()
        })
        .collect();
    let basis = normal(d * d);
    let mean: Vec<f32> = normal(d)
        .iter()
        .map(|x| 0.5 * x / (d as f32).sqrt())
        .collect();
    let basis = Tensor::<2>::from_data(TensorData::new(basis, [d, d]), device)
        .div_scalar((d as f32).sqrt());
    let latent = Tensor::<2>::from_data(TensorData::new(latent, [v, d]), device);
    latent.matmul(basis) + Tensor::<2>::from_data(TensorData::new(mean, [1, d]), device)
}

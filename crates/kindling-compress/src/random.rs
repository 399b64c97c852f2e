//! Randomness for the stochastic codecs. The caller owns a seeded RNG (one per worker); each
//! encoding draws one 64-bit seed from it and expands it with xoshiro256++ into uniforms on the
//! host, which are uploaded to the gradient's device. Runs are reproducible on every backend.

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};

/// `n` uniforms in `[0, 1)` with 24 random bits each (so `u < p` is a Bernoulli(p) draw exact to
/// 2⁻²⁴), two per 64-bit draw.
pub fn uniforms(rng: &mut dyn Rng, n: usize, device: &Device) -> Tensor<1> {
    let mut fast = Xoshiro256PlusPlus::seed_from_u64(rng.next_u64());
    let scale = 1.0 / (1u32 << 24) as f32;
    let mut values = vec![0.0f32; n];
    for pair in values.chunks_mut(2) {
        let x = fast.next_u64();
        pair[0] = (x >> 40) as f32 * scale;
        if let Some(second) = pair.get_mut(1) {
            *second = ((x >> 16) & 0xFF_FFFF) as f32 * scale;
        }
    }
    Tensor::from_data(TensorData::new(values, [n]), device)
}

//! Randomness for the stochastic codecs, independent of threads and chunking.
//!
//! The caller owns a seeded RNG (one per worker); each encoding draws one 64-bit key from it, so
//! keys differ between steps and tensors. Uniform `i` of an encoding is then a pure function of
//! `(key, i)`: SplitMix64 evaluated at counter `⌊i/2⌋` (the 64-bit word SplitMix64 would emit at
//! that position of the stream seeded with `key`), whose top and middle 24 bits give uniforms
//! `2j` and `2j + 1`. Any chunk, thread or device computes the same values, so a payload is the
//! same bytes for any thread count and on every backend.

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rayon::prelude::*;

use crate::host::CHUNK;
use crate::simd;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const SCALE: f32 = 1.0 / (1u32 << 24) as f32;

/// A counter-based stream of uniforms, keyed by one draw from the caller's RNG.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stream {
    key: u64,
}

impl Stream {
    /// A stream keyed by one 64-bit draw from `rng`.
    pub(crate) fn new(rng: &mut dyn Rng) -> Self {
        Self {
            key: rng.next_u64(),
        }
    }

    /// SplitMix64's output at counter `j`.
    #[inline(always)]
    fn word(self, j: u64) -> u64 {
        let mut z = self.key.wrapping_add(j.wrapping_add(1).wrapping_mul(GAMMA));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniforms `2j` and `2j + 1` in `[0, 1)`, 24 random bits each.
    #[inline(always)]
    pub(crate) fn pair(self, j: usize) -> [f32; 2] {
        let x = self.word(j as u64);
        // Through i32: both fields are below 2²⁴, and baseline x86-64 converts i32 to f32 four
        // lanes at a time but u64 one at a time (same values, about 1.5× faster fills).
        let field = |bits: u64| (bits as u32 as i32) as f32 * SCALE;
        [field(x >> 40), field((x >> 16) & 0xFF_FFFF)]
    }

    /// Uniforms `start .. start + out.len()` (`start` even).
    #[inline(always)]
    pub(crate) fn fill(self, start: usize, out: &mut [f32]) {
        debug_assert!(start.is_multiple_of(2));
        let first = start / 2;
        let mut pairs = out.chunks_exact_mut(2);
        for (j, pair) in (&mut pairs).enumerate() {
            let [a, b] = self.pair(first + j);
            pair[0] = a;
            pair[1] = b;
        }
        let full = out.len() / 2;
        if let Some(last) = out.get_mut(2 * full) {
            *last = self.pair(first + full)[0];
        }
    }
}

/// `n` uniforms in `[0, 1)` with 24 random bits each (so `u < p` is a Bernoulli(p) draw exact to
/// 2⁻²⁴), on `device`: the values every codec's host kernel draws for the same RNG state (one
/// 64-bit key from `rng`, then the counter-based stream described in this module).
pub fn uniforms(rng: &mut dyn Rng, n: usize, device: &Device) -> Tensor<1> {
    let stream = Stream::new(rng);
    let mut values = vec![0.0f32; n];
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| simd::wide!(stream.fill(c * CHUNK, chunk)));
    Tensor::from_data(TensorData::new(values, [n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha8Rng;

    #[test]
    fn uniforms_are_a_function_of_key_and_index() {
        let stream = Stream::new(&mut ChaCha8Rng::seed_from_u64(3));
        let mut whole = vec![0.0; 1001];
        stream.fill(0, &mut whole);
        let mut part = vec![0.0; 501];
        stream.fill(500, &mut part);
        assert_eq!(&whole[500..], &part[..]);
        assert!(
            whole
                .iter()
                .enumerate()
                .all(|(i, &u)| u == stream.pair(i / 2)[i % 2])
        );
        assert!(whole.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = whole.iter().map(|&u| u as f64).sum::<f64>() / 1001.0;
        assert!((mean - 0.5).abs() < 0.03, "mean {mean}");
    }
}

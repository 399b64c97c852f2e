//! Gradient compression for [burn](https://burn.dev) 0.22: codecs that turn a gradient tensor
//! into a self-describing byte [`Payload`] and back, with exact wire formats. For burn users who
//! exchange gradients between workers (see `kindling-dist`) or want to study compression; this
//! crate knows math and bytes only and never talks to a network.
//!
//! | codec | paper | unbiased | bits per entry |
//! | --- | --- | --- | --- |
//! | [`Identity`] | — | yes | 32 |
//! | [`Half`] | — | no (rounding) | 16 |
//! | [`Sign`] | signSGD (Bernstein et al. 2018) | no | 1 |
//! | [`ScaledSign`] | EF-signSGD (Karimireddy et al. 2019) | no | 1 (+ 32 per tensor) |
//! | [`Qsgd`] | QSGD (Alistarh et al. 2017) | yes | `1 + ⌈log₂(s+1)⌉`, or Elias-gamma |
//! | [`TernGrad`] | TernGrad (Wen et al. 2017) | yes | 2 (or 1.6) |
//! | [`TopK`] | — | no | 64·k/n or 32·k/n + 1 |
//! | [`RandomK`] | — | yes | 32·k/n |
//! | [`Atomo`]`<`[`EntryWise`]`>` / `<`[`Spectral`]`>` / `<`[`Fourier`]`>` | ATOMO (Wang et al. 2018) | yes | by budget |
//! | [`ErrorFeedback`]`<C>` | Karimireddy et al. 2019 | no | as `C` |
//! | [`powersgd`] (math) | PowerSGD (Vogels et al. 2019) | no | `32·r·(rows+cols)/(rows·cols)` |
//!
//! Every codec implements [`Compressor`]. **Where it runs follows the device**
//! ([`is_host_device`]): on burn's Flex or NdArray backend the gradient is read once into host
//! memory (no copy when the tensor owns its buffer) and encoded by fused, chunked kernels on
//! rayon's thread pool that write the packed bytes straight into the payload; decoding writes each
//! value once. On a GPU device (wgpu, CUDA) packing and unpacking run on the device and only the
//! payload crosses to the host. Both paths write the same format and draw the same random
//! numbers, so either decodes the other's payloads. [`Compressor::decode_into`] and
//! [`Compressor::decode_add`] decode a borrowed [`PayloadRef`] (a receive buffer) straight into a
//! buffer of yours, so the mean of several workers' payloads accumulates in one buffer with no
//! copy; [`Compressor::decode_to_vec`] decodes into a new vector, each value written once. Each
//! codec also has a burn-style config ([`QsgdConfig`], [`TernGradConfig`],
//! [`SparsifyConfig`], [`AtomoConfig`], [`HalfConfig`]).
//!
//! **Randomness** comes from the caller's seeded RNG (one per worker): each encoding draws one
//! 64-bit key, and uniform `i` is a pure function of `(key, i)` (SplitMix64 in counter mode), so
//! a payload is the same bytes for any number of threads and on every backend. NaN/Inf gradients
//! are refused ([`CompressError::NonFinite`]) and malformed bytes decode to a [`DecodeError`],
//! never a panic.
//!
//! **Untrusted bytes.** [`Payload::from_bytes`] accepts shapes of at most [`ENTRIES_PER_BYTE`]
//! entries per byte received, so a decoder allocates in proportion to its input (a receiver
//! expecting a large sparse tensor names its size with [`Payload::from_bytes_with_limit`]). Every
//! float on the wire must be finite, and a spectral or Fourier payload whose finite values would
//! overflow f32 when recombined is an error: a decoder returns finite values or an error.
//!
//! **Precision.** Bernoulli draws compare with uniforms of 24 random bits, so a keep-probability
//! `p` is realised as `⌈p·2²⁴⌉/2²⁴`: an unbiased codec's estimate of an atom is biased by a
//! factor below `1 + 2⁻²⁴/p`, negligible unless `p < 2⁻¹⁴`. QSGD's bucket norms and ATOMO's
//! ℓ₂ norm are computed as `m·‖v/m‖` with `m = max|v|`, so tiny entries do not underflow them
//! to zero nor large ones overflow them when squared; a norm beyond f32's range is
//! [`CompressError::Overflow`], as is a singular value or an atom's scale (spectral ATOMO).
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use kindling_compress::rand::{SeedableRng, rngs::ChaCha8Rng};
//! use kindling_compress::{Compressor, Payload, Qsgd};
//!
//! let device = Device::flex();
//! let grad = Tensor::<2>::from_floats([[0.5, -1.0, 0.25], [2.0, 0.0, -0.75]], &device);
//! let mut rng = ChaCha8Rng::seed_from_u64(7);
//! let mut qsgd = Qsgd::new(4).unwrap();
//! let payload = qsgd.compress(grad, &mut rng).unwrap();
//! let bytes = payload.into_bytes(); // send these
//! let received = Payload::from_bytes(bytes).unwrap();
//! let decoded: Tensor<2> = qsgd.decompress(&received, &device).unwrap();
//! assert_eq!(decoded.dims(), [2, 3]);
//! ```

pub mod atomo;
mod bits;
mod codec;
mod config;
mod dense;
mod error;
mod error_feedback;
mod fft;
mod host;
#[cfg(test)]
mod paths_tests;
mod payload;
pub mod powersgd;
mod qsgd;
mod random;
mod sign;
mod simd;
mod sparse;
mod terngrad;
#[cfg(test)]
mod test_stream;

/// The `rand` the codecs take their randomness from (burn 0.22's, 0.10), re-exported so a seeded
/// generator never needs a version matched by hand: `kindling_compress::rand::rngs::ChaCha8Rng`.
pub use rand;

pub use atomo::{Atomo, Budget, EntryWise, Fourier, Spectral};
pub use bits::packed_len;
pub use codec::{CodecId, CompressionStats, Compressor, as_matrix, matrix_view};
pub use config::{AtomoConfig, HalfConfig, QsgdConfig, SparsifyConfig, TernGradConfig};
pub use dense::{Half, HalfFormat, Identity};
pub use error::{CompressError, DecodeError};
pub use error_feedback::ErrorFeedback;
pub use host::is_host_device;
pub use payload::{
    DTYPE_F32, ENTRIES_PER_BYTE, FORMAT_VERSION, Header, MAX_ENTRIES, MAX_RANK, Payload, PayloadRef,
};
pub use qsgd::{LevelCoding, MAX_LEVELS, Qsgd, elias_gamma_bits};
pub use random::uniforms;
pub use sign::{ScaledSign, Sign, majority_vote, majority_vote_into};
pub use sparse::{Count, RandomK, TopK, random_positions, sparse_body_bytes};
pub use terngrad::{TernGrad, TritPacking};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

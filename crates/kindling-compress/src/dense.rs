//! Baselines that keep every entry: [`Identity`] (f32) and [`Half`] (f16 or bf16).

use burn::tensor::{Device, Tensor};
use rand::Rng;
use rayon::prelude::*;

use crate::codec::{compress_on_host, decompress_on_host};
use crate::codec::{host_decoders, host_encoder};
use crate::host::{CHUNK, Sink, max_abs};
use crate::payload::{Writer, finite};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload, PayloadRef};

/// Little-endian words of `W` bytes, one per value, in parallel.
fn encode_words<const W: usize>(
    values: &[f32],
    out: &mut [u8],
    word: impl Fn(f32) -> [u8; W] + Sync,
) {
    out.par_chunks_mut(W * CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(bytes, vals)| {
            for (dst, &v) in bytes.chunks_exact_mut(W).zip(vals) {
                dst.copy_from_slice(&word(v));
            }
        });
}

/// Decodes little-endian words of `W` bytes to finite values through `sink`: validated first
/// (so a bad payload leaves `out` untouched), then written, in parallel.
fn decode_words<const W: usize, S: Sink>(
    what: &'static str,
    bytes: &[u8],
    out: &mut [S::Slot],
    sink: S,
    value: impl Fn([u8; W]) -> f32 + Sync,
) -> Result<(), DecodeError> {
    let word = |c: &[u8]| value(c.try_into().expect("W bytes"));
    let bad = bytes
        .par_chunks(W * CHUNK)
        .find_map_any(|c| c.chunks_exact(W).map(word).find(|v| !v.is_finite()));
    if let Some(v) = bad {
        finite(what, v)?;
    }
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(W * CHUNK))
        .for_each(|(vals, c)| {
            for (slot, w) in vals.iter_mut().zip(c.chunks_exact(W)) {
                sink.put(slot, word(w));
            }
        });
    Ok(())
}

/// Sends every entry as an f32: the uncompressed baseline (unbiased, exact).
///
/// Wire: header (5 + 4·rank bytes) + 4·n bytes, the values in row-major order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl Compressor for Identity {
    fn codec(&self) -> CodecId {
        CodecId::Identity
    }

    fn is_unbiased(&self) -> bool {
        true
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        compress_on_host(self, grad, rng)
    }

    host_encoder!(self, values, shape, rng => identity_payload(values, shape));

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        decompress_on_host(self, payload, device)
    }

    host_decoders!(payload, out, sink => decode_identity(payload, out, sink));
}

fn identity_payload(values: &[f32], shape: &[usize]) -> Result<Payload, CompressError> {
    max_abs(values)?;
    let mut w = Writer::new(CodecId::Identity, 0, shape, 4 * values.len())?;
    encode_words(values, w.zeroed(4 * values.len()), f32::to_le_bytes);
    Ok(w.finish())
}

fn decode_identity<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (_, mut r) = payload.open_into(CodecId::Identity, out)?;
    let bytes = r.take("values", out.len().saturating_mul(4))?;
    r.finish()?;
    decode_words::<4, S>("values", bytes, out, sink, f32::from_le_bytes)
}

/// The 16-bit float formats [`Half`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum HalfFormat {
    /// IEEE binary16 (range ±65504; larger finite values saturate to ±65504).
    #[default]
    F16,
    /// bfloat16 (f32's range, 8 bits of mantissa).
    Bf16,
}

/// Sends every entry as a 16-bit float (round to nearest even): half the bytes, a relative
/// error below 2⁻¹¹ (f16) or 2⁻⁸ (bf16). Deterministic, so biased by the rounding.
///
/// Wire: header (5 + 4·rank bytes) + 2·n bytes; header flags: 0 = f16, 1 = bf16. f16 saturates
/// finite values beyond ±65504 instead of turning them into infinities.
#[derive(Debug, Clone, Copy, Default)]
pub struct Half {
    /// f16 or bf16.
    pub format: HalfFormat,
}

impl Half {
    /// A half-precision codec in `format`.
    pub fn new(format: HalfFormat) -> Self {
        Self { format }
    }
}

impl Compressor for Half {
    fn codec(&self) -> CodecId {
        CodecId::Half
    }

    fn is_unbiased(&self) -> bool {
        false
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        compress_on_host(self, grad, rng)
    }

    host_encoder!(self, values, shape, rng => self.payload(values, shape));

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        decompress_on_host(self, payload, device)
    }

    host_decoders!(payload, out, sink => decode_half(payload, out, sink));
}

impl Half {
    fn payload(&self, values: &[f32], shape: &[usize]) -> Result<Payload, CompressError> {
        max_abs(values)?;
        let flag = match self.format {
            HalfFormat::F16 => 0,
            HalfFormat::Bf16 => 1,
        };
        let mut w = Writer::new(CodecId::Half, flag, shape, 2 * values.len())?;
        let body = w.zeroed(2 * values.len());
        match self.format {
            HalfFormat::F16 => encode_words(values, body, |v| {
                half::f16::from_f32(v.clamp(-65504.0, 65504.0))
                    .to_bits()
                    .to_le_bytes()
            }),
            // Rounding can carry the largest f32s past bf16's largest finite value.
            HalfFormat::Bf16 => {
                let max = half::bf16::MAX.to_f32();
                encode_words(values, body, |v| {
                    half::bf16::from_f32(v.clamp(-max, max))
                        .to_bits()
                        .to_le_bytes()
                })
            }
        }
        Ok(w.finish())
    }
}

/// Every f16 as f32: one lookup per value instead of a software conversion (baseline x86-64
/// has no F16C).
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    })
}

fn decode_half<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (header, mut r) = payload.open_into(CodecId::Half, out)?;
    let bytes = r.take("half values", out.len().saturating_mul(2))?;
    r.finish()?;
    match header.flags {
        0 => {
            let table = f16_table();
            decode_words::<2, S>("half values", bytes, out, sink, |b| {
                table[u16::from_le_bytes(b) as usize]
            })
        }
        1 => decode_words::<2, S>("half values", bytes, out, sink, |b| {
            half::bf16::from_bits(u16::from_le_bytes(b)).to_f32()
        }),
        f => Err(DecodeError::FieldOutOfRange {
            field: "half format flag",
            value: f as u64,
            reason: "must be 0 (f16) or 1 (bf16)",
        }),
    }
}

//! TernGrad: stochastic ternarisation (Wen et al., *TernGrad: Ternary Gradients to Reduce
//! Communication in Distributed Deep Learning*, NeurIPS 2017, <https://arxiv.org/abs/1705.07878>).

use burn::tensor::{Device, Int, Tensor, TensorData};

use rand::Rng;

use crate::bits::{pack_fields, packed_len, unpack_mapped};
use crate::codec::{
    compress_on_host, decompress_on_host, flatten, invalid, l1_norm_checked, unflatten,
};
use crate::codec::{host_decoders, host_encoder};
use crate::host::{self, BLOCK, CHUNK, HostGrad, Sink, is_host_device, pack_random};
use crate::payload::Writer;
use crate::random::{Stream, uniforms};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload, PayloadRef};
use rayon::prelude::*;

/// Header flag: trits packed base 3 (5 a byte) instead of 2 bits each.
const BASE3: u8 = 1;

/// How the ternaries are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum TritPacking {
    /// 2 bits per entry, 4 entries a byte: field 0 = 0, 1 = +1, 2 = −1.
    #[default]
    TwoBits,
    /// Base 3, 5 entries a byte (`Σ_j (t_j + 1)·3^j`, values 0..=242): 1.6 bits per entry.
    Base3,
}

/// TernGrad: each entry becomes `s·sign(g_i)·b_i` with `b_i ~ Bernoulli(|g_i|/s)` and
/// `s = max_i |g_i|`.
///
/// ```text
/// (optional) g_i ← clamp(g_i, −c·σ, c·σ),  σ = std(g)      (the paper uses c = 2.5)
/// s = max_i |g_i|            (or a scale shared by all workers: the max of their maxima)
/// t_i = s · sign(g_i) · b_i,  b_i ~ Bernoulli(|g_i| / s)
/// ```
///
/// Unbiased for the (clipped) gradient, with `E‖t − g‖² = Σ_i |g_i|(s − |g_i|)`.
///
/// **Scalar sharing.** In data-parallel training every worker can use the same `s` (the maximum
/// over workers, one all-reduce of a scalar): get each worker's [`TernGrad::local_scale`], reduce
/// with max, then [`TernGrad::compress_with_scale`]. The ternaries then sum as small integers.
///
/// # Wire format
/// Header (5 + 4·rank bytes), the scale `s` (f32), then the ternaries: `⌈n/4⌉` bytes (2 bits
/// each, flags = 0) or `⌈n/5⌉` bytes (base 3, flags = 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct TernGrad {
    clip: Option<f32>,
    packing: TritPacking,
}

impl TernGrad {
    /// TernGrad without clipping, 2 bits per entry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Clips entries to `±c·σ` before ternarising (the paper's `c = 2.5`).
    pub fn with_clipping(mut self, c: f32) -> Result<Self, CompressError> {
        if !(c.is_finite() && c > 0.0) {
            return Err(invalid("TernGrad", "clip", c, "must be finite and > 0"));
        }
        self.clip = Some(c);
        Ok(self)
    }

    /// Chooses how ternaries are packed.
    pub fn with_packing(mut self, packing: TritPacking) -> Self {
        self.packing = packing;
        self
    }

    fn clipped<const D: usize>(&self, grad: Tensor<D>) -> Tensor<D> {
        match self.clip {
            None => grad,
            Some(c) => {
                let n = grad.dims().iter().product::<usize>().max(1) as f64;
                let mean = grad.clone().sum().into_scalar::<f64>() / n;
                let sq = grad.clone().square().sum().into_scalar::<f64>() / n;
                let bound = (c as f64 * (sq - mean * mean).max(0.0).sqrt()) as f32;
                grad.clamp(-bound, bound)
            }
        }
    }

    /// The clipping bound `c·σ` of host values (`f32::MAX` without clipping), and their
    /// `max |g_i|` after clipping; checks every entry is finite.
    fn host_bound_and_scale(&self, values: &[f32]) -> Result<(f32, f32), CompressError> {
        let max = host::max_abs(values)?;
        let Some(c) = self.clip else {
            return Ok((f32::MAX, max));
        };
        let (sum, sq) = values
            .par_chunks(CHUNK)
            .map(|chunk| {
                chunk.iter().fold((0f64, 0f64), |(s, q), &v| {
                    (s + v as f64, q + (v as f64) * (v as f64))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            // In chunk order: the sums do not depend on the thread count.
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let n = values.len().max(1) as f64;
        let mean = sum / n;
        let bound = (c as f64 * (sq / n - mean * mean).max(0.0).sqrt()) as f32;
        Ok((bound, max.min(bound)))
    }

    /// This worker's scale `max |g_i|` (after clipping): the value to all-reduce with `max` for
    /// scalar sharing.
    pub fn local_scale<const D: usize>(&self, grad: Tensor<D>) -> Result<f32, CompressError> {
        if is_host_device(&grad.device()) {
            return Ok(self.host_bound_and_scale(HostGrad::read(grad).values())?.1);
        }
        l1_norm_checked(&grad)?;
        if grad.dims().iter().product::<usize>() == 0 {
            return Ok(0.0);
        }
        Ok(self.clipped(grad).abs().max().into_scalar::<f32>())
    }

    /// Encodes with a given (shared) scale, which must be at least this gradient's own
    /// [`local_scale`](Self::local_scale).
    pub fn compress_with_scale<const D: usize>(
        &self,
        grad: Tensor<D>,
        scale: f32,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let check = |local: f32| {
            if scale.is_finite() && scale >= local {
                Ok(())
            } else {
                Err(invalid(
                    "TernGrad",
                    "scale",
                    scale,
                    "must be finite and at least the gradient's own max |g| (the max over workers)",
                ))
            }
        };
        if is_host_device(&grad.device()) {
            let shape = grad.dims();
            let host = HostGrad::read(grad);
            let (bound, local) = self.host_bound_and_scale(host.values())?;
            check(local)?;
            return self.encode_host(host.values(), &shape, bound, scale, rng);
        }
        l1_norm_checked(&grad)?;
        check(self.local_scale(grad.clone())?)?;
        self.encode(self.clipped(grad), scale, rng)
    }

    /// The host kernel: one pass over `values` (clipped to `±bound` on the fly) writing the
    /// packed ternaries into the payload, with the counter-based uniforms of [`uniforms`].
    fn encode_host(
        &self,
        values: &[f32],
        shape: &[usize],
        bound: f32,
        scale: f32,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let n = values.len();
        let stream = Stream::new(rng);
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        // b_i ~ Bernoulli(|a_i|) with a = g/s: u < a keeps +1, u < −a keeps −1 (as on the device).
        let trit = move |v: f32, u: f32| {
            let a = v.clamp(-bound, bound) * inv;
            ((u < a) as u8, (u < -a) as u8)
        };
        let (flags, body_len) = match self.packing {
            TritPacking::TwoBits => (0, packed_len(n, 2)),
            TritPacking::Base3 => (BASE3, n.div_ceil(5)),
        };
        let mut w = Writer::new(CodecId::TernGrad, flags, shape, 4 + body_len)?;
        w.f32(scale);
        let body = w.zeroed(body_len);
        match self.packing {
            // field: 0 = zero, 1 = +1, 2 = −1
            TritPacking::TwoBits => pack_random(
                values,
                stream,
                BLOCK / 4,
                body,
                #[inline(always)]
                |_, vs, us, out| {
                    let mut fields = [0u8; BLOCK];
                    for ((field, &v), &u) in fields.iter_mut().zip(vs).zip(us) {
                        let (plus, minus) = trit(v, u);
                        *field = plus | minus << 1;
                    }
                    for (byte, four) in out.iter_mut().zip(fields[..vs.len()].chunks(4)) {
                        *byte = four
                            .iter()
                            .enumerate()
                            .fold(0, |b, (t, &f)| b | f << (2 * t));
                    }
                    0
                },
            ),
            // digit (trit + 1): 0 = −1, 1 = 0, 2 = +1; the padding digit is 1
            TritPacking::Base3 => pack_random(
                values,
                stream,
                BLOCK / 5,
                body,
                #[inline(always)]
                |_, vs, us, out| {
                    for (byte, (vs, us)) in out.iter_mut().zip(vs.chunks(5).zip(us.chunks(5))) {
                        let mut b = 0u8;
                        for j in (0..5).rev() {
                            let digit = match vs.get(j) {
                                Some(&v) => {
                                    let (plus, minus) = trit(v, us[j]);
                                    1 + plus - minus
                                }
                                None => 1,
                            };
                            b = 3 * b + digit;
                        }
                        *byte = b;
                    }
                    0
                },
            ),
        };
        Ok(w.finish())
    }

    fn encode<const D: usize>(
        &self,
        grad: Tensor<D>,
        scale: f32,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let shape = grad.dims();
        let n = grad.dims().iter().product::<usize>();
        let device = grad.device();
        let a = flatten(grad).mul_scalar(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        // b_i ~ Bernoulli(|a_i|): one uniform decides; a > u keeps a positive entry, −a > u a
        // negative one (the two events are disjoint).
        let u = uniforms(rng, n, &device);
        let plus = u.clone().lower(a.clone()).float();
        let minus = u.lower(a.neg()).float();
        let (flags, body) = match self.packing {
            // field: 0 = zero, 1 = +1, 2 = −1
            TritPacking::TwoBits => (0, pack_fields(plus + minus.mul_scalar(2.0), 2)),
            // digit (trit + 1): 0 = −1, 1 = 0, 2 = +1
            TritPacking::Base3 => (BASE3, base3_bytes(plus - minus + 1.0)),
        };
        let mut w = Writer::new(CodecId::TernGrad, flags, &shape, 4 + body.len())?;
        w.f32(scale);
        w.bytes(&body);
        Ok(w.finish())
    }
}

const POWERS_OF_3: [f32; 5] = [1.0, 3.0, 9.0, 27.0, 81.0];

/// Groups base-3 digits (0..=2) five to a byte, `Σ_j d_j·3^j`, with one small matmul.
fn base3_bytes(digits: Tensor<1>) -> Vec<u8> {
    let n = digits.dims()[0];
    if n == 0 {
        return Vec::new();
    }
    let groups = n.div_ceil(5);
    let device = digits.device();
    let padded = if groups * 5 == n {
        digits
    } else {
        Tensor::cat(vec![digits, Tensor::ones([groups * 5 - n], &device)], 0)
    };
    let powers = Tensor::<2>::from_data(TensorData::new(POWERS_OF_3.to_vec(), [5, 1]), &device);
    let values: Vec<f32> = padded
        .reshape([groups, 5])
        .matmul(powers)
        .into_data()
        .try_into_vec()
        .expect("base-3 bytes");
    values.into_iter().map(|v| v as u8).collect()
}

impl Compressor for TernGrad {
    fn codec(&self) -> CodecId {
        CodecId::TernGrad
    }

    fn is_unbiased(&self) -> bool {
        self.clip.is_none()
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        if is_host_device(&grad.device()) {
            return compress_on_host(self, grad, rng);
        }
        let scale = self.local_scale(grad.clone())?;
        self.encode(self.clipped(grad), scale, rng)
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        if is_host_device(device) {
            return decompress_on_host(self, payload, device);
        }
        let (header, shape, mut r) = payload.open::<D>(CodecId::TernGrad)?;
        let n = header.numel();
        let scale = r.scale("scale")?;
        if n == 0 && header.flags <= BASE3 {
            r.finish()?;
            return Ok(Tensor::zeros(shape, device));
        }
        let values: Tensor<1> = match header.flags {
            0 => {
                let bytes = r.take("ternaries", packed_len(n, 2))?;
                r.finish()?;
                check_two_bit(bytes)?;
                unpack_mapped(bytes, n, 2, &[0.0, scale, -scale, 0.0], device)
            }
            BASE3 => {
                let groups = n.div_ceil(5);
                let bytes = r.take("base-3 ternaries", groups)?;
                r.finish()?;
                check_base3(bytes)?;
                // One gather: row b of the table holds the five decoded values of byte b.
                let table: Vec<f32> = (0..243usize * 5)
                    .map(|i| {
                        let digit = (i / 5) / 3usize.pow((i % 5) as u32) % 3;
                        (digit as f32 - 1.0) * scale
                    })
                    .collect();
                let table = Tensor::<2>::from_data(TensorData::new(table, [243, 5]), device);
                let index: Vec<i32> = bytes.iter().map(|&b| b as i32).collect();
                let index = Tensor::<1, Int>::from_data(TensorData::new(index, [groups]), device);
                table.select(0, index).reshape([groups * 5]).slice(0..n)
            }
            f => return Err(flags_error(f)),
        };
        Ok(unflatten(values, shape))
    }

    host_encoder!(self, values, shape, rng => self
        .host_bound_and_scale(values)
        .and_then(|(bound, scale)| self.encode_host(values, shape, bound, scale, rng)));

    host_decoders!(payload, out, sink => decode_host(payload, out, sink));
}

fn flags_error(flags: u8) -> DecodeError {
    DecodeError::FieldOutOfRange {
        field: "terngrad flags",
        value: flags as u64,
        reason: "only bit 0 (base 3) is defined",
    }
}

/// A 2-bit field of 3 (both bits set) is not a ternary.
fn check_two_bit(bytes: &[u8]) -> Result<(), DecodeError> {
    // In chunks of [`CHUNK`] entries: a small payload is checked on the calling thread (a
    // parallel iterator over single bytes would wake the pool for a few microseconds of work).
    if bytes
        .par_chunks(host::chunk_bytes(2))
        .any(|c| c.iter().any(|b| b & (b >> 1) & 0x55 != 0))
    {
        return Err(DecodeError::FieldOutOfRange {
            field: "ternary",
            value: 3,
            reason: "2-bit fields must be 0, 1 or 2",
        });
    }
    Ok(())
}

fn check_base3(bytes: &[u8]) -> Result<(), DecodeError> {
    if let Some(b) = bytes
        .par_chunks(CHUNK / 5)
        .find_map_first(|c| c.iter().copied().find(|&b| b > 242))
    {
        return Err(DecodeError::FieldOutOfRange {
            field: "base-3 byte",
            value: b as u64,
            reason: "must be at most 3⁵ − 1 = 242",
        });
    }
    Ok(())
}

/// The host decoder: validated, then each value written once through `sink`, in parallel.
fn decode_host<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (header, mut r) = payload.open_into(CodecId::TernGrad, out)?;
    let n = out.len();
    let scale = r.scale("scale")?;
    match header.flags {
        0 => {
            let bytes = r.take("ternaries", packed_len(n, 2))?;
            r.finish()?;
            check_two_bit(bytes)?;
            host::unpack_small::<2, _>(bytes, out, sink, &[0.0, scale, -scale, 0.0]);
        }
        BASE3 => {
            let bytes = r.take("base-3 ternaries", n.div_ceil(5))?;
            r.finish()?;
            check_base3(bytes)?;
            let table: Vec<[f32; 5]> = (0..243u32)
                .map(|b| std::array::from_fn(|j| ((b / 3u32.pow(j as u32)) % 3) as f32 - 1.0))
                .map(|digits: [f32; 5]| digits.map(|d| d * scale))
                .collect();
            out.par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(CHUNK / 5))
                .for_each(|(vals, bytes)| {
                    for (group, &b) in vals.chunks_mut(5).zip(bytes) {
                        for (slot, &v) in group.iter_mut().zip(&table[b as usize]) {
                            sink.put(slot, v);
                        }
                    }
                });
        }
        f => return Err(flags_error(f)),
    }
    Ok(())
}

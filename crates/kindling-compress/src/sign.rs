//! One bit per entry: [`Sign`] (signSGD), [`ScaledSign`] (EF-signSGD's scaled sign) and the
//! [`majority_vote`] aggregate.

use burn::tensor::{Device, Tensor};
use rand::Rng;

use crate::bits::{pack_fields, packed_len, unpack_mapped};
use crate::codec::{compress_on_host, decompress_on_host, flatten, l1_norm_checked, unflatten};
use crate::codec::{host_decoders, host_encoder};
use crate::host::{self, Sink, is_host_device, pack_small, unpack_small};
use crate::payload::Writer;
use crate::simd;
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload, PayloadRef};
use rayon::prelude::*;

/// Header flag: every entry of the gradient was exactly zero.
const ALL_ZERO: u8 = 1;

/// Sign bits of a flat gradient: bit set iff `g_i < 0`, packed on the device.
fn sign_bits(flat: Tensor<1>) -> Vec<u8> {
    pack_fields(flat.lower_elem(0.0).float(), 1)
}

/// Sign bits on the host (bit set iff `g_i < 0`; `−0.0` is not negative), the bits of `max|g|`
/// and, when `SUM`, `‖g‖₁`, in one parallel pass that also checks every entry is finite.
fn host_sign_bits<const SUM: bool>(values: &[f32]) -> Result<(Vec<u8>, u32, f64), CompressError> {
    let mut bits = vec![0u8; packed_len(values.len(), 1)];
    let (max, l1) = pack_small::<1, SUM, _>(
        values,
        &mut bits,
        #[inline(always)]
        |v| (v < 0.0) as u8,
    );
    if max >= 0x7F80_0000 {
        return Err(host::non_finite(values));
    }
    Ok((bits, max, l1))
}

/// A [`Sign`] or [`ScaledSign`] payload from host values: one pass.
fn host_payload(codec: CodecId, values: &[f32], shape: &[usize]) -> Result<Payload, CompressError> {
    let n = values.len();
    let (bits, mut w) = if codec == CodecId::Sign {
        let (bits, max, _) = host_sign_bits::<false>(values)?;
        let flags = if max == 0 { ALL_ZERO } else { 0 };
        (bits, Writer::new(codec, flags, shape, packed_len(n, 1))?)
    } else {
        let (bits, _, l1) = host_sign_bits::<true>(values)?;
        let mut w = Writer::new(codec, 0, shape, 4 + packed_len(n, 1))?;
        w.f32(scaled_sign_scale(l1, n));
        (bits, w)
    };
    w.bytes(&bits);
    Ok(w.finish())
}

/// `‖g‖₁/n`, the scale of the scaled sign.
fn scaled_sign_scale(l1: f64, n: usize) -> f32 {
    if n == 0 { 0.0 } else { (l1 / n as f64) as f32 }
}

/// `±scale` from packed sign bits (bit set → −scale), on `device`.
fn signs_from_bits(bytes: &[u8], n: usize, scale: f32, device: &Device) -> Tensor<1> {
    unpack_mapped(bytes, n, 1, &[scale, -scale], device)
}

/// signSGD's codec: one bit per entry, set iff `g_i < 0`; decodes to ±1.
///
/// `sign(0)` decodes as +1 (a tie). A gradient that is exactly zero everywhere is flagged in the
/// header and decodes to zeros. There is no scale: the optimizer's learning rate is the step.
/// Biased.
///
/// Wire: header (5 + 4·rank) + ⌈n/8⌉ bytes (bit `i` of the stream is entry `i`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sign;

/// Scaled sign (Karimireddy et al., *Error Feedback Fixes SignSGD*, ICML 2019): the sign bits
/// and one f32 scale `‖g‖₁/n`, decoding to `(‖g‖₁/n)·sign(g)`.
///
/// It minimises `‖C(x) − x‖` over scaled sign vectors, and
/// `‖C(x) − x‖² = ‖x‖² − ‖x‖₁²/n` exactly. Biased: pair it with
/// [`ErrorFeedback`](crate::ErrorFeedback).
///
/// Wire: header (5 + 4·rank) + 4 (scale) + ⌈n/8⌉ bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScaledSign;

impl Compressor for Sign {
    fn codec(&self) -> CodecId {
        CodecId::Sign
    }

    fn is_unbiased(&self) -> bool {
        false
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        if is_host_device(&grad.device()) {
            return compress_on_host(self, grad, rng);
        }
        let shape = grad.dims();
        let n = grad.dims().iter().product::<usize>();
        let l1 = l1_norm_checked(&grad)?;
        let flags = if l1 == 0.0 { ALL_ZERO } else { 0 };
        let mut w = Writer::new(CodecId::Sign, flags, &shape, packed_len(n, 1))?;
        w.bytes(&sign_bits(flatten(grad)));
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        if is_host_device(device) {
            return decompress_on_host(self, payload, device);
        }
        let (header, shape, mut r) = payload.open::<D>(CodecId::Sign)?;
        let n = header.numel();
        let bits = r.take("sign bits", packed_len(n, 1))?;
        r.finish()?;
        match header.flags {
            0 => Ok(unflatten(signs_from_bits(bits, n, 1.0, device), shape)),
            ALL_ZERO => Ok(Tensor::zeros(shape, device)),
            f => Err(sign_flags_error(f)),
        }
    }

    host_encoder!(self, values, shape, rng => host_payload(CodecId::Sign, values, shape));

    host_decoders!(payload, out, sink => decode_sign(payload, out, sink));
}

fn sign_flags_error(flags: u8) -> DecodeError {
    DecodeError::FieldOutOfRange {
        field: "sign flags",
        value: flags as u64,
        reason: "only bit 0 (all zero) is defined",
    }
}

fn decode_sign<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (header, mut r) = payload.open_into(CodecId::Sign, out)?;
    let bits = r.take("sign bits", packed_len(out.len(), 1))?;
    r.finish()?;
    let scale = match header.flags {
        0 => 1.0,
        ALL_ZERO => 0.0,
        f => return Err(sign_flags_error(f)),
    };
    unpack_small::<1, _>(bits, out, sink, &[scale, -scale]);
    Ok(())
}

impl Compressor for ScaledSign {
    fn codec(&self) -> CodecId {
        CodecId::ScaledSign
    }

    fn is_unbiased(&self) -> bool {
        false
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        if is_host_device(&grad.device()) {
            return compress_on_host(self, grad, rng);
        }
        let shape = grad.dims();
        let n = grad.dims().iter().product::<usize>();
        let l1 = l1_norm_checked(&grad)?;
        let mut w = Writer::new(CodecId::ScaledSign, 0, &shape, 4 + packed_len(n, 1))?;
        w.f32(scaled_sign_scale(l1, n));
        w.bytes(&sign_bits(flatten(grad)));
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        if is_host_device(device) {
            return decompress_on_host(self, payload, device);
        }
        let (header, shape, mut r) = payload.open::<D>(CodecId::ScaledSign)?;
        let n = header.numel();
        let scale = r.scale("scale")?;
        let bits = r.take("sign bits", packed_len(n, 1))?;
        r.finish()?;
        Ok(unflatten(signs_from_bits(bits, n, scale, device), shape))
    }

    host_encoder!(self, values, shape, rng => host_payload(CodecId::ScaledSign, values, shape));

    host_decoders!(payload, out, sink => decode_scaled_sign(payload, out, sink));
}

fn decode_scaled_sign<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (_, mut r) = payload.open_into(CodecId::ScaledSign, out)?;
    let scale = r.scale("scale")?;
    let bits = r.take("sign bits", packed_len(out.len(), 1))?;
    r.finish()?;
    unpack_small::<1, _>(bits, out, sink, &[scale, -scale]);
    Ok(())
}

/// The majority vote over workers' [`Sign`] payloads: `sign(Σ_m sign(g_m))`, ties → +1.
///
/// With `M` voters of which a minority send flipped signs, the vote still equals the honest sign
/// wherever the honest workers agree. A worker whose gradient was all zero abstains.
///
/// On a host device this is [`majority_vote_into`] (a count over the packed bits); on other
/// devices each payload is decoded on the device and the signs summed there.
pub fn majority_vote<const D: usize>(
    payloads: &[Payload],
    device: &Device,
) -> Result<Tensor<D>, DecodeError> {
    let Some(first) = payloads.first() else {
        return Err(no_voters());
    };
    let shape: [usize; D] = first.dims()?;
    if let Some(p) = payloads
        .iter()
        .find(|p| p.header().shape != first.header().shape)
    {
        return Err(DecodeError::ShapeMismatch {
            expected_rank: D,
            found: p.header().shape.clone(),
        });
    }
    if is_host_device(device) {
        let refs: Vec<PayloadRef<'_>> = payloads.iter().map(Payload::borrow).collect();
        let mut out = vec![0.0f32; first.header().numel()];
        majority_vote_into(&refs, &mut out)?;
        return Ok(host::tensor(out, shape, device));
    }
    let mut votes: Option<Tensor<D>> = None;
    for p in payloads {
        let v: Tensor<D> = Sign.decompress(p, device)?;
        votes = Some(match votes {
            Some(sum) => sum + v,
            None => v,
        });
    }
    let votes = votes.ok_or_else(no_voters)?;
    Ok(votes
        .greater_equal_elem(0.0)
        .float()
        .mul_scalar(2.0)
        .sub_scalar(1.0))
}

fn no_voters() -> DecodeError {
    DecodeError::FieldOutOfRange {
        field: "payload count",
        value: 0,
        reason: "a vote needs at least one payload",
    }
}

/// [`majority_vote`] into a caller's buffer of the payloads' entry count, from borrowed
/// payloads (a receive buffer), on the host: the signs are counted on the packed bits, 64
/// entries at a time (a bit-sliced counter per bit position), and each entry written once
/// (`−1` where more voters sent a negative sign than a non-negative one, else `+1`). A payload
/// of another codec or entry count, or with undefined flags, is an error.
pub fn majority_vote_into(payloads: &[PayloadRef<'_>], out: &mut [f32]) -> Result<(), DecodeError> {
    if payloads.is_empty() {
        return Err(no_voters());
    }
    let mut voters = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let (header, mut r) = payload.open_into(CodecId::Sign, out)?;
        let flags = header.flags;
        let bits = r.take("sign bits", packed_len(out.len(), 1))?;
        r.finish()?;
        match flags {
            0 => voters.push(bits),
            ALL_ZERO => {}
            f => return Err(sign_flags_error(f)),
        }
    }
    // Negative where at least ⌊V/2⌋ + 1 of the V voters sent a set bit (ties are +1); with no
    // voter every sum is 0, so +1.
    let mut mask = vec![0u8; packed_len(out.len(), 1)];
    if !voters.is_empty() {
        let needed = voters.len() / 2 + 1;
        let task = |(c, mask): (usize, &mut [u8])| vote_mask(&voters, needed, c * VOTE_BYTES, mask);
        mask.par_chunks_mut(VOTE_BYTES).enumerate().for_each(task);
    }
    // SAFETY: `Set` writes only values.
    let out = unsafe { host::slots(out) };
    unpack_small::<1, _>(&mask, out, host::Set, &[1.0, -1.0]);
    Ok(())
}

/// Mask bytes per task of the vote: [`host::CHUNK`] entries.
const VOTE_BYTES: usize = host::CHUNK / 8;

/// Writes into `mask` (bytes `start..` of the whole mask) bit `i` set iff at least `needed` of
/// the `voters`' bit streams have bit `i` set: per 64-bit word, the voters' bits are added into
/// a bit-sliced counter (plane `p` holds bit `p` of every position's count) and the counts
/// compared with `needed` plane by plane, from the top.
fn vote_mask(voters: &[&[u8]], needed: usize, start: usize, mask: &mut [u8]) {
    let planes = (usize::BITS - voters.len().leading_zeros()) as usize;
    let word = |bytes: &[u8], at: usize| {
        let mut w = [0u8; 8];
        let end = (at + 8).min(bytes.len());
        w[..end - at].copy_from_slice(&bytes[at..end]);
        u64::from_le_bytes(w)
    };
    simd::wide!({
        let mut count = [0u64; usize::BITS as usize];
        for (k, out) in mask.chunks_mut(8).enumerate() {
            let at = start + 8 * k;
            count[..planes].fill(0);
            for voter in voters {
                let mut carry = word(voter, at);
                for plane in &mut count[..planes] {
                    let sum = *plane ^ carry;
                    carry &= *plane;
                    *plane = sum;
                }
            }
            let (mut above, mut equal) = (0u64, !0u64);
            for (p, plane) in count[..planes].iter().enumerate().rev() {
                if (needed >> p) & 1 == 1 {
                    equal &= plane;
                } else {
                    above |= equal & plane;
                    equal &= !plane;
                }
            }
            let bytes = (above | equal).to_le_bytes();
            out.copy_from_slice(&bytes[..out.len()]);
        }
    })
}

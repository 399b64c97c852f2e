//! One bit per entry: [`Sign`] (signSGD), [`ScaledSign`] (EF-signSGD's scaled sign) and the
//! [`majority_vote`] aggregate.

use burn::tensor::{Device, Tensor};
use rand::Rng;

use crate::bits::{pack_fields, packed_len, unpack_mapped};
use crate::codec::{flatten, l1_norm_checked, unflatten};
use crate::payload::Writer;
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Header flag: every entry of the gradient was exactly zero.
const ALL_ZERO: u8 = 1;

/// Sign bits of a flat gradient: bit set iff `g_i < 0`, packed on the device.
fn sign_bits(flat: Tensor<1>) -> Vec<u8> {
    pack_fields(flat.lower_elem(0.0).float(), 1)
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
        _rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
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
        let (header, shape, mut r) = payload.open::<D>(CodecId::Sign)?;
        let n = header.numel();
        let bits = r.take("sign bits", packed_len(n, 1))?;
        r.finish()?;
        match header.flags {
            0 => Ok(unflatten(signs_from_bits(bits, n, 1.0, device), shape)),
            ALL_ZERO => Ok(Tensor::zeros(shape, device)),
            f => Err(DecodeError::FieldOutOfRange {
                field: "sign flags",
                value: f as u64,
                reason: "only bit 0 (all zero) is defined",
            }),
        }
    }
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
        _rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let shape = grad.dims();
        let n = grad.dims().iter().product::<usize>();
        let l1 = l1_norm_checked(&grad)?;
        let scale = if n == 0 { 0.0 } else { (l1 / n as f64) as f32 };
        let mut w = Writer::new(CodecId::ScaledSign, 0, &shape, 4 + packed_len(n, 1))?;
        w.f32(scale);
        w.bytes(&sign_bits(flatten(grad)));
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        let (header, shape, mut r) = payload.open::<D>(CodecId::ScaledSign)?;
        let n = header.numel();
        let scale = r.scale("scale")?;
        let bits = r.take("sign bits", packed_len(n, 1))?;
        r.finish()?;
        Ok(unflatten(signs_from_bits(bits, n, scale, device), shape))
    }
}

/// The majority vote over workers' [`Sign`] payloads: `sign(Σ_m sign(g_m))`, ties → +1.
///
/// With `M` voters of which a minority send flipped signs, the vote still equals the honest sign
/// wherever the honest workers agree. A worker whose gradient was all zero abstains.
pub fn majority_vote<const D: usize>(
    payloads: &[Payload],
    device: &Device,
) -> Result<Tensor<D>, DecodeError> {
    let mut votes: Option<Tensor<D>> = None;
    for p in payloads {
        let v: Tensor<D> = Sign.decompress(p, device)?;
        if let Some(prev) = &votes
            && prev.dims() != v.dims()
        {
            return Err(DecodeError::ShapeMismatch {
                expected_rank: D,
                found: p.header().shape.clone(),
            });
        }
        votes = Some(match votes {
            Some(sum) => sum + v,
            None => v,
        });
    }
    let votes = votes.ok_or(DecodeError::FieldOutOfRange {
        field: "payload count",
        value: 0,
        reason: "a vote needs at least one payload",
    })?;
    Ok(votes
        .greater_equal_elem(0.0)
        .float()
        .mul_scalar(2.0)
        .sub_scalar(1.0))
}

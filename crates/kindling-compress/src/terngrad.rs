//! TernGrad: stochastic ternarisation (Wen et al., *TernGrad: Ternary Gradients to Reduce
//! Communication in Distributed Deep Learning*, NeurIPS 2017, <https://arxiv.org/abs/1705.07878>).

use burn::tensor::{Device, Int, Tensor, TensorData};

use rand::Rng;

use crate::bits::{pack_fields, packed_len, unpack_mapped};
use crate::codec::{flatten, invalid, l1_norm_checked, unflatten};
use crate::payload::Writer;
use crate::random::uniforms;
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Header flag: trits packed base 3 (5 a byte) instead of 2 bits each.
const BASE3: u8 = 1;

/// How the ternaries are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

    /// This worker's scale `max |g_i|` (after clipping): the value to all-reduce with `max` for
    /// scalar sharing.
    pub fn local_scale<const D: usize>(&self, grad: Tensor<D>) -> Result<f32, CompressError> {
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
        l1_norm_checked(&grad)?;
        let local = self.local_scale(grad.clone())?;
        if !(scale.is_finite() && scale >= local) {
            return Err(invalid(
                "TernGrad",
                "scale",
                scale,
                "must be finite and at least the gradient's own max |g| (the max over workers)",
            ));
        }
        self.encode(self.clipped(grad), scale, rng)
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
        let scale = self.local_scale(grad.clone())?;
        self.encode(self.clipped(grad), scale, rng)
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
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
                // A field of 3 (both bits set) is not a ternary.
                if bytes.iter().any(|b| b & (b >> 1) & 0x55 != 0) {
                    return Err(DecodeError::FieldOutOfRange {
                        field: "ternary",
                        value: 3,
                        reason: "2-bit fields must be 0, 1 or 2",
                    });
                }
                unpack_mapped(bytes, n, 2, &[0.0, scale, -scale, 0.0], device)
            }
            BASE3 => {
                let groups = n.div_ceil(5);
                let bytes = r.take("base-3 ternaries", groups)?;
                r.finish()?;
                if let Some(&b) = bytes.iter().find(|&&b| b > 242) {
                    return Err(DecodeError::FieldOutOfRange {
                        field: "base-3 byte",
                        value: b as u64,
                        reason: "must be at most 3⁵ − 1 = 242",
                    });
                }
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
            f => {
                return Err(DecodeError::FieldOutOfRange {
                    field: "terngrad flags",
                    value: f as u64,
                    reason: "only bit 0 (base 3) is defined",
                });
            }
        };
        Ok(unflatten(values, shape))
    }
}

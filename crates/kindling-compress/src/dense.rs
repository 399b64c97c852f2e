//! Baselines that keep every entry: [`Identity`] (f32) and [`Half`] (f16 or bf16).

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;

use crate::codec::invalid;
use crate::payload::{Writer, finite};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Reads a gradient back to the host as f32, counting NaN/±Inf entries on the way.
fn host_values<const D: usize>(grad: Tensor<D>) -> Result<Vec<f32>, CompressError> {
    let values: Vec<f32> = grad
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .map_err(|_| {
            invalid(
                "dense",
                "gradient",
                "unreadable",
                "must be a readable float tensor",
            )
        })?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(CompressError::NonFinite {
            bad,
            total: values.len(),
        });
    }
    Ok(values)
}

fn to_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
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
        _rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let shape = grad.dims();
        let values = host_values(grad)?;
        let mut w = Writer::new(CodecId::Identity, 0, &shape, 4 * values.len())?;
        w.f32s(&values);
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        let (header, shape, mut r) = payload.open::<D>(CodecId::Identity)?;
        let values = r.f32s("values", header.numel())?;
        r.finish()?;
        Ok(to_tensor(values, shape, device))
    }
}

/// The 16-bit float formats [`Half`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
        _rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let shape = grad.dims();
        let values = host_values(grad)?;
        let flag = match self.format {
            HalfFormat::F16 => 0,
            HalfFormat::Bf16 => 1,
        };
        let mut w = Writer::new(CodecId::Half, flag, &shape, 2 * values.len())?;
        let mut body = Vec::with_capacity(2 * values.len());
        for v in values {
            let bits = match self.format {
                HalfFormat::F16 => half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_bits(),
                // Rounding can carry the largest f32s past bf16's largest finite value.
                HalfFormat::Bf16 => {
                    let max = half::bf16::MAX.to_f32();
                    half::bf16::from_f32(v.clamp(-max, max)).to_bits()
                }
            };
            body.extend_from_slice(&bits.to_le_bytes());
        }
        w.bytes(&body);
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        let (header, shape, mut r) = payload.open::<D>(CodecId::Half)?;
        let n = header.numel();
        let bytes = r.take("half values", n.saturating_mul(2))?;
        r.finish()?;
        let decode: fn(u16) -> f32 = match header.flags {
            0 => |b| half::f16::from_bits(b).to_f32(),
            1 => |b| half::bf16::from_bits(b).to_f32(),
            f => {
                return Err(DecodeError::FieldOutOfRange {
                    field: "half format flag",
                    value: f as u64,
                    reason: "must be 0 (f16) or 1 (bf16)",
                });
            }
        };
        let values = bytes
            .chunks_exact(2)
            .map(|c| finite("half values", decode(u16::from_le_bytes([c[0], c[1]]))))
            .collect::<Result<_, _>>()?;
        Ok(to_tensor(values, shape, device))
    }
}

//! QSGD: stochastic quantisation to `s` levels per bucket (Alistarh et al., *QSGD:
//! Communication-Efficient SGD via Gradient Quantization and Encoding*, NeurIPS 2017,
//! <https://arxiv.org/abs/1610.02132>).

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;

use crate::bits::{host_fields, pack_fields, packed_len, unpack_mapped};
use crate::codec::{check_count, flatten, invalid, l1_norm_checked};
use crate::payload::Writer;
use crate::random::uniforms;
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Header flag: the levels are Elias-gamma coded (otherwise fixed width).
const ELIAS: u8 = 1;
/// Largest number of levels (so a level and its sign fit 16 bits).
pub const MAX_LEVELS: u32 = (1 << 15) - 1;

/// How the levels are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LevelCoding {
    /// Whichever of the two below is smaller for this tensor (flagged in the header).
    #[default]
    Smallest,
    /// Always `1 + ⌈log₂(s+1)⌉` bits per entry.
    Fixed,
    /// Always Elias-gamma.
    EliasGamma,
}

/// QSGD with `s` levels and an optional bucket size.
///
/// Per bucket `v` (the whole tensor, or consecutive runs of `bucket` entries):
///
/// ```text
/// l_i = ⌊s·|v_i|/‖v‖⌋ ;   ξ_i = (l_i + 1)/s with probability s·|v_i|/‖v‖ − l_i, else l_i/s
/// Q(v)_i = ‖v‖ · sign(v_i) · ξ_i
/// ```
///
/// Unbiased, with `E‖Q(v) − v‖² ≤ min(n/s², √n/s)·‖v‖²`. The paper's practical setting is
/// `s = 16` levels (4 bits) with buckets of 512.
///
/// # Wire format
/// Header (5 + 4·rank bytes), then `s` (u32), the bucket size (u32, 0 = whole tensor), one f32
/// norm per bucket (`nb = ⌈n/b⌉`), then the levels:
/// * fixed width (flags = 0): per entry a field of `W = 1 + ⌈log₂(s+1)⌉` bits, `level << 1 |
///   sign` (sign bit set iff negative), as one little-endian bit stream: `⌈n·W/8⌉` bytes;
/// * Elias-gamma (flags = 1): a u64 bit count `L`, then `⌈L/8⌉` bytes: per entry the
///   Elias-gamma code of `level + 1` (`⌊log₂(level+1)⌋` zeros, then `level + 1` most significant
///   bit first), followed by the sign bit when `level > 0`.
///
/// [`LevelCoding::Smallest`] (the default) computes both sizes and writes the smaller; the
/// Elias path is considered only when its lower bound `64 + n + 3·nnz` bits beats fixed width, and
/// then only the non-zero levels and a bitmap leave the device.
#[derive(Debug, Clone, Copy)]
pub struct Qsgd {
    levels: u32,
    bucket: Option<usize>,
    coding: LevelCoding,
}

impl Qsgd {
    /// QSGD with `levels` levels (`1 ..= 32767`) over the whole tensor.
    pub fn new(levels: u32) -> Result<Self, CompressError> {
        if !(1..=MAX_LEVELS).contains(&levels) {
            return Err(invalid("Qsgd", "levels", levels, "must be in 1..=32767"));
        }
        Ok(Self {
            levels,
            bucket: None,
            coding: LevelCoding::Smallest,
        })
    }

    /// Quantises consecutive buckets of `bucket` entries separately (each with its own norm).
    pub fn with_bucket(mut self, bucket: usize) -> Result<Self, CompressError> {
        if bucket == 0 || bucket > u32::MAX as usize {
            return Err(invalid("Qsgd", "bucket", bucket, "must be in 1..=u32::MAX"));
        }
        self.bucket = Some(bucket);
        Ok(self)
    }

    /// Forces a level coding (default: the smaller per tensor).
    pub fn with_coding(mut self, coding: LevelCoding) -> Self {
        self.coding = coding;
        self
    }

    /// The number of levels `s`.
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// Fixed field width `1 + ⌈log₂(s+1)⌉`.
    pub fn field_width(&self) -> u32 {
        1 + (32 - self.levels.leading_zeros())
    }

    /// Exact wire bytes of the fixed-width format for a tensor of `shape`.
    pub fn fixed_wire_bytes(&self, shape: &[usize]) -> usize {
        let n: usize = shape.iter().product();
        crate::Header::len_for_rank(shape.len())
            + 8
            + 4 * buckets(n, self.bucket)
            + packed_len(n, self.field_width())
    }
}

fn buckets(n: usize, bucket: Option<usize>) -> usize {
    match (n, bucket) {
        (0, _) => 0,
        (_, None) => 1,
        (n, Some(b)) => n.div_ceil(b),
    }
}

/// Bits of the Elias-gamma code of `m ≥ 1`: `2⌊log₂ m⌋ + 1`.
fn gamma_len(m: u32) -> u64 {
    2 * (31 - m.leading_zeros()) as u64 + 1
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    filled: u32,
    bits: u64,
}

impl BitWriter {
    /// Appends the low `len ≤ 32` bits of `value`, least significant first.
    fn push(&mut self, value: u64, len: u32) {
        self.acc |= value << self.filled;
        self.filled += len;
        self.bits += len as u64;
        while self.filled >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.filled -= 8;
        }
    }

    fn finish(mut self) -> EliasStream {
        if self.filled > 0 {
            self.bytes.push(self.acc as u8);
        }
        EliasStream {
            bytes: self.bytes,
            bits: self.bits,
        }
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: u64,
    len: u64,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Result<bool, DecodeError> {
        if self.pos >= self.len {
            return Err(DecodeError::Truncated {
                what: "Elias-gamma level",
                needed: 1,
                available: 0,
            });
        }
        let b = (self.bytes[(self.pos / 8) as usize] >> (self.pos % 8)) & 1 == 1;
        self.pos += 1;
        Ok(b)
    }

    fn gamma(&mut self) -> Result<u32, DecodeError> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 15 {
                return Err(DecodeError::FieldOutOfRange {
                    field: "Elias-gamma prefix",
                    value: zeros,
                    reason: "a level above 32767 cannot occur",
                });
            }
        }
        let mut m = 1u32;
        for _ in 0..zeros {
            m = (m << 1) | self.bit()? as u32;
        }
        Ok(m)
    }
}

impl Compressor for Qsgd {
    fn codec(&self) -> CodecId {
        CodecId::Qsgd
    }

    fn is_unbiased(&self) -> bool {
        true
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let shape = grad.dims();
        let n = grad.dims().iter().product::<usize>();
        let device = grad.device();
        let s = self.levels;
        if n == 0 {
            let mut w = Writer::new(CodecId::Qsgd, 0, &shape, 8)?;
            w.u32(s);
            w.u32(self.bucket.unwrap_or(0) as u32);
            return Ok(w.finish());
        }
        let nb = buckets(n, self.bucket);
        let b = self.bucket.unwrap_or(n).min(n);
        let flat = flatten(grad);
        let padded = if nb * b == n {
            flat
        } else {
            Tensor::cat(vec![flat, Tensor::zeros([nb * b - n], &device)], 0)
        };
        let v = padded.reshape([nb, b]);
        // The bucket norms double as the finiteness check: a NaN or ±Inf entry makes its
        // bucket's norm non-finite (the entries are only counted then). Each is computed as
        // m·‖v/m‖ with m = max|v| of the bucket, so tiny or huge entries neither underflow to a
        // zero norm nor overflow when squared.
        let max = v.clone().abs().max_dim(1);
        let unit = max.clone().mask_fill(max.clone().equal_elem(0.0), 1.0);
        let norms = v.clone().div(unit).square().sum_dim(1).sqrt().mul(max);
        let norms_host: Vec<f32> = norms
            .clone()
            .reshape([nb])
            .into_data()
            .try_into_vec()
            .expect("norms");
        if norms_host.iter().any(|x| !x.is_finite()) {
            l1_norm_checked(&v)?;
            return Err(CompressError::Overflow);
        }
        let safe = norms.clone().mask_fill(norms.equal_elem(0.0), 1.0);
        let a = v.mul(safe.recip().mul_scalar(s as f32));
        let negative = a.clone().lower_elem(0.0).float();
        // Stochastic rounding of |a| to an integer level: ⌊|a| + u⌋ with u ~ U[0,1) is ⌊|a|⌋ + 1
        // with probability frac(|a|), exactly QSGD's rule. Few levels: count thresholds (cheap
        // comparisons); many: truncate to an integer.
        let x = a.abs() + uniforms(rng, nb * b, &device).reshape([nb, b]);
        let level = if s <= 2 {
            (1..=s)
                .map(|j| x.clone().greater_equal_elem(j as f32).float())
                .reduce(|p, q| p + q)
                .expect("s ≥ 1")
        } else {
            x.clamp_max(s as f32 + 0.5)
                .int()
                .clamp_max(s as i64)
                .float()
        };
        let fields = flatten(level.mul_scalar(2.0) + negative).slice(0..n);
        let width = self.field_width();
        let fixed = pack_fields(fields, width);
        let elias = match self.coding {
            LevelCoding::Fixed => None,
            coding => {
                let stream = elias_stream(&fixed, n, width, s);
                let smaller = 8 + stream.bits.div_ceil(8) < fixed.len() as u64;
                (coding == LevelCoding::EliasGamma || smaller).then_some(stream)
            }
        };
        let flags = if elias.is_some() { ELIAS } else { 0 };
        let mut w = Writer::new(CodecId::Qsgd, flags, &shape, 8 + 4 * nb + fixed.len())?;
        w.u32(s);
        w.u32(self.bucket.unwrap_or(0) as u32);
        w.f32s(&norms_host);
        match elias {
            Some(stream) => {
                w.u64(stream.bits);
                w.bytes(&stream.bytes);
            }
            None => w.bytes(&fixed),
        }
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        let (header, shape, mut r) = payload.open::<D>(CodecId::Qsgd)?;
        let n = header.numel();
        let s = r.u32("levels")?;
        if !(1..=MAX_LEVELS).contains(&s) {
            return Err(DecodeError::FieldOutOfRange {
                field: "levels",
                value: s as u64,
                reason: "must be in 1..=32767",
            });
        }
        let bucket = match r.u32("bucket")? {
            0 => None,
            b => Some(b as usize),
        };
        let nb = buckets(n, bucket);
        let b = if n == 0 {
            0
        } else {
            bucket.unwrap_or(n).min(n)
        };
        let norms = r.scales("bucket norms", nb)?;
        let width = 1 + (32 - s.leading_zeros());
        let signed: Tensor<1> = match header.flags {
            0 => {
                let bytes = r.take("levels", packed_len(n, width))?;
                r.finish()?;
                if let Some(level) = host_fields(bytes, n, width)
                    .map(|f| f >> 1)
                    .find(|&l| l > s)
                {
                    return Err(DecodeError::FieldOutOfRange {
                        field: "level",
                        value: level as u64,
                        reason: "exceeds the number of levels",
                    });
                }
                let table: Vec<f32> = (0..1u32 << width)
                    .map(|f| (f >> 1) as f32 * if f & 1 == 1 { -1.0 } else { 1.0 })
                    .collect();
                unpack_mapped(bytes, n, width, &table, device)
            }
            ELIAS => {
                let bits = r.u64("Elias-gamma bit count")?;
                let bytes = r.take("Elias-gamma levels", (bits.div_ceil(8)) as usize)?;
                r.finish()?;
                check_count("entries", n, bytes.len(), 1)?;
                let levels = read_elias(bytes, bits, n, s)?;
                Tensor::from_data(TensorData::new(levels, [n]), device)
            }
            f => {
                return Err(DecodeError::FieldOutOfRange {
                    field: "qsgd flags",
                    value: f as u64,
                    reason: "only bit 0 (Elias-gamma) is defined",
                });
            }
        };
        if n == 0 {
            return Ok(Tensor::zeros(shape, device));
        }
        let scale = Tensor::<1>::from_data(
            TensorData::new(norms.iter().map(|x| x / s as f32).collect::<Vec<_>>(), [nb]),
            device,
        )
        .reshape([nb, 1]);
        let padded = if nb * b == n {
            signed
        } else {
            Tensor::cat(vec![signed, Tensor::zeros([nb * b - n], device)], 0)
        };
        Ok(padded
            .reshape([nb, b])
            .mul(scale)
            .reshape([nb * b])
            .slice(0..n)
            .reshape(shape))
    }
}

struct EliasStream {
    bytes: Vec<u8>,
    bits: u64,
}

/// Elias-gamma stream of `n` levels read from the packed fixed-width fields (`level << 1 |
/// sign`): per entry `γ(level + 1)`, then the sign bit when `level > 0`.
fn elias_stream(fixed: &[u8], n: usize, width: u32, s: u32) -> EliasStream {
    // Code words by level, bits in stream order (the γ code's leading zeros are the low bits).
    let codes: Vec<(u64, u32)> = (0..=s)
        .map(|l| {
            let m = l + 1;
            let top = 31 - m.leading_zeros();
            let reversed = (m.reverse_bits() >> (31 - top)) as u64;
            (reversed << top, 2 * top + 1)
        })
        .collect();
    let mut w = BitWriter::default();
    for field in host_fields(fixed, n, width) {
        let level = (field >> 1).min(s);
        let (code, len) = codes[level as usize];
        w.push(code, len);
        if level > 0 {
            w.push((field & 1) as u64, 1);
        }
    }
    w.finish()
}

fn read_elias(bytes: &[u8], bits: u64, n: usize, s: u32) -> Result<Vec<i64>, DecodeError> {
    let mut r = BitReader {
        bytes,
        pos: 0,
        len: bits,
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let level = r.gamma()? - 1;
        if level > s {
            return Err(DecodeError::FieldOutOfRange {
                field: "level",
                value: level as u64,
                reason: "exceeds the number of levels",
            });
        }
        let negative = level > 0 && r.bit()?;
        out.push(if negative {
            -(level as i64)
        } else {
            level as i64
        });
    }
    if r.pos != bits {
        return Err(DecodeError::TrailingBytes {
            extra: ((bits - r.pos) as usize).div_ceil(8),
        });
    }
    Ok(out)
}

/// Exact Elias-gamma bit count for the given levels (for tests and budgeting).
pub fn elias_gamma_bits(levels: &[u32]) -> u64 {
    levels
        .iter()
        .map(|&l| gamma_len(l + 1) + (l > 0) as u64)
        .sum()
}

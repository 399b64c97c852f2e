//! QSGD: stochastic quantisation to `s` levels per bucket (Alistarh et al., *QSGD:
//! Communication-Efficient SGD via Gradient Quantization and Encoding*, NeurIPS 2017,
//! <https://arxiv.org/abs/1610.02132>).

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;

use crate::bits::{pack_fields, packed_len, unpack_mapped};
use crate::codec::{
    check_count, compress_on_host, decompress_on_host, flatten, invalid, l1_norm_checked,
};
use crate::codec::{host_decoders, host_encoder};
use crate::host::{self, BLOCK, CHUNK, Set, Sink, is_host_device, pack_random};
use crate::payload::{Reader, Writer};
use crate::random::{Stream, uniforms};
use crate::simd;
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload, PayloadRef};
use rayon::prelude::*;
use std::ops::Range;

/// Header flag: the levels are Elias-gamma coded (otherwise fixed width).
const ELIAS: u8 = 1;
/// Largest number of levels (so a level and its sign fit 16 bits).
pub const MAX_LEVELS: u32 = (1 << 15) - 1;

/// How the levels are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
/// [`LevelCoding::Smallest`] (the default) writes the smaller of the two. The Elias stream is
/// recoded from the fixed-width fields, chunks in parallel; the host kernel builds it only when
/// its lower bound `64 + n + 3·nnz` bits beats fixed width.
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

impl Qsgd {
    /// The host kernel: bucket norms in one parallel pass (a bucket is read twice while in
    /// cache), then one pass quantising with the counter-based uniforms, straight into
    /// Elias-gamma codes chunk by chunk when that coding is asked for or is bound to be the
    /// smaller (see [`expected_elias_bits`]), else into the fixed-width fields of the payload,
    /// from which the Elias-gamma form is recoded when it may still be smaller.
    fn encode_host(
        &self,
        values: &[f32],
        shape: &[usize],
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let n = values.len();
        let s = self.levels;
        let nb = buckets(n, self.bucket);
        let b = self.bucket.unwrap_or(n).min(n).max(1);
        let width = self.field_width();
        let fixed_len = packed_len(n, width);
        let non_finite = |e| match e {
            CompressError::NonFinite { .. } => host::max_abs(values).err().unwrap_or(e),
            e => e,
        };
        // Elias-gamma straight from the gradient when it is asked for, or when the smallest
        // coding is asked for and `bound`, a bound on Elias-gamma's expected size, is well below
        // the fixed width's (the fields are then only packed should the stream still come out
        // longer).
        let elias_first = |bound: &dyn Fn() -> f64| match self.coding {
            LevelCoding::Fixed => false,
            LevelCoding::EliasGamma => true,
            LevelCoding::Smallest => 64.0 + bound() <= 0.9 * 8.0 * fixed_len as f64,
        };
        // With the norms taken chunk by chunk in the same pass when the buckets divide the
        // chunks and the bound holds even for the flattest buckets (known before any norm).
        let fused =
            nb > 1 && CHUNK.is_multiple_of(b) && elias_first(&|| flattest_elias_bits(n, b, s));
        let (norms, stream, fused_levels, direct) = if fused {
            let stream = Stream::new(rng);
            let (norms, levels) = elias_fused(values, stream, s, b).map_err(non_finite)?;
            (norms, stream, Some(levels), true)
        } else {
            // Buckets are normed in parallel, each sequentially (in cache): (‖v‖₂, ‖v‖₁).
            let sums: Vec<(f32, f64)> = if nb == 1 {
                vec![bucket_norm(values)?]
            } else {
                values
                    .par_chunks(b)
                    .map(bucket_norm)
                    .collect::<Result<_, _>>()
                    .map_err(non_finite)?
            };
            let norms = sums.iter().map(|&(norm, _)| norm).collect();
            let direct = elias_first(&|| expected_elias_bits(&sums, n, b, s));
            (norms, Stream::new(rng), None, direct)
        };
        let factors: Vec<f32> = norms.iter().map(|&m| factor(m, s)).collect();
        let quantise = Quantiser {
            factors: &factors,
            bucket: b,
            levels: s,
        };
        let levels = match fused_levels {
            Some(levels) => Some(levels),
            None => direct.then(|| elias_direct(values, stream, s, &quantise)),
        };
        let mut w = Writer::new(CodecId::Qsgd, 0, shape, 8 + 4 * nb + fixed_len)?;
        w.u32(s);
        w.u32(self.bucket.unwrap_or(0) as u32);
        w.f32s(&norms);
        let body_start = w.len();
        if let Some(levels) = &levels
            && (self.coding == LevelCoding::EliasGamma
                || 8 + levels.bits.div_ceil(8) < fixed_len as u64)
        {
            w.set_flags(ELIAS);
            w.u64(levels.bits);
            w.bytes(&levels.bytes);
            return Ok(w.finish());
        }
        let nonzero = {
            let body = w.zeroed(fixed_len);
            let per_block = BLOCK * width as usize / 8;
            pack_random(
                values,
                stream,
                per_block,
                body,
                #[inline(always)]
                |start, vs, us, out| {
                    let mut fields = [0u32; BLOCK];
                    let fields = &mut fields[..vs.len()];
                    quantise.block(start, vs, us, fields);
                    let count = fields.iter().filter(|&&f| f > 1).count();
                    host::pack_fields(fields, width, out);
                    count
                },
            )
        };
        // Elias-gamma needs at least 64 + n + 3·nnz bits; only then is the exact size computed.
        let use_elias = self.coding == LevelCoding::Smallest
            && !direct
            && 64 + n as u64 + 3 * nonzero as u64 <= 8 * fixed_len as u64;
        if use_elias {
            let stream = elias_stream(w.tail(body_start), n, width, s);
            if 8 + stream.bits.div_ceil(8) < fixed_len as u64 {
                w.truncate(body_start);
                w.set_flags(ELIAS);
                w.u64(stream.bits);
                w.bytes(&stream.bytes);
            }
        }
        Ok(w.finish())
    }
}

/// A bucket's `(‖v‖₂, ‖v‖₁)`, or the error of a non-finite entry or a norm beyond f32.
fn bucket_norm(bucket: &[f32]) -> Result<(f32, f64), CompressError> {
    let (_, norm, l1) = host::norms(bucket)?;
    if norm > f32::MAX as f64 {
        return Err(CompressError::Overflow);
    }
    Ok((norm as f32, l1))
}

/// The quantiser's factor `s/‖v‖` of a bucket of norm `norm` (`s` for a zero bucket), as on
/// the device.
fn factor(norm: f32, s: u32) -> f32 {
    (1.0 / if norm == 0.0 { 1.0 } else { norm }) * s as f32
}

/// QSGD's quantiser on host values: `a_i = g_i·(s/‖v‖)` with the bucket's factor `s/‖v‖`, as on
/// the device; level `⌊|a| + u⌋ ≤ s`, field `level << 1 | (a < 0)`.
struct Quantiser<'a> {
    /// `s/‖v‖` per bucket (`s` for a zero bucket).
    factors: &'a [f32],
    bucket: usize,
    levels: u32,
}

impl Quantiser<'_> {
    /// The fields of entries `start .. start + vs.len()` with uniforms `us`, into `fields`.
    #[inline(always)]
    fn block(&self, start: usize, vs: &[f32], us: &[f32], fields: &mut [u32]) {
        let s = self.levels;
        for_bucket_runs(
            start,
            vs.len(),
            self.bucket,
            #[inline(always)]
            |bucket, run| {
                let factor = self.factors[bucket];
                for ((field, &v), &u) in fields[run.clone()]
                    .iter_mut()
                    .zip(&vs[run.clone()])
                    .zip(&us[run])
                {
                    let a = v * factor;
                    let x = a.abs() + u;
                    // x ≥ 0: ⌊x⌋ capped at s. One or two levels count thresholds (as the device
                    // path does), more clamp in f32 and take the floor through the bits.
                    let level = match s {
                        1 => (x >= 1.0) as u32,
                        2 => (x >= 1.0) as u32 + (x >= 2.0) as u32,
                        _ => floor_small(x.min(s as f32)),
                    };
                    *field = level << 1 | (a < 0.0) as u32;
                }
            },
        );
    }
}

/// `⌊x⌋` for `0 ≤ x < 2²²`, exactly, in vector-friendly steps: `x + 2²³` rounds to the nearest
/// integer `y` (the float's low mantissa bits), which is one too large when `y > x`. (Rust's
/// saturating `x as u32` stays scalar on x86-64.)
#[inline(always)]
fn floor_small(x: f32) -> u32 {
    const MAGIC: f32 = 8_388_608.0;
    let shifted = x + MAGIC;
    let nearest = shifted - MAGIC;
    (shifted.to_bits() - MAGIC.to_bits()) - (nearest > x) as u32
}

impl Quantiser<'_> {
    /// [`block`](Self::block) with the uniforms of `stream` at entries `start ..`, drawn into
    /// `u`.
    #[inline(always)]
    fn drawn(&self, stream: Stream, start: usize, vs: &[f32], u: &mut [f32], fields: &mut [u32]) {
        let (u, fields) = (&mut u[..vs.len()], &mut fields[..vs.len()]);
        stream.fill(start, u);
        self.block(start, vs, u, fields);
    }
}

/// Calls `f(bucket, run)` for the runs of entries `start .. start + len` that share a bucket of
/// `size`, with `run` relative to `start`: one division per run, none per entry.
#[inline(always)]
fn for_bucket_runs(start: usize, len: usize, size: usize, mut f: impl FnMut(usize, Range<usize>)) {
    let mut j = 0;
    while j < len {
        let bucket = (start + j) / size;
        let end = ((bucket + 1) * size - start).min(len);
        f(bucket, j..end);
        j = end;
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
        if is_host_device(&grad.device()) {
            return compress_on_host(self, grad, rng);
        }
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
            // Counted over the gradient's own entries, not the zero padding of the last bucket.
            l1_norm_checked(&v.clone().reshape([nb * b]).slice(0..n))?;
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
        if is_host_device(device) {
            return decompress_on_host(self, payload, device);
        }
        let (header, shape, r) = payload.open::<D>(CodecId::Qsgd)?;
        let n = header.numel();
        let Body {
            s,
            nb,
            b,
            norms,
            levels,
        } = Body::read(r, header.flags, n)?;
        let signed: Tensor<1> = match levels {
            Levels::Fixed { bytes, width } => {
                let table: Vec<f32> = (0..1u32 << width)
                    .map(|f| (f >> 1) as f32 * if f & 1 == 1 { -1.0 } else { 1.0 })
                    .collect();
                unpack_mapped(bytes, n, width, &table, device)
            }
            Levels::Elias { reader, .. } => {
                let mut levels = vec![0.0f32; n];
                // SAFETY: `Set` writes only values.
                reader.decode(unsafe { host::slots(&mut levels) }, &[1.0], n.max(1), Set);
                Tensor::from_data(TensorData::new(levels, [n]), device)
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

    host_encoder!(self, values, shape, rng => self.encode_host(values, shape, rng));

    host_decoders!(payload, out, sink => decode_host(payload, out, sink));
}

/// A validated QSGD body.
struct Body<'a> {
    s: u32,
    nb: usize,
    b: usize,
    norms: Vec<f32>,
    levels: Levels<'a>,
}

/// Validated levels, in either coding.
enum Levels<'a> {
    Fixed { bytes: &'a [u8], width: u32 },
    Elias { reader: EliasLevels<'a> },
}

impl<'a> Body<'a> {
    /// Reads and validates everything after the header (levels in range, codes complete), before
    /// any value is written.
    fn read(mut r: Reader<'a>, flags: u8, n: usize) -> Result<Self, DecodeError> {
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
            1
        } else {
            bucket.unwrap_or(n).min(n)
        };
        let norms = r.scales("bucket norms", nb)?;
        let width = 1 + (32 - s.leading_zeros());
        let levels = match flags {
            0 => {
                let bytes = r.take("levels", packed_len(n, width))?;
                r.finish()?;
                if let Some(field) = host::any_field(bytes, n, width, |f| f >> 1 > s) {
                    return Err(level_error(field >> 1));
                }
                Levels::Fixed { bytes, width }
            }
            ELIAS => {
                let bits = r.u64("Elias-gamma bit count")?;
                let bytes = r.take("Elias-gamma levels", (bits.div_ceil(8)) as usize)?;
                r.finish()?;
                check_count("entries", n, bytes.len(), 1)?;
                Levels::Elias {
                    reader: EliasLevels::validate(bytes, bits, n, s)?,
                }
            }
            f => {
                return Err(DecodeError::FieldOutOfRange {
                    field: "qsgd flags",
                    value: f as u64,
                    reason: "only bit 0 (Elias-gamma) is defined",
                });
            }
        };
        Ok(Self {
            s,
            nb,
            b,
            norms,
            levels,
        })
    }
}

fn level_error(level: u32) -> DecodeError {
    DecodeError::FieldOutOfRange {
        field: "level",
        value: level as u64,
        reason: "exceeds the number of levels",
    }
}

/// The host decoder: validated first, then each value `±level·‖v‖/s` written once.
fn decode_host<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (header, r) = payload.open_into(CodecId::Qsgd, out)?;
    let body = Body::read(r, header.flags, out.len())?;
    let scales: Vec<f32> = body.norms.iter().map(|x| x / body.s as f32).collect();
    let b = body.b;
    match body.levels {
        Levels::Fixed { bytes, width } => host::par_field_blocks(
            bytes,
            width,
            out,
            #[inline(always)]
            |start, fields, vals| {
                for_bucket_runs(start, vals.len(), b, |bucket, run| {
                    let scale = scales[bucket];
                    for (slot, &f) in vals[run.clone()].iter_mut().zip(&fields[run]) {
                        let level = (f >> 1) as f32 * scale;
                        sink.put(slot, if f & 1 == 1 { -level } else { level });
                    }
                });
            },
        ),
        Levels::Elias { reader } => reader.decode(out, &scales, b, sink),
    }
    Ok(())
}

/// An Elias-gamma level stream, validated, cut into segments that decode in parallel.
struct EliasLevels<'a> {
    bytes: &'a [u8],
    /// `(bit position, first entry)` of each segment, in stream order, from `(0, 0)`.
    segments: Vec<(u64, usize)>,
    /// Entries in the stream.
    n: usize,
}

/// Stream bits per segment of the parallel validation.
const SEGMENT_BITS: u64 = 1 << 15;

/// Pairs of segments a task of the parallel walks takes at least: about 260 K stream bits, so a
/// small stream is walked on the calling thread (waking the pool costs more than its walk).
const PAIRS_PER_TASK: usize = 4;

/// Code boundaries a segment's walk records at its start, to be joined up with the true
/// boundaries its predecessor ends on.
const MARKS: usize = 64;

/// One segment of the stream walked from a bit position that need not be a code boundary.
struct Walk {
    /// The first [`MARKS`] codes: `(bit position, |level|)`.
    marks: Vec<(u64, u32)>,
    /// Codes after the marks.
    codes: usize,
    /// Largest `|level|` after the marks.
    max: u32,
    /// The first code boundary at or after the segment's end.
    end: u64,
}

/// Walks segments `from .. to` two at a time: each code by code for its first [`MARKS`]
/// codes, then both a window at a time in one loop (two independent chains of lookups keep the
/// core busier than one), then code by code to the end. `None` when a code after the marks is
/// malformed. A malformed code among the first is taken as a sign of a start out of step: the
/// marks start again one bit further on.
fn walk_pair(bytes: &[u8], segments: [(u64, u64); 2]) -> Option<[Walk; 2]> {
    let one = |cursor: &mut Cursor<'_>| {
        cursor.refill();
        cursor.level().ok().map(i32::unsigned_abs)
    };
    let mut walks = segments.map(|(from, to)| {
        let mut cursor = Cursor::at(bytes, from);
        let mut marks = Vec::with_capacity(MARKS);
        while marks.len() < MARKS && cursor.pos < to {
            let pos = cursor.pos;
            match one(&mut cursor) {
                Some(level) => marks.push((pos, level)),
                // Out of step (say, inside a long code's zeros): start again one bit on.
                None => {
                    marks.clear();
                    cursor = Cursor::at(bytes, pos + 1);
                }
            }
        }
        let walk = Walk {
            marks,
            codes: 0,
            max: 0,
            end: cursor.pos,
        };
        (walk, to)
    });
    let table = steps();
    let [(first, first_to), (second, second_to)] = &mut walks;
    let mut runs = [
        Run::new(bytes, first, *first_to),
        Run::new(bytes, second, *second_to),
    ];
    {
        let [a, b] = &mut runs;
        while a.live() && b.live() {
            a.group(table)?;
            b.group(table)?;
        }
        for run in [a, b] {
            while run.live() {
                run.group(table)?;
            }
        }
    }
    for (run, (walk, to)) in runs.iter().zip(&mut walks) {
        let mut cursor = Cursor::at(bytes, run.bits.as_ref().map_or(walk.end, Bits::pos));
        let (mut codes, mut max) = (run.codes, run.max);
        while cursor.pos < *to {
            max = max.max(one(&mut cursor)?);
            codes += 1;
        }
        (walk.codes, walk.max, walk.end) = (codes, max, cursor.pos);
    }
    Some(walks.map(|(walk, _)| walk))
}

/// The windowed part of a [`Walk`]: codes and largest level from a code boundary on.
struct Run<'a> {
    /// `None` when the stream has no eight bytes to read at the start.
    bits: Option<Bits<'a>>,
    to: u64,
    codes: usize,
    max: u32,
}

impl<'a> Run<'a> {
    fn new(bytes: &'a [u8], walk: &Walk, to: u64) -> Self {
        Self {
            bits: Bits::at(bytes, walk.end),
            to,
            codes: 0,
            max: 0,
        }
    }

    /// Whether a refill and the bits after it (at most 63) stay before `to`.
    #[inline(always)]
    fn live(&self) -> bool {
        self.bits
            .as_ref()
            .is_some_and(|b| b.pos() + 64 <= self.to && b.can_refill())
    }

    /// One refill, then a run of at least [`STEP_BITS`] zero levels, one long code, or up to
    /// four lookups; `None` on a malformed code.
    #[inline(always)]
    fn group(&mut self, table: &[Step]) -> Option<()> {
        let bits = self.bits.as_mut()?;
        bits.refill();
        let step = |bits: &Bits<'_>| table[window_index(bits.buf)];
        let ones = bits.ones();
        if ones >= STEP_BITS {
            bits.consume(ones);
            self.codes += ones as usize;
        } else if step(bits).codes == 0 {
            let (level, len) = elias_level(bits.buf).ok()?;
            self.max = self.max.max(level.unsigned_abs());
            bits.consume(len as u32);
            self.codes += 1;
        } else {
            for _ in 0..4 {
                let step = step(bits);
                if step.codes == 0 {
                    break;
                }
                self.max = self.max.max(step.max_level as u32);
                bits.consume(step.bits as u32);
                self.codes += step.codes as usize;
            }
        }
        Some(())
    }
}

/// 64 stream bits from bit `pos` on (zeros past the end).
#[inline(always)]
fn window(bytes: &[u8], pos: u64) -> u64 {
    let byte = (pos / 8) as usize;
    if let Some(word) = bytes.get(byte..byte + 8) {
        return u64::from_le_bytes(word.try_into().expect("8 bytes")) >> (pos % 8);
    }
    let mut word = [0u8; 8];
    let end = (byte + 8).min(bytes.len());
    if byte < end {
        word[..end - byte].copy_from_slice(&bytes[byte..end]);
    }
    u64::from_le_bytes(word) >> (pos % 8)
}

/// A reading position in an Elias-gamma stream with the next bits cached: at least 33 valid
/// bits (the longest code with its sign is 32) whenever a code is read.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: u64,
    bits: u64,
    valid: u32,
}

impl<'a> Cursor<'a> {
    fn at(bytes: &'a [u8], pos: u64) -> Self {
        let valid = 64 - (pos % 8) as u32;
        Self {
            bytes,
            pos,
            bits: window(bytes, pos),
            valid,
        }
    }

    #[inline(always)]
    fn refill(&mut self) {
        if self.valid < 33 {
            *self = Self::at(self.bytes, self.pos);
        }
    }

    /// How many zero levels (single `1` bits) come next, at most `max`.
    #[inline(always)]
    fn zero_run(&mut self, max: usize) -> usize {
        self.refill();
        (self.bits.trailing_ones() as usize).min(max)
    }

    #[inline(always)]
    fn skip(&mut self, len: u32) {
        self.bits = self.bits.checked_shr(len).unwrap_or(0);
        self.valid -= len;
        self.pos += len as u64;
    }

    /// The next signed level (after [`zero_run`](Self::zero_run) returned 0).
    #[inline(always)]
    fn level(&mut self) -> Result<i32, DecodeError> {
        let (level, len) = elias_level(self.bits)?;
        self.skip(len as u32);
        Ok(level)
    }
}

/// A branch-free bit reader for the hot loops (after F. Giesen's "bit reader variant 4"): a
/// refill loads eight bytes and leaves 56 to 63 bits ready, so that a long code or four lookups
/// of [`STEP_BITS`] bits follow without a check, and the load does not wait on the bits
/// before it. It needs eight readable bytes at `next`; callers fall back to a [`Cursor`] near
/// the end of the stream.
struct Bits<'a> {
    bytes: &'a [u8],
    /// The next byte to load.
    next: usize,
    /// The stream from [`pos`](Self::pos) on, least significant bit first.
    buf: u64,
    /// Bits of `buf` ready to read.
    count: u32,
}

impl<'a> Bits<'a> {
    /// A reader at bit `pos`, if eight bytes can be read there.
    fn at(bytes: &'a [u8], pos: u64) -> Option<Self> {
        let mut bits = Self {
            bytes,
            next: (pos / 8) as usize,
            buf: 0,
            count: 0,
        };
        bits.can_refill().then(|| {
            bits.refill();
            bits.consume((pos % 8) as u32);
            bits
        })
    }

    fn pos(&self) -> u64 {
        8 * self.next as u64 - self.count as u64
    }

    #[inline(always)]
    fn can_refill(&self) -> bool {
        self.next + 8 <= self.bytes.len()
    }

    /// Tops `buf` up to at least 56 ready bits (needs [`can_refill`](Self::can_refill)). Bits
    /// above `count` already in `buf` are the stream's own, so ORing them in again is harmless.
    #[inline(always)]
    fn refill(&mut self) {
        let word = &self.bytes[self.next..self.next + 8];
        self.buf |= u64::from_le_bytes(word.try_into().expect("8 bytes")) << self.count;
        self.next += ((63 - self.count) >> 3) as usize;
        self.count |= 56;
    }

    #[inline(always)]
    fn consume(&mut self, len: u32) {
        self.buf >>= len;
        self.count -= len;
    }

    /// Consecutive zero levels (one `1` bit each) ready at the front.
    #[inline(always)]
    fn ones(&self) -> u32 {
        self.buf.trailing_ones().min(self.count)
    }
}

/// The signed level at the start of window `w` and its code length (`γ(level + 1)`, then a
/// sign bit when `level > 0`), or the reason it is malformed. Reads at most 32 bits.
#[inline(always)]
fn elias_level(w: u64) -> Result<(i32, u64), DecodeError> {
    let zeros = w.trailing_zeros();
    if zeros > 15 {
        return Err(DecodeError::FieldOutOfRange {
            field: "Elias-gamma prefix",
            value: zeros.min(16) as u64,
            reason: "a level above 32767 cannot occur",
        });
    }
    // After the zeros, m = level + 1 most significant bit first (zeros + 1 bits).
    let m = (((w >> zeros) & ((1 << (zeros + 1)) - 1)) as u32).reverse_bits() >> (31 - zeros);
    let level = m as i32 - 1;
    let len = 2 * zeros as u64 + 1;
    if level > 0 && (w >> len) & 1 == 1 {
        Ok((-level, len + 1))
    } else {
        Ok((level, len + (level > 0) as u64))
    }
}

/// Bits the validation looks up at once.
const STEP_BITS: u32 = 12;

/// The lookup-table index of the next [`STEP_BITS`] stream bits at the front of `bits`.
#[inline(always)]
fn window_index(bits: u64) -> usize {
    (bits & ((1 << STEP_BITS) - 1)) as usize
}

/// What the next [`STEP_BITS`] bits of an Elias-gamma stream hold: how many complete codes,
/// their bits and their largest level (codes: 0 when the first code is longer).
#[derive(Clone, Copy, Default)]
struct Step {
    codes: u8,
    bits: u8,
    max_level: u8,
}

/// The complete codes at the start of a [`STEP_BITS`]-bit window: `(level, bits)` of each, in
/// stream order, up to the first code that is malformed or does not end inside the window.
fn window_codes(pattern: u64) -> impl Iterator<Item = (i32, u32)> {
    let mut pos = 0u32;
    std::iter::from_fn(move || {
        let w = pattern >> pos;
        if pos >= STEP_BITS || w.trailing_zeros() >= STEP_BITS - pos {
            return None;
        }
        let (level, len) = elias_level(w).ok()?;
        let len = len as u32;
        if pos + len > STEP_BITS {
            return None;
        }
        pos += len;
        Some((level, len))
    })
}

/// The validation's lookup table, indexed by the next [`STEP_BITS`] bits.
fn steps() -> &'static [Step] {
    static STEPS: std::sync::OnceLock<Vec<Step>> = std::sync::OnceLock::new();
    STEPS.get_or_init(|| {
        (0..1u64 << STEP_BITS)
            .map(|pattern| {
                window_codes(pattern).fold(Step::default(), |step, (level, len)| Step {
                    codes: step.codes + 1,
                    bits: step.bits + len as u8,
                    max_level: step.max_level.max(level.unsigned_abs() as u8),
                })
            })
            .collect()
    })
}

impl<'a> EliasLevels<'a> {
    /// Checks every code of the stream (well formed, `|level| ≤ s`, exactly `n` of them ending
    /// on bit `bits`) and finds code boundaries to decode from in parallel.
    ///
    /// Code boundaries are only known by reading from the start, so the stream is walked in
    /// segments of [`SEGMENT_BITS`] in parallel, each from its first bit as if a code began
    /// there. A prefix code falls into step with the true boundaries within a few codes, so the
    /// walks are then joined in order: from the true boundary on which segment `t − 1` ends,
    /// codes are read until one starts on a boundary segment `t` recorded among its first
    /// [`MARKS`]; from there on the walk of `t` is the true one. Anything short of a clean join
    /// and a valid stream (a walk that never falls into step, any malformed code, a wrong count)
    /// falls back to one serial walk, which also names the first error.
    fn validate(bytes: &'a [u8], bits: u64, n: usize, s: u32) -> Result<Self, DecodeError> {
        match Self::joined(bytes, bits, n, s) {
            Some(segments) => Ok(Self { bytes, segments, n }),
            None => Self::serial(bytes, bits, n, s),
        }
    }

    /// The segments of the parallel walk, or `None` to fall back to [`serial`](Self::serial).
    fn joined(bytes: &[u8], bits: u64, n: usize, s: u32) -> Option<Vec<(u64, usize)>> {
        let parts = (bits / SEGMENT_BITS) as usize;
        if parts < 2 {
            return None;
        }
        let bound = |t: usize| bits * t as u64 / parts as u64;
        // Segment `parts` (when `parts` is odd) is empty and dropped.
        let mut walks = (0..parts.div_ceil(2))
            .into_par_iter()
            .with_min_len(PAIRS_PER_TASK)
            .map(|p| {
                let segment = |t: usize| (bound(t.min(parts)), bound((t + 1).min(parts)));
                walk_pair(bytes, [segment(2 * p), segment(2 * p + 1)])
            })
            .collect::<Option<Vec<[Walk; 2]>>>()?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        walks.truncate(parts);
        let mut segments = Vec::with_capacity(parts);
        let (mut start, mut first) = (0u64, 0usize);
        for w in &walks {
            // Read the true codes from `start` until one starts on a recorded boundary.
            let mut cursor = Cursor::at(bytes, start);
            let (mut j, mut joining) = (0, 0);
            loop {
                while w.marks.get(j).is_some_and(|&(pos, _)| pos < cursor.pos) {
                    j += 1;
                }
                match w.marks.get(j) {
                    None => return None,
                    Some(&(pos, _)) if pos == cursor.pos => break,
                    Some(_) => {}
                }
                cursor.refill();
                if cursor.level().ok()?.unsigned_abs() > s {
                    return None;
                }
                joining += 1;
            }
            if w.max > s || w.marks[j..].iter().any(|&(_, level)| level > s) {
                return None;
            }
            segments.push((start, first));
            first += joining + (w.marks.len() - j) + w.codes;
            start = w.end;
        }
        (first == n && start == bits).then_some(segments)
    }

    /// Walks the whole stream once, serially, checking every code and recording where each
    /// chunk of [`CHUNK`] entries starts; the first error is the one returned. A run of zero
    /// levels (one `1` bit each) is taken a window at a time.
    fn serial(bytes: &'a [u8], bits: u64, n: usize, s: u32) -> Result<Self, DecodeError> {
        let mut segments = Vec::with_capacity(n.div_ceil(CHUNK));
        let mut cursor = Cursor::at(bytes, 0);
        let mut i = 0;
        while i < n {
            if i % CHUNK == 0 && segments.len() == i / CHUNK {
                segments.push((cursor.pos, i));
            }
            let room = (n - i).min(CHUNK - i % CHUNK);
            let ones = cursor.zero_run(room);
            let step = steps()[window_index(cursor.bits)];
            if ones >= STEP_BITS as usize || ones == room {
                cursor.skip(ones as u32);
                i += ones;
            } else if step.codes > 0 && step.codes as usize <= room {
                if step.max_level as u32 > s {
                    return Err(level_error(step.max_level as u32));
                }
                cursor.skip(step.bits as u32);
                i += step.codes as usize;
            } else {
                let level = cursor.level()?;
                if level.unsigned_abs() > s {
                    return Err(level_error(level.unsigned_abs()));
                }
                i += 1;
            }
            if cursor.pos > bits {
                return Err(DecodeError::Truncated {
                    what: "Elias-gamma level",
                    needed: cursor.pos.div_ceil(8) as usize,
                    available: bytes.len(),
                });
            }
        }
        if cursor.pos != bits {
            return Err(DecodeError::TrailingBytes {
                extra: ((bits - cursor.pos) as usize).div_ceil(8),
            });
        }
        Ok(Self { bytes, segments, n })
    }

    /// Writes `level_i · scales[i / bucket]` through `sink`, segments in parallel, two to a
    /// task: each segment's levels are decoded into a buffer, the two segments' windowed loops
    /// in one (independent chains of lookups), several codes per lookup of [`decode_steps`];
    /// then the levels are scaled bucket by bucket.
    fn decode<S: Sink>(&self, out: &mut [S::Slot], scales: &[f32], bucket: usize, sink: S) {
        let table = decode_steps();
        let mut parts = Vec::with_capacity(self.segments.len());
        let mut rest = &mut out[..self.n];
        for (t, &(start, first)) in self.segments.iter().enumerate() {
            let next = self.segments.get(t + 1).map_or(self.n, |&(_, next)| next);
            let (vals, tail) = rest.split_at_mut(next - first);
            parts.push((start, first, vals));
            rest = tail;
        }
        parts
            .par_chunks_mut(2)
            .with_min_len(PAIRS_PER_TASK)
            .for_each_init(
                || [Vec::new(), Vec::new()],
                |buffers: &mut [Vec<i16>; 2], pair| {
                    simd::wide!({
                        let mut decoders: Vec<SegmentDecoder<'_, '_>> = pair
                            .iter()
                            .zip(buffers.iter_mut())
                            .map(|((start, _, vals), levels)| {
                                levels.resize(vals.len(), 0);
                                SegmentDecoder::new(self.bytes, *start, levels)
                            })
                            .collect();
                        if let [a, b] = &mut decoders[..] {
                            while a.live() && b.live() {
                                a.group(table);
                                b.group(table);
                            }
                        }
                        for (decoder, (_, first, vals)) in decoders.iter_mut().zip(pair.iter_mut())
                        {
                            while decoder.live() {
                                decoder.group(table);
                            }
                            decoder.finish(table);
                            let levels = &decoder.levels;
                            for_bucket_runs(*first, vals.len(), bucket, |b, run| {
                                let scale = scales[b];
                                for (slot, &level) in vals[run.clone()].iter_mut().zip(&levels[run])
                                {
                                    sink.put(slot, level as f32 * scale);
                                }
                            });
                        }
                    })
                },
            );
    }
}

/// Decodes one segment of a validated stream into `levels` (its length is the segment's).
struct SegmentDecoder<'a, 'b> {
    bytes: &'a [u8],
    /// `None` when the stream has no eight bytes to read at the start.
    bits: Option<Bits<'a>>,
    start: u64,
    levels: &'b mut [i16],
    /// Levels decoded.
    j: usize,
}

impl<'a, 'b> SegmentDecoder<'a, 'b> {
    fn new(bytes: &'a [u8], start: u64, levels: &'b mut [i16]) -> Self {
        Self {
            bytes,
            bits: Bits::at(bytes, start),
            start,
            levels,
            j: 0,
        }
    }

    /// Whether a refill and four lookups (at most 16 slots) fit.
    #[inline(always)]
    fn live(&self) -> bool {
        self.j + 4 * DECODE_CODES <= self.levels.len()
            && self.bits.as_ref().is_some_and(Bits::can_refill)
    }

    /// One refill, then a run of at least [`STEP_BITS`] zero levels, one long code, or up to
    /// four lookups.
    #[inline(always)]
    fn group(&mut self, table: &[DecodeStep]) {
        let Some(bits) = self.bits.as_mut() else {
            return;
        };
        let (levels, j) = (&mut *self.levels, &mut self.j);
        bits.refill();
        let step = |bits: &Bits<'_>| table[window_index(bits.buf)];
        let ones = bits.ones();
        if ones >= STEP_BITS {
            let ones = (ones as usize).min(levels.len() - *j);
            levels[*j..*j + ones].fill(0);
            bits.consume(ones as u32);
            *j += ones;
        } else if step(bits).codes == 0 {
            let (level, len) = elias_level(bits.buf).expect("validated");
            levels[*j] = level as i16;
            bits.consume(len as u32);
            *j += 1;
        } else {
            for _ in 0..4 {
                let step = step(bits);
                if step.codes == 0 {
                    break;
                }
                step.write(&mut levels[*j..]);
                bits.consume(step.bits as u32);
                *j += step.codes as usize;
            }
        }
    }

    /// The levels after the windowed loop, one lookup or code at a time.
    fn finish(&mut self, table: &[DecodeStep]) {
        let pos = self.bits.as_ref().map_or(self.start, Bits::pos);
        let mut cursor = Cursor::at(self.bytes, pos);
        let n = self.levels.len();
        let levels = &mut *self.levels;
        let mut j = self.j;
        while j < n {
            // Runs shorter than a window go through the table, four at a time (branching on
            // every run would mispredict).
            let ones = cursor.zero_run(n - j);
            if ones >= STEP_BITS as usize || ones == n - j {
                levels[j..j + ones].fill(0);
                cursor.skip(ones as u32);
                j += ones;
                continue;
            }
            let step = table[window_index(cursor.bits)];
            if step.codes > 0 && j + DECODE_CODES <= n {
                step.write(&mut levels[j..]);
                cursor.skip(step.bits as u32);
                j += step.codes as usize;
            } else {
                levels[j] = cursor.level().expect("validated") as i16;
                j += 1;
            }
        }
        self.j = j;
    }
}

/// Codes the decoder takes per lookup of [`decode_steps`] at most.
const DECODE_CODES: usize = 4;

/// What the next [`STEP_BITS`] bits of a validated Elias-gamma stream decode to: up to
/// [`DECODE_CODES`] complete codes, their signed levels (unused slots 0) and their bits (codes:
/// 0 when the first code is longer).
#[derive(Clone, Copy, Default)]
struct DecodeStep {
    levels: [i8; DECODE_CODES],
    codes: u8,
    bits: u8,
}

impl DecodeStep {
    /// Writes all [`DECODE_CODES`] levels at the start of `levels` (slots past the codes are
    /// written again by the next step).
    #[inline(always)]
    fn write(&self, levels: &mut [i16]) {
        for (slot, &level) in levels[..DECODE_CODES].iter_mut().zip(&self.levels) {
            *slot = level as i16;
        }
    }
}

/// The decoder's lookup table, indexed by the next [`STEP_BITS`] bits. A level in it is at most
/// 62 (a code of 12 bits), so it fits an `i8`.
fn decode_steps() -> &'static [DecodeStep] {
    static STEPS: std::sync::OnceLock<Vec<DecodeStep>> = std::sync::OnceLock::new();
    STEPS.get_or_init(|| {
        (0..1u64 << STEP_BITS)
            .map(|pattern| {
                let mut step = DecodeStep::default();
                for (level, len) in window_codes(pattern).take(DECODE_CODES) {
                    step.levels[step.codes as usize] = level as i8;
                    step.codes += 1;
                    step.bits += len as u8;
                }
                step
            })
            .collect()
    })
}

struct EliasStream {
    bytes: Vec<u8>,
    bits: u64,
}

/// A bound on the expected Elias-gamma bits of the levels of buckets with `(‖v‖₂, ‖v‖₁)` =
/// `sums`. With `a_i = s·|v_i|/‖v‖₂` an entry's level `l_i` has mean `a_i`, and its code takes
/// `1 + 2⌊log₂(l_i + 1)⌋ + [l_i > 0]` bits, so by Jensen (log is concave) and
/// `P(l_i > 0) ≤ min(1, a_i)` a bucket of `m` entries expects at most
/// `m + 2m·log₂(1 + ā) + min(m, Σa_i)` bits, `ā` the mean `a_i`.
fn expected_elias_bits(sums: &[(f32, f64)], n: usize, bucket: usize, s: u32) -> f64 {
    sums.iter()
        .enumerate()
        .map(|(i, &(l2, l1))| {
            let m = bucket.min(n - i * bucket) as f64;
            let total = if l2 > 0.0 {
                s as f64 * l1 / l2 as f64
            } else {
                0.0
            };
            m + 2.0 * m * (1.0 + total / m).log2() + total.min(m)
        })
        .sum()
}

/// [`expected_elias_bits`] for the flattest buckets of `n` entries in buckets of `bucket`, the
/// largest it can be whatever the values: `‖v‖₁ ≤ √m·‖v‖₂` makes `Σa_i ≤ s·√m`. Known before
/// any norm is taken.
fn flattest_elias_bits(n: usize, bucket: usize, s: u32) -> f64 {
    let bound = |m: usize| {
        let m = m as f64;
        let total = s as f64 * m.sqrt();
        m + 2.0 * m * (1.0 + total / m).log2() + total.min(m)
    };
    let (full, last) = (n / bucket, n % bucket);
    full as f64 * bound(bucket) + if last > 0 { bound(last) } else { 0.0 }
}

/// The Elias-gamma code words by level, bits in stream order (the γ code's leading zeros are the
/// low bits), with their lengths.
fn elias_codes(s: u32) -> Vec<(u64, u32)> {
    (0..=s)
        .map(|l| {
            let m = l + 1;
            let top = 31 - m.leading_zeros();
            let reversed = (m.reverse_bits() >> (31 - top)) as u64;
            (reversed << top, 2 * top + 1)
        })
        .collect()
}

/// What the [`ChunkCoder`]s of one encoding share: the code words of levels `0..=s`, and how
/// they are joined.
struct EliasCodes {
    /// By level: the code's bits in stream order and its length.
    codes: Vec<(u64, u32)>,
    /// The longest code with its sign bit.
    longest: usize,
    /// Codes joined per store: 4, 2 or 1.
    join: usize,
    /// For `s ≤ 127`: each field's code with its sign, looked up whole.
    by_field: Option<Box<FieldCodes>>,
}

impl EliasCodes {
    fn new(s: u32) -> Self {
        let codes = elias_codes(s);
        let longest = codes
            .iter()
            .map(|&(_, len)| len as usize + 1)
            .max()
            .unwrap_or(1);
        Self {
            by_field: FieldCodes::new(&codes),
            join: [4, 2, 1]
                .into_iter()
                .find(|j| j * longest <= 57)
                .unwrap_or(1),
            longest,
            codes,
        }
    }

    /// The codes of up to sixteen fields through `e`.
    #[inline(always)]
    fn group(&self, group: &[u32], e: &mut Emitter<'_>) {
        if group.len() == 16 && group.iter().fold(0, |any, &f| any | f) >> 1 == 0 {
            e.emit(0xFFFF, 16);
            return;
        }
        if let (Some(table), Ok(group)) = (&self.by_field, <&[u32; 16]>::try_from(group)) {
            // s ≤ 127: four codes of at most 14 bits are joined per store.
            let code = |f: u32| {
                let f = (f & 0xFF) as usize;
                (table.bits[f], table.lens[f])
            };
            for four in group.chunks_exact(4) {
                let (b0, l0) = code(four[0]);
                let (b1, l1) = code(four[1]);
                let (b2, l2) = code(four[2]);
                let (b3, l3) = code(four[3]);
                let low = b0 | b1 << l0;
                let high = b2 | b3 << l2;
                e.emit(low | high << (l0 + l1), l0 + l1 + l2 + l3);
            }
            return;
        }
        // Lanes past the group's end stay empty (no bits, length 0).
        let s = self.codes.len() as u32 - 1;
        let (mut bits, mut lens) = ([0u64; 16], [0u32; 16]);
        for ((b, l), &field) in bits.iter_mut().zip(&mut lens).zip(group) {
            let level = (field >> 1).min(s);
            let (code, len) = self.codes[level as usize];
            let nonzero = (level != 0) as u32;
            *b = code | ((field & nonzero) as u64) << len;
            *l = len + nonzero;
        }
        let mut lanes = 16;
        while lanes > 16 / self.join {
            lanes /= 2;
            for k in 0..lanes {
                bits[k] = bits[2 * k] | bits[2 * k + 1] << lens[2 * k];
                lens[k] = lens[2 * k] + lens[2 * k + 1];
            }
        }
        for (&b, &l) in bits[..lanes].iter().zip(&lens[..lanes]) {
            e.emit(b, l);
        }
    }
}

/// One chunk's Elias-gamma bit stream, written from fields `level << 1 | sign` a block at a
/// time.
///
/// A zero level is the code "1" with no sign bit. Sixteen fields at a time become sixteen codes
/// with their signs ([`EliasCodes::group`]; no branch on the level: QSGD's levels are as
/// unpredictable as coin flips): for `s ≤ 127` looked up whole by field and joined four to a
/// store, else built from the code table and joined pairwise in lanes, twice when four of the longest codes fit 57 bits, once
/// when two do. Each joined code goes through an [`Emitter`]. Sixteen zero levels in a row go in
/// as one 16-bit run (long runs are common at small s). A code with its sign is at most
/// 2·⌊log₂(s+1)⌋ + 2 ≤ 32 bits (s ≤ 32767). `out` grows a block at a time and keeps 8 bytes of
/// slack for the last store.
struct ChunkCoder<'a> {
    codes: &'a EliasCodes,
    out: Vec<u8>,
    at: usize,
    acc: u64,
    filled: u32,
}

/// The write position of a [`ChunkCoder`] in locals (so that it stays in registers, not re-read
/// after each store into `out`): bits are ORed into a 64-bit accumulator, which is stored whole
/// and advanced by the bytes it completed. At most 64 bits are ever pending.
struct Emitter<'o> {
    out: &'o mut [u8],
    at: usize,
    acc: u64,
    filled: u32,
}

impl Emitter<'_> {
    /// ORs `len ≤ 57` bits into the accumulator, stores it whole, advances.
    #[inline(always)]
    fn emit(&mut self, bits: u64, len: u32) {
        self.acc |= bits << self.filled;
        self.filled += len;
        self.out[self.at..self.at + 8].copy_from_slice(&self.acc.to_le_bytes());
        let done = self.filled >> 3;
        self.at += done as usize;
        self.acc >>= 8 * done;
        self.filled &= 7;
    }
}

impl<'a> ChunkCoder<'a> {
    fn new(codes: &'a EliasCodes, capacity: usize) -> Self {
        Self {
            codes,
            out: vec![0u8; capacity + 8],
            at: 0,
            acc: 0,
            filled: 0,
        }
    }

    /// Appends the codes of `fields`.
    #[inline(always)]
    fn push(&mut self, fields: &[u32]) {
        let need = self.at + (fields.len() * self.codes.longest).div_ceil(8) + 8;
        if self.out.len() < need {
            self.out.resize(need.max(2 * self.out.len()), 0);
        }
        let mut e = Emitter {
            out: &mut self.out[..],
            at: self.at,
            acc: self.acc,
            filled: self.filled,
        };
        for group in fields.chunks(16) {
            self.codes.group(group, &mut e);
        }
        (self.at, self.acc, self.filled) = (e.at, e.acc, e.filled);
    }

    fn finish(mut self) -> EliasStream {
        self.out.truncate(self.at + (self.filled > 0) as usize);
        EliasStream {
            bytes: self.out,
            bits: 8 * self.at as u64 + self.filled as u64,
        }
    }
}

/// Every field's code with its sign bit when `s ≤ 127` (fields below 256), by field.
struct FieldCodes {
    bits: [u64; 256],
    lens: [u32; 256],
}

impl FieldCodes {
    fn new(codes: &[(u64, u32)]) -> Option<Box<Self>> {
        if codes.len() > 128 {
            return None;
        }
        let mut table = Box::new(Self {
            bits: [0; 256],
            lens: [0; 256],
        });
        for (field, (bits, lens)) in table.bits.iter_mut().zip(&mut table.lens).enumerate() {
            let level = (field >> 1).min(codes.len() - 1);
            let (code, len) = codes[level];
            let nonzero = (level != 0) as u32;
            *bits = code | ((field as u32 & nonzero) as u64) << len;
            *lens = len + nonzero;
        }
        Some(table)
    }
}

/// The chunks' streams, concatenated, in parallel: each chunk shifts its bits into the bytes
/// that hold only its own, then the byte at each seam is joined from both sides. Every chunk but
/// the last holds at least 8 bits (it has [`CHUNK`] entries), so no byte holds bits of three
/// chunks.
fn concat(chunks: Vec<EliasStream>) -> EliasStream {
    if chunks.len() == 1 {
        return chunks.into_iter().next().expect("one chunk");
    }
    let offsets: Vec<u64> = chunks
        .iter()
        .scan(0, |at, c| {
            let start = *at;
            *at += c.bits;
            Some(start)
        })
        .collect();
    let bits = offsets.last().copied().unwrap_or(0) + chunks.last().map_or(0, |c| c.bits);
    let mut bytes = vec![0u8; bits.div_ceil(8) as usize];
    // Chunk c alone holds bytes base_c + 1 .. base_{c+1}, base_c = ⌊offset_c / 8⌋.
    let mut owned = Vec::with_capacity(chunks.len());
    let (mut rest, mut at) = (&mut bytes[..], 0);
    for (c, &offset) in offsets.iter().enumerate() {
        let from = (offset / 8) as usize + 1;
        let end = offsets
            .get(c + 1)
            .map_or(at + rest.len(), |&next| (next / 8) as usize)
            .max(from);
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(from - at);
        let (mine, tail) = tail.split_at_mut(end - from);
        owned.push(mine);
        (rest, at) = (tail, end);
    }
    owned
        .into_par_iter()
        .zip(chunks.par_iter().zip(&offsets))
        .for_each(|(mine, (chunk, &offset))| {
            // Output byte base + 1 + m holds source bits 8(m + 1) − shift onwards: eight at a
            // time from nine source bytes, then one at a time near the end.
            let shift = (offset % 8) as u32;
            let src = &chunk.bytes;
            let mut words = mine.chunks_exact_mut(8);
            let mut m = 0;
            for word in &mut words {
                let Some(nine) = src.get(m..m + 9) else {
                    break;
                };
                let mut wide = [0u8; 16];
                wide[..9].copy_from_slice(nine);
                let shifted = (u128::from_le_bytes(wide) >> (8 - shift)) as u64;
                word.copy_from_slice(&shifted.to_le_bytes());
                m += 8;
            }
            for (k, byte) in mine[m..].iter_mut().enumerate() {
                let at = |i: usize| src.get(i).copied().unwrap_or(0);
                let pair = u16::from_le_bytes([at(m + k), at(m + k + 1)]);
                *byte = (pair >> (8 - shift)) as u8;
            }
        });
    for (c, chunk) in chunks.iter().enumerate() {
        let base = (offsets[c] / 8) as usize;
        let shift = (offsets[c] % 8) as u32;
        let head = chunk.bytes.first().copied().unwrap_or(0) << shift;
        // The previous chunk's last `shift` bits open the byte.
        let tail = match c {
            0 => 0,
            _ if shift == 0 => 0,
            _ => {
                let prev = &chunks[c - 1];
                let at = prev.bits - shift as u64;
                let pair = u16::from_le_bytes([
                    prev.bytes[(at / 8) as usize],
                    prev.bytes.get((at / 8) as usize + 1).copied().unwrap_or(0),
                ]);
                ((pair >> (at % 8)) as u8) & ((1u16 << shift) - 1) as u8
            }
        };
        if let Some(byte) = bytes.get_mut(base) {
            *byte = tail | head;
        }
    }
    EliasStream { bytes, bits }
}

/// Elias-gamma stream of `n` levels read from the packed fixed-width fields (`level << 1 |
/// sign`): per entry `γ(level + 1)`, then the sign bit when `level > 0`. Chunks are coded in
/// parallel and their bit streams concatenated.
fn elias_stream(fixed: &[u8], n: usize, width: u32, s: u32) -> EliasStream {
    let codes = EliasCodes::new(s);
    let chunks: Vec<EliasStream> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            simd::wide!({
                let count = CHUNK.min(n - c * CHUNK);
                let start = c * host::chunk_bytes(width);
                let bytes = &fixed[start..start + packed_len(count, width)];
                let mut coder = ChunkCoder::new(&codes, bytes.len());
                host::chunk_field_blocks(
                    bytes,
                    count,
                    width,
                    #[inline(always)]
                    |_, fields| {
                        coder.push(fields);
                        None::<()>
                    },
                );
                coder.finish()
            })
        })
        .collect();
    concat(chunks)
}

/// The Elias-gamma stream of the levels `quantise(start, values, uniforms, fields)` writes, block
/// by block with the uniforms of `stream`, without fixed-width fields in between: the same
/// levels, so the same bytes, as [`elias_stream`] of the packed fields.
fn elias_direct(values: &[f32], stream: Stream, s: u32, quantise: &Quantiser<'_>) -> EliasStream {
    let codes = EliasCodes::new(s);
    let chunks: Vec<EliasStream> = values
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, vals)| {
            simd::wide!({
                let mut coder = ChunkCoder::new(&codes, vals.len() / 4);
                let (mut u, mut fields) = ([0f32; BLOCK], [0u32; BLOCK]);
                for (b, vs) in vals.chunks(BLOCK).enumerate() {
                    quantise.drawn(stream, c * CHUNK + b * BLOCK, vs, &mut u, &mut fields);
                    coder.push(&fields[..vs.len()]);
                }
                coder.finish()
            })
        })
        .collect();
    concat(chunks)
}

/// [`elias_direct`] with the bucket norms taken in the same pass: each chunk (whole buckets:
/// `bucket` divides [`CHUNK`]) is normed bucket by bucket, then quantised and coded while it is
/// still in cache, so the gradient is read from memory once. Returns the bucket norms (as
/// [`bucket_norm`] gives them) and the stream, or the first error in chunk order.
fn elias_fused(
    values: &[f32],
    stream: Stream,
    s: u32,
    bucket: usize,
) -> Result<(Vec<f32>, EliasStream), CompressError> {
    debug_assert!(CHUNK.is_multiple_of(bucket));
    let codes = EliasCodes::new(s);
    let chunks: Vec<(Vec<f32>, EliasStream)> = values
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, vals)| {
            let norms = vals
                .chunks(bucket)
                .map(|v| bucket_norm(v).map(|(norm, _)| norm))
                .collect::<Result<Vec<f32>, _>>()?;
            let factors: Vec<f32> = norms.iter().map(|&m| factor(m, s)).collect();
            let quantise = Quantiser {
                factors: &factors,
                bucket,
                levels: s,
            };
            let coded = simd::wide!({
                let mut coder = ChunkCoder::new(&codes, vals.len() / 4);
                let (mut u, mut fields) = ([0f32; BLOCK], [0u32; BLOCK]);
                for (b, vs) in vals.chunks(BLOCK).enumerate() {
                    let (u, fields) = (&mut u[..vs.len()], &mut fields[..vs.len()]);
                    // The chunk's uniforms, its own buckets' factors.
                    stream.fill(c * CHUNK + b * BLOCK, u);
                    quantise.block(b * BLOCK, vs, u, fields);
                    coder.push(fields);
                }
                coder.finish()
            });
            Ok((norms, coded))
        })
        .collect::<Result<_, CompressError>>()?;
    let (norms, streams): (Vec<Vec<f32>>, Vec<EliasStream>) = chunks.into_iter().unzip();
    Ok((norms.concat(), concat(streams)))
}

/// Exact Elias-gamma bit count for the given levels (for tests and budgeting).
pub fn elias_gamma_bits(levels: &[u32]) -> u64 {
    levels
        .iter()
        .map(|&l| gamma_len(l + 1) + (l > 0) as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            if self.filled >= 32 {
                self.bytes
                    .extend_from_slice(&(self.acc as u32).to_le_bytes());
                self.acc >>= 32;
                self.filled -= 32;
            }
        }

        /// Appends another stream's bits, 32 at a time (the reference for [`concat`]).
        fn append(&mut self, other: &EliasStream) {
            let whole = (other.bits / 8) as usize;
            let mut words = other.bytes[..whole].chunks_exact(4);
            for word in &mut words {
                self.push(
                    u32::from_le_bytes(word.try_into().expect("4 bytes")) as u64,
                    32,
                );
            }
            for &byte in words.remainder() {
                self.push(byte as u64, 8);
            }
            let rest = (other.bits % 8) as u32;
            if rest > 0 {
                self.push(other.bytes[whole] as u64 & ((1 << rest) - 1), rest);
            }
        }

        fn finish(mut self) -> EliasStream {
            while self.filled > 0 {
                self.bytes.push(self.acc as u8);
                self.acc >>= 8;
                self.filled = self.filled.saturating_sub(8);
            }
            EliasStream {
                bytes: self.bytes,
                bits: self.bits,
            }
        }
    }

    /// One xorshift64 step: the tests' reproducible bits.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Random signed levels: mostly small, some zero runs, now and then `s`.
    fn random_levels(n: usize, s: u32, seed: u64) -> Vec<i32> {
        let mut state = seed;
        (0..n)
            .map(|i| {
                let state = xorshift(&mut state);
                let level = match state % 16 {
                    0..=7 => 0,
                    8..=11 => 1,
                    12 | 13 => 2.min(s),
                    14 => (state >> 8) as u32 % (s + 1),
                    _ => s,
                } as i32;
                match (i % 5000 < 100, state >> 63) {
                    (true, _) => 0,
                    (false, 1) => -level,
                    _ => level,
                }
            })
            .collect()
    }

    /// A stream of `levels` (signed) as the encoder writes it.
    fn stream(levels: &[i32]) -> EliasStream {
        let mut w = BitWriter::default();
        for &l in levels {
            let m = l.unsigned_abs() + 1;
            let top = 31 - m.leading_zeros();
            let code = ((m.reverse_bits() >> (31 - top)) as u64) << top;
            w.push(code, 2 * top + 1);
            if l != 0 {
                w.push((l < 0) as u64, 1);
            }
        }
        w.finish()
    }

    /// The chunked, branch-free encoder writes exactly the reference stream, over several
    /// chunks (their bit streams concatenated at odd bit offsets) and for narrow and wide
    /// fields, runs of zeros and the largest level included; the decoder reads it back.
    #[test]
    fn elias_stream_matches_the_reference_over_chunks() {
        for s in [1u32, 16, 1000] {
            let width = 32 - s.leading_zeros() + 1;
            let n = 2 * CHUNK + 777;
            let levels = random_levels(n, s, 0x2545_f491_4f6c_dd1d);
            let fields: Vec<u32> = levels
                .iter()
                .map(|&l| l.unsigned_abs() << 1 | (l < 0) as u32)
                .collect();
            let mut fixed = vec![0u8; packed_len(n, width)];
            for (c, vals) in fields.chunks(CHUNK).enumerate() {
                let start = c * host::chunk_bytes(width);
                let out = &mut fixed[start..start + packed_len(vals.len(), width)];
                for (block, bytes) in vals
                    .chunks(BLOCK)
                    .zip(out.chunks_mut(BLOCK * width as usize / 8))
                {
                    host::pack_fields(block, width, bytes);
                }
            }
            let got = elias_stream(&fixed, n, width, s);
            let want = stream(&levels);
            assert_eq!(got.bits, want.bits, "s = {s}");
            assert_eq!(got.bytes, want.bytes, "s = {s}");
            // And the table-driven decoder reads them back, bucket scales included.
            let bucket = 333;
            let scales: Vec<f32> = (0..n.div_ceil(bucket)).map(|b| 1.0 + b as f32).collect();
            let mut out = vec![f32::NAN; n];
            // SAFETY: `Set` writes only values.
            let slots = unsafe { host::slots(&mut out) };
            EliasLevels::validate(&got.bytes, got.bits, n, s)
                .unwrap()
                .decode(slots, &scales, bucket, Set);
            for (i, (o, l)) in out.iter().zip(&levels).enumerate() {
                assert_eq!(*o, *l as f32 * scales[i / bucket], "s = {s}, entry {i}");
            }
        }
    }

    /// The parallel concatenation is the bit-by-bit one: seams at every bit offset, a chunk
    /// that ends on a byte, and a last chunk shorter than a byte.
    #[test]
    fn concat_matches_appending_bit_by_bit() {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut chunk = |bits: u64| {
            let bytes: Vec<u8> = (0..bits.div_ceil(8))
                .map(|i| {
                    let state = xorshift(&mut state);
                    let keep = (bits - 8 * i).min(8);
                    (state as u8) & ((1u16 << keep) - 1) as u8
                })
                .collect();
            EliasStream { bytes, bits }
        };
        for lengths in [
            vec![64, 3],
            vec![100, 77, 5],
            vec![129, 130, 131, 132, 133, 134, 135, 8, 1],
            vec![1000, 1001, 17],
            vec![8, 16, 24, 7],
        ] {
            let chunks: Vec<EliasStream> = lengths.iter().map(|&b| chunk(b)).collect();
            let mut reference = BitWriter::default();
            for c in &chunks {
                reference.append(c);
            }
            let want = reference.finish();
            let got = concat(chunks);
            assert_eq!(
                (got.bits, &got.bytes),
                (want.bits, &want.bytes),
                "{lengths:?}"
            );
        }
    }

    /// The parallel validation joins its segments (it does not fall back) on long streams, and
    /// decodes what the serial walk decodes; every error it finds is the serial walk's.
    #[test]
    fn joined_validation_agrees_with_the_serial_walk() {
        for (s, seed) in [(1u32, 1u64), (16, 2), (1000, 3), (32767, 4)] {
            let n = 3 * CHUNK + 4321;
            let levels = random_levels(n, s, seed);
            let st = stream(&levels);
            let segments = EliasLevels::joined(&st.bytes, st.bits, n, s);
            assert!(segments.as_ref().is_some_and(|g| g.len() > 4), "s = {s}");
            let joined = EliasLevels::validate(&st.bytes, st.bits, n, s).unwrap();
            let serial = EliasLevels::serial(&st.bytes, st.bits, n, s).unwrap();
            let want: Vec<f32> = levels.iter().map(|&l| l as f32).collect();
            for reader in [joined, serial] {
                let mut out = vec![f32::NAN; n];
                // SAFETY: `Set` writes only values.
                reader.decode(unsafe { host::slots(&mut out) }, &[1.0], n, Set);
                assert!(out == want, "s = {s}");
            }
            // A level above s deep inside, a count off by one, a stream cut short: the same
            // error as the serial walk's.
            let mut bad = levels.clone();
            bad[2 * CHUNK + 17] = s as i32 + 1;
            let bad = stream(&bad);
            let mut cases = vec![
                (bad.bytes.clone(), bad.bits, n, s),
                (st.bytes.clone(), st.bits, n - 1, s),
                (st.bytes.clone(), st.bits, n + 1, s),
                (st.bytes.clone(), st.bits - 1, n, s),
            ];
            if s > 1 {
                cases.push((st.bytes.clone(), st.bits, n, s - 1));
            }
            for (bytes, bits, count, levels_s) in cases {
                let got = EliasLevels::validate(&bytes, bits, count, levels_s).map(|_| ());
                let want = EliasLevels::serial(&bytes, bits, count, levels_s).map(|_| ());
                assert!(got.is_err(), "s = {s}, n = {count}, bits = {bits}");
                assert_eq!(got, want, "s = {s}");
            }
        }
    }

    #[test]
    fn elias_validation_refuses_levels_above_s_by_table_and_by_code() {
        let cases: [Vec<i32>; 4] = [
            vec![0, 2, 0],
            vec![0; 30],
            vec![1, -1, 0, 3, 0, 0, 1],
            vec![0, 40, -2],
        ];
        for levels in cases {
            let s_needed = levels.iter().map(|l| l.unsigned_abs()).max().unwrap();
            let st = stream(&levels);
            let ok =
                EliasLevels::validate(&st.bytes, st.bits, levels.len(), s_needed.max(1)).unwrap();
            let mut out = vec![0.0; levels.len()];
            // SAFETY: `Set` writes only values.
            ok.decode(unsafe { host::slots(&mut out) }, &[1.0], levels.len(), Set);
            assert_eq!(out, levels.iter().map(|&l| l as f32).collect::<Vec<_>>());
            if s_needed > 1 {
                let err = EliasLevels::validate(&st.bytes, st.bits, levels.len(), s_needed - 1);
                assert!(matches!(
                    err,
                    Err(DecodeError::FieldOutOfRange { field: "level", .. })
                ));
            }
            let short =
                EliasLevels::validate(&st.bytes, st.bits - 1, levels.len(), s_needed.max(1));
            assert!(short.is_err());
            let more = EliasLevels::validate(&st.bytes, st.bits, levels.len() - 1, s_needed.max(1));
            assert!(more.is_err());
        }
    }

    /// Elias-gamma coded straight from the gradient is the recoding of the fixed-width fields
    /// the same seed gives, and the smallest coding picks between the two exactly as sizes say.
    #[test]
    fn direct_elias_is_the_recoded_fixed_payload() {
        use burn::tensor::{Device, Tensor, TensorData};
        use rand::SeedableRng;
        use rand::rngs::ChaCha8Rng;
        let n = 2 * CHUNK + 1234;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let g: Vec<f32> = (0..n)
            .map(|i| {
                let state = xorshift(&mut state);
                let x = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 977 == 0 { 40.0 * x } else { x }
            })
            .collect();
        for (levels, bucket) in [
            (1, None),
            (16, Some(512)),
            (16, None),
            (127, Some(64)),
            (3, Some(5)),
        ] {
            let mut codec = Qsgd::new(levels).unwrap();
            if let Some(b) = bucket {
                codec = codec.with_bucket(b).unwrap();
            }
            let encode = |coding: LevelCoding| {
                let t = Tensor::<1>::from_data(TensorData::new(g.clone(), [n]), &Device::flex());
                codec
                    .with_coding(coding)
                    .compress(t, &mut ChaCha8Rng::seed_from_u64(7))
                    .unwrap()
                    .into_bytes()
            };
            let (fixed, elias, smallest) = (
                encode(LevelCoding::Fixed),
                encode(LevelCoding::EliasGamma),
                encode(LevelCoding::Smallest),
            );
            let width = codec.field_width();
            let fixed_len = packed_len(n, width);
            let fields = &fixed[fixed.len() - fixed_len..];
            let recoded = elias_stream(fields, n, width, levels);
            let tail = &elias[elias.len() - recoded.bytes.len() - 8..];
            assert_eq!(&tail[..8], &recoded.bits.to_le_bytes(), "s = {levels}");
            assert_eq!(&tail[8..], &recoded.bytes[..], "s = {levels}");
            let want = if 8 + recoded.bits.div_ceil(8) < fixed_len as u64 {
                &elias
            } else {
                &fixed
            };
            assert_eq!(&smallest, want, "s = {levels}, bucket {bucket:?}");
            // The same norms too (taken chunk by chunk when the buckets divide the chunks):
            // both decode to the same values (a fixed-width field keeps the sign of a zero level,
            // so only as floats, −0 = +0).
            let decode = |bytes: &[u8]| {
                let payload = Payload::from_bytes(bytes.to_vec()).unwrap();
                let mut out = vec![0.0f32; n];
                codec.decode_into(&payload.borrow(), &mut out).unwrap();
                out
            };
            assert!(
                decode(&fixed) == decode(&elias),
                "s = {levels}, bucket {bucket:?}"
            );
        }
    }

    #[test]
    fn bucket_runs_match_entry_by_entry_counting() {
        for size in [1usize, 3, 7, 512] {
            for start in [0usize, 1, 5, 511, 512, 1000] {
                let mut runs = Vec::new();
                for_bucket_runs(start, 40, size, |b, r| runs.extend(r.map(|_| b)));
                let expected: Vec<usize> = (start..start + 40).map(|i| i / size).collect();
                assert_eq!(runs, expected);
            }
        }
    }

    #[test]
    fn floor_through_the_bits_is_the_floor() {
        // Every f32 in [0, 2¹⁶] at its own spacing near integers, and a sweep with step 2⁻¹⁰.
        let mut xs: Vec<f32> = (0..=1u32 << 16)
            .flat_map(|k| {
                let k = k as f32;
                [k, k.next_down().max(0.0), k.next_up(), k + 0.5]
            })
            .collect();
        xs.extend((0..1u32 << 20).map(|i| i as f32 / 1024.0));
        for x in xs {
            assert_eq!(floor_small(x), x.floor() as u32, "x = {x}");
        }
    }
}

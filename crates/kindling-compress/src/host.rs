//! The host path: codecs as fused, chunked, multi-threaded Rust over host memory.
//!
//! **The device rule.** A gradient on a host-memory device (burn's Flex or NdArray backend,
//! see [`is_host_device`]) is read once into host memory (no copy when the tensor owns its
//! buffer) and encoded by the codec's host kernel: one or two passes in chunks of [`CHUNK`]
//! entries on rayon's thread pool, writing the packed bytes straight into the payload. Decoding
//! onto such a device writes each f32 once into a new buffer that becomes the tensor. On any
//! other device (wgpu, CUDA, …) the codec packs on the device, so only the small payload crosses
//! to the host. Both paths write the same wire format and draw the same random numbers (see
//! [`uniforms`](crate::uniforms)), so either decodes the other's payloads.
//!
//! [`Compressor::decode_into`](crate::Compressor::decode_into) and
//! [`decode_add`](crate::Compressor::decode_add) are the host decoders on their own: from a
//! borrowed [`PayloadRef`](crate::PayloadRef) into a caller's buffer.

use std::mem::MaybeUninit;

use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::random::Stream;
use crate::simd;
use crate::{CompressError, DecodeError};

/// Entries per chunk of the host kernels: a multiple of 8 (bit fields end on a byte) and of 5
/// (base-3 groups end on a byte). Payload bytes never depend on it or on the thread count.
pub(crate) const CHUNK: usize = 61_440;

/// Whether `device` keeps tensors in host memory (burn's Flex and NdArray backends, with or
/// without autodiff): the codecs then run their host kernels; on other devices they pack on the
/// device.
pub fn is_host_device(device: &Device) -> bool {
    #[cfg(test)]
    if DEVICE_PATH_ONLY.get() {
        return false;
    }
    // burn 0.22 exposes the backend behind a `Device` only through its Debug form
    // (`Device<Flex(..)>`) unless the backend's own feature is enabled in this crate.
    let name = format!("{:?}", device.clone().inner());
    ["Device<Flex", "Device<NdArray"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
thread_local! {
    /// Unit tests set this to run the device path on a host device.
    pub(crate) static DEVICE_PATH_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A gradient's values in host memory, with its shape. On a host device the tensor's own buffer
/// is taken when the tensor owns it (else copied once).
#[derive(Debug)]
pub(crate) struct HostGrad {
    data: TensorData,
}

impl HostGrad {
    pub(crate) fn read<const D: usize>(grad: Tensor<D>) -> Self {
        let data = grad.into_data();
        let data = if data.dtype() == DType::F32 {
            data
        } else {
            data.convert::<f32>()
        };
        Self { data }
    }

    pub(crate) fn values(&self) -> &[f32] {
        self.data.as_slice::<f32>().expect("f32 values")
    }

    pub(crate) fn values_mut(&mut self) -> &mut [f32] {
        self.data.as_mut_slice::<f32>().expect("f32 values")
    }

    /// The values as a vector (the buffer itself when it is suitably aligned, else one copy).
    pub(crate) fn into_values(self) -> Vec<f32> {
        self.data.try_into_vec().expect("f32 values")
    }

    /// The buffer as a tensor of `shape` on `device` (no copy on a host device).
    pub(crate) fn into_tensor<const D: usize>(
        self,
        shape: [usize; D],
        device: &Device,
    ) -> Tensor<D> {
        let (bytes, _, dtype) = self.data.into_parts();
        Tensor::from_data(TensorData::from_bytes(bytes, shape, dtype), device)
    }
}

/// A tensor of `shape` on `device` from host values (no copy on host devices).
pub(crate) fn tensor<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// How a decoder writes each value: store it, or add a weighted value.
pub(crate) trait Sink: Copy + Send + Sync {
    /// An output slot: `MaybeUninit<f32>` for a sink that only stores (so a new buffer needs no
    /// zero fill first), `f32` for one that reads the value already there.
    type Slot: Send;
    /// Stores `v` into `slot`.
    fn put(self, slot: &mut Self::Slot, v: f32);
    /// Prepares a buffer for a sparse decoder that only visits some entries.
    fn clear(self, out: &mut [Self::Slot]);
}

/// `out[i] = v`, into slots that need not hold a value yet; it writes only values.
#[derive(Clone, Copy)]
pub(crate) struct Set;

/// `out[i] += w·v`.
#[derive(Clone, Copy)]
pub(crate) struct AddScaled(pub(crate) f32);

impl Sink for Set {
    type Slot = MaybeUninit<f32>;
    #[inline(always)]
    fn put(self, slot: &mut MaybeUninit<f32>, v: f32) {
        slot.write(v);
    }
    fn clear(self, out: &mut [MaybeUninit<f32>]) {
        out.par_chunks_mut(CHUNK)
            .for_each(|c| c.fill(MaybeUninit::new(0.0)));
    }
}

impl Sink for AddScaled {
    type Slot = f32;
    #[inline(always)]
    fn put(self, slot: &mut f32, v: f32) {
        *slot += self.0 * v;
    }
    fn clear(self, _out: &mut [f32]) {}
}

/// `out` as slots for [`Set`].
///
/// # Safety
/// Only values may be written through the result (as [`Set`] does), so that `out` stays
/// initialised.
pub(crate) unsafe fn slots(out: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the caller writes only values.
    unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A new vector of `n` values that `decode` writes through [`Set`]'s slots, with no zero fill
/// before: each value is written once.
///
/// # Safety
/// `decode` has written all `n` slots when it returns `Ok`. Every host decoder does: it checks
/// the whole body before it writes, then covers its output (the paths tests decode into
/// NaN-filled buffers and compare with the device path).
pub(crate) unsafe fn decoded<E>(
    n: usize,
    decode: impl FnOnce(&mut [MaybeUninit<f32>]) -> Result<(), E>,
) -> Result<Vec<f32>, E> {
    let mut out = Vec::with_capacity(n);
    decode(&mut out.spare_capacity_mut()[..n])?;
    // SAFETY: `decode` wrote all `n` slots (the caller's promise).
    unsafe { out.set_len(n) };
    Ok(out)
}

/// Checks a caller's output buffer against the payload's entry count.
pub(crate) fn check_output<T>(out: &[T], n: usize) -> Result<(), DecodeError> {
    if out.len() == n {
        Ok(())
    } else {
        Err(DecodeError::OutputLength {
            expected: n,
            found: out.len(),
        })
    }
}

/// Bits of `|v|`: ordered like `|v|` for finite values, and at least `0x7F80_0000` for ±Inf and
/// NaN.
#[inline(always)]
pub(crate) fn abs_bits(v: f32) -> u32 {
    v.to_bits() & 0x7FFF_FFFF
}

/// Calls `each(i, v)` for every entry `v = chunk[i]` that `hit` accepts, in order: for scans
/// that keep few entries, sixteen at a time through [`hit_mask`] and [`each_bit`]. Inline it
/// into a [`simd::wide!`] body, with `#[inline(always)]` closures.
#[inline(always)]
pub(crate) fn for_each_hit(
    chunk: &[f32],
    hit: impl Fn(f32) -> bool,
    mut each: impl FnMut(usize, f32),
) {
    for (g, group) in chunk.chunks(16).enumerate() {
        each_bit(hit_mask(group.iter().copied(), &hit), |i| {
            each(16 * g + i, group[i])
        });
    }
}

/// Bit `i` set for each item `i` of `group` (at most 32) that `hit` accepts: tested without a
/// branch, so that a group of sixteen f32 is one vector comparison.
#[inline(always)]
pub(crate) fn hit_mask<T>(group: impl Iterator<Item = T>, hit: impl Fn(T) -> bool) -> u32 {
    group
        .enumerate()
        .fold(0, |mask, (i, x)| mask | (hit(x) as u32) << i)
}

/// Calls `each(i)` for every bit `i` set in `mask`, lowest first.
#[inline(always)]
pub(crate) fn each_bit(mut mask: u32, mut each: impl FnMut(usize)) {
    while mask != 0 {
        each(mask.trailing_zeros() as usize);
        mask &= mask - 1;
    }
}

/// Largest `abs_bits` of a chunk (eight lanes, so it vectorises).
#[inline(always)]
fn max_abs_bits(chunk: &[f32]) -> u32 {
    let mut lanes = [0u32; 8];
    let mut blocks = chunk.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane = (*lane).max(abs_bits(v));
        }
    }
    let tail = blocks.remainder().iter().map(|&v| abs_bits(v));
    lanes.into_iter().chain(tail).max().unwrap_or(0)
}

/// `Σ|v|` of a chunk in f64 (eight lanes, so it vectorises).
#[inline(always)]
fn sum_abs(chunk: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut blocks = chunk.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane += v.abs() as f64;
        }
    }
    let tail: f64 = blocks.remainder().iter().map(|v| v.abs() as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

/// The error for a gradient with non-finite entries (counted only then).
pub(crate) fn non_finite(values: &[f32]) -> CompressError {
    let bad = values
        .par_chunks(CHUNK)
        .map(|c| c.iter().filter(|v| !v.is_finite()).count())
        .sum();
    CompressError::NonFinite {
        bad,
        total: values.len(),
    }
}

/// `max|v|`, or [`CompressError::NonFinite`]: one parallel pass.
pub(crate) fn max_abs(values: &[f32]) -> Result<f32, CompressError> {
    let bits = if values.len() <= CHUNK {
        simd::wide!(max_abs_bits(values))
    } else {
        values
            .par_chunks(CHUNK)
            .map(|c| simd::wide!(max_abs_bits(c)))
            .max()
            .unwrap_or(0)
    };
    if bits >= 0x7F80_0000 {
        return Err(non_finite(values));
    }
    Ok(f32::from_bits(bits))
}

/// `(max|v|, ‖v‖₂, ‖v‖₁)` in one parallel pass, or [`CompressError::NonFinite`]. The sums
/// run in f64, where the square of any finite f32 is a normal number (`(2⁻¹⁴⁹)² ≈ 2·10⁻⁹⁰`,
/// `(3.4·10³⁸)² ≈ 1.2·10⁷⁷`) and 2²⁸ of them cannot overflow: tiny entries do not underflow and
/// huge ones do not overflow.
pub(crate) fn norms(values: &[f32]) -> Result<(f32, f64, f64), CompressError> {
    let sums = if values.len() <= CHUNK {
        simd::wide!(chunk_norms(values))
    } else {
        // Summed in chunk order, so that the sums do not depend on the thread count.
        let parts: Vec<(u32, f64, f64)> = values
            .par_chunks(CHUNK)
            .map(|c| simd::wide!(chunk_norms(c)))
            .collect();
        parts.into_iter().fold((0, 0.0, 0.0), add_norms)
    };
    finish_norms(sums, values)
}

/// Two [`chunk_norms`] combined.
pub(crate) fn add_norms(a: (u32, f64, f64), b: (u32, f64, f64)) -> (u32, f64, f64) {
    (a.0.max(b.0), a.1 + b.1, a.2 + b.2)
}

/// [`norms`] from the [`chunk_norms`] of all of `values` (only read to count non-finite
/// entries).
pub(crate) fn finish_norms(
    (bits, squares, l1): (u32, f64, f64),
    values: &[f32],
) -> Result<(f32, f64, f64), CompressError> {
    if bits >= 0x7F80_0000 {
        return Err(non_finite(values));
    }
    Ok((f32::from_bits(bits), squares.sqrt(), l1))
}

/// `(max abs_bits, Σv², Σ|v|)` of a chunk, the sums in f64, in one read (sixteen lanes, so it
/// vectorises; the lanes and their order do not depend on the vector unit).
#[inline(always)]
pub(crate) fn chunk_norms(chunk: &[f32]) -> (u32, f64, f64) {
    let mut max = [0u32; 16];
    let mut squares = [0f64; 16];
    let mut l1 = [0f64; 16];
    let mut blocks = chunk.chunks_exact(16);
    for block in &mut blocks {
        for k in 0..16 {
            let v = block[k];
            max[k] = max[k].max(abs_bits(v));
            let x = v.abs() as f64;
            squares[k] += x * x;
            l1[k] += x;
        }
    }
    let mut tail = (0u32, 0f64, 0f64);
    for &v in blocks.remainder() {
        let x = v.abs() as f64;
        tail = (tail.0.max(abs_bits(v)), tail.1 + x * x, tail.2 + x);
    }
    (
        max.into_iter().fold(tail.0, u32::max),
        squares.iter().sum::<f64>() + tail.1,
        l1.iter().sum::<f64>() + tail.2,
    )
}

/// Bytes of a fixed-width packed chunk of `CHUNK` fields of `width` bits.
pub(crate) const fn chunk_bytes(width: u32) -> usize {
    CHUNK * width as usize / 8
}

/// Packs every entry into a `W`-bit field (`W` divides 8) computed by `field(v)`, straight into
/// `out` (`packed_len(n, W)` bytes), in parallel; in the same pass returns the largest
/// [`abs_bits`] (`≥ 0x7F80_0000` iff an entry is not finite) and, when `SUM`, `Σ|v|` in f64
/// (else 0).
pub(crate) fn pack_small<const W: u32, const SUM: bool, F>(
    values: &[f32],
    out: &mut [u8],
    field: F,
) -> (u32, f64)
where
    F: Fn(f32) -> u8 + Sync,
{
    let per_byte = (8 / W) as usize;
    let pack = |group: &[f32]| {
        group
            .iter()
            .enumerate()
            .fold(0u8, |b, (t, &v)| b | field(v) << (t as u32 * W))
    };
    out.par_chunks_mut(chunk_bytes(W))
        .zip(values.par_chunks(CHUNK))
        .map(|(bytes, vals)| {
            simd::wide!({
                let mut groups = vals.chunks_exact(per_byte);
                for (byte, group) in bytes.iter_mut().zip(&mut groups) {
                    *byte = pack(group);
                }
                if let Some(last) = bytes.get_mut(vals.len() / per_byte) {
                    *last = pack(groups.remainder());
                }
                (max_abs_bits(vals), if SUM { sum_abs(vals) } else { 0.0 })
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        // In chunk order: the sum does not depend on the thread count.
        .fold((0, 0.0), |a, b| (a.0.max(b.0), a.1 + b.1))
}

/// Unpacks `width`-bit fields (`width` divides 8) and stores `value(field)` through `sink`, in
/// parallel. `out.len()` is the field count.
pub(crate) fn unpack_small<const W: u32, S: Sink>(
    bytes: &[u8],
    out: &mut [S::Slot],
    sink: S,
    table: &[f32],
) {
    let per_byte = (8 / W) as usize;
    let mask = ((1u16 << W) - 1) as u8;
    // Row b holds the values of byte b's fields: one lookup per byte.
    let rows: Vec<[f32; 8]> = (0..=255u8)
        .map(|b| {
            let mut row = [0f32; 8];
            for (t, v) in row.iter_mut().take(per_byte).enumerate() {
                *v = table[((b >> (t as u32 * W)) & mask) as usize];
            }
            row
        })
        .collect();
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(chunk_bytes(W)))
        .for_each(|(vals, bytes)| {
            simd::wide!({
                let full = vals.len() / per_byte;
                let mut groups = vals.chunks_exact_mut(per_byte);
                for (group, &b) in (&mut groups).zip(bytes) {
                    for (slot, &v) in group.iter_mut().zip(&rows[b as usize]) {
                        sink.put(slot, v);
                    }
                }
                let rest = groups.into_remainder();
                if let Some(&b) = bytes.get(full) {
                    for (slot, &v) in rest.iter_mut().zip(&rows[b as usize]) {
                        sink.put(slot, v);
                    }
                }
            })
        });
}

/// Entries per block of the randomised kernels: a multiple of 8 and 5 (a block's fields end on a
/// byte for any width, and on a base-3 group) and of 2 (a block starts on a uniform pair).
pub(crate) const BLOCK: usize = 320;

/// Runs `f(start, values, uniforms, bytes)` (returning a count, summed) on every block of [`BLOCK`] entries (the last may be
/// shorter) in parallel, where `start` is the block's first index, `uniforms` are the stream's uniforms at the block's entries and
/// `bytes` the block's `bytes_per_block` bytes of `out` (fewer for the last block).
pub(crate) fn pack_random<F>(
    values: &[f32],
    stream: Stream,
    bytes_per_block: usize,
    out: &mut [u8],
    f: F,
) -> usize
where
    F: Fn(usize, &[f32], &[f32], &mut [u8]) -> usize + Sync,
{
    const _: () = assert!(CHUNK.is_multiple_of(BLOCK));
    let blocks_per_chunk = CHUNK / BLOCK;
    out.par_chunks_mut(blocks_per_chunk * bytes_per_block)
        .zip(values.par_chunks(CHUNK))
        .enumerate()
        .map(|(c, (bytes, vals))| {
            simd::wide!({
                let mut u = [0f32; BLOCK];
                let mut count = 0;
                for (b, (vals, bytes)) in vals
                    .chunks(BLOCK)
                    .zip(bytes.chunks_mut(bytes_per_block))
                    .enumerate()
                {
                    let u = &mut u[..vals.len()];
                    let start = c * CHUNK + b * BLOCK;
                    stream.fill(start, u);
                    count += f(start, vals, u, bytes);
                }
                count
            })
        })
        .sum()
}

/// Writes fields of `width ≤ 24` bits into a byte slice as one little-endian bit stream.
pub(crate) struct FieldWriter<'a> {
    out: &'a mut [u8],
    pos: usize,
    acc: u64,
    filled: u32,
}

impl<'a> FieldWriter<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Self {
            out,
            pos: 0,
            acc: 0,
            filled: 0,
        }
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, field: u32, width: u32) {
        self.acc |= (field as u64) << self.filled;
        self.filled += width;
        if self.filled >= 32 {
            let word = (self.acc as u32).to_le_bytes();
            self.out[self.pos..self.pos + 4].copy_from_slice(&word);
            self.pos += 4;
            self.acc >>= 32;
            self.filled -= 32;
        }
    }

    /// Flushes the last partial bytes.
    pub(crate) fn finish(mut self) {
        while self.filled > 0 {
            self.out[self.pos] = self.acc as u8;
            self.pos += 1;
            self.acc >>= 8;
            self.filled = self.filled.saturating_sub(8);
        }
    }
}

/// The little-endian `u32` at byte `pos` of `bytes` (zeros past the end).
#[inline(always)]
fn le_word(bytes: &[u8], pos: usize) -> u32 {
    match bytes.get(pos..pos + 4) {
        Some(w) => u32::from_le_bytes(w.try_into().expect("4 bytes")),
        None => {
            let mut w = [0u8; 4];
            let tail = bytes.get(pos..).unwrap_or(&[]);
            w[..tail.len()].copy_from_slice(tail);
            u32::from_le_bytes(w)
        }
    }
}

/// `$small` with the constant `$w` bound to `width` when `width ≤ 8` (one instantiation per
/// width, so its shifts are known when compiled), else `$other`.
macro_rules! by_width {
    ($width:expr, $w:ident => $small:expr, $other:block) => {
        by_width!(@arms $width, $w => $small, $other; 1 2 3 4 5 6 7 8)
    };
    (@arms $width:expr, $w:ident => $small:expr, $other:block; $($n:literal)*) => {
        match $width {
            $($n => {
                const $w: usize = $n;
                $small
            })*
            _ => $other,
        }
    };
}

/// Packs `fields` of `width ≤ 24` bits into `out` (`packed_len(fields.len(), width)` bytes):
/// for `width ≤ 8` eight fields at a time into `width` bytes (independent groups, no carried
/// state), else through a [`FieldWriter`].
#[inline(always)]
pub(crate) fn pack_fields(fields: &[u32], width: u32, out: &mut [u8]) {
    by_width!(width, W => pack_groups::<W>(fields, out), {
        let mut writer = FieldWriter::new(out);
        for &f in fields {
            writer.push(f, width);
        }
        writer.finish();
    })
}

/// Groups of eight `W`-bit fields whose eight-byte word lies inside `len` bytes.
#[inline(always)]
const fn whole_words<const W: usize>(len: usize, fields: usize) -> usize {
    let groups = if len >= 8 { (len - 8) / W + 1 } else { 0 };
    if groups < fields / 8 {
        groups
    } else {
        fields / 8
    }
}

/// [`pack_fields`] for a width `W ≤ 8` known when compiled: group `g` is one eight-byte store at
/// byte `g·W` (its high bytes are zero and overwritten by the next group), so the shifts run
/// as one vector operation; groups near the end are copied byte by byte.
#[inline(always)]
fn pack_groups<const W: usize>(fields: &[u32], out: &mut [u8]) {
    let word = |group: &[u32]| {
        group
            .iter()
            .enumerate()
            .fold(0u64, |w, (k, &f)| w | (f as u64) << (k * W))
    };
    let whole = whole_words::<W>(out.len(), fields.len());
    for (g, group) in fields[..8 * whole].chunks_exact(8).enumerate() {
        out[g * W..g * W + 8].copy_from_slice(&word(group).to_le_bytes());
    }
    for (group, dst) in fields[8 * whole..]
        .chunks(8)
        .zip(out[W * whole..].chunks_mut(W))
    {
        dst.copy_from_slice(&word(group).to_le_bytes()[..dst.len()]);
    }
}

/// Reads `out.len()` fields of `width ≤ 24` bits from the start of `bytes` (zeros past the end):
/// for `width ≤ 8` eight at a time from `width` bytes.
#[inline(always)]
pub(crate) fn unpack_fields(bytes: &[u8], width: u32, out: &mut [u32]) {
    by_width!(width, W => unpack_groups::<W>(bytes, out), {
        let mask = (1u64 << width) - 1;
        let mut pos = 0;
        let mut acc = 0u64;
        let mut filled = 0u32;
        for slot in out {
            if filled < width {
                acc |= (le_word(bytes, pos) as u64) << filled;
                filled += 32;
                pos += 4;
            }
            *slot = (acc & mask) as u32;
            acc >>= width;
            filled -= width;
        }
    })
}

/// [`unpack_fields`] for a width `W ≤ 8` known when compiled: group `g` is one eight-byte load
/// at byte `g·W`, so the shifts run as one vector operation; groups near the end are read
/// through a zero-padded copy.
#[inline(always)]
fn unpack_groups<const W: usize>(bytes: &[u8], out: &mut [u32]) {
    let mask = (1u64 << W) - 1;
    let split = |word: u64, group: &mut [u32]| {
        for (k, f) in group.iter_mut().enumerate() {
            *f = ((word >> (k * W)) & mask) as u32;
        }
    };
    let whole = whole_words::<W>(bytes.len(), out.len());
    let (head, tail) = out.split_at_mut(8 * whole);
    for (g, group) in head.chunks_exact_mut(8).enumerate() {
        let word = u64::from_le_bytes(bytes[g * W..g * W + 8].try_into().expect("8 bytes"));
        split(word, group);
    }
    let rest = bytes.get(W * whole..).unwrap_or(&[]);
    for (g, group) in tail.chunks_mut(8).enumerate() {
        let mut word = [0u8; 8];
        let src = rest.get(g * W..).unwrap_or(&[]);
        let len = src.len().min(W);
        word[..len].copy_from_slice(&src[..len]);
        split(u64::from_le_bytes(word), group);
    }
}

/// Calls `f(b, fields)` with the fields of block `b` of one chunk of a packed stream: `count`
/// fields of `width ≤ 24` bits from the start of `bytes` (zeros past its end), unpacked
/// [`BLOCK`] at a time into one buffer. Stops at, and returns, the first `Some` that `f` gives.
#[inline(always)]
pub(crate) fn chunk_field_blocks<T>(
    bytes: &[u8],
    count: usize,
    width: u32,
    mut f: impl FnMut(usize, &[u32]) -> Option<T>,
) -> Option<T> {
    let block_bytes = BLOCK * width as usize / 8;
    let mut fields = [0u32; BLOCK];
    for b in 0..count.div_ceil(BLOCK) {
        let fields = &mut fields[..BLOCK.min(count - b * BLOCK)];
        unpack_fields(&bytes[(b * block_bytes).min(bytes.len())..], width, fields);
        if let Some(found) = f(b, fields) {
            return Some(found);
        }
    }
    None
}

/// Runs `f(start, fields, out)` on every block of [`BLOCK`] entries of a packed stream of
/// `width`-bit fields in parallel, with the block's fields unpacked and its slice of `out`.
pub(crate) fn par_field_blocks<T: Send, F>(bytes: &[u8], width: u32, out: &mut [T], f: F)
where
    F: Fn(usize, &[u32], &mut [T]) + Sync,
{
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(chunk_bytes(width)))
        .enumerate()
        .for_each(|(c, (vals, bytes))| {
            simd::wide!({
                let count = vals.len();
                let mut outs = vals.chunks_mut(BLOCK);
                chunk_field_blocks(
                    bytes,
                    count,
                    width,
                    #[inline(always)]
                    |b, fields| {
                        let out = outs.next().expect("one slice of out per block");
                        f(c * CHUNK + b * BLOCK, fields, out);
                        None::<()>
                    },
                );
            })
        });
}

/// The first field found (in any chunk) of a packed stream of `n` fields of `width ≤ 24` bits
/// (zeros past the end of `bytes`) that is `bad`: chunks in parallel, each unpacked a block of
/// [`BLOCK`] fields at a time and tested with the widest vector unit.
pub(crate) fn any_field(
    bytes: &[u8],
    n: usize,
    width: u32,
    bad: impl Fn(u32) -> bool + Sync,
) -> Option<u32> {
    (0..n.div_ceil(CHUNK)).into_par_iter().find_map_any(|c| {
        simd::wide!({
            let chunk = &bytes[(c * chunk_bytes(width)).min(bytes.len())..];
            chunk_field_blocks(
                chunk,
                CHUNK.min(n - c * CHUNK),
                width,
                #[inline(always)]
                |_, fields| {
                    // A branch-free test of the block first, then the search in the rare block
                    // that holds a bad field.
                    if fields.iter().fold(false, |any, &f| any | bad(f)) {
                        fields.iter().copied().find(|&f| bad(f))
                    } else {
                        None
                    }
                },
            )
        })
    })
}

/// `G·X` for row-major `G [rows, cols]` and `X [cols, l]`: `[rows, l]`, rows in parallel.
pub(crate) fn g_times(g: &[f32], rows: usize, cols: usize, x: &[f32], l: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * l];
    y.par_chunks_mut(l)
        .zip(g.par_chunks(cols))
        .for_each(|(y_row, g_row)| {
            simd::wide!({
                for (&gij, x_row) in g_row.iter().zip(x.chunks(l)) {
                    for (yt, &xt) in y_row.iter_mut().zip(x_row) {
                        *yt += gij * xt;
                    }
                }
            })
        });
    y
}

/// Columns per task of [`gt_times`]: its accumulators (`l × 256` f32) stay in L1.
const COLS_PER_TASK: usize = 256;

/// `Gᵀ·X` for row-major `G [rows, cols]` and `X [rows, l]`: `[cols, l]`. Each task takes a block
/// of columns and adds `x_it·G[i, block]` into one accumulator row per `t`, rows in order
/// (vectorised along the block, the same sums at every vector level), then writes the block
/// transposed. A matrix of at most [`CHUNK`] entries runs its blocks on this thread: a split
/// would hand them to rayon's pool, a thread switch for little work.
pub(crate) fn gt_times(g: &[f32], rows: usize, cols: usize, x: &[f32], l: usize) -> Vec<f32> {
    let mut z = vec![0.0; cols * l];
    let task = |(task, z): (usize, &mut [f32])| {
        let first = task * COLS_PER_TASK;
        let width = z.len() / l;
        let mut acc = vec![0.0_f32; l * width];
        simd::wide!({
            for (row, xi) in g.chunks_exact(cols).zip(x.chunks_exact(l)) {
                let row = &row[first..first + width];
                for (acc, xit) in acc.chunks_exact_mut(width).zip(xi) {
                    acc.iter_mut().zip(row).for_each(|(a, gij)| *a += gij * xit);
                }
            }
        });
        for (t, acc) in acc.chunks_exact(width).enumerate() {
            for (j, a) in acc.iter().enumerate() {
                z[j * l + t] = *a;
            }
        }
    };
    if rows * cols <= CHUNK {
        z.chunks_mut(COLS_PER_TASK * l).enumerate().for_each(task);
    } else {
        z.par_chunks_mut(COLS_PER_TASK * l)
            .enumerate()
            .for_each(task);
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_plain_loops_and_flag_non_finite_entries() {
        let values: Vec<f32> = (0..3 * CHUNK + 17)
            .map(|i| ((i as f32) * 0.37).sin() * 3.0)
            .collect();
        let l1: f64 = values.iter().map(|v| v.abs() as f64).sum();
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(max_abs(&values).unwrap(), max);
        let l2 = values
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let (m, two, one) = norms(&values).unwrap();
        assert_eq!(m, max);
        assert!((two - l2).abs() < 1e-9 * l2 && (one - l1).abs() < 1e-9 * l1);
        // Summed in f64: neither 1e-30 nor 1e30 entries under- or overflow when squared.
        for scale in [1e-30f32, 1e30] {
            let scaled: Vec<f32> = values.iter().map(|v| v * scale).collect();
            let (_, two, _) = norms(&scaled).unwrap();
            assert!(
                (two / (l2 * scale as f64) - 1.0).abs() < 1e-5,
                "scale {scale}"
            );
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = values.clone();
            v[CHUNK + 3] = bad;
            v[7] = bad;
            for err in [max_abs(&v).unwrap_err(), norms(&v).unwrap_err()] {
                assert_eq!(
                    err,
                    CompressError::NonFinite {
                        bad: 2,
                        total: v.len()
                    }
                );
            }
        }
    }

    #[test]
    fn small_fields_round_trip_through_both_sinks() {
        for width in [1u32, 2, 4, 8] {
            let n = 2 * CHUNK + 13;
            let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
            let mask = (1usize << width) - 1;
            let mut bytes = vec![0u8; crate::packed_len(n, width)];
            let field = |v: f32| (v as usize & mask) as u8;
            let (max, l1) = match width {
                1 => pack_small::<1, true, _>(&values, &mut bytes, field),
                2 => pack_small::<2, true, _>(&values, &mut bytes, field),
                4 => pack_small::<4, true, _>(&values, &mut bytes, field),
                _ => pack_small::<8, true, _>(&values, &mut bytes, field),
            };
            assert_eq!(max, 6f32.to_bits());
            assert_eq!(l1, values.iter().map(|&v| v as f64).sum::<f64>());
            let expected: Vec<u32> = values.iter().map(|&v| (v as usize & mask) as u32).collect();
            let fields: Vec<u32> = crate::bits::host_fields(&bytes, n, width).collect();
            assert_eq!(fields, expected, "width {width}");
            let table: Vec<f32> = (0..1 << width).map(|f| f as f32 * 2.0).collect();
            let mut out = vec![1.0f32; n];
            // SAFETY: `Set` writes only values.
            let slots = unsafe { slots(&mut out) };
            match width {
                1 => unpack_small::<1, _>(&bytes, slots, Set, &table),
                2 => unpack_small::<2, _>(&bytes, slots, Set, &table),
                4 => unpack_small::<4, _>(&bytes, slots, Set, &table),
                _ => unpack_small::<8, _>(&bytes, slots, Set, &table),
            }
            assert!(
                out.iter()
                    .zip(&expected)
                    .all(|(o, &f)| *o == 2.0 * f as f32)
            );
            let sink = AddScaled(-0.5);
            match width {
                1 => unpack_small::<1, _>(&bytes, &mut out, sink, &table),
                2 => unpack_small::<2, _>(&bytes, &mut out, sink, &table),
                4 => unpack_small::<4, _>(&bytes, &mut out, sink, &table),
                _ => unpack_small::<8, _>(&bytes, &mut out, sink, &table),
            }
            assert!(out.iter().zip(&expected).all(|(o, &f)| *o == f as f32));
        }
    }

    #[test]
    fn any_width_round_trips_through_the_field_writer_and_reader() {
        for width in [1u32, 2, 3, 4, 5, 6, 7, 8, 9, 11, 16] {
            let n = CHUNK + 2 * BLOCK + 7;
            let mask = (1u32 << width) - 1;
            let fields: Vec<u32> = (0..n as u32)
                .map(|i| i.wrapping_mul(2654435761) & mask)
                .collect();
            let mut bytes = vec![0u8; crate::packed_len(n, width)];
            let per_block = BLOCK * width as usize / 8;
            for (block, out) in fields.chunks(BLOCK).zip(bytes.chunks_mut(per_block)) {
                pack_fields(block, width, out);
            }
            let stream: Vec<u32> = crate::bits::host_fields(&bytes, n, width).collect();
            assert_eq!(stream, fields, "width {width}");
            let mut unpacked = vec![0u32; n];
            for (block, src) in unpacked.chunks_mut(BLOCK).zip(bytes.chunks(per_block)) {
                unpack_fields(src, width, block);
            }
            assert_eq!(unpacked, fields, "width {width}");
            assert_eq!(any_field(&bytes, n, width, |f| f > mask), None);
            let last = fields[n - 1];
            assert_eq!(any_field(&bytes, n, width, |f| f == last), Some(last));
        }
    }

    #[test]
    fn flex_is_a_host_device() {
        assert!(is_host_device(&Device::flex()));
    }
}

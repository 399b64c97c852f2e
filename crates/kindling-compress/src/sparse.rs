//! Sparse gradients: the shared wire format of a sparse vector, and the [`TopK`] and [`RandomK`]
//! codecs.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{Rng, RngExt, SeedableRng};
use rayon::prelude::*;

use crate::bits::pack_fields;
use crate::codec::{
    check_count, compress_on_host, decompress_on_host, flatten, invalid, l1_norm_checked, unflatten,
};
use crate::codec::{host_decoders, host_encoder};
use crate::host::{self, CHUNK, Sink, abs_bits, is_host_device};
use crate::payload::{Reader, Writer};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload, PayloadRef, simd};

/// Header flag of the sparse format: positions as a bitmap (otherwise u32 indices).
pub(crate) const BITMAP: u8 = 1;

/// A sparse vector of length `len`: sorted distinct positions and their values.
#[derive(Default)]
pub(crate) struct SparseVec {
    pub(crate) positions: Vec<u32>,
    pub(crate) values: Vec<f32>,
}

/// Body bytes of the sparse format for `k` entries out of `len`:
/// `4 + min(⌈len/8⌉, 4k) + 4k` (ties choose indices).
pub const fn sparse_body_bytes(len: usize, k: usize) -> usize {
    let bitmap = len.div_ceil(8);
    let indices = 4 * k;
    4 + if bitmap < indices { bitmap } else { indices } + 4 * k
}

/// Positions of the set bits of a little-endian bitmap (bits at or past `len` are ignored),
/// eight bytes at a time.
fn bitmap_positions(map: &[u8], len: usize) -> Vec<u32> {
    let mut positions = Vec::new();
    for (w, word) in map.chunks(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes[..word.len()].copy_from_slice(word);
        let mut bits = u64::from_le_bytes(bytes);
        while bits != 0 {
            let i = 64 * w + bits.trailing_zeros() as usize;
            if i >= len {
                break;
            }
            positions.push(i as u32);
            bits &= bits - 1;
        }
    }
    positions
}

impl SparseVec {
    /// From a device mask (1.0 = keep) over `len` atoms: the mask leaves the device as a bitmap,
    /// then `value(positions)` gathers the `k` values to send.
    pub(crate) fn from_mask(
        mask: Tensor<1>,
        len: usize,
        value: impl FnOnce(Tensor<1, Int>) -> Tensor<1>,
    ) -> Self {
        let device = mask.device();
        let map = pack_fields(mask, 1);
        let positions = bitmap_positions(&map, len);
        let values = if positions.is_empty() {
            Vec::new()
        } else {
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(
                    positions.iter().map(|&p| p as i32).collect(),
                    [positions.len()],
                ),
                &device,
            );
            value(idx)
                .into_data()
                .try_into_vec()
                .expect("sparse values")
        };
        Self { positions, values }
    }

    /// Writes `count (u32) · positions · values`; the flag chooses bitmap or indices.
    pub(crate) fn flags(&self, len: usize) -> u8 {
        if len.div_ceil(8) < 4 * self.positions.len() {
            BITMAP
        } else {
            0
        }
    }

    pub(crate) fn write(&self, w: &mut Writer, len: usize) {
        w.u32(self.positions.len() as u32);
        if self.flags(len) == BITMAP {
            let mut map = vec![0u8; len.div_ceil(8)];
            for &p in &self.positions {
                map[p as usize / 8] |= 1 << (p % 8);
            }
            w.bytes(&map);
        } else {
            w.u32s(&self.positions);
        }
        w.f32s(&self.values);
    }

    /// Reads and validates the format: count ≤ len, positions distinct, increasing and < len,
    /// values finite.
    pub(crate) fn read(r: &mut Reader, flags: u8, len: usize) -> Result<Self, DecodeError> {
        let k = r.u32("sparse count")? as usize;
        if k > len {
            return Err(DecodeError::FieldOutOfRange {
                field: "sparse count",
                value: k as u64,
                reason: "exceeds the number of atoms",
            });
        }
        check_count("sparse values", k, r.remaining(), 32)?;
        let positions = if flags & BITMAP != 0 {
            let map = r.take("sparse bitmap", len.div_ceil(8))?;
            if !len.is_multiple_of(8) && map.last().is_some_and(|b| b >> (len % 8) != 0) {
                return Err(DecodeError::FieldOutOfRange {
                    field: "sparse bitmap",
                    value: len as u64,
                    reason: "bits set beyond the vector's length",
                });
            }
            let positions = bitmap_positions(map, len);
            if positions.len() != k {
                return Err(DecodeError::FieldOutOfRange {
                    field: "sparse bitmap",
                    value: positions.len() as u64,
                    reason: "its number of set bits differs from the count",
                });
            }
            positions
        } else {
            let positions = r.u32s("sparse indices", k)?;
            if positions.windows(2).any(|w| w[0] >= w[1])
                || positions.last().is_some_and(|&p| p as usize >= len)
            {
                return Err(DecodeError::FieldOutOfRange {
                    field: "sparse indices",
                    value: k as u64,
                    reason: "must be strictly increasing and below the vector's length",
                });
            }
            positions
        };
        let values = r.f32s("sparse values", k)?;
        Ok(Self { positions, values })
    }

    /// Writes the dense vector into `out` through `sink` (untouched entries: zero, or kept).
    pub(crate) fn write_into<S: Sink>(&self, out: &mut [S::Slot], sink: S) {
        sink.clear(out);
        for (&p, &v) in self.positions.iter().zip(&self.values) {
            sink.put(&mut out[p as usize], v);
        }
    }

    /// The dense vector of length `len` on `device`.
    pub(crate) fn to_dense(&self, len: usize, device: &Device) -> Tensor<1> {
        let k = self.positions.len();
        let zeros = Tensor::<1>::zeros([len], device);
        if k == 0 {
            return zeros;
        }
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(self.positions.iter().map(|&p| p as i64).collect(), [k]),
            device,
        );
        let values = Tensor::<1>::from_data(TensorData::new(self.values.clone(), [k]), device);
        zeros.select_assign(0, idx, values, IndexingUpdateOp::Add)
    }
}

/// How many entries a sparsifier keeps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Count {
    /// Exactly `k` entries (at most `n`).
    Entries(usize),
    /// `⌈f·n⌉` entries, `0 < f ≤ 1`.
    Fraction(f64),
}

impl Count {
    fn validate(self, codec: &'static str) -> Result<Self, CompressError> {
        match self {
            Count::Entries(0) => Err(invalid(codec, "k", 0, "must be ≥ 1")),
            Count::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                Err(invalid(codec, "fraction", f, "must be in (0, 1]"))
            }
            c => Ok(c),
        }
    }

    /// The number of entries kept out of `n`.
    pub fn of(self, n: usize) -> usize {
        match self {
            Count::Entries(k) => k.min(n),
            Count::Fraction(f) => ((f * n as f64).ceil() as usize).min(n),
        }
    }
}

/// Top-k: keeps the `k` entries of largest magnitude. Biased (use it with
/// [`ErrorFeedback`](crate::ErrorFeedback)).
///
/// Wire: header (5 + 4·rank), then the sparse format: `k` (u32), the positions as a bitmap
/// (`⌈n/8⌉` bytes, flags = 1) or as increasing u32 indices (`4k` bytes), whichever is smaller,
/// then the `k` values (f32) in position order.
#[derive(Debug, Clone, Copy)]
pub struct TopK {
    count: Count,
}

impl TopK {
    /// Keeps `count` entries.
    pub fn new(count: Count) -> Result<Self, CompressError> {
        Ok(Self {
            count: count.validate("TopK")?,
        })
    }
}

impl Compressor for TopK {
    fn codec(&self) -> CodecId {
        CodecId::TopK
    }

    fn is_unbiased(&self) -> bool {
        false
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        // burn 0.22's `topk` sorts the whole tensor on some backends (≈ 0.5 s for 4 M entries
        // on Flex), so the selection always runs on the host: one read-back, then a radix
        // selection in a few parallel passes.
        compress_on_host(self, grad, rng)
    }

    host_encoder!(self, values, shape, rng => self.encode_host(values, shape));

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        decode_sparse(self, payload, CodecId::TopK, device)
    }

    host_decoders!(payload, out, sink => decode_sparse_into(payload, CodecId::TopK, out, sink));
}

impl TopK {
    /// The host kernel: [`top_k`], then the sparse format.
    fn encode_host(&self, values: &[f32], shape: &[usize]) -> Result<Payload, CompressError> {
        let n = values.len();
        let sparse = top_k(values, self.count.of(n))?;
        let mut w = Writer::new(
            CodecId::TopK,
            sparse.flags(n),
            shape,
            sparse_body_bytes(n, sparse.positions.len()),
        )?;
        sparse.write(&mut w, n);
        Ok(w.finish())
    }
}

/// Most candidates the selection sorts; beyond, it refines the threshold by another radix pass.
const CANDIDATES: usize = 1 << 16;

/// The `k` entries of largest magnitude (ties: lower index first), in position order, or
/// [`CompressError::NonFinite`]. One pass when a sample predicts the threshold
/// ([`sampled_top_k`]); otherwise a radix selection on the bits of `|v|`: a parallel histogram of
/// the top 11 bits finds the bin holding the `k`-th largest (refined by 10 more bits at a time
/// while the bin holds many entries), then one parallel pass gathers the entries above the bin
/// and the bin's candidates, of which the largest are kept; the first histogram doubles as the
/// finiteness check. No allocation proportional to `n`.
pub(crate) fn top_k(values: &[f32], k: usize) -> Result<SparseVec, CompressError> {
    let n = values.len();
    if k == 0 || k >= n {
        host::max_abs(values)?;
    }
    if let Some(sparse) = sampled_top_k(values, k)? {
        return Ok(sparse);
    }
    let mut shift = 20u32; // bits of |v| below the current digit
    let mut prefix = 0u32; // the digits chosen so far (bits >> (shift + digit width))
    let mut digit = 11u32;
    let mut above = 0usize; // entries strictly above the threshold region
    let mut bin_count = n;
    if k > 0 && k < n {
        loop {
            let bins = 1usize << digit;
            // The digit's position by value: captured by reference, it was reloaded after
            // every increment (the histogram might have aliased it).
            let (low, high) = (shift, shift + digit);
            let hist = values
                .par_chunks(CHUNK)
                .fold(
                    || vec![0usize; bins],
                    move |mut h, chunk| {
                        for &v in chunk {
                            let b = abs_bits(v);
                            if b >> high == prefix {
                                h[((b >> low) as usize) & (bins - 1)] += 1;
                            }
                        }
                        h
                    },
                )
                .reduce(
                    || vec![0usize; bins],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                        a
                    },
                );
            // The first round sees every entry: NaN and ±Inf land in the bins from 0x7F8 on.
            if digit == 11 && hist[0x7F8..].iter().any(|&c| c > 0) {
                return Err(host::non_finite(values));
            }
            let mut bin = bins - 1;
            while above + hist[bin] < k {
                above += hist[bin];
                bin -= 1;
            }
            prefix = prefix << digit | bin as u32;
            bin_count = hist[bin];
            if bin_count <= CANDIDATES || shift == 0 {
                break;
            }
            digit = shift.min(10);
            shift -= digit;
        }
    }
    let need = k.saturating_sub(above).min(bin_count);
    let region = move |v: f32| (abs_bits(v) >> shift).cmp(&prefix);
    // Entries above the threshold region, and of the region the largest `need`: the few
    // candidates sorted, or (when the region is one bit pattern) the first `need` ties.
    let positions: Vec<u32> = if k == 0 {
        Vec::new()
    } else if k >= n {
        (0..n as u32).collect()
    } else if need == 0 {
        split_positions(values, region).0
    } else if bin_count > CANDIDATES {
        // The region is one bit pattern (every radix digit resolved): ties, the first `need`.
        let ties: Vec<u32> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| region(**v).is_eq())
            .map(|(i, _)| i as u32)
            .take(need)
            .collect();
        // Only the entries above the region: its own (many) entries are not collected.
        let (above, _) = split_positions(values, |v| match region(v) {
            Ordering::Greater => Ordering::Greater,
            _ => Ordering::Less,
        });
        merge_sorted(&above, &ties)
    } else {
        // One pass gathers the entries above the region and the region's few candidates.
        let (kept, candidates) = split_positions(values, region);
        let candidates = candidates
            .into_iter()
            .map(|p| Candidate::new(p, values[p as usize]))
            .collect();
        merge_sorted(&kept, &largest(candidates, need).positions)
    };
    let values = positions.iter().map(|&p| values[p as usize]).collect();
    Ok(SparseVec { positions, values })
}

/// Entries per sample of [`sampled_top_k`]: every `SAMPLE_STRIDE`-th entry.
const SAMPLE_STRIDE: usize = 64;

/// [`top_k`] in one pass over `values` when a sample predicts its threshold: the `|v|` bits of
/// every [`SAMPLE_STRIDE`]-th entry give a bound `L` a little below the `k`-th largest (the
/// sample's `k/64 + 4·√(k/64) + 16`-th largest), one parallel pass gathers the positions of the
/// entries with bits `≥ L`, and if they are at least `k` (so they hold the `k` largest) the `k`
/// largest of them (ties: lower index first) are the answer; non-finite entries are among them
/// (their bits are the largest), so they are found in the same pass. `None` when the sample is
/// too small, the bound undershoots, or more than `2k + CANDIDATES` entries pass it (the
/// gather keeps no more): the radix selection then runs, so the result never depends on the
/// sample, and no allocation is proportional to `n`.
fn sampled_top_k(values: &[f32], k: usize) -> Result<Option<SparseVec>, CompressError> {
    let n = values.len();
    let samples = n / SAMPLE_STRIDE;
    if k == 0 || k >= n || samples < 1024 {
        return Ok(None);
    }
    let cap = 2 * k + CANDIDATES;
    let mut sample: Vec<u32> = (0..samples)
        .map(|i| abs_bits(values[i * SAMPLE_STRIDE]))
        .collect();
    let expected = k as f64 / SAMPLE_STRIDE as f64;
    let rank = (expected + 4.0 * expected.sqrt() + 16.0) as usize;
    if rank >= samples {
        return Ok(None);
    }
    let (_, &mut bound, _) = sample.select_nth_unstable_by(rank, |a, b| b.cmp(a));
    let taken = std::sync::atomic::AtomicUsize::new(0);
    let parts: Vec<Option<Vec<Candidate>>> = values
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let found = simd::wide!({
                let mut found = Vec::new();
                host::for_each_hit(
                    chunk,
                    #[inline(always)]
                    |v| abs_bits(v) >= bound,
                    #[inline(always)]
                    |i, v| found.push(Candidate::new((c * CHUNK + i) as u32, v)),
                );
                found
            });
            let total = taken.fetch_add(found.len(), std::sync::atomic::Ordering::Relaxed);
            (total + found.len() <= cap).then_some(found)
        })
        .collect();
    let Some(parts) = parts.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    let candidates: Vec<Candidate> = parts.concat();
    if candidates.len() < k {
        return Ok(None);
    }
    if candidates
        .iter()
        .any(|c| abs_bits(c.value()) >= 0x7F80_0000)
    {
        return Err(host::non_finite(values));
    }
    Ok(Some(largest(candidates, k)))
}

/// An entry that may be among the largest, packed in one word that orders by `|v|`, ties to
/// the lower position: `|v|`'s 31 bits, the complemented position, the sign. The selection
/// compares words without reaching back into the gradient.
#[derive(Clone, Copy)]
struct Candidate(u64);

impl Candidate {
    #[inline(always)]
    fn new(position: u32, value: f32) -> Self {
        Self(
            (abs_bits(value) as u64) << 33
                | (!position as u64) << 1
                | (value.to_bits() >> 31) as u64,
        )
    }

    fn position(&self) -> u32 {
        !((self.0 >> 1) as u32)
    }

    fn value(&self) -> f32 {
        f32::from_bits(((self.0 >> 33) as u32) | ((self.0 as u32) << 31))
    }
}

/// The `count ≥ 1` of `candidates` of largest `|v|` (ties: lower position), by selection rather
/// than a full sort, in position order.
fn largest(mut candidates: Vec<Candidate>, count: usize) -> SparseVec {
    candidates.select_nth_unstable_by(count - 1, |a, b| b.0.cmp(&a.0));
    candidates.truncate(count);
    candidates.par_sort_unstable_by_key(Candidate::position);
    let (positions, values) = candidates.iter().map(|c| (c.position(), c.value())).unzip();
    SparseVec { positions, values }
}

/// The positions of the entries `classify` puts `Greater` and those it puts `Equal` (the rest
/// are skipped), each increasing; chunks in parallel.
fn split_positions(
    values: &[f32],
    classify: impl Fn(f32) -> Ordering + Sync,
) -> (Vec<u32>, Vec<u32>) {
    let parts: Vec<(Vec<u32>, Vec<u32>)> = values
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            simd::wide!({
                let (mut greater, mut equal) = (Vec::new(), Vec::new());
                host::for_each_hit(
                    chunk,
                    #[inline(always)]
                    |v| classify(v).is_ge(),
                    #[inline(always)]
                    |i, v| {
                        let position = (c * CHUNK + i) as u32;
                        match classify(v) {
                            Ordering::Greater => greater.push(position),
                            _ => equal.push(position),
                        }
                    },
                );
                (greater, equal)
            })
        })
        .collect();
    let (mut greater, mut equal) = (Vec::new(), Vec::new());
    for (g, e) in parts {
        greater.extend(g);
        equal.extend(e);
    }
    (greater, equal)
}

/// The union of two increasing, disjoint position lists, increasing.
fn merge_sorted(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] < b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Decodes, on the host, a payload in the sparse format whose atoms are the tensor's entries.
pub(crate) fn decode_sparse_into<S: Sink>(
    payload: &PayloadRef<'_>,
    codec: CodecId,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (header, mut r) = payload.open_into(codec, out)?;
    let sparse = SparseVec::read(&mut r, header.flags, out.len())?;
    r.finish()?;
    sparse.write_into(out, sink);
    Ok(())
}

/// Decodes a payload in the sparse format whose atoms are the tensor's entries: through the
/// host decoder on a host device, by a scatter on the device otherwise.
pub(crate) fn decode_sparse<C: Compressor, const D: usize>(
    codec_impl: &C,
    payload: &Payload,
    codec: CodecId,
    device: &Device,
) -> Result<Tensor<D>, DecodeError> {
    if is_host_device(device) {
        return decompress_on_host(codec_impl, payload, device);
    }
    let (header, shape, mut r) = payload.open::<D>(codec)?;
    let n = header.numel();
    let sparse = SparseVec::read(&mut r, header.flags, n)?;
    r.finish()?;
    Ok(unflatten(sparse.to_dense(n, device), shape))
}

/// `k` distinct indices of `0..n`, increasing, from `seed` (Floyd's algorithm on ChaCha8): the
/// positions [`RandomK`] keeps. Encoder and decoder call it with the payload's seed.
pub fn random_positions(seed: u64, n: usize, k: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen: HashSet<usize, BuildHasherDefault<MixHasher>> =
        HashSet::with_capacity_and_hasher(k, Default::default());
    for j in n - k..n {
        let t = rng.random_range(0..=j);
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    let mut positions: Vec<u32> = chosen.into_iter().map(|i| i as u32).collect();
    positions.sort_unstable();
    positions
}

/// A multiplicative hasher for positions (they are uniform already; SipHash's DoS resistance is
/// not needed for a set the encoder fills itself).
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0 ^ i)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
}

/// Random-k: keeps `k` entries chosen uniformly without replacement, scaled by `n/k`: unbiased,
/// with `E‖ĝ − g‖² = (n/k − 1)·‖g‖²`.
///
/// The positions are not sent: they are regenerated from a 64-bit seed drawn from the caller's
/// RNG ([`random_positions`]).
///
/// Wire: header (5 + 4·rank), `k` (u32), the seed (u64), then the `k` scaled values (f32) in
/// position order: `12 + 4k` body bytes.
#[derive(Debug, Clone, Copy)]
pub struct RandomK {
    count: Count,
}

impl RandomK {
    /// Keeps `count` entries.
    pub fn new(count: Count) -> Result<Self, CompressError> {
        Ok(Self {
            count: count.validate("RandomK")?,
        })
    }
}

impl Compressor for RandomK {
    fn codec(&self) -> CodecId {
        CodecId::RandomK
    }

    fn is_unbiased(&self) -> bool {
        true
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
        let k = self.count.of(n);
        let scale = n as f64 / k.max(1) as f64;
        l1_norm_checked(&grad)?;
        let seed = rng.next_u64();
        let positions = random_positions(seed, n, k);
        let values: Vec<f32> = if k == 0 {
            Vec::new()
        } else {
            let device = grad.device();
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(positions.iter().map(|&p| p as i64).collect(), [k]),
                &device,
            );
            flatten(grad)
                .select(0, idx)
                .mul_scalar(scale)
                .try_into_vec_as()
                .expect("values")
        };
        let mut w = Writer::new(CodecId::RandomK, 0, &shape, 12 + 4 * k)?;
        w.u32(k as u32);
        w.u64(seed);
        w.f32s(&values);
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
        let (header, shape, r) = payload.open::<D>(CodecId::RandomK)?;
        let sparse = read_random_k(r, header.numel())?;
        Ok(unflatten(sparse.to_dense(header.numel(), device), shape))
    }

    host_encoder!(self, values, shape, rng => self.encode_host(values, shape, rng));

    host_decoders!(payload, out, sink => decode_random_k(payload, out, sink));
}

impl RandomK {
    /// The host kernel: a finiteness pass, then a gather of the `k` positions.
    fn encode_host(
        &self,
        values: &[f32],
        shape: &[usize],
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let n = values.len();
        let k = self.count.of(n);
        host::max_abs(values)?;
        let seed = rng.next_u64();
        let positions = random_positions(seed, n, k);
        let mut w = Writer::new(CodecId::RandomK, 0, shape, 12 + 4 * k)?;
        w.u32(k as u32);
        w.u64(seed);
        let scale = (n as f64 / k.max(1) as f64) as f32;
        for (dst, &p) in w.zeroed(4 * k).chunks_exact_mut(4).zip(&positions) {
            dst.copy_from_slice(&(values[p as usize] * scale).to_le_bytes());
        }
        Ok(w.finish())
    }
}

/// Reads a random-k body over `n` entries: the count, the seed, the values.
fn read_random_k(mut r: Reader<'_>, n: usize) -> Result<SparseVec, DecodeError> {
    let k = r.u32("k")? as usize;
    if k > n {
        return Err(DecodeError::FieldOutOfRange {
            field: "k",
            value: k as u64,
            reason: "exceeds the number of entries",
        });
    }
    let seed = r.u64("seed")?;
    let values = r.f32s("values", k)?;
    r.finish()?;
    Ok(SparseVec {
        positions: random_positions(seed, n, k),
        values,
    })
}

fn decode_random_k<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (_, r) = payload.open_into(CodecId::RandomK, out)?;
    read_random_k(r, out.len())?.write_into(out, sink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: the `k` largest `|v|`, ties by lower index, in position order.
    fn reference(values: &[f32], k: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..values.len() as u32).collect();
        order.sort_by(|&a, &b| {
            values[b as usize]
                .abs()
                .total_cmp(&values[a as usize].abs())
                .then(a.cmp(&b))
        });
        let mut kept = order[..k].to_vec();
        kept.sort_unstable();
        kept
    }

    #[test]
    fn radix_selection_matches_the_definition_with_ties_and_narrow_bins() {
        let n = 200_000;
        let cases: Vec<(&str, Vec<f32>)> = vec![
            // every magnitude equal: all candidates tie, the first k win
            (
                "ties",
                (0..n)
                    .map(|i| if i % 3 == 0 { -1.5 } else { 1.5 })
                    .collect(),
            ),
            // mostly zeros: the threshold region is the zeros
            (
                "zeros",
                (0..n)
                    .map(|i| {
                        if i % 997 == 0 {
                            (i % 13) as f32 - 6.0
                        } else {
                            0.0
                        }
                    })
                    .collect(),
            ),
            // a narrow band of magnitudes: the first histogram bin holds most entries
            (
                "narrow",
                (0..n).map(|i| 1.0 + (i % 1000) as f32 * 1e-6).collect(),
            ),
            (
                "spread",
                (0..n).map(|i| ((i as f32) * 0.618).sin() * 1e3).collect(),
            ),
            // the large entries sit between the sampled ones: the sample's bound undershoots
            (
                "hidden",
                (0..n)
                    .map(|i| if i % 64 == 1 { 100.0 + i as f32 } else { 1.0 })
                    .collect(),
            ),
        ];
        for (name, values) in cases {
            for k in [1, 77, 1000, 150_000, n - 1, n] {
                let got = top_k(&values, k).unwrap();
                assert_eq!(got.positions, reference(&values, k), "{name}, k = {k}");
                assert!(
                    got.positions
                        .iter()
                        .zip(&got.values)
                        .all(|(&p, &v)| values[p as usize] == v)
                );
            }
        }
    }

    /// The one-pass sampled selection answers when its bound holds and hands over to the radix
    /// selection otherwise; a non-finite entry is an error on either path.
    #[test]
    fn the_sampled_selection_answers_or_hands_over() {
        let n = 200_000;
        let spread: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.618).sin() * 1e3).collect();
        let got = sampled_top_k(&spread, 1000)
            .unwrap()
            .expect("the sample predicts the bound");
        assert_eq!(got.positions, top_k(&spread, 1000).unwrap().positions);
        // All equal: every entry passes the bound, more than it may keep.
        assert!(sampled_top_k(&vec![1.5; n], 1000).unwrap().is_none());
        // Too few entries to sample.
        assert!(sampled_top_k(&spread[..1000], 10).unwrap().is_none());
        // The bound undershoots: only the 3 125 sampled entries are large, so fewer than k pass.
        let spiky: Vec<f32> = (0..n)
            .map(|i| if i % 64 == 0 { 100.0 } else { 1.0 })
            .collect();
        assert!(sampled_top_k(&spiky, 5000).unwrap().is_none());
        assert_eq!(
            top_k(&spiky, 5000).unwrap().positions,
            reference(&spiky, 5000)
        );
        let mut poisoned = spread.clone();
        poisoned[12_345] = f32::NAN;
        assert!(matches!(
            sampled_top_k(&poisoned, 1000),
            Err(CompressError::NonFinite { bad: 1, .. })
        ));
    }
}

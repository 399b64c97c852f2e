//! Sparse gradients: the shared wire format of a sparse vector, and the [`TopK`] and [`RandomK`]
//! codecs.

use std::collections::HashSet;

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{Rng, RngExt, SeedableRng};

use crate::bits::pack_fields;
use crate::codec::{check_count, flatten, invalid, l1_norm_checked, unflatten};
use crate::payload::{Reader, Writer};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Header flag of the sparse format: positions as a bitmap (otherwise u32 indices).
pub(crate) const BITMAP: u8 = 1;

/// A sparse vector of length `len`: sorted distinct positions and their values.
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

/// Positions of the set bits of a little-endian bitmap.
fn bitmap_positions(map: &[u8], len: usize) -> Vec<u32> {
    (0..len)
        .filter(|&i| (map[i / 8] >> (i % 8)) & 1 == 1)
        .map(|i| i as u32)
        .collect()
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
#[derive(Debug, Clone, Copy, PartialEq)]
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
        _rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let shape = grad.dims();
        let n = grad.dims().iter().product::<usize>();
        l1_norm_checked(&grad)?;
        let k = self.count.of(n);
        // burn 0.22's `topk` sorts the whole tensor on some backends (≈ 0.5 s for 4 M entries
        // on Flex), so the selection runs on the host: one read-back and an O(n) selection.
        let values: Vec<f32> = flatten(grad)
            .into_data()
            .try_into_vec()
            .expect("gradient values");
        let mut order: Vec<u32> = (0..n as u32).collect();
        if k > 0 && k < n {
            order.select_nth_unstable_by(k - 1, |&a, &b| {
                values[b as usize]
                    .abs()
                    .total_cmp(&values[a as usize].abs())
            });
        }
        let mut positions: Vec<u32> = order[..k].to_vec();
        positions.sort_unstable();
        let sparse = SparseVec {
            values: positions.iter().map(|&p| values[p as usize]).collect(),
            positions,
        };
        let mut w = Writer::new(
            CodecId::TopK,
            sparse.flags(n),
            &shape,
            sparse_body_bytes(n, k),
        )?;
        sparse.write(&mut w, n);
        Ok(w.finish())
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        decode_sparse(payload, CodecId::TopK, device)
    }
}

/// Decodes a payload in the sparse format whose atoms are the tensor's entries.
pub(crate) fn decode_sparse<const D: usize>(
    payload: &Payload,
    codec: CodecId,
    device: &Device,
) -> Result<Tensor<D>, DecodeError> {
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
    let mut chosen = HashSet::with_capacity(k);
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
        let shape = grad.dims();
        let n = grad.dims().iter().product::<usize>();
        l1_norm_checked(&grad)?;
        let k = self.count.of(n);
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
                .mul_scalar(n as f64 / k as f64)
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
        let (header, shape, mut r) = payload.open::<D>(CodecId::RandomK)?;
        let n = header.numel();
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
        let sparse = SparseVec {
            positions: random_positions(seed, n, k),
            values,
        };
        Ok(unflatten(sparse.to_dense(n, device), shape))
    }
}

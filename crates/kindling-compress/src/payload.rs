//! The self-describing byte buffer every codec produces, and bounds-checked readers and writers
//! for its fields.
//!
//! # Header (5 + 4·rank bytes)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | codec id ([`CodecId`]) |
//! | 1 | 1 | format version of that codec (1 for every codec in this release) |
//! | 2 | 1 | codec flags (for example QSGD's level coding) |
//! | 3 | 1 | element type of the original gradient (0 = f32) |
//! | 4 | 1 | rank `r` (1 ..= 8) |
//! | 5 | 4·r | dimensions, `u32` little-endian |
//!
//! The codec's body follows. All multi-byte numbers are little-endian; floats are IEEE-754.
//! [`Payload::wire_bytes`] is the whole buffer's length, header included.

use crate::{CodecId, CompressError, DecodeError};

/// Current format version of every codec.
pub const FORMAT_VERSION: u8 = 1;
/// Largest rank the header describes.
pub const MAX_RANK: usize = 8;
/// Element-type byte for f32 gradients.
pub const DTYPE_F32: u8 = 0;
/// Largest number of entries any payload may describe (2²⁸, a 1 GiB f32 tensor).
pub const MAX_ENTRIES: usize = 1 << 28;

/// Entries per byte of payload that [`Payload::from_bytes`] accepts without a limit from the
/// caller: a decoder then allocates at most `4 × 64 = 256` bytes of output per byte it was
/// given.
///
/// Dense formats need far fewer bytes per entry (1 bit for signs, 1.6 for TernGrad), but sparse
/// and low-rank formats (top-k, random-k, ATOMO) decode to dense tensors whose size the body
/// cannot bound: 45 bytes could otherwise claim a 3 GB tensor. A receiver that expects a large,
/// sparsely coded tensor says so with [`Payload::from_bytes_with_limit`] (the number of entries
/// it expects), as `kindling-dist` does for every parameter.
pub const ENTRIES_PER_BYTE: usize = 64;

/// The parsed header of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Which codec wrote the payload.
    pub codec: CodecId,
    /// Its format version.
    pub version: u8,
    /// Codec-specific flags.
    pub flags: u8,
    /// Element type of the original gradient ([`DTYPE_F32`]).
    pub dtype: u8,
    /// Shape of the original gradient.
    pub shape: Vec<usize>,
}

impl Header {
    /// Size in bytes of a header for a tensor of rank `rank`: `5 + 4·rank`.
    pub const fn len_for_rank(rank: usize) -> usize {
        5 + 4 * rank
    }

    /// Number of entries of the gradient (product of the dimensions).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An encoded gradient: header and body in one byte buffer, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    header: Header,
    header_len: usize,
    bytes: Vec<u8>,
}

impl Payload {
    /// Parses and checks the header of `bytes` (the body is checked by the codec's decoder),
    /// accepting shapes of up to [`ENTRIES_PER_BYTE`] entries per byte of `bytes`, so that
    /// decoding allocates in proportion to what was received. For a larger sparse or low-rank
    /// payload, name the entries you expect with [`from_bytes_with_limit`](Self::from_bytes_with_limit).
    ///
    /// ```
    /// use kindling_compress::{DecodeError, Payload};
    ///
    /// // 21 bytes claiming a [1, 2³²−1] tensor: refused before anything is allocated.
    /// let mut bomb = vec![1, 1, 0, 0, 2];
    /// bomb.extend_from_slice(&1u32.to_le_bytes());
    /// bomb.extend_from_slice(&u32::MAX.to_le_bytes());
    /// bomb.extend_from_slice(&[0; 8]);
    /// assert!(matches!(Payload::from_bytes(bomb), Err(DecodeError::FieldOutOfRange { field: "shape", .. })));
    /// ```
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        let limit = bytes.len().saturating_mul(ENTRIES_PER_BYTE);
        Self::from_bytes_with_limit(bytes, limit)
    }

    /// As [`from_bytes`](Self::from_bytes), accepting shapes of up to `max_entries` entries
    /// (never more than [`MAX_ENTRIES`]; a zero dimension counts as 1 here, so it cannot hide a
    /// huge one) whatever the payload's length: for a receiver that knows the size of the tensor
    /// it expects.
    pub fn from_bytes_with_limit(bytes: Vec<u8>, max_entries: usize) -> Result<Self, DecodeError> {
        let (header, header_len) = parse_header(&bytes, max_entries)?;
        Ok(Self {
            header,
            header_len,
            bytes,
        })
    }

    /// Parses `bytes` for a receiver that knows the shape of the tensor it expects (a parameter
    /// of its own model): accepts exactly `shape`, whatever the payload's length.
    pub fn from_bytes_expecting(bytes: Vec<u8>, shape: &[usize]) -> Result<Self, DecodeError> {
        let payload = Self::from_bytes_with_limit(bytes, extent(shape))?;
        payload.check_shape(shape)?;
        Ok(payload)
    }

    /// Fails unless the payload describes a tensor of exactly `shape` (what a receiver that knows
    /// the parameter should check before decoding).
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), DecodeError> {
        if self.header.shape == shape {
            Ok(())
        } else {
            Err(DecodeError::ShapeMismatch {
                expected_rank: shape.len(),
                found: self.header.shape.clone(),
            })
        }
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// A borrowed view of this payload, for the `decode_into` / `decode_add` decoders.
    pub fn borrow(&self) -> PayloadRef<'_> {
        PayloadRef {
            header: self.header.clone(),
            header_len: self.header_len,
            bytes: &self.bytes,
        }
    }

    /// The codec's body (everything after the header).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }

    /// The whole buffer, as sent.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole buffer, as sent.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Exact number of bytes on the wire: header plus body.
    pub fn wire_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Checks the payload belongs to `codec` and describes a rank-`D` tensor; returns the
    /// header and a reader over the body.
    pub(crate) fn open<const D: usize>(
        &self,
        codec: CodecId,
    ) -> Result<(&Header, [usize; D], Reader<'_>), DecodeError> {
        if self.header.codec != codec {
            return Err(DecodeError::WrongCodec {
                expected: codec,
                found: self.header.codec,
            });
        }
        Ok((&self.header, self.dims()?, Reader::new(self.body())))
    }

    /// The shape as a rank-`D` array, or the mismatch.
    pub(crate) fn dims<const D: usize>(&self) -> Result<[usize; D], DecodeError> {
        self.header
            .shape
            .clone()
            .try_into()
            .map_err(|found| DecodeError::ShapeMismatch {
                expected_rank: D,
                found,
            })
    }
}

/// Parses and checks a header (see [`Payload::from_bytes_with_limit`]); returns it and its length.
fn parse_header(bytes: &[u8], max_entries: usize) -> Result<(Header, usize), DecodeError> {
    let mut r = Reader::new(bytes);
    let id = r.u8("codec id")?;
    let codec = CodecId::from_u8(id).ok_or(DecodeError::UnknownCodec(id))?;
    let version = r.u8("version")?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            codec,
            version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = r.u8("flags")?;
    let dtype = r.u8("dtype")?;
    if dtype != DTYPE_F32 {
        return Err(DecodeError::FieldOutOfRange {
            field: "dtype",
            value: dtype as u64,
            reason: "only f32 (0) gradients are encoded by this release",
        });
    }
    let rank = r.u8("rank")? as usize;
    if rank == 0 || rank > MAX_RANK {
        return Err(DecodeError::FieldOutOfRange {
            field: "rank",
            value: rank as u64,
            reason: "must be in 1..=8",
        });
    }
    let mut shape = Vec::with_capacity(rank);
    for _ in 0..rank {
        shape.push(r.u32("dimension")? as usize);
    }
    let extent = extent(&shape);
    if extent > max_entries.min(MAX_ENTRIES) {
        return Err(DecodeError::FieldOutOfRange {
            field: "shape",
            value: extent as u64,
            reason: "more entries than the receiver's limit",
        });
    }
    let header = Header {
        codec,
        version,
        flags,
        dtype,
        shape,
    };
    Ok((header, r.position()))
}

/// A payload borrowed from a byte buffer (a receive buffer, a memory map): the header is parsed
/// and checked with the same rules as [`Payload`], the body is not copied. Decode it with
/// [`Compressor::decode_into`](crate::Compressor::decode_into) or
/// [`decode_add`](crate::Compressor::decode_add) straight into a buffer of your own.
///
/// ```
/// use kindling_compress::{Compressor, PayloadRef, Sign};
/// use kindling_compress::rand::{SeedableRng, rngs::ChaCha8Rng};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let grad = Tensor::<1>::from_floats([0.5, -2.0, 0.0], &device);
/// let bytes = Sign.compress(grad, &mut ChaCha8Rng::seed_from_u64(0)).unwrap().into_bytes();
/// let mut mean = vec![0.0f32; 3];
/// for received in [&bytes, &bytes] {
///     let payload = PayloadRef::parse_expecting(received, &[3]).unwrap();
///     Sign.decode_add(&payload, 0.5, &mut mean).unwrap(); // mean of two workers
/// }
/// assert_eq!(mean, [1.0, -1.0, 1.0]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadRef<'a> {
    header: Header,
    header_len: usize,
    bytes: &'a [u8],
}

impl<'a> PayloadRef<'a> {
    /// Parses the header of `bytes` under [`Payload::from_bytes`]'s default limit
    /// ([`ENTRIES_PER_BYTE`] entries per byte).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Self::parse_with_limit(bytes, bytes.len().saturating_mul(ENTRIES_PER_BYTE))
    }

    /// As [`Payload::from_bytes_with_limit`]: shapes of up to `max_entries` entries.
    pub fn parse_with_limit(bytes: &'a [u8], max_entries: usize) -> Result<Self, DecodeError> {
        let (header, header_len) = parse_header(bytes, max_entries)?;
        Ok(Self {
            header,
            header_len,
            bytes,
        })
    }

    /// As [`Payload::from_bytes_expecting`]: exactly `shape`, whatever the payload's length.
    pub fn parse_expecting(bytes: &'a [u8], shape: &[usize]) -> Result<Self, DecodeError> {
        let payload = Self::parse_with_limit(bytes, extent(shape))?;
        if payload.header.shape != shape {
            return Err(DecodeError::ShapeMismatch {
                expected_rank: shape.len(),
                found: payload.header.shape.clone(),
            });
        }
        Ok(payload)
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The codec's body (everything after the header).
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    /// The whole buffer.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Checks the payload belongs to `codec` and that `out` holds one slot per entry; returns
    /// the header and a reader over the body.
    pub(crate) fn open_into<T>(
        &self,
        codec: CodecId,
        out: &[T],
    ) -> Result<(&Header, Reader<'a>), DecodeError> {
        if self.header.codec != codec {
            return Err(DecodeError::WrongCodec {
                expected: codec,
                found: self.header.codec,
            });
        }
        crate::host::check_output(out, self.header.numel())?;
        Ok((&self.header, Reader::new(self.body())))
    }
}

/// Builds a payload: header first, then body fields.
pub(crate) struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    /// Starts a payload for a gradient of `shape`, reserving `body_hint` body bytes.
    pub(crate) fn new(
        codec: CodecId,
        flags: u8,
        shape: &[usize],
        body_hint: usize,
    ) -> Result<Self, CompressError> {
        if shape.is_empty() || shape.len() > MAX_RANK {
            return Err(CompressError::Shape {
                shape: shape.to_vec(),
                reason: "the rank must be in 1..=8",
            });
        }
        if shape.iter().any(|&d| d > u32::MAX as usize) {
            return Err(CompressError::Shape {
                shape: shape.to_vec(),
                reason: "a dimension exceeds u32::MAX",
            });
        }
        if shape.iter().product::<usize>() > MAX_ENTRIES {
            return Err(CompressError::Shape {
                shape: shape.to_vec(),
                reason: "more entries than MAX_ENTRIES (2^28)",
            });
        }
        let mut bytes = Vec::with_capacity(Header::len_for_rank(shape.len()) + body_hint);
        bytes.extend_from_slice(&[
            codec as u8,
            FORMAT_VERSION,
            flags,
            DTYPE_F32,
            shape.len() as u8,
        ]);
        for &d in shape {
            bytes.extend_from_slice(&(d as u32).to_le_bytes());
        }
        Ok(Self { bytes })
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn f32(&mut self, v: f32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn f32s(&mut self, vs: &[f32]) {
        self.bytes.reserve(4 * vs.len());
        for v in vs {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub(crate) fn u32s(&mut self, vs: &[u32]) {
        self.bytes.reserve(4 * vs.len());
        for v in vs {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub(crate) fn bytes(&mut self, vs: &[u8]) {
        self.bytes.extend_from_slice(vs);
    }

    /// Sets the header's flags byte (for a coding chosen after the body was written).
    pub(crate) fn set_flags(&mut self, flags: u8) {
        self.bytes[2] = flags;
    }

    /// Bytes written so far, header included.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Drops everything after the first `len` bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.bytes.truncate(len);
    }

    /// The bytes from `start` on.
    pub(crate) fn tail(&self, start: usize) -> &[u8] {
        &self.bytes[start..]
    }

    /// Appends `len` zero bytes and returns them, for a kernel to write in place.
    pub(crate) fn zeroed(&mut self, len: usize) -> &mut [u8] {
        let start = self.bytes.len();
        self.bytes.resize(start + len, 0);
        &mut self.bytes[start..]
    }

    pub(crate) fn finish(self) -> Payload {
        Payload::from_bytes_with_limit(self.bytes, MAX_ENTRIES)
            .expect("a payload this crate wrote parses")
    }
}

/// The product of the nonzero dimensions (saturating): it bounds every size a decoder derives
/// from a shape (a matrix view's rows or columns too), so a zero dimension cannot hide an
/// overflowing or huge one. Limits on entries are checked against it.
fn extent(shape: &[usize]) -> usize {
    shape
        .iter()
        .filter(|&&d| d > 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// `v`, or the error a decoder returns for a non-finite value read from the wire.
pub(crate) fn finite(what: &'static str, v: f32) -> Result<f32, DecodeError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(DecodeError::FieldOutOfRange {
            field: what,
            value: v.to_bits() as u64,
            reason: "must be finite",
        })
    }
}

/// `v`, or the error a decoder returns for a negative scale or norm.
fn non_negative(what: &'static str, v: f32) -> Result<f32, DecodeError> {
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(DecodeError::FieldOutOfRange {
            field: what,
            value: v.to_bits() as u64,
            reason: "must be finite and ≥ 0",
        })
    }
}

/// Bounds-checked reader over a byte slice: every read says what it needed on failure.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(what, 1)?[0])
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(what, 4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(what, 8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A finite little-endian f32 (no encoder writes NaN or ±Inf, so none is accepted).
    pub(crate) fn f32(&mut self, what: &'static str) -> Result<f32, DecodeError> {
        finite(
            what,
            f32::from_le_bytes(self.take(what, 4)?.try_into().expect("4 bytes")),
        )
    }

    /// `n` 4-byte words; the length is checked before anything is allocated.
    fn words(
        &mut self,
        what: &'static str,
        n: usize,
    ) -> Result<impl Iterator<Item = [u8; 4]> + '_, DecodeError> {
        let len = n.checked_mul(4).ok_or(DecodeError::FieldOutOfRange {
            field: what,
            value: n as u64,
            reason: "count overflows",
        })?;
        Ok(self
            .take(what, len)?
            .chunks_exact(4)
            .map(|c| c.try_into().expect("4 bytes")))
    }

    /// `n` finite little-endian f32 values; the length is checked before allocating.
    pub(crate) fn f32s(&mut self, what: &'static str, n: usize) -> Result<Vec<f32>, DecodeError> {
        self.words(what, n)?
            .map(|w| finite(what, f32::from_le_bytes(w)))
            .collect()
    }

    /// `n` little-endian u32 values; the length is checked before allocating.
    pub(crate) fn u32s(&mut self, what: &'static str, n: usize) -> Result<Vec<u32>, DecodeError> {
        Ok(self.words(what, n)?.map(u32::from_le_bytes).collect())
    }

    /// A finite little-endian f32 that must be `≥ 0` (a scale or a norm).
    pub(crate) fn scale(&mut self, what: &'static str) -> Result<f32, DecodeError> {
        non_negative(what, self.f32(what)?)
    }

    /// `n` finite little-endian f32 values that must be `≥ 0` (norms).
    pub(crate) fn scales(&mut self, what: &'static str, n: usize) -> Result<Vec<f32>, DecodeError> {
        self.f32s(what, n)?
            .into_iter()
            .map(|v| non_negative(what, v))
            .collect()
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}

use thiserror::Error;

use crate::CodecId;

/// Why a gradient could not be encoded, or a codec not built.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CompressError {
    /// The gradient holds NaN or ±Inf entries; encoding them would spread them to every worker.
    #[error("the gradient has {bad} non-finite (NaN or ±Inf) entries out of {total}")]
    NonFinite {
        /// Number of NaN or ±Inf entries.
        bad: usize,
        /// Number of entries.
        total: usize,
    },
    /// Every entry is finite but a norm the codec sends (QSGD's bucket ℓ₂ norm, an ℓ₁ norm, a
    /// singular value or an ATOMO atom's scale) overflows f32: entries near f32::MAX.
    #[error("a norm of the gradient overflows f32; rescale it before encoding")]
    Overflow,
    /// A codec parameter is out of its range.
    #[error("{codec}: {field} = {value} is invalid: {reason}")]
    InvalidParameter {
        /// The codec.
        codec: &'static str,
        /// The parameter.
        field: &'static str,
        /// The offending value, printed.
        value: String,
        /// What it must satisfy.
        reason: &'static str,
    },
    /// The tensor cannot be described by the wire format (a dimension above `u32::MAX`, or a
    /// rank above 8).
    #[error("the tensor's shape {shape:?} does not fit the wire format: {reason}")]
    Shape {
        /// The shape.
        shape: Vec<usize>,
        /// Why it does not fit.
        reason: &'static str,
    },
}

/// Why a byte buffer could not be decoded. Decoding never panics and never allocates more than
/// the buffer's length justifies.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The buffer ends before the format says it should.
    #[error("truncated payload: {what} needs {needed} bytes, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// Bytes remain after the format's last field.
    #[error("{extra} unexpected trailing bytes after the payload")]
    TrailingBytes {
        /// Number of bytes left over.
        extra: usize,
    },
    /// The header names another codec than the one decoding.
    #[error("payload of codec {found:?} handed to the {expected:?} decoder")]
    WrongCodec {
        /// The decoder's codec.
        expected: CodecId,
        /// The header's codec.
        found: CodecId,
    },
    /// The header's codec byte names no codec.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// The header's version is not one this build reads.
    #[error("{codec:?} payload version {version} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// The codec.
        codec: CodecId,
        /// The version found.
        version: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// A field holds a value outside its range.
    #[error("field {field} = {value} is out of range: {reason}")]
    FieldOutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A caller's output buffer does not hold one slot per entry of the payload.
    #[error("output buffer holds {found} values, the payload has {expected} entries")]
    OutputLength {
        /// Entries in the payload.
        expected: usize,
        /// Length of the buffer given.
        found: usize,
    },
    /// The payload's shape is not the one asked for.
    #[error("payload has shape {found:?}, expected rank {expected_rank}")]
    ShapeMismatch {
        /// The rank the caller asked for.
        expected_rank: usize,
        /// The shape in the header.
        found: Vec<usize>,
    },
}

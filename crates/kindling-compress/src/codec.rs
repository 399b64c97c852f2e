use burn::tensor::{Device, Tensor};
use rand::Rng;

use crate::{CompressError, DecodeError, Payload, PayloadRef};

/// The codec that wrote a payload (the first header byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CodecId {
    /// [`Identity`](crate::Identity): f32 as is.
    Identity = 1,
    /// [`Half`](crate::Half): f16 or bf16.
    Half = 2,
    /// [`Sign`](crate::Sign): one bit per entry.
    Sign = 3,
    /// [`ScaledSign`](crate::ScaledSign): one bit per entry and an ℓ₁ scale.
    ScaledSign = 4,
    /// [`Qsgd`](crate::Qsgd).
    Qsgd = 5,
    /// [`TernGrad`](crate::TernGrad).
    TernGrad = 6,
    /// [`TopK`](crate::TopK).
    TopK = 7,
    /// [`RandomK`](crate::RandomK).
    RandomK = 8,
    /// [`Atomo`](crate::Atomo) over [`EntryWise`](crate::EntryWise) atoms.
    AtomoEntryWise = 9,
    /// [`Atomo`](crate::Atomo) over [`Spectral`](crate::Spectral) atoms.
    AtomoSpectral = 10,
    /// [`Atomo`](crate::Atomo) over [`Fourier`](crate::Fourier) atoms.
    AtomoFourier = 11,
}

impl CodecId {
    /// The codec for a header byte, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        use CodecId::*;
        [
            Identity,
            Half,
            Sign,
            ScaledSign,
            Qsgd,
            TernGrad,
            TopK,
            RandomK,
            AtomoEntryWise,
            AtomoSpectral,
            AtomoFourier,
        ]
        .into_iter()
        .find(|c| *c as u8 == v)
    }

    /// A short name for reports: `"qsgd"`, `"top-k"`, `"atomo spectral"`, …
    pub fn name(self) -> &'static str {
        match self {
            CodecId::Identity => "identity",
            CodecId::Half => "half",
            CodecId::Sign => "sign",
            CodecId::ScaledSign => "scaled sign",
            CodecId::Qsgd => "qsgd",
            CodecId::TernGrad => "terngrad",
            CodecId::TopK => "top-k",
            CodecId::RandomK => "random-k",
            CodecId::AtomoEntryWise => "atomo entry-wise",
            CodecId::AtomoSpectral => "atomo spectral",
            CodecId::AtomoFourier => "atomo fourier",
        }
    }
}

impl std::fmt::Display for CodecId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A gradient codec: a tensor becomes a self-describing [`Payload`] and back.
///
/// Where the work runs follows the device ([`is_host_device`](crate::is_host_device)): on a
/// host-memory device (Flex, NdArray) the gradient is read once and encoded by fused,
/// multi-threaded host kernels, and decoding writes each value once; on a GPU device (wgpu, CUDA)
/// packing and unpacking run on the device and only the payload crosses to the host. Both paths
/// write the same format and draw the same random numbers. [`decode_into`](Self::decode_into)
/// and [`decode_add`](Self::decode_add) decode a borrowed [`PayloadRef`] straight into a buffer
/// of yours (a mean of several workers' payloads accumulates in one buffer).
///
/// Randomised codecs draw from the caller's RNG (one per worker, seeded), so runs are
/// reproducible, for any number of threads. A codec with state (error feedback) keeps it per
/// tensor: use one instance per parameter.
// ANCHOR: compressor
pub trait Compressor {
    /// The codec id written in headers.
    fn codec(&self) -> CodecId;

    /// A short name for reports (a protocol's default name in `kindling-dist`): the codec id's
    /// name unless the codec wraps another.
    fn name(&self) -> String {
        self.codec().name().to_string()
    }

    /// Whether `E[decode(encode(g))] = g` for every `g`.
    fn is_unbiased(&self) -> bool;

    /// Encodes `grad`. NaN or ±Inf entries are an error ([`CompressError::NonFinite`]).
    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError>;

    /// Decodes a payload of this codec into a rank-`D` tensor on `device`.
    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError>;

    /// Encodes `values` (row-major entries of a tensor of `shape`) that are already in host
    /// memory with the codec's host kernel, reading them in place. `None` for codecs without a
    /// host kernel (spectral and Fourier ATOMO decompose through burn).
    fn compress_host(
        &mut self,
        values: &[f32],
        shape: &[usize],
        rng: &mut dyn Rng,
    ) -> Option<Result<Payload, CompressError>> {
        let _ = (values, shape, rng);
        None
    }

    /// Decodes into `out` (one slot per entry, row-major), overwriting it, on the host, in
    /// parallel. The body is validated before the first value is written, so an error leaves
    /// `out` as it was. Nothing proportional to the tensor is allocated, except Fourier ATOMO's
    /// FFT buffer of the padded length.
    fn decode_into(&self, payload: &PayloadRef<'_>, out: &mut [f32]) -> Result<(), DecodeError>;

    /// Decodes into a new host vector (row-major entries), on the host, in parallel: each value
    /// is written once, with no zero fill before (what [`decompress`](Self::decompress) does on
    /// a host device). The default decodes into a zeroed vector with
    /// [`decode_into`](Self::decode_into).
    fn decode_to_vec(&self, payload: &PayloadRef<'_>) -> Result<Vec<f32>, DecodeError> {
        let mut out = vec![0.0; payload.header().numel()];
        self.decode_into(payload, &mut out)?;
        Ok(out)
    }

    /// Adds `weight · decode(payload)` to `out` (one slot per entry), on the host: the mean of
    /// `W` workers' payloads is `W` calls with `weight = 1/W` into one buffer. As with
    /// [`decode_into`](Self::decode_into), a refused payload leaves `out` untouched.
    fn decode_add(
        &self,
        payload: &PayloadRef<'_>,
        weight: f32,
        out: &mut [f32],
    ) -> Result<(), DecodeError>;

    /// What the codec carries from one step to the next (the error-feedback residual) as
    /// flattened f32 values and the shape they belong to, for checkpoints; `None` for stateless
    /// codecs and before the first step.
    fn state(&self) -> Option<(Vec<f32>, Vec<usize>)> {
        None
    }

    /// Restores a state saved with [`state`](Self::state), on `device`. A stateless codec
    /// rejects any state ([`CompressError::InvalidParameter`]), as does a stateful one whose
    /// values do not fill the shape.
    fn load_state(
        &mut self,
        values: Vec<f32>,
        shape: Vec<usize>,
        device: &Device,
    ) -> Result<(), CompressError> {
        let _ = (shape, device);
        Err(CompressError::InvalidParameter {
            codec: "stateless codec",
            field: "state",
            value: format!("{} values", values.len()),
            reason: "this codec keeps no state between steps",
        })
    }
}
// ANCHOR_END: compressor

/// Implements [`Compressor::decode_into`], [`Compressor::decode_to_vec`] and
/// [`Compressor::decode_add`] from one host decoder generic over its
/// [`Sink`](crate::host::Sink):
/// `host_decoders!(payload, out, sink => decode(payload, out, sink));`.
macro_rules! host_decoders {
    ($payload:ident, $out:ident, $sink:ident => $body:expr) => {
        fn decode_into(
            &self,
            $payload: &$crate::PayloadRef<'_>,
            $out: &mut [f32],
        ) -> Result<(), $crate::DecodeError> {
            let $sink = $crate::host::Set;
            // SAFETY: the decoder writes through `Set`, which writes only values.
            let $out = unsafe { $crate::host::slots($out) };
            $body
        }

        fn decode_to_vec(
            &self,
            $payload: &$crate::PayloadRef<'_>,
        ) -> Result<Vec<f32>, $crate::DecodeError> {
            let $sink = $crate::host::Set;
            // SAFETY: a host decoder that returns `Ok` has written every entry.
            unsafe { $crate::host::decoded($payload.header().numel(), |$out| $body) }
        }

        fn decode_add(
            &self,
            $payload: &$crate::PayloadRef<'_>,
            weight: f32,
            $out: &mut [f32],
        ) -> Result<(), $crate::DecodeError> {
            let $sink = $crate::host::AddScaled(weight);
            $body
        }
    };
}
pub(crate) use host_decoders;

/// Implements [`Compressor::compress_host`] with the codec's host kernel:
/// `host_encoder!(self, values, shape, rng => self.encode(values, shape, rng));`.
macro_rules! host_encoder {
    ($self:ident, $values:ident, $shape:ident, $rng:ident => $body:expr) => {
        fn compress_host(
            &mut $self,
            $values: &[f32],
            $shape: &[usize],
            $rng: &mut dyn rand::Rng,
        ) -> Option<Result<$crate::Payload, $crate::CompressError>> {
            let _ = &$rng;
            Some($body)
        }
    };
}
pub(crate) use host_encoder;

/// Encodes on a host device through the codec's host kernel: the tensor's buffer is read in
/// place (taken, not copied, when the tensor owns it).
pub(crate) fn compress_on_host<C: Compressor + ?Sized, const D: usize>(
    codec: &mut C,
    grad: Tensor<D>,
    rng: &mut dyn Rng,
) -> Result<Payload, CompressError> {
    let shape = grad.dims();
    let host = crate::host::HostGrad::read(grad);
    codec
        .compress_host(host.values(), &shape, rng)
        .expect("a codec with a host path has a host kernel")
}

/// Decodes on a host device through the codec's host decoder: one buffer, written once, becomes
/// the tensor.
pub(crate) fn decompress_on_host<C: Compressor + ?Sized, const D: usize>(
    codec: &C,
    payload: &Payload,
    device: &Device,
) -> Result<Tensor<D>, DecodeError> {
    let shape: [usize; D] = payload.dims()?;
    let out = codec.decode_to_vec(&payload.borrow())?;
    Ok(crate::host::tensor(out, shape, device))
}

/// Sizes of one or more encoded gradients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompressionStats {
    /// Number of gradient entries.
    pub entries: usize,
    /// What dense f32 would take: `4 · entries`.
    pub raw_bytes: usize,
    /// Exact bytes on the wire (headers included).
    pub wire_bytes: usize,
}

impl CompressionStats {
    /// The stats of one payload.
    pub fn of(payload: &Payload) -> Self {
        let entries = payload.header().numel();
        Self {
            entries,
            raw_bytes: 4 * entries,
            wire_bytes: payload.wire_bytes(),
        }
    }

    /// Adds another gradient's sizes.
    pub fn add(&mut self, other: CompressionStats) {
        self.entries += other.entries;
        self.raw_bytes += other.raw_bytes;
        self.wire_bytes += other.wire_bytes;
    }

    /// Compression ratio `raw / wire` (above 1 when the codec saves bytes).
    pub fn ratio(&self) -> f64 {
        self.raw_bytes as f64 / self.wire_bytes.max(1) as f64
    }

    /// Wire bits per gradient entry.
    pub fn bits_per_entry(&self) -> f64 {
        8.0 * self.wire_bytes as f64 / self.entries.max(1) as f64
    }
}

/// The matrix view of a gradient of shape `dims`, as PowerSGD and spectral ATOMO use it:
/// `[n] → [1, n]`, `[r, c]` as is, `[d0, d1, …] → [d0, d1·…]`.
pub fn matrix_view(dims: &[usize]) -> (usize, usize) {
    match dims {
        [] => (1, 1),
        [n] => (1, *n),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
    }
}

/// Reshapes a gradient to its [`matrix_view`] (a view: burn reshapes contiguous tensors without
/// copying).
pub fn as_matrix<const D: usize>(grad: Tensor<D>) -> Tensor<2> {
    let (rows, cols) = matrix_view(&grad.dims());
    grad.reshape([rows, cols])
}

/// The entries of `grad` as a flat vector. (burn's `reshape` reads a 0 in the target shape as
/// "keep this dimension", so empty tensors are rebuilt rather than reshaped.)
pub(crate) fn flatten<const D: usize>(grad: Tensor<D>) -> Tensor<1> {
    let n = grad.dims().iter().product::<usize>();
    if n == 0 {
        Tensor::zeros([0], &grad.device())
    } else {
        grad.reshape([n])
    }
}

/// The inverse of [`flatten`]: a flat vector back to `shape`.
pub(crate) fn unflatten<const D: usize>(flat: Tensor<1>, shape: [usize; D]) -> Tensor<D> {
    if shape.iter().product::<usize>() == 0 {
        Tensor::zeros(shape, &flat.device())
    } else {
        flat.reshape(shape)
    }
}

/// `‖g‖₁`, or [`CompressError::NonFinite`] with the count of bad entries. NaN and ±Inf make the
/// sum non-finite, so the count (a second pass) runs only when something is wrong.
pub(crate) fn l1_norm_checked<const D: usize>(grad: &Tensor<D>) -> Result<f64, CompressError> {
    let l1 = grad.clone().abs().sum().into_scalar::<f64>();
    if l1.is_finite() {
        return Ok(l1);
    }
    let bad = grad
        .clone()
        .is_finite()
        .bool_not()
        .int()
        .sum()
        .into_scalar::<i64>() as usize;
    let total = grad.dims().iter().product::<usize>();
    if bad == 0 {
        return Err(CompressError::Overflow);
    }
    Err(CompressError::NonFinite { bad, total })
}

/// A validated parameter check, with the codec's name in the error.
pub(crate) fn invalid(
    codec: &'static str,
    field: &'static str,
    value: impl ToString,
    reason: &'static str,
) -> CompressError {
    CompressError::InvalidParameter {
        codec,
        field,
        value: value.to_string(),
        reason,
    }
}

/// Checks an entry count read from a header against what a body of `available` bytes can hold
/// at `min_bits_per_entry` bits each, before anything is allocated.
pub(crate) fn check_count(
    field: &'static str,
    count: usize,
    available: usize,
    min_bits_per_entry: usize,
) -> Result<(), DecodeError> {
    if count.saturating_mul(min_bits_per_entry) > available.saturating_mul(8) {
        return Err(DecodeError::Truncated {
            what: field,
            needed: (count.saturating_mul(min_bits_per_entry)).div_ceil(8),
            available,
        });
    }
    Ok(())
}

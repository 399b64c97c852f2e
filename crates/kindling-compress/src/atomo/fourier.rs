use burn::tensor::{Device, Tensor};
use rand::Rng;

use super::{Atomo, norms, sample, sample_host};
use crate::codec::{compress_on_host, decompress_on_host, flatten, l1_norm_checked, unflatten};
use crate::codec::{host_decoders, host_encoder};
use crate::host::{Sink, is_host_device};
use crate::payload::{Reader, Writer};
use crate::random::Stream;
use crate::sparse::{SparseVec, sparse_body_bytes};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload, PayloadRef, fft};

/// Fourier atoms: the orthonormal real DFT basis of the flattened gradient.
///
/// The gradient (`n` entries) is zero-padded to `N = max(2, 2^⌈log₂ n⌉)` (burn's FFT takes powers
/// of two); the padded tail of the decoded vector is dropped, so the estimator stays unbiased. The
/// `N` atoms, indexed `0 ≤ a < N`, are
///
/// ```text
/// a = 0:            1/√N                         (DC)
/// a = N/2:          (−1)^j/√N                    (Nyquist)
/// 1 ≤ a < N/2:      √(2/N)·cos(2πaj/N)
/// N/2 < a < N:      √(2/N)·sin(2πkj/N), k = a − N/2
/// ```
///
/// with coefficients read off one real FFT `X = rfft(g)`: `λ_0 = X_0/√N`,
/// `λ_{N/2} = X_{N/2}/√N`, `λ_a = √(2/N)·Re X_a`, `λ_{N/2+k} = −√(2/N)·Im X_k`. Decoding
/// rebuilds the spectrum and runs an inverse real FFT.
///
/// On a host device (Flex) both transforms run on the host in f32, multi-threaded and
/// cache-blocked (`N/2`-point complex FFTs in the four-step order); the coefficients are sampled
/// with the counter-based stream of the other host kernels. On other devices the encoder runs
/// burn's `rfft` and `irfft` on the device.
///
/// **Memory.** A thread that encodes or decodes on the host keeps the transforms' work buffers
/// for its next call (a fresh buffer costs a page fault per 4 KiB, as much time as the
/// arithmetic): up to `12·N` bytes, 48 MiB for a 4 M-entry gradient. They are freed when the
/// thread ends or by [`Fourier::release_work_buffers`].
///
/// Wire: header (5 + 4·rank), then the sparse format over the `N` atoms: `k` (u32), the sent
/// atom indices (a bitmap of `⌈N/8⌉` bytes or `4k` bytes of u32, whichever is smaller) and the
/// `k` real coefficients `λ_a/p_a` (f32). (One real coefficient per sent atom carries the same
/// information as a complex coefficient per frequency, in fewer bytes.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Fourier;

impl Fourier {
    /// Frees the work buffers the host transforms keep on the calling thread (see the type's
    /// docs); the next call allocates them again.
    pub fn release_work_buffers() {
        fft::release_pool();
    }
}

/// The padded length `N` for `n` entries (at least 2: a real FFT needs a DC and a Nyquist bin).
pub(crate) fn padded_len(n: usize) -> usize {
    n.max(2).next_power_of_two()
}

/// The `N` real-DFT coefficients of a flat vector.
fn coefficients(x: Tensor<1>) -> Tensor<1> {
    let n = x.dims()[0];
    let big = padded_len(n);
    let (re, im) = burn::signal::rfft(x, 0, Some(big));
    let half = big / 2;
    let edge = (1.0 / big as f64).sqrt();
    let mid = (2.0 / big as f64).sqrt();
    let dc = re.clone().slice(0..1).mul_scalar(edge);
    let nyquist = re.clone().slice(half..half + 1).mul_scalar(edge);
    let cos = re.slice(1..half).mul_scalar(mid);
    let sin = im.slice(1..half).mul_scalar(-mid);
    cat_nonempty(vec![dc, cos, nyquist, sin])
}

/// `Tensor::cat` of the parts that have entries (N = 2 has no cosine or sine atoms).
fn cat_nonempty(parts: Vec<Tensor<1>>) -> Tensor<1> {
    Tensor::cat(parts.into_iter().filter(|t| t.dims()[0] > 0).collect(), 0)
}

/// Inverse of [`coefficients`]: the first `n` entries of the signal.
fn signal(lambda: Tensor<1>, n: usize) -> Tensor<1> {
    let big = lambda.dims()[0];
    let half = big / 2;
    let device = lambda.device();
    let edge = (big as f64).sqrt();
    let mid = (big as f64 / 2.0).sqrt();
    let re = cat_nonempty(vec![
        lambda.clone().slice(0..1).mul_scalar(edge),
        lambda.clone().slice(1..half).mul_scalar(mid),
        lambda.clone().slice(half..half + 1).mul_scalar(edge),
    ]);
    let im = cat_nonempty(vec![
        Tensor::zeros([1], &device),
        lambda.slice(half + 1..big).mul_scalar(-mid),
        Tensor::zeros([1], &device),
    ]);
    burn::signal::irfft(re, im, 0, Some(big)).slice(0..n)
}

/// The payload of the sampled coefficients of a tensor of `shape`.
fn write(sparse: SparseVec, shape: &[usize]) -> Result<Payload, CompressError> {
    let big = padded_len(shape.iter().product());
    let mut w = Writer::new(
        CodecId::AtomoFourier,
        sparse.flags(big),
        shape,
        sparse_body_bytes(big, sparse.positions.len()),
    )?;
    sparse.write(&mut w, big);
    Ok(w.finish())
}

impl Compressor for Atomo<Fourier> {
    fn codec(&self) -> CodecId {
        CodecId::AtomoFourier
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
        l1_norm_checked(&grad)?;
        let big = padded_len(n);
        let sparse = if n == 0 {
            SparseVec::default()
        } else {
            let lambda = coefficients(flatten(grad));
            let (l1, l2, linf) = norms(&lambda);
            sample(lambda, self.budget.resolve(big, l1, l2, linf), rng)
        };
        write(sparse, &shape)
    }

    host_encoder!(self, values, shape, rng => self.encode_host(values, shape, Stream::new(rng)));

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        if is_host_device(device) {
            return decompress_on_host(self, payload, device);
        }
        let (header, shape, r) = payload.open::<D>(CodecId::AtomoFourier)?;
        let n = header.numel();
        let big = padded_len(n);
        let sparse = read_coefficients(r, header.flags, big)?;
        if n == 0 {
            return Ok(Tensor::zeros(shape, device));
        }
        Ok(unflatten(signal(sparse.to_dense(big, device), n), shape))
    }

    host_decoders!(payload, out, sink => decode_host(payload, out, sink));
}

impl Atomo<Fourier> {
    /// The host kernel: [`fft::atom_coefficients`], then the sampler of the other host kernels.
    fn encode_host(
        &self,
        values: &[f32],
        shape: &[usize],
        stream: Stream,
    ) -> Result<Payload, CompressError> {
        // The transform's partial sums reach 2·‖g‖₁.
        let (_, _, l1) = crate::host::norms(values)?;
        if 2.0 * l1 >= f32::MAX as f64 {
            return Err(CompressError::Overflow);
        }
        let sparse = if values.is_empty() {
            SparseVec::default()
        } else {
            let big = padded_len(values.len());
            let (lambda, sums) = fft::atom_coefficients(values, big);
            let norms = crate::host::finish_norms(sums, &lambda);
            let sparse = norms.map(|(linf, l2, l1)| {
                sample_host(
                    &lambda,
                    self.budget.resolve(big, l1, l2, linf as f64),
                    (l1, linf),
                    stream,
                )
            });
            fft::recycle(lambda);
            sparse?
        };
        write(sparse, shape)
    }
}

/// Reads the sparse coefficients over `big` atoms and checks that their inverse transform stays
/// finite.
fn read_coefficients(mut r: Reader<'_>, flags: u8, big: usize) -> Result<SparseVec, DecodeError> {
    let sparse = SparseVec::read(&mut r, flags, big)?;
    r.finish()?;
    // The spectrum holds each coefficient times at most √N. Any inverse FFT's intermediate
    // values are bounded by the sum of the magnitudes of the whole Hermitian spectrum, at most
    // √(2N)·Σ|λ| (an implementation may sum the unnormalised spectrum before dividing by N);
    // the output by √(2/N)·Σ|λ|. Below f32::MAX with a factor 2√N, finite coefficients
    // rebuild a finite gradient on every backend.
    let bound =
        2.0 * (big as f64).sqrt() * sparse.values.iter().map(|v| v.abs() as f64).sum::<f64>();
    if bound >= f32::MAX as f64 {
        return Err(DecodeError::FieldOutOfRange {
            field: "fourier coefficients",
            value: sparse.values.len() as u64,
            reason: "their inverse transform would overflow f32",
        });
    }
    Ok(sparse)
}

/// The host decoder: [`fft::atom_signal`] of the sent coefficients.
fn decode_host<S: Sink>(
    payload: &PayloadRef<'_>,
    out: &mut [S::Slot],
    sink: S,
) -> Result<(), DecodeError> {
    let (header, r) = payload.open_into(CodecId::AtomoFourier, out)?;
    let n = out.len();
    let big = padded_len(n);
    let sparse = read_coefficients(r, header.flags, big)?;
    if n == 0 {
        return Ok(());
    }
    fft::atom_signal(&sparse.positions, &sparse.values, big, out, |slot, v| {
        sink.put(slot, v)
    });
    Ok(())
}

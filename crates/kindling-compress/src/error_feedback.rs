use burn::tensor::{Device, Tensor};
use rand::Rng;
use rayon::prelude::*;

use crate::codec::{flatten, unflatten};
use crate::host::{self, CHUNK, HostGrad, is_host_device};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload, PayloadRef};

/// Error feedback (Karimireddy et al., *Error Feedback Fixes SignSGD and other Gradient
/// Compression Schemes*, ICML 2019, <https://arxiv.org/abs/1901.09847>) around any codec: what
/// the codec drops this step is added back next step.
///
/// ```text
/// p = g + e;   c = decode(encode(p));   e ← p − c
/// ```
///
/// After `T` steps `Σ_t c_t + e_T = Σ_t g_t` (up to float rounding): nothing is lost, only
/// delayed. This makes biased codecs (top-k, sign, scaled sign) converge.
///
/// The residual `e` is per tensor: use one `ErrorFeedback` per parameter. It is checkpointable
/// ([`residual`](Self::residual) / [`set_residual`](Self::set_residual)) and follows the gradient's
/// device. Encoding decodes its own payload once to update `e`; on a host device that is one
/// pass forming `p = g + e` in the gradient's own buffer, the inner codec's host kernel reading
/// it in place, and one `decode_add(−1)` turning the buffer into the new residual, with no
/// allocation proportional to the tensor. A failed encoding (for example a non-finite gradient)
/// leaves the residual untouched. Its state lives in tensors, so it has no
/// [`compress_host`](Compressor::compress_host): call [`compress`](Compressor::compress).
#[derive(Debug, Clone)]
pub struct ErrorFeedback<C> {
    inner: C,
    residual: Option<Tensor<1>>,
    shape: Vec<usize>,
}

impl<C: Compressor> ErrorFeedback<C> {
    /// Wraps `inner` with a zero residual.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            residual: None,
            shape: Vec::new(),
        }
    }

    /// The wrapped codec.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The current residual `e` (flattened) and the shape it belongs to, if any step ran.
    pub fn residual(&self) -> Option<(&Tensor<1>, &[usize])> {
        self.residual.as_ref().map(|r| (r, self.shape.as_slice()))
    }

    /// Restores a residual saved with [`residual`](Self::residual) (for checkpoints).
    pub fn set_residual(&mut self, residual: Tensor<1>, shape: Vec<usize>) {
        self.residual = Some(residual);
        self.shape = shape;
    }

    /// Forgets the residual.
    pub fn reset(&mut self) {
        self.residual = None;
        self.shape.clear();
    }
}

impl<C: Compressor> ErrorFeedback<C> {
    /// The host path: `p = g + e` in the gradient's own buffer, the inner codec's payload from
    /// that buffer (its host kernel reads it in place), then `e ← p − decode(payload)` by one
    /// `decode_add` into the same buffer, which becomes the new residual. On failure the old
    /// residual stays.
    fn compress_on_host<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let dims = grad.dims();
        let device = grad.device();
        let n = dims.iter().product::<usize>();
        let mut p = HostGrad::read(grad);
        let residual = match self.residual.take() {
            Some(e) if self.shape == dims => Some(HostGrad::read(e)),
            other => {
                self.residual = other;
                None
            }
        };
        if let Some(e) = &residual {
            add_into(p.values_mut(), e.values());
        }
        let encoded = match self.inner.compress_host(p.values(), &dims, rng) {
            Some(result) => result,
            None => {
                // No host kernel: the inner codec reads a copy of p.
                let values = p.values().to_vec();
                self.inner
                    .compress(host::tensor(values, dims, &device), rng)
            }
        };
        let payload = match encoded {
            Ok(payload) => payload,
            Err(err) => {
                if let Some(e) = residual {
                    self.residual = Some(e.into_tensor([n], &device));
                }
                return Err(err);
            }
        };
        self.inner
            .decode_add(&payload.borrow(), -1.0, p.values_mut())
            .expect("a payload just encoded decodes");
        self.residual = Some(p.into_tensor([n], &device));
        self.shape = dims.to_vec();
        Ok(payload)
    }
}

/// `p += e`, in parallel.
fn add_into(p: &mut [f32], e: &[f32]) {
    p.par_chunks_mut(CHUNK)
        .zip(e.par_chunks(CHUNK))
        .for_each(|(p, e)| p.iter_mut().zip(e).for_each(|(p, e)| *p += e));
}

impl<C: Compressor> Compressor for ErrorFeedback<C> {
    fn codec(&self) -> CodecId {
        self.inner.codec()
    }

    fn name(&self) -> String {
        format!("error feedback + {}", self.inner.name())
    }

    fn is_unbiased(&self) -> bool {
        false
    }

    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn Rng,
    ) -> Result<Payload, CompressError> {
        let dims = grad.dims();
        let device = grad.device();
        if is_host_device(&device) {
            return self.compress_on_host(grad, rng);
        }
        let p = match &self.residual {
            Some(e) if self.shape == dims => grad + unflatten(e.clone().to_device(&device), dims),
            _ => grad,
        };
        let payload = self.inner.compress(p.clone(), rng)?;
        let c: Tensor<D> = self
            .inner
            .decompress(&payload, &device)
            .expect("a payload just encoded decodes");
        self.residual = Some(flatten(p - c));
        self.shape = dims.to_vec();
        Ok(payload)
    }

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        self.inner.decompress(payload, device)
    }

    fn decode_into(&self, payload: &PayloadRef<'_>, out: &mut [f32]) -> Result<(), DecodeError> {
        self.inner.decode_into(payload, out)
    }

    fn decode_to_vec(&self, payload: &PayloadRef<'_>) -> Result<Vec<f32>, DecodeError> {
        self.inner.decode_to_vec(payload)
    }

    fn decode_add(
        &self,
        payload: &PayloadRef<'_>,
        weight: f32,
        out: &mut [f32],
    ) -> Result<(), DecodeError> {
        self.inner.decode_add(payload, weight, out)
    }

    fn state(&self) -> Option<(Vec<f32>, Vec<usize>)> {
        let (residual, shape) = self.residual()?;
        let values = residual.try_to_vec_as::<f32>().expect("residual values");
        Some((values, shape.to_vec()))
    }

    fn load_state(
        &mut self,
        values: Vec<f32>,
        shape: Vec<usize>,
        device: &Device,
    ) -> Result<(), CompressError> {
        if values.len() != shape.iter().product::<usize>() || shape.is_empty() {
            return Err(CompressError::InvalidParameter {
                codec: "error feedback",
                field: "state",
                value: format!("{} values for shape {shape:?}", values.len()),
                reason: "the residual must fill its (non-empty) shape",
            });
        }
        let n = values.len();
        let residual = Tensor::from_data(burn::tensor::TensorData::new(values, [n]), device);
        self.set_residual(residual, shape);
        Ok(())
    }
}

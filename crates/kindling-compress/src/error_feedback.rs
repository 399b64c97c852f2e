use burn::tensor::{Device, Tensor};
use rand::Rng;

use crate::codec::{flatten, unflatten};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

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
/// device. Encoding decodes its own payload once to update `e`. A failed encoding (for example a
/// non-finite gradient) leaves the residual untouched.
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

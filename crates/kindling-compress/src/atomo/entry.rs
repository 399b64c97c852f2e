use burn::tensor::{Device, Tensor};
use rand::Rng;

use super::{Atomo, EntryWise, norms, norms_host, sample, sample_host};
use crate::codec::{compress_on_host, flatten, l1_norm_checked};
use crate::codec::{host_decoders, host_encoder};
use crate::host::is_host_device;
use crate::payload::Writer;
use crate::random::Stream;
use crate::sparse::{SparseVec, decode_sparse, decode_sparse_into, sparse_body_bytes};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Entry-wise ATOMO: atoms are the entries (`λ = g`). With
/// [`Budget::QsgdEquivalent`](super::Budget::QsgdEquivalent) the probabilities are exactly
/// 1-level QSGD's (`|g_i|/‖g‖₂`), with
/// [`Budget::TernGradEquivalent`](super::Budget::TernGradEquivalent) exactly TernGrad's
/// (`|g_i|/max|g|`).
///
/// Wire: header (5 + 4·rank), then the sparse format of [`TopK`](crate::TopK): `k` (u32), the
/// sent positions as a bitmap or u32 indices (whichever is smaller), the `k` values `λ_a/p_a`.
/// The payload of sampled entries.
fn write(sparse: SparseVec, shape: &[usize]) -> Result<Payload, CompressError> {
    let n = shape.iter().product();
    let k = sparse.positions.len();
    let mut w = Writer::new(
        CodecId::AtomoEntryWise,
        sparse.flags(n),
        shape,
        sparse_body_bytes(n, k),
    )?;
    sparse.write(&mut w, n);
    Ok(w.finish())
}

impl Compressor for Atomo<EntryWise> {
    fn codec(&self) -> CodecId {
        CodecId::AtomoEntryWise
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
        let lambda = flatten(grad);
        let (l1, l2, linf) = norms(&lambda);
        let s = self.budget.resolve(n, l1, l2, linf);
        write(sample(lambda, s, rng), &shape)
    }

    host_encoder!(self, values, shape, rng => norms_host(values).and_then(|(l1, l2, linf)| {
        let s = self.budget.resolve(values.len(), l1, l2, linf);
        write(
            sample_host(values, s, (l1, linf as f32), Stream::new(rng)),
            shape,
        )
    }));

    fn decompress<const D: usize>(
        &self,
        payload: &Payload,
        device: &Device,
    ) -> Result<Tensor<D>, DecodeError> {
        decode_sparse(self, payload, CodecId::AtomoEntryWise, device)
    }

    host_decoders!(payload, out, sink => decode_sparse_into(payload, CodecId::AtomoEntryWise, out, sink));
}

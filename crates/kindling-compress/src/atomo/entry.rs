use burn::tensor::{Device, Tensor};
use rand::Rng;

use super::{Atomo, EntryWise, norms, sample};
use crate::codec::{flatten, l1_norm_checked};
use crate::payload::Writer;
use crate::sparse::{decode_sparse, sparse_body_bytes};
use crate::{CodecId, CompressError, Compressor, DecodeError, Payload};

/// Entry-wise ATOMO: atoms are the entries (`λ = g`). With
/// [`Budget::QsgdEquivalent`](super::Budget::QsgdEquivalent) the probabilities are exactly
/// 1-level QSGD's (`|g_i|/‖g‖₂`), with
/// [`Budget::TernGradEquivalent`](super::Budget::TernGradEquivalent) exactly TernGrad's
/// (`|g_i|/max|g|`).
///
/// Wire: header (5 + 4·rank), then the sparse format of [`TopK`](crate::TopK): `k` (u32), the
/// sent positions as a bitmap or u32 indices (whichever is smaller), the `k` values `λ_a/p_a`.
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
        let shape = grad.dims();
        let n = grad.dims().iter().product::<usize>();
        l1_norm_checked(&grad)?;
        let lambda = flatten(grad);
        let (l1, l2, linf) = norms(&lambda);
        let s = self.budget.resolve(n, l1, l2, linf);
        let sparse = sample(lambda, s, rng);
        let k = sparse.positions.len();
        let mut w = Writer::new(
            CodecId::AtomoEntryWise,
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
        decode_sparse(payload, CodecId::AtomoEntryWise, device)
    }
}

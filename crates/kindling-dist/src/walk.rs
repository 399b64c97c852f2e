//! Visiting every float parameter of a module in a fixed order (the same on every rank), with a
//! fallible rank-generic operation on its gradient.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::DistError;

/// What a reducer does to one parameter's gradient.
pub(crate) trait GradOp {
    /// Returns the agreed gradient of parameter number `index` (module order).
    fn apply<const D: usize>(
        &mut self,
        index: usize,
        id: ParamId,
        grad: Tensor<D>,
    ) -> Result<Tensor<D>, DistError>;
}

struct Walker<'a, O: GradOp> {
    grads: &'a mut GradientsParams,
    out: GradientsParams,
    op: O,
    index: usize,
    error: Option<DistError>,
}

impl<O: GradOp> ModuleVisitor for Walker<'_, O> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let index = self.index;
        self.index += 1;
        if self.error.is_some() {
            return;
        }
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            if !param.val().is_require_grad() {
                // Frozen (`no_grad`): no gradient on any rank, since the replicas are identical
                // down to this flag; left out of the exchange and of the update.
                return;
            }
            self.error = Some(DistError::Protocol(format!(
                "parameter {index} ({}) has no gradient on this rank",
                param.id
            )));
            return;
        };
        match self.op.apply(index, param.id, grad) {
            Ok(g) => self.out.register(param.id, g),
            Err(e) => self.error = Some(e),
        }
    }
}

/// Applies `op` to every float parameter's gradient, in module order. Every parameter that
/// requires a gradient must have one (all ranks must walk the same list); frozen parameters
/// (no gradient required, none given) are skipped, keeping their index.
pub(crate) fn walk<M: Module, O: GradOp>(
    module: &M,
    mut grads: GradientsParams,
    op: O,
) -> Result<(GradientsParams, O), DistError> {
    let mut walker = Walker {
        grads: &mut grads,
        out: GradientsParams::new(),
        op,
        index: 0,
        error: None,
    };
    module.visit(&mut walker);
    match walker.error {
        Some(e) => Err(e),
        None => Ok((walker.out, walker.op)),
    }
}

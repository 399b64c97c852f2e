use burn::module::ParamGroup;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use burn::tensor::{Int, Tensor};

use crate::KdEmbedding;

/// Distillation toward a pretrained table (the reference's "guidance"): `λ·mean_i ‖e_i − e_pre,i‖²`
/// over the ids `[n]` of a batch, with `pretrained` `[V, d]` (the reference uses λ = 1000 with
/// a sum; this is the per-symbol mean, so pick λ accordingly).
pub fn distillation_loss(
    embedding: &KdEmbedding,
    ids: Tensor<1, Int>,
    pretrained: &Tensor<2>,
    lambda: f32,
) -> Tensor<1> {
    let n = ids.dims()[0];
    let e = embedding
        .forward(ids.clone().reshape([1, n]))
        .squeeze_dim::<2>(0);
    let target = pretrained.clone().select(0, ids);
    (e - target).square().sum_dim(1).mean().mul_scalar(lambda)
}

/// The reference's mixed optimizer as burn parameter groups: Adam on every parameter whose path
/// contains `code_logits`, SGD on the rest.
///
/// burn passes one learning rate per step; Adam's group uses `adam_scale ×` that rate (the
/// reference's Adam at 1e-3 with SGD at 1e-1 is a step learning rate of 0.1 with
/// `adam_scale = 0.01`).
pub fn mixed_optimizer(adam_scale: f32) -> ModuleOptimizer {
    let adam = AdamConfig::new().build();
    let sgd = SgdConfig::new().build();
    ModuleOptimizer::from(sgd).with_group(
        ParamGroup::from_predicate("code_logits"),
        Scaled {
            inner: adam,
            scale: adam_scale,
        },
        None,
    )
}

/// An optimizer whose steps are scaled by a constant (for [`mixed_optimizer`]).
#[derive(Clone)]
struct Scaled<O> {
    inner: O,
    scale: f32,
}

impl<O: burn::optim::Optimizer> burn::optim::Optimizer for Scaled<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: burn::optim::LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        self.inner.step(lr * self.scale as f64, tensor, grad, state)
    }

    fn to_device<const D: usize>(
        state: Self::State<D>,
        device: &burn::tensor::Device,
    ) -> Self::State<D> {
        O::to_device(state, device)
    }
}

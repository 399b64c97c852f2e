//! Arithmetic on burn's [`GradientsParams`], parameter by parameter.
//!
//! burn keeps gradients in a map keyed by [`ParamId`] that cannot be iterated, so every operation
//! here walks the module with a [`ModuleVisitor`] to reach each float parameter, and combines the
//! gradients stored under its id. A parameter missing from one operand counts as a zero gradient
//! there; a parameter missing from every operand is left out of the result.
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Tensor};
//! use kindling_optim::grads;
//!
//! let device = Device::flex().autodiff();
//! let model = LinearConfig::new(3, 2).init(&device);
//! let x = Tensor::<2>::ones([4, 3], &device);
//! let g = GradientsParams::from_grads(model.forward(x).sum().backward(), &model);
//! let twice = grads::scale(&model, &g, 2.0);
//! let back = grads::sub(&model, &twice, &g);
//! assert!((grads::squared_norm(&model, &back) - grads::squared_norm(&model, &g)).abs() < 1e-3);
//! ```

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::OptimError;

/// A rank-generic operation on the gradients of one parameter (one entry per operand; `None`
/// where that operand has no gradient for the parameter).
pub trait GradientMap {
    /// The combined gradient of one parameter, or `None` to leave it out.
    fn apply<const D: usize>(
        &mut self,
        id: ParamId,
        operands: Vec<Option<Tensor<D>>>,
    ) -> Option<Tensor<D>>;
}

struct Walker<'a, F: GradientMap> {
    operands: &'a [&'a GradientsParams],
    op: F,
    out: GradientsParams,
}

impl<F: GradientMap> ModuleVisitor for Walker<'_, F> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let id = param.id;
        let operands: Vec<Option<Tensor<D>>> =
            self.operands.iter().map(|g| g.get::<D>(id)).collect();
        if operands.iter().all(Option::is_none) {
            return;
        }
        if let Some(result) = self.op.apply(id, operands) {
            self.out.register(id, result);
        }
    }
}

/// Applies `op` to every float parameter of `module` and collects the results. Returns the new
/// gradients and the operation (with whatever it accumulated).
pub fn map<M: Module, F: GradientMap>(
    module: &M,
    operands: &[&GradientsParams],
    op: F,
) -> (GradientsParams, F) {
    let mut walker = Walker {
        operands,
        op,
        out: GradientsParams::new(),
    };
    module.visit(&mut walker);
    (walker.out, walker.op)
}

/// `Σ_k c_k · g_k` for gradients `g_k` and scalars `c_k` (a missing gradient counts as 0).
///
/// # Panics
/// When `terms` is empty.
pub fn linear_combination<M: Module>(
    module: &M,
    terms: &[(&GradientsParams, f64)],
) -> GradientsParams {
    assert!(
        !terms.is_empty(),
        "a linear combination needs at least one term"
    );
    struct Combine(Vec<f64>);
    impl GradientMap for Combine {
        fn apply<const D: usize>(
            &mut self,
            _: ParamId,
            operands: Vec<Option<Tensor<D>>>,
        ) -> Option<Tensor<D>> {
            operands
                .into_iter()
                .zip(&self.0)
                .filter_map(|(g, &c)| g.map(|g| if c == 1.0 { g } else { g.mul_scalar(c) }))
                .reduce(|a, b| a + b)
        }
    }
    let (grads, coefficients): (Vec<_>, Vec<_>) = terms.iter().copied().unzip();
    map(module, &grads, Combine(coefficients)).0
}

/// `a + b`.
pub fn add<M: Module>(module: &M, a: &GradientsParams, b: &GradientsParams) -> GradientsParams {
    linear_combination(module, &[(a, 1.0), (b, 1.0)])
}

/// `a − b`.
pub fn sub<M: Module>(module: &M, a: &GradientsParams, b: &GradientsParams) -> GradientsParams {
    linear_combination(module, &[(a, 1.0), (b, -1.0)])
}

/// `c · a`.
pub fn scale<M: Module>(module: &M, a: &GradientsParams, c: f64) -> GradientsParams {
    linear_combination(module, &[(a, c)])
}

/// `Σ_params ‖g‖²` (read back to the host: one synchronisation per parameter).
pub fn squared_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct Norm(f64);
    impl GradientMap for Norm {
        fn apply<const D: usize>(
            &mut self,
            _: ParamId,
            operands: Vec<Option<Tensor<D>>>,
        ) -> Option<Tensor<D>> {
            if let Some(g) = operands.into_iter().flatten().next() {
                self.0 += g.square().sum().into_scalar::<f64>();
            }
            None
        }
    }
    map(module, &[grads], Norm(0.0)).1.0
}

/// The mean gradient of a batch and the per-coordinate variance of that mean.
#[derive(Debug)]
pub struct MeanVariance {
    /// `ḡ = (1/K) Σ_k g_k`.
    pub mean: GradientsParams,
    /// The estimated variance of `ḡ` per coordinate, `Σ_k (g_k − ḡ)² / (K (K − 1))`: the
    /// unbiased variance of one micro-batch gradient, divided by `K`.
    pub variance: GradientsParams,
}

/// The mean gradient and the variance of that mean, from `K ≥ 2` gradients of equally sized
/// micro-batches of one batch (or from `K` per-example gradients).
///
/// Every parameter that has a gradient must have it in every micro-batch.
pub fn mean_and_variance<M: Module>(
    module: &M,
    micro_batches: &[GradientsParams],
) -> Result<MeanVariance, OptimError> {
    let k = micro_batches.len();
    if k < 2 {
        return Err(OptimError::Gradients(format!(
            "a variance needs at least 2 micro-batch gradients, got {k}"
        )));
    }
    struct Moments {
        variance: GradientsParams,
        missing: Option<ParamId>,
    }
    impl GradientMap for Moments {
        fn apply<const D: usize>(
            &mut self,
            id: ParamId,
            operands: Vec<Option<Tensor<D>>>,
        ) -> Option<Tensor<D>> {
            let Some(gs) = operands.into_iter().collect::<Option<Vec<_>>>() else {
                self.missing.get_or_insert(id);
                return None;
            };
            let k = gs.len() as f64;
            let mean = gs
                .iter()
                .cloned()
                .reduce(|a, b| a + b)
                .expect("k ≥ 2")
                .div_scalar(k);
            let sum_sq = gs
                .into_iter()
                .map(|g| (g - mean.clone()).square())
                .reduce(|a, b| a + b)
                .expect("k ≥ 2");
            self.variance.register(id, sum_sq.div_scalar(k * (k - 1.0)));
            Some(mean)
        }
    }
    let refs: Vec<&GradientsParams> = micro_batches.iter().collect();
    let (mean, moments) = map(
        module,
        &refs,
        Moments {
            variance: GradientsParams::new(),
            missing: None,
        },
    );
    if let Some(id) = moments.missing {
        return Err(OptimError::Gradients(format!(
            "parameter {id} has a gradient in some micro-batches but not in all"
        )));
    }
    Ok(MeanVariance {
        mean,
        variance: moments.variance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::tensor::TensorData;
    use kindling_testing::{assert_slices_close, autodiff_device, to_vec};

    fn layer() -> Linear {
        Linear {
            weight: Param::from_data(TensorData::from([[1.0_f32, 2.0]]), &autodiff_device()),
            bias: Some(Param::from_data(
                TensorData::from([0.5_f32, 0.0]),
                &autodiff_device(),
            )),
        }
    }

    fn grads(model: &Linear, w: [f32; 2], b: Option<[f32; 2]>) -> GradientsParams {
        let device = autodiff_device().inner();
        let mut g = GradientsParams::new();
        g.register(model.weight.id, Tensor::<2>::from_floats([w], &device));
        if let Some(b) = b {
            g.register(
                model.bias.as_ref().unwrap().id,
                Tensor::<1>::from_floats(b, &device),
            );
        }
        g
    }

    fn weight(model: &Linear, g: &GradientsParams) -> Vec<f32> {
        to_vec(&g.get::<2>(model.weight.id).unwrap())
    }

    fn bias(model: &Linear, g: &GradientsParams) -> Option<Vec<f32>> {
        g.get::<1>(model.bias.as_ref().unwrap().id)
            .map(|t| to_vec(&t))
    }

    #[test]
    fn add_sub_scale_per_parameter() {
        let m = layer();
        let a = grads(&m, [1.0, 2.0], Some([3.0, 4.0]));
        let b = grads(&m, [0.5, -1.0], None);
        let sum = add(&m, &a, &b);
        assert_eq!(weight(&m, &sum), vec![1.5, 1.0]);
        assert_eq!(
            bias(&m, &sum),
            Some(vec![3.0, 4.0]),
            "missing counts as zero"
        );
        let diff = sub(&m, &b, &a);
        assert_eq!(weight(&m, &diff), vec![-0.5, -3.0]);
        assert_eq!(bias(&m, &diff), Some(vec![-3.0, -4.0]));
        let scaled = scale(&m, &b, -2.0);
        assert_eq!(weight(&m, &scaled), vec![-1.0, 2.0]);
        assert_eq!(bias(&m, &scaled), None, "absent everywhere stays absent");
        let combo = linear_combination(&m, &[(&a, 0.5), (&b, 2.0)]);
        assert_eq!(weight(&m, &combo), vec![1.5, -1.0]);
        assert!((squared_norm(&m, &a) - 30.0).abs() < 1e-9);
    }

    /// Three micro-batches [1,2], [3,2], [5,2]: mean [3, 2]; Σ(g−ḡ)² = [8, 0], divided by
    /// K(K−1) = 6: [4/3, 0].
    #[test]
    fn mean_and_variance_of_micro_batches() {
        let m = layer();
        let micro: Vec<GradientsParams> = [[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]]
            .into_iter()
            .map(|w| grads(&m, w, Some([1.0, 1.0])))
            .collect();
        let mv = mean_and_variance(&m, &micro).unwrap();
        assert_slices_close(&weight(&m, &mv.mean), &[3.0, 2.0], 1e-6);
        assert_slices_close(&weight(&m, &mv.variance), &[4.0 / 3.0, 0.0], 1e-6);
        assert_eq!(bias(&m, &mv.variance), Some(vec![0.0, 0.0]));
    }

    #[test]
    fn moments_need_two_complete_micro_batches() {
        let m = layer();
        let one = vec![grads(&m, [1.0, 2.0], None)];
        assert!(matches!(
            mean_and_variance(&m, &one),
            Err(OptimError::Gradients(_))
        ));
        let ragged = vec![
            grads(&m, [1.0, 2.0], Some([0.0, 0.0])),
            grads(&m, [1.0, 2.0], None),
        ];
        let err = mean_and_variance(&m, &ragged).unwrap_err();
        assert!(err.to_string().contains("not in all"), "{err}");
    }
}

//! The non-finite rule, for every kindling optimizer: a NaN or ±∞ gradient skips the update of
//! that parameter tensor (parameter and state untouched, so the next finite step continues as if
//! the bad one never happened) and is counted; the other tensors of the step are updated.

use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Tensor, TensorData};
use kindling_optim::grads::MeanVariance;
use kindling_optim::{SignumConfig, SkippedUpdates, SnvrgConfig, SnvrgOutput, SvagConfig};
use kindling_testing::{autodiff_device, to_vec};

/// A 2 → 1 linear layer (weight and bias: two parameter tensors).
fn layer() -> Linear {
    let device = autodiff_device();
    Linear {
        weight: Param::from_data(TensorData::new(vec![1.0_f32, -2.0], [2, 1]), &device),
        bias: Some(Param::from_data(
            TensorData::new(vec![0.5_f32], [1]),
            &device,
        )),
    }
}

fn grads(model: &Linear, weight: [f32; 2], bias: f32) -> GradientsParams {
    let device = autodiff_device().inner();
    let mut g = GradientsParams::new();
    g.register(
        model.weight.id,
        Tensor::<2>::from_data(TensorData::new(weight.to_vec(), [2, 1]), &device),
    );
    g.register(
        model.bias.as_ref().unwrap().id,
        Tensor::<1>::from_data(TensorData::new(vec![bias], [1]), &device),
    );
    g
}

fn params(model: &Linear) -> (Vec<f32>, Vec<f32>) {
    (
        to_vec(&model.weight.val()),
        to_vec(&model.bias.as_ref().unwrap().val()),
    )
}

const GOOD: [([f32; 2], f32); 3] = [([0.5, -0.25], 0.1), ([-0.1, 0.5], -0.2), ([0.3, 0.2], 0.4)];

/// Runs GOOD with a poisoned weight gradient inserted before the last step: the weight must not
/// move on that step, the bias (finite gradient) must, one skip is counted, and the weight then
/// ends exactly where the clean run ends (gradients are given, so the bias does not affect it).
fn check(make: impl Fn() -> (ModuleOptimizer, SkippedUpdates), poison: f32) {
    let (mut clean_optim, _) = make();
    let mut clean = layer();
    for (w, b) in GOOD {
        clean = clean_optim.step(0.1, clean.clone(), grads(&clean, w, b));
    }
    let (mut optim, skipped) = make();
    let mut model = layer();
    for (i, (w, b)) in GOOD.into_iter().enumerate() {
        if i == 2 {
            let before = params(&model);
            model = optim.step(0.1, model.clone(), grads(&model, [poison, 1.0], 1.0));
            let after = params(&model);
            assert_eq!(after.0, before.0, "the poisoned weight must not move");
            assert!(after.1.iter().all(|v| v.is_finite()));
            assert_ne!(after.1, before.1, "the finite bias gradient is applied");
            assert_eq!(skipped.count(), 1, "one skipped update counted");
        }
        model = optim.step(0.1, model.clone(), grads(&model, w, b));
    }
    let (w, _) = params(&model);
    let (cw, _) = params(&clean);
    // The weight's state skipped the poisoned step entirely, so its trajectory is the clean one.
    kindling_testing::assert_slices_close(&w, &cw, 1e-6);
    assert!(
        w.iter().all(|v| v.is_finite()),
        "state stayed finite: {w:?}"
    );
}

#[test]
fn signum_and_sign_sgd_skip_non_finite_gradients() {
    for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        check(|| SignumConfig::new().init_with_skips(), poison);
        check(|| SignumConfig::sign_sgd().init_with_skips(), poison);
        check(
            || {
                SignumConfig::new()
                    .with_weight_decay(0.01)
                    .init_with_skips()
            },
            poison,
        );
    }
}

#[test]
fn svag_and_m_svag_skip_non_finite_and_overflowing_gradients() {
    // 1e20 is finite but its square overflows f32: caught as well.
    for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e20] {
        check(|| SvagConfig::m_svag().init_with_skips(), poison);
        check(|| SvagConfig::svag().init_with_skips(), poison);
    }
}

#[test]
fn minibatch_svag_skips_non_finite_means_and_variances() {
    let device = autodiff_device().inner();
    for (mean, variance) in [
        ([f32::NAN, 1.0], [0.1, 0.1]),
        ([1.0, 1.0], [f32::INFINITY, 0.1]),
    ] {
        let mut optim = SvagConfig::m_svag().init_minibatch();
        let skipped = optim.skipped_updates();
        let model = layer();
        let moments = |model: &Linear, m: [f32; 2], v: [f32; 2]| {
            let one = |x: [f32; 2], b: f32| {
                let mut g = GradientsParams::new();
                g.register(
                    model.weight.id,
                    Tensor::<2>::from_data(TensorData::new(x.to_vec(), [2, 1]), &device),
                );
                g.register(
                    model.bias.as_ref().unwrap().id,
                    Tensor::<1>::from_data(TensorData::new(vec![b], [1]), &device),
                );
                g
            };
            MeanVariance {
                mean: one(m, 0.5),
                variance: one(v, 0.1),
            }
        };
        let model = optim
            .step(0.1, model.clone(), moments(&model, [0.5, 0.5], [0.1, 0.1]))
            .unwrap();
        let before = params(&model);
        let model = optim
            .step(0.1, model.clone(), moments(&model, mean, variance))
            .unwrap();
        assert_eq!(params(&model).0, before.0);
        assert_ne!(params(&model).1, before.1);
        assert_eq!(skipped.count(), 1);
        let model = optim
            .step(0.1, model.clone(), moments(&model, [0.5, 0.5], [0.1, 0.1]))
            .unwrap();
        assert!(params(&model).0.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn snvrg_skips_non_finite_directions() {
    let device = autodiff_device();
    let model = layer();
    // The oracle returns NaN for the weight whenever example 3 is in the batch.
    let oracle = |m: &Linear, idx: &[usize]| {
        let x = Tensor::<2>::from_data(
            TensorData::new(
                idx.iter().flat_map(|&i| [i as f32, 1.0]).collect(),
                [idx.len(), 2],
            ),
            &device,
        );
        let loss = m.forward(x).powi_scalar(2).mean();
        let mut g = GradientsParams::from_grads(loss.backward(), m);
        if idx.contains(&3) {
            let w = g.remove::<2>(m.weight.id).unwrap();
            g.register(m.weight.id, w.mul_scalar(f32::NAN));
        }
        g
    };
    let config = SnvrgConfig::new(8, vec![2, 2], 8, vec![2, 1], 0.01)
        .with_output(SnvrgOutput::RandomIterate);
    let mut snvrg = config.build();
    let skipped = snvrg.skipped_updates();
    let epoch = snvrg.epoch_with_output(model, oracle);
    // B = n includes example 3: the reference gradient is NaN, so every step skips the weight,
    // while the bias trains.
    assert_eq!(skipped.count(), 4);
    let (w, b) = params(&epoch.next);
    assert_eq!(w, vec![1.0, -2.0]);
    assert!(b[0].is_finite() && b[0] != 0.5);
    assert!(epoch.output_step < 4);
    assert_eq!(params(&epoch.output).0, vec![1.0, -2.0]);
}

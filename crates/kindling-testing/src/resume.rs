use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer};
use burn::tensor::{Tensor, TensorData};

use crate::{assert_tensors_close, autodiff_device};

/// A 4 → 3 linear layer with fixed, distinct weights on the autodiff test device.
pub fn resume_test_layer() -> Linear {
    let device = autodiff_device();
    let weight: Vec<f32> = (0..12)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 10.0)
        .collect();
    Linear {
        weight: Param::from_data(TensorData::new(weight, [4, 3]), &device),
        bias: Some(Param::from_data(
            TensorData::from([0.1_f32, -0.2, 0.3]),
            &device,
        )),
    }
}

/// Asserts that an optimizer's state survives a checkpoint: two steps, then the state is saved
/// to bytes (burn's optimizer record format) and loaded into a fresh optimizer; the next steps of
/// the restored and the uninterrupted optimizer must give the same parameters (to `1e-6`).
///
/// The gradients change scale and sign between steps, so state that is lost or reset (a
/// momentum zeroed, a step counter restarted) changes the result.
///
/// # Panics
/// When saving or loading fails, the state is empty, or the trajectories differ.
#[track_caller]
pub fn assert_optimizer_resume(create: impl Fn() -> ModuleOptimizer, lr: LearningRate) {
    let device = autodiff_device();
    let input = Tensor::<2>::from_data(
        TensorData::new(vec![1.0_f32, -0.5, 0.25, 2.0, 0.0, 1.0, -1.0, 0.5], [2, 4]),
        &device,
    );
    let grads = |model: &Linear, scale: f32| {
        let out = model.forward(input.clone());
        GradientsParams::from_grads(
            (out.clone() * out).sum().mul_scalar(scale).backward(),
            model,
        )
    };
    let mut model = resume_test_layer();
    let mut original = create();
    for scale in [1.0, 0.1] {
        let g = grads(&model, scale);
        model = original.step(lr, model, g);
    }
    assert!(
        !original.to_record().is_empty(),
        "the optimizer recorded no state"
    );
    let bytes = original.into_bytes().expect("saving the optimizer state");
    let mut restored = create()
        .from_bytes(bytes)
        .expect("loading the optimizer state");

    let mut expected = model.clone();
    let mut actual = model;
    for scale in [-0.05, 0.2] {
        let g = grads(&expected, scale);
        expected = original.step(lr, expected, g);
        let g = grads(&actual, scale);
        actual = restored.step(lr, actual, g);
    }
    assert_tensors_close(&actual.weight.val(), &expected.weight.val(), 1e-6);
    assert_tensors_close(
        &actual.bias.expect("bias").val(),
        &expected.bias.expect("bias").val(),
        1e-6,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamConfig, SgdConfig};

    #[test]
    fn adam_resumes() {
        assert_optimizer_resume(|| AdamConfig::new().init(), 1e-2);
    }

    #[test]
    fn a_stateless_optimizer_is_refused() {
        // SGD without momentum keeps no state, so there is nothing whose resumption is checked.
        let caught =
            std::panic::catch_unwind(|| assert_optimizer_resume(|| SgdConfig::new().init(), 1e-2));
        assert!(caught.is_err(), "a stateless optimizer must be refused");
    }
}

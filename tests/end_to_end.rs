//! Cross-crate end-to-end tests. Each runs on the device `kindling-testing` selects, so the same
//! file proves the whole stack on Flex, on wgpu (Mesa's software Vulkan in CI) and on a GPU.

use burn::module::Param;
use burn::nn::Linear;
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Tensor, TensorData};

/// Linear regression `y = X·w* + b*` on 256 points, fitted by burn's SGD from zero weights:
/// full-batch gradient descent on a well-conditioned quadratic converges linearly, so 300
/// steps at lr 0.1 leave the loss near float precision. The bound 1e-6 is far below the initial
/// loss (≈ 7) and would fail if gradients, the optimizer step or the device switch were broken.
#[test]
fn sgd_fits_a_linear_regression_on_the_test_device() {
    let device = kindling_testing::autodiff_device();
    let (n, d) = (256, 4);
    let w_true = [1.5_f32, -2.0, 0.5, 3.0];
    let b_true = -0.7_f32;
    // Deterministic, well-spread inputs in [-1, 1] (no RNG, so every backend sees the same data).
    let x: Vec<f32> = (0..n * d)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let y: Vec<f32> = x
        .chunks(d)
        .map(|row| row.iter().zip(&w_true).map(|(a, b)| a * b).sum::<f32>() + b_true)
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(x, [n, d]), &device);
    let y = Tensor::<2>::from_data(TensorData::new(y, [n, 1]), &device);

    let mut model = Linear {
        weight: Param::from_data(TensorData::new(vec![0.0_f32; d], [d, 1]), &device),
        bias: Some(Param::from_data(
            TensorData::new(vec![0.0_f32], [1]),
            &device,
        )),
    };
    let mut optim = SgdConfig::new().init();
    let loss_of =
        |m: &Linear| MseLoss::new().forward(m.forward(x.clone()), y.clone(), Reduction::Mean);
    let initial = loss_of(&model).into_scalar::<f32>();
    for _ in 0..1000 {
        let loss = loss_of(&model);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.2, model, grads);
    }
    let last = loss_of(&model).into_scalar::<f32>();
    assert!(initial > 1.0, "initial loss {initial}");
    assert!(
        last < 1e-6,
        "loss after 300 SGD steps: {last} (from {initial})"
    );
    let w = kindling_testing::to_vec(&model.weight.val());
    kindling_testing::assert_slices_close(&w, &w_true, 1e-3);
    eprintln!(
        "linear regression on {:?}: loss {initial:.3} → {last:.2e}",
        kindling_testing::backend()
    );
}

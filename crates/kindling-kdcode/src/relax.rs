//! Relaxations of a discrete choice among `K` options, usable on their own: the forward value is
//! exactly one-hot, the gradient that of a softmax (straight-through).

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, RngExt};

/// The one-hot of the argmax along the last dimension (ties: the first maximum).
pub fn one_hot_argmax<const D: usize>(logits: Tensor<D>) -> Tensor<D> {
    let dims = logits.dims();
    let k = dims[D - 1];
    let device = logits.device();
    let index = logits.argmax(D - 1).repeat_dim(D - 1, k);
    let mut shape = [1usize; D];
    shape[D - 1] = k;
    let positions = Tensor::<1, Int>::arange(0..k as i64, &device)
        .reshape(shape)
        .expand(dims);
    index.equal(positions).float()
}

/// Straight-through argmax: the forward value is `one_hot(argmax(logits))`; the gradient is that
/// of `softmax(logits / τ)` (the reference default relaxation).
///
/// ```text
/// y = onehot + (soft − stopgrad(soft)),   soft = softmax(logits/τ)
/// ```
pub fn straight_through<const D: usize>(logits: Tensor<D>, temperature: f32) -> Tensor<D> {
    let soft = burn::tensor::activation::softmax(logits.clone().div_scalar(temperature), D - 1);
    let hard = one_hot_argmax(logits.detach());
    hard + soft.clone() - soft.detach()
}

/// Standard Gumbel(0, 1) noise of a shape, from the caller's RNG: `−log(−log u)`.
pub fn gumbel_noise<const D: usize>(
    shape: [usize; D],
    rng: &mut dyn Rng,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            -(-u.ln()).ln() as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Gumbel-softmax with straight-through at temperature τ: Gumbel noise `g` is added to
/// `log_softmax(logits/τ)` and the result goes through [`straight_through`] (at τ = 1).
///
/// ```text
/// y = onehot(argmax(log_softmax(z/τ) + g)) + (soft − stopgrad(soft)),   soft = softmax(log_softmax(z/τ) + g)
/// ```
///
/// The forward value samples option `k` with probability `softmax(z/τ)_k`: at τ = 1 the
/// softmax of the logits, and ever closer to the deterministic argmax as a schedule lowers τ
/// (use the plain argmax at inference).
pub fn gumbel_straight_through<const D: usize>(
    logits: Tensor<D>,
    temperature: f32,
    noise: Tensor<D>,
) -> Tensor<D> {
    let perturbed =
        burn::tensor::activation::log_softmax(logits.div_scalar(temperature), D - 1) + noise;
    straight_through(perturbed, 1.0)
}

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::DeductronError;

/// How [`DeductronConfig::init_with_seed`] draws the weights.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum DeductronInit {
    /// Glorot (Xavier) uniform weights, `U(±√(6/(fan_in + fan_out)))`, and zero biases: the
    /// authors' training start (Keras' default), for β = 1 and shift 0.
    GlorotUniform,
    /// Weights uniform in `[−0.5, 0.5]` and biases uniform in `c ± 0.1`, so every sigmoid starts
    /// near its steepest point: for training at β = 10, where larger weights saturate the
    /// sigmoids.
    NearThreshold,
}

/// Configuration of a [`Deductron`].
#[derive(Config, Debug, PartialEq)]
pub struct DeductronConfig {
    /// Input size per frame (6 for the W-language: two 3-pixel columns).
    #[config(default = 6)]
    pub n_in: usize,
    /// Number of memory cells `m` (the hidden layer has `2m` units: `m` gates `l`, `m` gates `r`).
    #[config(default = 4)]
    pub n_memory: usize,
    /// Output size per frame (2 for the W-language: "X decided", "O decided").
    #[config(default = 2)]
    pub n_out: usize,
    /// Sharpness β of the sigmoids (10 in the paper).
    #[config(default = 10.0)]
    pub beta: f32,
    /// Shift c of the sigmoids (0.5 in the paper).
    #[config(default = 0.5)]
    pub shift: f32,
    /// How the weights are drawn by `init` / `init_with_seed`
    /// ([`GradientTraining::config`](crate::GradientTraining::config) sets it with the recipe's
    /// β and shift).
    #[config(default = "DeductronInit::GlorotUniform")]
    pub init: DeductronInit,
}

/// The Deductron (Rychlik, *A Deductron: A recurrent neural network*,
/// <https://arxiv.org/abs/1806.09038>): a recurrent network whose middle layer performs simple
/// logical inference on memory cells.
///
/// With `σ(a) = 1/(1 + exp(−β·(a − c)))`, per frame `x_t`:
///
/// ```text
/// h_t = σ(W1·x_t + B1)            split into l_t (first m) and r_t (last m)
/// z_0 = 0
/// z_t = l_{t−1} ⊙ r_{t−1} ⊙ z_{t−1} + (1 − l_{t−1})        for t ≥ 1
/// y_t = 1 − σ(W2·z_t + B2)
/// ```
///
/// Read as logic, with values near 0/1: `z_t = ¬l ∨ (l ∧ r ∧ z_{t−1})` — a gate `l` that, when
/// off, sets the memory cell, and when on keeps it only if `r` agrees; the output layer is a
/// NOR of memory cells. Parameters: `W1 [2m, n_in]`, `B1 [2m]`, `W2 [n_out, m]`, `B2 [n_out]`.
/// [`Deductron::exact`] holds the paper's hand-built weights, which decode the W-language.
///
/// ```
/// use burn::tensor::Device;
/// use kindling_deductron::{Deductron, wlang};
///
/// let device = Device::flex();
/// let net = Deductron::exact(&device);
/// let small = wlang::small();
/// let out = net.forward(small.inputs(&device));
/// assert_eq!(wlang::decode(&out.y), vec!["XOOXXO".to_string()]);
/// ```
#[derive(Module, Debug)]
pub struct Deductron {
    /// Input weights `W1`, `[2m, n_in]`.
    pub w1: Param<Tensor<2>>,
    /// Input biases `B1`, `[2m]`.
    pub b1: Param<Tensor<1>>,
    /// Output weights `W2`, `[n_out, m]`.
    pub w2: Param<Tensor<2>>,
    /// Output biases `B2`, `[n_out]`.
    pub b2: Param<Tensor<1>>,
    /// Sharpness β.
    pub beta: f32,
    /// Shift c.
    pub shift: f32,
}

/// The outputs of a forward pass.
#[derive(Debug, Clone)]
pub struct DeductronOutput {
    /// Outputs `y`, `[batch, time, n_out]`.
    pub y: Tensor<3>,
    /// Memory trace `z`, `[batch, time, m]` (`z_0 = 0`).
    pub z: Tensor<3>,
}

impl DeductronConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), DeductronError> {
        let fail = |field, value: String, reason| DeductronError::InvalidField {
            config: "DeductronConfig",
            field,
            value,
            reason,
        };
        for (field, v) in [
            ("n_in", self.n_in),
            ("n_memory", self.n_memory),
            ("n_out", self.n_out),
        ] {
            if v == 0 {
                return Err(fail(field, v.to_string(), "must be ≥ 1"));
            }
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(fail(
                "beta",
                self.beta.to_string(),
                "must be finite and > 0",
            ));
        }
        if !self.shift.is_finite() {
            return Err(fail("shift", self.shift.to_string(), "must be finite"));
        }
        Ok(())
    }

    /// A network with random weights drawn by the configured [`DeductronInit`], seeded (the
    /// same on every backend), or the validation error.
    pub fn try_init_with_seed(
        &self,
        seed: u64,
        device: &Device,
    ) -> Result<Deductron, DeductronError> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |n: usize, center: f32, half_width: f32| -> Vec<f32> {
            (0..n)
                .map(|_| center + rng.random_range(-half_width..half_width))
                .collect()
        };
        let (m, n_in, n_out) = (self.n_memory, self.n_in, self.n_out);
        let weights = match self.init {
            DeductronInit::GlorotUniform => {
                let limit =
                    |fan_in: usize, fan_out: usize| (6.0 / (fan_in + fan_out) as f32).sqrt();
                (
                    draw(2 * m * n_in, 0.0, limit(n_in, 2 * m)),
                    vec![0.0; 2 * m],
                    draw(n_out * m, 0.0, limit(m, n_out)),
                    vec![0.0; n_out],
                )
            }
            DeductronInit::NearThreshold => {
                let c = self.shift;
                (
                    draw(2 * m * n_in, 0.0, 0.5),
                    draw(2 * m, c, 0.1),
                    draw(n_out * m, 0.0, 0.5),
                    draw(n_out, c, 0.1),
                )
            }
        };
        Ok(Deductron::from_weights(self, weights, device))
    }

    /// The module with parameters drawn from `device`'s random generator, like burn's
    /// `init(&device)`: the same values after the same `device.seed(s)`. For a seed of your own
    /// that gives the same values on every backend, use [`init_with_seed`](Self::init_with_seed).
    ///
    /// # Panics
    /// When the configuration is invalid (see [`try_init`](Self::try_init)).
    pub fn init(&self, device: &Device) -> Deductron {
        self.init_with_seed(device_seed(device), device)
    }

    /// As [`init`](Self::init), or the validation error.
    pub fn try_init(&self, device: &Device) -> Result<Deductron, DeductronError> {
        self.try_init_with_seed(device_seed(device), device)
    }

    /// As [`try_init_with_seed`](Self::try_init_with_seed).
    ///
    /// # Panics
    /// When the configuration is invalid.
    pub fn init_with_seed(&self, seed: u64, device: &Device) -> Deductron {
        self.try_init_with_seed(seed, device)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The paper's hand-built weights (β = 10, c = 0.5, m = 4).
const W1: [[f32; 6]; 8] = [
    [0.0, 1.0, 1.0, 0.0, 0.0, -1.0],
    [1.0, 1.0, 0.0, -1.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, -1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0, 0.0, -1.0],
    [1.0, 1.0, 0.0, -1.0, 0.0, 0.0],
    [0.0, 1.0, 1.0, 0.0, 0.0, -1.0],
    [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, -1.0, 0.0, 0.0, 0.0],
];
const B1: [f32; 8] = [1.0; 8];
const W2: [[f32; 4]; 2] = [[-1.0, 0.0, -1.0, 0.0], [0.0, -1.0, 0.0, -1.0]];
const B2: [f32; 2] = [2.0, 2.0];

fn sigmoid<const D: usize>(a: Tensor<D>, beta: f32, shift: f32) -> Tensor<D> {
    burn::tensor::activation::sigmoid(a.sub_scalar(shift).mul_scalar(beta))
}

impl Deductron {
    /// The paper's hand-built decoder of the W-language (β = 10, c = 0.5, m = 4).
    pub fn exact(device: &Device) -> Self {
        let config = DeductronConfig::new();
        Self::from_weights(
            &config,
            (
                W1.iter().flatten().copied().collect(),
                B1.to_vec(),
                W2.iter().flatten().copied().collect(),
                B2.to_vec(),
            ),
            device,
        )
    }

    /// A network with given row-major weights `(W1, B1, W2, B2)`.
    ///
    /// # Panics
    /// When a vector's length does not match the configuration.
    pub fn from_weights(
        config: &DeductronConfig,
        (w1, b1, w2, b2): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
        device: &Device,
    ) -> Self {
        let m = config.n_memory;
        Self {
            w1: Param::from_data(TensorData::new(w1, [2 * m, config.n_in]), device),
            b1: Param::from_data(TensorData::new(b1, [2 * m]), device),
            w2: Param::from_data(TensorData::new(w2, [config.n_out, m]), device),
            b2: Param::from_data(TensorData::new(b2, [config.n_out]), device),
            beta: config.beta,
            shift: config.shift,
        }
    }

    /// Number of memory cells `m`.
    pub fn n_memory(&self) -> usize {
        self.w2.dims()[1]
    }

    /// Runs the network over a batch of equal-length sequences `[batch, time, n_in]`.
    pub fn forward(&self, x: Tensor<3>) -> DeductronOutput {
        let [batch, time, n_in] = x.dims();
        let m = self.n_memory();
        let device = x.device();
        // h for every frame at once: [batch, time, 2m]
        let h = sigmoid(
            x.reshape([batch * time, n_in])
                .matmul(self.w1.val().transpose())
                .add(self.b1.val().unsqueeze()),
            self.beta,
            self.shift,
        )
        .reshape([batch, time, 2 * m]);
        let l = h.clone().slice([0..batch, 0..time, 0..m]);
        let r = h.slice([0..batch, 0..time, m..2 * m]);
        let mut z: Tensor<2> = Tensor::zeros([batch, m], &device);
        let mut trace = Vec::with_capacity(time);
        for t in 0..time {
            if t > 0 {
                let lt: Tensor<2> = l
                    .clone()
                    .slice([0..batch, t - 1..t, 0..m])
                    .reshape([batch, m]);
                let rt: Tensor<2> = r
                    .clone()
                    .slice([0..batch, t - 1..t, 0..m])
                    .reshape([batch, m]);
                z = lt.clone().mul(rt).mul(z) + lt.neg().add_scalar(1.0);
            }
            trace.push(z.clone());
        }
        let z: Tensor<3> = Tensor::stack(trace, 1);
        let a = z
            .clone()
            .reshape([batch * time, m])
            .matmul(self.w2.val().transpose())
            .add(self.b2.val().unsqueeze());
        let n_out = self.w2.dims()[0];
        let y = sigmoid(a, self.beta, self.shift)
            .neg()
            .add_scalar(1.0)
            .reshape([batch, time, n_out]);
        DeductronOutput { y, z }
    }

    /// Sum of squared errors `Σ_t Σ_k (y − target)²` over the batch (the paper's loss).
    pub fn sse(&self, x: Tensor<3>, targets: Tensor<3>) -> Tensor<1> {
        (self.forward(x).y - targets).square().sum()
    }
}

/// A seed drawn from `device`'s random generator (48 bits from two uniform draws), so that
/// `init(&device)` follows burn's seeding (`device.seed(s)`).
fn device_seed(device: &Device) -> u64 {
    let draws = Tensor::<1>::random([2], Distribution::Default, device).into_data();
    let draws: Vec<f32> = draws.try_to_vec().expect("f32 draws");
    draws
        .iter()
        .fold(0, |acc, u| (acc << 24) | (u * 16_777_216.0) as u64)
}

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, Lstm, LstmConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::KdError;
use crate::relax::{gumbel_straight_through, one_hot_argmax, straight_through};

/// How the `D` code embeddings of a symbol become one vector.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Composition {
    /// `e = mean_j W_j[c_j]`, then a linear map to `d_model` when `d_code ≠ d_model`.
    Linear,
    /// An LSTM over the `D` code embeddings, mean-pooled over its outputs, then a linear map to
    /// `d_model`.
    Recurrent {
        /// LSTM hidden size.
        hidden: usize,
    },
}

/// How the discrete choice is relaxed during training.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Relaxation {
    /// Straight-through argmax: one-hot forward, softmax gradient (the reference default).
    StraightThrough,
    /// Gumbel-softmax with straight-through while training (deterministic argmax otherwise).
    Gumbel,
}

/// Configuration of a [`KdEmbedding`].
#[derive(Config, Debug, PartialEq)]
pub struct KdEmbeddingConfig {
    /// Vocabulary size V (the number of embedding vectors; burn's `EmbeddingConfig` field).
    pub n_embedding: usize,
    /// Output dimension d, the size of each vector (as in burn's `EmbeddingConfig`).
    pub d_model: usize,
    /// Choices per code dimension, K.
    #[config(default = 16)]
    pub choices: usize,
    /// Code length D.
    #[config(default = 16)]
    pub code_length: usize,
    /// Dimension d' of the code embeddings.
    #[config(default = 32)]
    pub d_code: usize,
    /// Composition function.
    #[config(default = "Composition::Linear")]
    pub composition: Composition,
    /// Relaxation of the discrete choice.
    #[config(default = "Relaxation::StraightThrough")]
    pub relaxation: Relaxation,
    /// Initial softmax temperature τ.
    #[config(default = 1.0)]
    pub temperature: f32,
    /// Factor applied to τ by each [`KdEmbedding::decay_temperature`] call (1 = constant).
    #[config(default = 1.0)]
    pub temperature_decay: f32,
    /// Floor of the decayed temperature.
    #[config(default = 0.1)]
    pub min_temperature: f32,
    /// End the composition with a batch norm (as the reference does).
    #[config(default = false)]
    pub batch_norm: bool,
    /// One code-embedding table shared by all D dimensions instead of one per dimension.
    #[config(default = false)]
    pub shared_tables: bool,
    /// Standard deviation of the initial code logits, N(0, σ²). Small logits let the first few
    /// dozen optimizer steps (Adam at 10⁻² moves a logit by about 10⁻² a step) settle the codes
    /// instead of keeping a random start.
    #[config(default = 0.1)]
    pub logit_std: f32,
}

/// The composition function's parameters (shared by [`KdEmbedding`] and the compact form).
#[derive(Module, Debug)]
pub struct Composer {
    /// LSTM of the recurrent composition.
    pub lstm: Option<Lstm>,
    /// Final linear map (absent for linear composition with `d_code = d_model`).
    pub output: Option<Linear>,
    /// Optional final batch norm.
    pub norm: Option<BatchNorm>,
}

impl Composer {
    /// One-hot (or relaxed) codes `[n, D, K]` and tables `[D|1, K, d']` → embeddings `[n, d]`.
    ///
    /// Linear composition takes the mean of the code embeddings as one matrix product
    /// `codes[n, D·K] × tables[D·K, d'] / D` (no `[n, D, d']` intermediate); recurrent
    /// composition runs the LSTM over the `D` code embeddings.
    pub fn compose(&self, codes: Tensor<3>, tables: Tensor<3>) -> Tensor<2> {
        if self.lstm.is_some() {
            return self.forward(embed_codes(codes, tables));
        }
        let [n, d, k] = codes.dims();
        let [tables_d, _, dc] = tables.dims();
        let pooled = if tables_d == 1 {
            codes
                .sum_dim(1)
                .reshape([n, k])
                .matmul(tables.reshape([k, dc]))
        } else {
            codes
                .reshape([n, d * k])
                .matmul(tables.reshape([d * k, dc]))
        }
        .div_scalar(d as f32);
        self.finish(pooled)
    }

    /// The output dimension, for code embeddings of dimension `d_code`.
    pub fn d_model(&self, d_code: usize) -> usize {
        self.output
            .as_ref()
            .map_or(d_code, |linear| linear.weight.dims()[1])
    }

    /// `[n, D, d'] → [n, d]`.
    pub fn forward(&self, codes: Tensor<3>) -> Tensor<2> {
        let pooled: Tensor<2> = match &self.lstm {
            Some(lstm) => lstm.forward(codes, None).0.mean_dim(1).squeeze_dim(1),
            None => codes.mean_dim(1).squeeze_dim(1),
        };
        self.finish(pooled)
    }

    /// The output map and batch norm after pooling.
    fn finish(&self, pooled: Tensor<2>) -> Tensor<2> {
        let out = match &self.output {
            Some(linear) => linear.forward(pooled),
            None => pooled,
        };
        match &self.norm {
            Some(norm) => norm.forward(out),
            None => out,
        }
    }
}

/// K-way D-dimensional discrete-code embeddings (Chen, Min & Sun, *Learning K-way D-dimensional
/// Discrete Codes for Compact Embedding Representations*, ICML 2018,
/// <https://arxiv.org/abs/1806.09464>): a drop-in for `burn::nn::Embedding` that gives each symbol
/// a code `c ∈ {1..K}^D` and composes the code's embeddings into a vector.
///
/// ```text
/// c_{i,j} = relax(logits[i, j, :] / τ)        one-hot of length K (straight-through or Gumbel)
/// e_i = compose( c_{i,1}·W_1, …, c_{i,D}·W_D )   W_j: [K, d'] code-embedding tables
/// ```
///
/// The code logits are trained end to end with the rest of the model (or by distillation toward
/// a pretrained table: [`crate::guidance`]); after training, [`crate::CompactKdEmbedding`]
/// keeps only the argmax codes (⌈log₂K⌉ bits each), the tables and the composition.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kindling_kdcode::KdEmbeddingConfig;
///
/// let device = Device::flex();
/// let embedding = KdEmbeddingConfig::new(1000, 64).with_choices(8).with_code_length(4).init_with_seed(0, &device);
/// let ids = Tensor::<2, Int>::from_ints([[1, 2, 3], [4, 5, 999]], &device);
/// assert_eq!(embedding.forward(ids).dims(), [2, 3, 64]);
/// ```
#[derive(Module, Debug)]
pub struct KdEmbedding {
    /// Code logits `[V, D, K]`.
    pub code_logits: Param<Tensor<3>>,
    /// Code-embedding tables `[D, K, d']` (`[1, K, d']` when shared).
    pub tables: Param<Tensor<3>>,
    /// The composition.
    pub composer: Composer,
    /// Current temperature τ.
    pub temperature: f32,
    /// Multiplier of τ per decay step.
    pub temperature_decay: f32,
    /// Floor of τ.
    pub min_temperature: f32,
    /// Whether training uses Gumbel noise.
    pub gumbel: bool,
}

impl KdEmbeddingConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), KdError> {
        let fail = |field, value: String, reason| KdError::InvalidField {
            config: "KdEmbeddingConfig",
            field,
            value,
            reason,
        };
        for (field, v) in [
            ("n_embedding", self.n_embedding),
            ("d_model", self.d_model),
            ("code_length", self.code_length),
            ("d_code", self.d_code),
        ] {
            if v == 0 {
                return Err(fail(field, "0".into(), "must be ≥ 1"));
            }
        }
        if !(2..=1 << 16).contains(&self.choices) {
            return Err(fail(
                "choices",
                self.choices.to_string(),
                "must be in 2..=65536",
            ));
        }
        if let Composition::Recurrent { hidden: 0 } = self.composition {
            return Err(fail(
                "composition",
                "Recurrent { hidden: 0 }".into(),
                "hidden must be ≥ 1",
            ));
        }
        for (field, v) in [
            ("temperature", self.temperature),
            ("min_temperature", self.min_temperature),
            ("logit_std", self.logit_std),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(fail(field, v.to_string(), "must be finite and > 0"));
            }
        }
        if !(self.temperature_decay.is_finite()
            && self.temperature_decay > 0.0
            && self.temperature_decay <= 1.0)
        {
            return Err(fail(
                "temperature_decay",
                self.temperature_decay.to_string(),
                "must be in (0, 1]",
            ));
        }
        Ok(())
    }

    /// The composition's modules for this configuration.
    pub(crate) fn composer(&self, device: &Device) -> Composer {
        let (lstm, output) = match self.composition {
            Composition::Linear => (
                None,
                (self.d_code != self.d_model)
                    .then(|| LinearConfig::new(self.d_code, self.d_model).init(device)),
            ),
            Composition::Recurrent { hidden } => (
                Some(LstmConfig::new(self.d_code, hidden, true).init(device)),
                Some(LinearConfig::new(hidden, self.d_model).init(device)),
            ),
        };
        Composer {
            lstm,
            output,
            norm: self
                .batch_norm
                .then(|| BatchNormConfig::new(self.d_model).init(device)),
        }
    }

    /// A KD embedding with code logits and tables drawn from `seed` (logits N(0, `logit_std`²),
    /// tables N(0, 1)), or the validation error.
    ///
    /// The composition's output is then rescaled — the tables for linear composition without a
    /// map, else the final linear map — so that the embeddings of the initial codes have unit
    /// root-mean-square entries, the scale of `burn::nn::Embedding`'s N(0, 1) rows: a model
    /// tuned for a full embedding sees inputs of the size it expects.
    pub fn try_init_with_seed(&self, seed: u64, device: &Device) -> Result<KdEmbedding, KdError> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut normal = |n: usize, std: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                    let u2: f32 = rng.random();
                    std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
                })
                .collect()
        };
        let (v, d, k, dc) = (
            self.n_embedding,
            self.code_length,
            self.choices,
            self.d_code,
        );
        let tables_d = if self.shared_tables { 1 } else { d };
        let embedding = KdEmbedding {
            code_logits: Param::from_data(
                TensorData::new(normal(v * d * k, self.logit_std), [v, d, k]),
                device,
            ),
            tables: Param::from_data(
                TensorData::new(normal(tables_d * k * dc, 1.0), [tables_d, k, dc]),
                device,
            ),
            composer: self.composer(device),
            temperature: self.temperature,
            temperature_decay: self.temperature_decay,
            min_temperature: self.min_temperature,
            gumbel: self.relaxation == Relaxation::Gumbel,
        };
        Ok(embedding.with_output_scale(1.0))
    }

    /// The module with parameters drawn from `device`'s random generator, like burn's
    /// `init(&device)`: the same values after the same `device.seed(s)`. For a seed of your own
    /// that gives the same code logits and tables on every backend, use
    /// [`init_with_seed`](Self::init_with_seed) (the composition's layers are burn layers, drawn
    /// from the device's generator either way).
    ///
    /// # Panics
    /// When the configuration is invalid (see [`try_init`](Self::try_init)).
    pub fn init(&self, device: &Device) -> KdEmbedding {
        self.init_with_seed(device_seed(device), device)
    }

    /// As [`init`](Self::init), or the validation error.
    pub fn try_init(&self, device: &Device) -> Result<KdEmbedding, KdError> {
        self.try_init_with_seed(device_seed(device), device)
    }

    /// As [`try_init_with_seed`](Self::try_init_with_seed).
    ///
    /// # Panics
    /// When the configuration is invalid.
    pub fn init_with_seed(&self, seed: u64, device: &Device) -> KdEmbedding {
        self.try_init_with_seed(seed, device)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `[n, D, K]` one-hot codes × tables `[D|1, K, d']` → code embeddings `[n, D, d']`.
fn embed_codes(codes: Tensor<3>, tables: Tensor<3>) -> Tensor<3> {
    let [_, d, k] = codes.dims();
    let dc = tables.dims()[2];
    let tables = if tables.dims()[0] == 1 && d > 1 {
        tables.expand([d, k, dc])
    } else {
        tables
    };
    codes.swap_dims(0, 1).matmul(tables).swap_dims(0, 1)
}

impl KdEmbedding {
    /// Rescales the composition's output — the tables for linear composition without a map,
    /// else the final linear map — so that the embeddings of the first (up to) 1024 symbols'
    /// current codes have root-mean-square entries `rms`. (No effect with a batch norm, which
    /// sets the scale itself.)
    pub fn with_output_scale(mut self, rms: f32) -> Self {
        if self.composer.norm.is_some() {
            return self;
        }
        let n = self.vocab().min(1024);
        let plain = self.clone().valid();
        let ids = Tensor::<1, Int>::arange(0..n as i64, &plain.code_logits.device());
        let codes = one_hot_argmax(plain.code_logits.val().select(0, ids));
        let sample = plain.composer.compose(codes, plain.tables.val());
        let now = sample.square().mean().sqrt().into_scalar::<f32>();
        if !(now.is_finite() && now > 0.0 && rms.is_finite()) {
            return self;
        }
        let scale = rms / now;
        match self.composer.output.take() {
            Some(mut linear) => {
                linear.weight = linear.weight.map(|w| rescaled(w, scale));
                linear.bias = linear.bias.map(|b| b.map(|b| rescaled(b, scale)));
                self.composer.output = Some(linear);
            }
            None => self.tables = self.tables.map(|t| rescaled(t, scale)),
        }
        self
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.code_logits.dims()[0]
    }

    /// Code length D.
    pub fn code_length(&self) -> usize {
        self.code_logits.dims()[1]
    }

    /// Choices per dimension K.
    pub fn choices(&self) -> usize {
        self.code_logits.dims()[2]
    }

    /// Output dimension d.
    pub fn d_model(&self) -> usize {
        self.composer.d_model(self.tables.dims()[2])
    }

    /// Multiplies τ by the configured decay (not below the floor); call once per epoch or step.
    pub fn decay_temperature(&mut self) {
        self.temperature = (self.temperature * self.temperature_decay).max(self.min_temperature);
    }

    /// The relaxed one-hot codes `[n, D, K]` of flat ids `[n]`: straight-through (or, while the
    /// logits track gradients and the relaxation is Gumbel, Gumbel straight-through).
    pub fn relaxed_codes(&self, ids: Tensor<1, Int>) -> Tensor<3> {
        self.relax(self.code_logits.val().select(0, ids))
    }

    /// The relaxation of code logits `[n, D, K]` at the current temperature: Gumbel
    /// straight-through when configured and the logits track gradients, else straight-through.
    pub fn relax(&self, logits: Tensor<3>) -> Tensor<3> {
        if self.gumbel && logits.is_require_grad() {
            let u = Tensor::<3>::random(
                logits.dims(),
                Distribution::Uniform(1e-7, 1.0),
                &logits.device(),
            );
            let noise = u.log().neg().log().neg();
            gumbel_straight_through(logits, self.temperature, noise)
        } else {
            straight_through(logits, self.temperature)
        }
    }

    /// Embeddings of ids `[batch, seq]` → `[batch, seq, d_model]`, like `burn::nn::Embedding`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = ids.dims();
        let codes = self.relaxed_codes(ids.reshape([b * s]));
        let out = self.composer.compose(codes, self.tables.val());
        let d = out.dims()[1];
        out.reshape([b, s, d])
    }

    /// The discrete codes `argmax` of every symbol, `[V][D]`.
    pub fn codes(&self) -> Vec<Vec<u32>> {
        let logits = self.code_logits.val();
        let [v, d, _] = logits.dims();
        let index: Vec<i64> = logits.argmax(2).try_into_vec_as().expect("codes");
        (0..v)
            .map(|i| (0..d).map(|j| index[i * d + j] as u32).collect())
            .collect()
    }

    /// Embeddings of all `V` symbols with their argmax codes, `[V, d_model]` (no gradient
    /// relaxation involved).
    pub fn table(&self) -> Tensor<2> {
        let codes = one_hot_argmax(self.code_logits.val());
        self.composer.compose(codes, self.tables.val())
    }
}

/// `tensor · scale` as a fresh trainable leaf, as the initialiser would have drawn it at that
/// scale (not an autodiff node of the old value).
fn rescaled<const D: usize>(tensor: Tensor<D>, scale: f32) -> Tensor<D> {
    let device = tensor.device();
    let shape = tensor.shape();
    let tracked = tensor.is_require_grad();
    let values: Vec<f32> = tensor
        .into_data()
        .iter::<f32>()
        .map(|x| x * scale)
        .collect();
    let fresh = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
    if tracked {
        fresh.set_require_grad(true)
    } else {
        fresh
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

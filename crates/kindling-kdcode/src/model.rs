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
    /// `[n, D, d'] → [n, d]`.
    pub fn forward(&self, codes: Tensor<3>) -> Tensor<2> {
        let pooled: Tensor<2> = match &self.lstm {
            Some(lstm) => lstm.forward(codes, None).0.mean_dim(1).squeeze_dim(1),
            None => codes.mean_dim(1).squeeze_dim(1),
        };
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
/// a pretrained table: [`crate::distillation_loss`]); after training, [`crate::CompactKdEmbedding`]
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

    /// A KD embedding with code logits and tables drawn from `seed` (logits N(0, 1), tables
    /// N(0, 1/d')), or the validation error.
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
        Ok(KdEmbedding {
            code_logits: Param::from_data(
                TensorData::new(normal(v * d * k, 1.0), [v, d, k]),
                device,
            ),
            tables: Param::from_data(
                TensorData::new(
                    normal(tables_d * k * dc, 1.0 / (dc as f32).sqrt()),
                    [tables_d, k, dc],
                ),
                device,
            ),
            composer: self.composer(device),
            temperature: self.temperature,
            temperature_decay: self.temperature_decay,
            min_temperature: self.min_temperature,
            gumbel: self.relaxation == Relaxation::Gumbel,
        })
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
pub(crate) fn embed_codes(codes: Tensor<3>, tables: Tensor<3>) -> Tensor<3> {
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

    /// Multiplies τ by the configured decay (not below the floor); call once per epoch or step.
    pub fn decay_temperature(&mut self) {
        self.temperature = (self.temperature * self.temperature_decay).max(self.min_temperature);
    }

    /// The relaxed one-hot codes `[n, D, K]` of flat ids `[n]`: straight-through (or, while the
    /// logits track gradients and the relaxation is Gumbel, Gumbel straight-through).
    pub fn relaxed_codes(&self, ids: Tensor<1, Int>) -> Tensor<3> {
        let logits = self.code_logits.val().select(0, ids);
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
        let out = self.composer.forward(embed_codes(codes, self.tables.val()));
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
        self.composer.forward(embed_codes(codes, self.tables.val()))
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

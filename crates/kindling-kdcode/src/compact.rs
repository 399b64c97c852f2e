use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::model::Composer;
use crate::{KdEmbedding, KdEmbeddingConfig};

/// The inference form of a [`KdEmbedding`]: the argmax codes bit-packed, the code-embedding
/// tables and the composition — nothing of the training variables (the code logits are
/// `V·D·K` floats, larger than the table they replace). Same `forward` as `burn::nn::Embedding`.
///
/// Codes are packed `⌊32/b⌋` to a 32-bit word, `b = ⌈log₂K⌉` bits each, so no code straddles a
/// word (for `b` dividing 32 this is exactly `V·D·b` bits; otherwise a few bits per word are
/// unused, and [`size_report`](Self::size_report) counts both). The module saves and loads with
/// burn's record API like any other.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kindling_kdcode::{CompactKdEmbedding, KdEmbeddingConfig};
///
/// let device = Device::flex();
/// let trained = KdEmbeddingConfig::new(100, 16).with_choices(4).with_code_length(8).init_with_seed(0, &device);
/// let compact = CompactKdEmbedding::from_trained(&trained);
/// let ids = Tensor::<2, Int>::from_ints([[3, 14, 15]], &device);
/// assert_eq!(compact.forward(ids.clone()).dims(), trained.forward(ids).dims());
/// println!("{}", compact.size_report());
/// ```
#[derive(Module, Debug)]
pub struct CompactKdEmbedding {
    /// Packed codes: `⌊32/b⌋` codes of `b` bits per 32-bit word (stored as i32).
    pub packed_codes: Param<Tensor<1, Int>>,
    /// Code-embedding tables `[D|1, K, d']`.
    pub tables: Param<Tensor<3>>,
    /// The composition.
    pub composer: Composer,
    /// Vocabulary size V.
    pub vocab: usize,
    /// Code length D.
    pub code_length: usize,
    /// Choices per dimension K.
    pub choices: usize,
}

/// Bits per code: `⌈log₂K⌉`.
pub fn code_bits(choices: usize) -> usize {
    (usize::BITS - (choices - 1).leading_zeros()) as usize
}

/// Exact sizes of a compact embedding, in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeReport {
    /// `V·D·⌈log₂K⌉`: the information in the codes.
    pub code_bits: u64,
    /// Bits the packed code words occupy (`≥ code_bits`, equal when `⌈log₂K⌉` divides 32).
    pub stored_code_bits: u64,
    /// The code-embedding tables, 32 bits per float.
    pub table_bits: u64,
    /// The composition (LSTM, linear map, batch norm incl. running statistics), 32 bits per float.
    pub composition_bits: u64,
    /// Everything stored: packed codes + tables + composition.
    pub total_bits: u64,
    /// The full `V × d` f32 table the embedding replaces: `V·d·32`.
    pub full_table_bits: u64,
}

impl SizeReport {
    /// `full_table_bits / total_bits`.
    pub fn ratio(&self) -> f64 {
        self.full_table_bits as f64 / self.total_bits as f64
    }

    /// The saving, `1 − total / full`.
    pub fn saving(&self) -> f64 {
        1.0 - self.total_bits as f64 / self.full_table_bits as f64
    }
}

impl std::fmt::Display for SizeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mbit = |b: u64| b as f64 / 1e6;
        write!(
            f,
            "codes {:.3} Mbit (stored {:.3}), tables {:.3} Mbit, composition {:.3} Mbit, total {:.3} Mbit \
             vs full table {:.3} Mbit: {:.1}× smaller ({:.1}% saved)",
            mbit(self.code_bits),
            mbit(self.stored_code_bits),
            mbit(self.table_bits),
            mbit(self.composition_bits),
            mbit(self.total_bits),
            mbit(self.full_table_bits),
            self.ratio(),
            100.0 * self.saving()
        )
    }
}

fn pack(codes: &[Vec<u32>], bits: usize) -> Vec<i32> {
    let per_word = 32 / bits;
    let flat: Vec<u32> = codes.iter().flatten().copied().collect();
    flat.chunks(per_word)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u32, |w, (i, &c)| w | (c << (i * bits))) as i32
        })
        .collect()
}

impl CompactKdEmbedding {
    /// Extracts the inference form of a trained embedding (argmax codes).
    pub fn from_trained(trained: &KdEmbedding) -> Self {
        let device = trained.tables.val().device().inner();
        let bits = code_bits(trained.choices());
        let words = pack(&trained.codes(), bits);
        let n = words.len();
        Self {
            packed_codes: Param::initialized(
                ParamId::new(),
                Tensor::<1, Int>::from_data(TensorData::new(words, [n]), &device),
            ),
            tables: Param::from_tensor(trained.tables.val().inner()),
            composer: trained.composer.clone().valid(),
            vocab: trained.vocab(),
            code_length: trained.code_length(),
            choices: trained.choices(),
        }
    }

    /// An empty compact embedding shaped by `config` (zeros), to load a saved one into.
    pub fn empty(config: &KdEmbeddingConfig, device: &Device) -> Self {
        let bits = code_bits(config.choices);
        let words = (config.n_embedding * config.code_length).div_ceil(32 / bits);
        let tables_d = if config.shared_tables {
            1
        } else {
            config.code_length
        };
        Self {
            packed_codes: Param::initialized(
                ParamId::new(),
                Tensor::<1, Int>::zeros([words], device),
            ),
            tables: Param::from_tensor(Tensor::zeros(
                [tables_d, config.choices, config.d_code],
                device,
            )),
            composer: config.composer(device),
            vocab: config.n_embedding,
            code_length: config.code_length,
            choices: config.choices,
        }
    }

    /// The codes of flat ids `[n]` as `[n, D]`, unpacked on the device.
    pub fn codes_of(&self, ids: Tensor<1, Int>) -> Tensor<2, Int> {
        let n = ids.dims()[0];
        let d = self.code_length;
        let bits = code_bits(self.choices);
        let per_word = (32 / bits) as i64;
        let device = ids.device();
        let positions = ids.reshape([n, 1]).mul_scalar(d as i64)
            + Tensor::<1, Int>::arange(0..d as i64, &device).reshape([1, d]);
        let words = self
            .packed_codes
            .val()
            .select(0, positions.clone().div_scalar(per_word).reshape([n * d]))
            .reshape([n, d]);
        let shift = positions.remainder_scalar(per_word).mul_scalar(bits as i64);
        words
            .bitwise_right_shift(shift)
            .bitwise_and_scalar((1i64 << bits) - 1)
    }

    /// Embeddings of ids `[batch, seq]` → `[batch, seq, d_model]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = ids.dims();
        let codes = self.codes_of(ids.reshape([b * s])); // [n, D]
        let one_hot: Tensor<3> = codes.one_hot(self.choices).float();
        let out = self.composer.compose(one_hot, self.tables.val());
        let d = out.dims()[1];
        out.reshape([b, s, d])
    }

    /// Exact sizes of this embedding against the full `V × d_model` table.
    pub fn size_report(&self) -> SizeReport {
        let bits = code_bits(self.choices) as u64;
        let code_bits = self.vocab as u64 * self.code_length as u64 * bits;
        let stored_code_bits = self.packed_codes.dims()[0] as u64 * 32;
        let table_bits = self.tables.shape().num_elements() as u64 * 32;
        let composition_bits = self.composer.num_params() as u64 * 32
            + self
                .composer
                .norm
                .as_ref()
                .map_or(0, |n| 2 * n.gamma.dims()[0] as u64 * 32);
        let d_model = self.composer.d_model(self.tables.dims()[2]);
        SizeReport {
            code_bits,
            stored_code_bits,
            table_bits,
            composition_bits,
            total_bits: stored_code_bits + table_bits + composition_bits,
            full_table_bits: self.vocab as u64 * d_model as u64 * 32,
        }
    }
}

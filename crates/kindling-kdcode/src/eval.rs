//! Measuring a compressed embedding table against the original — relative reconstruction error
//! and how many nearest neighbours survive — and the two classic baselines at the same code bits,
//! product quantisation and residual quantisation (k-means codebooks).

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::{KdError, code_bits};

/// `‖rebuilt − original‖_F / ‖original‖_F` of two tables of the same shape.
pub fn relative_error(rebuilt: &Tensor<2>, original: &Tensor<2>) -> f64 {
    let diff = (rebuilt.clone() - original.clone())
        .square()
        .sum()
        .into_scalar::<f64>();
    let norm = original.clone().square().sum().into_scalar::<f64>();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// Rows scaled to unit length (zero rows stay zero).
fn unit_rows(table: &Tensor<2>) -> Tensor<2> {
    let norms = table.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    table.clone().div(norms)
}

/// The top-`k` cosine neighbours of the rows `probes` of `table`, excluding each probe itself.
fn top_neighbours(table: &Tensor<2>, probes: &[i64], k: usize) -> Vec<Vec<u32>> {
    let v = table.dims()[0];
    let unit = unit_rows(table);
    let device = table.device();
    let mut out = Vec::with_capacity(probes.len());
    for chunk in probes.chunks(256) {
        let ids =
            Tensor::<1, Int>::from_data(TensorData::new(chunk.to_vec(), [chunk.len()]), &device);
        let sims: Vec<f32> = unit
            .clone()
            .select(0, ids)
            .matmul(unit.clone().transpose())
            .try_into_vec_as()
            .expect("f32 similarities");
        for (row, &probe) in sims.chunks_exact(v).zip(chunk) {
            let mut candidates: Vec<u32> = (0..v as u32).filter(|&r| r as i64 != probe).collect();
            let k = k.min(candidates.len());
            if k == 0 {
                out.push(Vec::new());
                continue;
            }
            let by_similarity =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            candidates.select_nth_unstable_by(k - 1, by_similarity);
            candidates.truncate(k);
            out.push(candidates);
        }
    }
    out
}

/// Top-`k` cosine-neighbour overlap: for `probes` rows evenly spaced through the table (all rows
/// when there are fewer), the fraction of each row's `k` nearest neighbours in `original` (by
/// cosine similarity, itself excluded) that are also among its `k` nearest in `rebuilt`,
/// averaged. 1 means every neighbourhood survived; random tables give about `k/V`.
pub fn neighbour_overlap(
    original: &Tensor<2>,
    rebuilt: &Tensor<2>,
    probes: usize,
    k: usize,
) -> f64 {
    let v = original.dims()[0];
    let probes = probes.clamp(1, v);
    let ids: Vec<i64> = (0..probes).map(|i| (i * v / probes) as i64).collect();
    let a = top_neighbours(original, &ids, k);
    let b = top_neighbours(rebuilt, &ids, k);
    let overlap: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| x.iter().filter(|w| y.contains(w)).count() as f64 / x.len().max(1) as f64)
        .sum();
    overlap / probes as f64
}

/// A table quantised by a baseline, with its exact size.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The reconstructed table `[V, d]`.
    pub table: Tensor<2>,
    /// `V·D·⌈log₂K⌉`: the codes.
    pub code_bits: u64,
    /// The codebooks, 32 bits per float.
    pub codebook_bits: u64,
    /// Each row's code, row-major `[V, D]`.
    pub codes: Vec<u32>,
    /// The codebooks, row-major: `[D, K, d]` for residual quantisation; for product
    /// quantisation each group's `[K, width]` in turn.
    pub codebooks: Vec<f32>,
}

impl Quantized {
    /// Codes and codebooks.
    pub fn total_bits(&self) -> u64 {
        self.code_bits + self.codebook_bits
    }
}

/// Lloyd's k-means of the rows of `x` (`[n, m]`, host values `xs`): centroids trained on at
/// most `64·k` random rows for `iterations` rounds, then every row assigned. Returns the
/// centroids (row-major `[k, m]`) and each row's centroid.
fn kmeans(
    x: &Tensor<2>,
    xs: &[f32],
    k: usize,
    iterations: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<usize>) {
    let [n, m] = x.dims();
    let device = x.device();
    let mut rows: Vec<usize> = (0..n).collect();
    rows.shuffle(rng);
    let sample: Vec<usize> = rows[..n.min(64 * k)].to_vec();
    let mut centroids: Vec<f32> = (0..k)
        .flat_map(|c| {
            let r = sample[c % sample.len()];
            xs[r * m..(r + 1) * m].to_vec()
        })
        .collect();
    let assign = |subset: Option<&Tensor<1, Int>>, centroids: &[f32]| -> Vec<usize> {
        let c = Tensor::<2>::from_data(TensorData::new(centroids.to_vec(), [k, m]), &device);
        let rows = match subset {
            Some(ids) => x.clone().select(0, ids.clone()),
            None => x.clone(),
        };
        let half_norms = c
            .clone()
            .square()
            .sum_dim(1)
            .mul_scalar(0.5)
            .reshape([1, k]);
        let scores = half_norms - rows.matmul(c.transpose());
        let best: Vec<i64> = scores.argmin(1).try_into_vec_as().expect("assignments");
        best.into_iter().map(|b| b as usize).collect()
    };
    let sample_ids = Tensor::<1, Int>::from_data(
        TensorData::new(sample.iter().map(|&r| r as i64).collect(), [sample.len()]),
        &device,
    );
    for _ in 0..iterations {
        let owner = assign(Some(&sample_ids), &centroids);
        let mut sums = vec![0.0f64; k * m];
        let mut counts = vec![0usize; k];
        for (&row, &c) in sample.iter().zip(&owner) {
            counts[c] += 1;
            for (s, v) in sums[c * m..(c + 1) * m]
                .iter_mut()
                .zip(&xs[row * m..(row + 1) * m])
            {
                *s += *v as f64;
            }
        }
        for c in 0..k {
            let target = &mut centroids[c * m..(c + 1) * m];
            if counts[c] == 0 {
                // An empty cluster restarts at a random sample row.
                let r = sample[rng.random_range(0..sample.len())];
                target.copy_from_slice(&xs[r * m..(r + 1) * m]);
            } else {
                for (t, s) in target.iter_mut().zip(&sums[c * m..(c + 1) * m]) {
                    *t = (*s / counts[c] as f64) as f32;
                }
            }
        }
    }
    let owner = assign(None, &centroids);
    (centroids, owner)
}

/// The shape of a baseline quantiser at the same code bits as K-way D-dimensional codes.
#[derive(burn::config::Config, Debug, PartialEq)]
pub struct QuantizerConfig {
    /// Centroids per codebook, K.
    pub choices: usize,
    /// Codebooks per row, D.
    pub code_length: usize,
    /// Lloyd rounds of each k-means.
    #[config(default = 10)]
    pub iterations: usize,
    /// Seed of the k-means samples and starts.
    #[config(default = 0)]
    pub seed: u64,
}

impl QuantizerConfig {
    /// Checks the fields against `table`; the error names the first invalid one.
    fn check(&self, table: &Tensor<2>) -> Result<(), KdError> {
        let [v, d] = table.dims();
        if v == 0 || d == 0 {
            return Err(KdError::InvalidTable {
                reason: format!("the table is {v} × {d}"),
            });
        }
        let fail = |field, value: usize, reason| KdError::InvalidField {
            config: "QuantizerConfig",
            field,
            value: value.to_string(),
            reason,
        };
        if !(2..=1 << 16).contains(&self.choices) {
            return Err(fail("choices", self.choices, "must be in 2..=65536"));
        }
        if self.code_length == 0 {
            return Err(fail("code_length", 0, "must be ≥ 1"));
        }
        Ok(())
    }

    /// Product quantisation (Jégou et al. 2011) at the same code bits as K-way D-dimensional codes:
    /// the `d` columns split into `D` contiguous groups (sizes differing by at most one), each
    /// quantised by k-means with `K` centroids. Codebooks: `K·d` floats.
    pub fn product(&self, table: &Tensor<2>) -> Result<Quantized, KdError> {
        self.check(table)?;
        let (choices, code_length, iterations) = (self.choices, self.code_length, self.iterations);
        let [v, d] = table.dims();
        if code_length > d {
            return Err(KdError::InvalidField {
                config: "QuantizerConfig",
                field: "code_length",
                value: code_length.to_string(),
                reason: "at most the table's width (one column per group at least)",
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let device = table.device();
        let mut parts = Vec::with_capacity(code_length);
        let mut codes = vec![0u32; v * code_length];
        let mut codebooks = Vec::with_capacity(choices * d);
        for g in 0..code_length {
            let (lo, hi) = (g * d / code_length, (g + 1) * d / code_length);
            let sub = table.clone().slice([0..v, lo..hi]);
            let xs: Vec<f32> = sub.clone().try_into_vec_as().expect("f32 table");
            let (centroids, owner) = kmeans(&sub, &xs, choices, iterations, &mut rng);
            let w = hi - lo;
            for (row, &c) in owner.iter().enumerate() {
                codes[row * code_length + g] = c as u32;
            }
            let rebuilt: Vec<f32> = owner
                .iter()
                .flat_map(|&c| centroids[c * w..(c + 1) * w].iter().copied())
                .collect();
            parts.push(Tensor::<2>::from_data(
                TensorData::new(rebuilt, [v, w]),
                &device,
            ));
            codebooks.extend(centroids);
        }
        Ok(Quantized {
            table: Tensor::cat(parts, 1),
            code_bits: (v * code_length * code_bits(choices)) as u64,
            codebook_bits: (choices * d * 32) as u64,
            codes,
            codebooks,
        })
    }

    /// Residual quantisation (Chen, Guan & Wang 2010) at the same code bits as K-way D-dimensional
    /// codes: `D` stages, each quantising what the previous ones left by k-means with `K` centroids;
    /// a row is the sum of its `D` centroids. Codebooks: `D·K·d` floats — the same as KD codes'
    /// per-dimension tables at `d' = d`, which makes it the like-for-like baseline of linear
    /// composition.
    pub fn residual(&self, table: &Tensor<2>) -> Result<Quantized, KdError> {
        self.check(table)?;
        let (choices, code_length, iterations) = (self.choices, self.code_length, self.iterations);
        let [v, d] = table.dims();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let device = table.device();
        let mut residual: Vec<f32> = table.clone().try_into_vec_as().expect("f32 table");
        let mut codes = vec![0u32; v * code_length];
        let mut codebooks = Vec::with_capacity(code_length * choices * d);
        for stage in 0..code_length {
            let x = Tensor::<2>::from_data(TensorData::new(residual.clone(), [v, d]), &device);
            let (centroids, owner) = kmeans(&x, &residual, choices, iterations, &mut rng);
            for (i, (row, &c)) in residual.chunks_exact_mut(d).zip(&owner).enumerate() {
                codes[i * code_length + stage] = c as u32;
                for (r, c) in row.iter_mut().zip(&centroids[c * d..(c + 1) * d]) {
                    *r -= c;
                }
            }
            codebooks.extend(centroids);
        }
        let residual = Tensor::<2>::from_data(TensorData::new(residual, [v, d]), &device);
        Ok(Quantized {
            table: table.clone() - residual,
            code_bits: (v * code_length * code_bits(choices)) as u64,
            codebook_bits: (code_length * choices * d * 32) as u64,
            codes,
            codebooks,
        })
    }
}

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::GwmError;

/// How the picture's border is represented.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BoundaryEncoding {
    /// Position-typed tensors: per symbol, one tensor per corner (2 legs), per border side (3 legs)
    /// and for the interior (4 legs).
    Typed,
    /// One interior tensor per symbol (4 legs) and four learned boundary vectors (left, right,
    /// top, bottom) closing the legs that point out of the picture — the same as padding the
    /// picture with a border symbol whose tensors are those vectors.
    ///
    /// **Use this to evaluate at sizes you did not train on.** Every pixel uses the same
    /// tensor, so training exercises the tying even at 3×3; trained on 3×3, 3×4 and 4×3 with
    /// [`train_sizes`](crate::train_sizes), Bars & Stripes transfers to 5×5 with AUC ≥ 0.96 on
    /// four seeds, where typed tensors trained at 3×3 rank at chance.
    Vectors,
}

/// How the tensors start.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum GwmInit {
    /// Every tensor is the unit tensor `e₀ ⊗ e₀ ⊗ …` (so every picture of every size evaluates
    /// to exactly 1) plus Gaussian noise of standard deviation `noise`: value-preserving, the
    /// recommended start.
    NearConstant {
        /// Standard deviation of the added noise.
        noise: f32,
    },
    /// Independent Gaussian entries of standard deviation `std` (values grow or vanish with the
    /// picture size; the contraction's normalisation keeps them representable).
    Gaussian {
        /// Standard deviation of the entries.
        std: f32,
    },
}

/// Configuration of a [`PictureGwm`].
#[derive(Config, Debug, PartialEq)]
pub struct PictureGwmConfig {
    /// Alphabet size |Σ| (2 for binary pictures).
    #[config(default = 2)]
    pub alphabet: usize,
    /// Bond dimension d of every edge.
    #[config(default = 3)]
    pub bond: usize,
    /// Initialisation scheme.
    #[config(default = "GwmInit::NearConstant { noise: 0.1 }")]
    pub init: GwmInit,
    /// Boundary encoding.
    #[config(default = "BoundaryEncoding::Typed")]
    pub boundary: BoundaryEncoding,
}

/// The nine position types of an `h × w` grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PositionType {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Top,
    Bottom,
    Left,
    Right,
    Interior,
}

impl PositionType {
    fn at(i: usize, j: usize, h: usize, w: usize) -> Self {
        use PositionType::*;
        match (i == 0, i == h - 1, j == 0, j == w - 1) {
            (true, _, true, _) => TopLeft,
            (true, _, _, true) => TopRight,
            (_, true, true, _) => BottomLeft,
            (_, true, _, true) => BottomRight,
            (true, _, _, _) => Top,
            (_, true, _, _) => Bottom,
            (_, _, true, _) => Left,
            (_, _, _, true) => Right,
            _ => Interior,
        }
    }

    /// Which of the legs (left, right, up, down) the type has.
    fn legs(self) -> [bool; 4] {
        use PositionType::*;
        match self {
            TopLeft => [false, true, false, true],
            TopRight => [true, false, false, true],
            BottomLeft => [false, true, true, false],
            BottomRight => [true, false, true, false],
            Top => [true, true, false, true],
            Bottom => [true, true, true, false],
            Left => [false, true, true, true],
            Right => [true, false, true, true],
            Interior => [true; 4],
        }
    }

    const ALL: [PositionType; 9] = [
        PositionType::TopLeft,
        PositionType::TopRight,
        PositionType::BottomLeft,
        PositionType::BottomRight,
        PositionType::Top,
        PositionType::Bottom,
        PositionType::Left,
        PositionType::Right,
        PositionType::Interior,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|&t| t == self).expect("listed")
    }
}

/// A graph weighted model on pictures (Amortila & Rabusseau, *Learning Graph Weighted Models on
/// Pictures*, ICGI 2018, <https://arxiv.org/abs/1806.08297>): a picture becomes a tensor network
/// on its grid, one tensor per pixel chosen by the pixel's symbol and position type, and its
/// value is the network's full contraction.
///
/// ```text
/// f(P) = Σ over all bond indices  Π_{(i,j)} T[type(i,j)][P(i,j)](left, right, up, down)
/// ```
///
/// Tensors are tied across positions of the same type, so one model evaluates pictures of any
/// size ≥ 2×2. The contraction runs row by row along the shorter side (the picture is transposed
/// when it is wider than tall): the rows above are carried as one tensor with a leg per column
/// (`d^w` entries) and each pixel is absorbed by one batched matmul, costing
/// `O(h·w·d^{w+2})` per picture. After each row the carried tensor is divided by its largest
/// magnitude and the logarithm of that scale is accumulated, so intermediate values neither
/// overflow nor vanish; the result is `carried · exp(log-scale)` (differentiable throughout).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kindling_gwm::PictureGwmConfig;
///
/// let device = Device::flex();
/// let model = PictureGwmConfig::new().with_bond(2).init_with_seed(0, &device);
/// let pictures = Tensor::<3, Int>::from_ints([[[0, 1, 0], [1, 1, 0]]], &device);
/// let values = model.forward(pictures);
/// assert_eq!(values.dims(), [1]);
/// ```
#[derive(Module, Debug)]
pub struct PictureGwm {
    /// Per position type (corners, borders, interior): `[Σ, d_left, d_right, d_up, d_down]`
    /// with 1 for a leg the type does not have (for [`BoundaryEncoding::Vectors`] only the
    /// interior tensor is used).
    pub tensors: Vec<Param<Tensor<5>>>,
    /// Boundary vectors `[4, d]` (left, right, top, bottom) for [`BoundaryEncoding::Vectors`].
    pub boundary: Option<Param<Tensor<2>>>,
    /// Alphabet size.
    pub alphabet: usize,
    /// Bond dimension.
    pub bond: usize,
}

impl PictureGwmConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), GwmError> {
        let fail = |field, value: String, reason| GwmError::InvalidField {
            config: "PictureGwmConfig",
            field,
            value,
            reason,
        };
        if self.alphabet < 1 {
            return Err(fail("alphabet", self.alphabet.to_string(), "must be ≥ 1"));
        }
        if self.bond < 1 {
            return Err(fail("bond", self.bond.to_string(), "must be ≥ 1"));
        }
        let scale = match self.init {
            GwmInit::NearConstant { noise } => noise,
            GwmInit::Gaussian { std } => std,
        };
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(fail(
                "init",
                format!("{:?}", self.init),
                "its scale must be finite and ≥ 0",
            ));
        }
        Ok(())
    }

    /// A model initialised from `seed` (the same on every backend), or the validation error.
    pub fn try_init_with_seed(&self, seed: u64, device: &Device) -> Result<PictureGwm, GwmError> {
        self.validate()?;
        let (s, d) = (self.alphabet, self.bond);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensor = |dims: [usize; 5]| {
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|k| {
                    let gauss = gaussian(&mut rng);
                    match self.init {
                        // Entry (σ, 0, 0, 0, 0) is the first of each symbol's block.
                        GwmInit::NearConstant { noise } => {
                            let unit = (k % (n / s) == 0) as u8 as f32;
                            unit + noise * gauss
                        }
                        GwmInit::Gaussian { std } => std * gauss,
                    }
                })
                .collect();
            Param::from_data(TensorData::new(values, dims), device)
        };
        let (tensors, boundary) = match self.boundary {
            BoundaryEncoding::Typed => {
                let tensors = PositionType::ALL
                    .iter()
                    .map(|t| {
                        let legs = t.legs().map(|has| if has { d } else { 1 });
                        tensor([s, legs[0], legs[1], legs[2], legs[3]])
                    })
                    .collect();
                (tensors, None)
            }
            BoundaryEncoding::Vectors => {
                let interior = tensor([s, d, d, d, d]);
                let values: Vec<f32> = (0..4 * d)
                    .map(|k| {
                        let gauss = gaussian(&mut rng);
                        match self.init {
                            GwmInit::NearConstant { noise } => {
                                (k % d == 0) as u8 as f32 + noise * gauss
                            }
                            GwmInit::Gaussian { std } => std * gauss,
                        }
                    })
                    .collect();
                (
                    vec![interior],
                    Some(Param::from_data(TensorData::new(values, [4, d]), device)),
                )
            }
        };
        Ok(PictureGwm {
            tensors,
            boundary,
            alphabet: s,
            bond: d,
        })
    }

    /// The module with parameters drawn from `device`'s random generator, like burn's
    /// `init(&device)`: the same values after the same `device.seed(s)`. For a seed of your own
    /// that gives the same values on every backend, use [`init_with_seed`](Self::init_with_seed).
    ///
    /// # Panics
    /// When the configuration is invalid (see [`try_init`](Self::try_init)).
    pub fn init(&self, device: &Device) -> PictureGwm {
        self.init_with_seed(device_seed(device), device)
    }

    /// As [`init`](Self::init), or the validation error.
    pub fn try_init(&self, device: &Device) -> Result<PictureGwm, GwmError> {
        self.try_init_with_seed(device_seed(device), device)
    }

    /// As [`try_init_with_seed`](Self::try_init_with_seed).
    ///
    /// # Panics
    /// When the configuration is invalid.
    pub fn init_with_seed(&self, seed: u64, device: &Device) -> PictureGwm {
        self.try_init_with_seed(seed, device)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

impl PictureGwm {
    /// The effective tensor `[Σ, l, r, u, dn]` of a position type (for the vectors encoding: the
    /// interior tensor with its outward legs closed by the boundary vectors).
    fn effective(&self, t: PositionType) -> Tensor<5> {
        match &self.boundary {
            None => self.tensors[t.index()].val(),
            Some(boundary) => {
                let mut e = self.tensors[0].val();
                let b = boundary.val();
                let d = self.bond;
                for (leg, has) in t.legs().iter().enumerate() {
                    if !has {
                        // close leg `leg` (dims 1..=4) with its boundary vector
                        let v: Tensor<1> = b.clone().slice([leg..leg + 1, 0..d]).reshape([d]);
                        let mut shape = [1usize; 5];
                        shape[leg + 1] = d;
                        e = (e * v.reshape(shape)).sum_dim(leg + 1);
                    }
                }
                e
            }
        }
    }

    /// Values of a batch of equal-size pictures `[batch, h, w]` (symbols `0..Σ`), `[batch]`.
    ///
    /// # Panics
    /// When a side is below 2 (use [`try_forward`](Self::try_forward) to get an error instead).
    pub fn forward(&self, pictures: Tensor<3, Int>) -> Tensor<1> {
        self.try_forward(pictures).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`forward`](Self::forward), returning an error for pictures smaller than 2×2.
    pub fn try_forward(&self, pictures: Tensor<3, Int>) -> Result<Tensor<1>, GwmError> {
        let (values, log_scale) = self.contract(pictures)?;
        Ok(values * log_scale.exp())
    }

    /// The contraction as `(carried, log-scale)` with `f = carried · exp(log-scale)`, both
    /// `[batch]`: for pictures so large that `f` itself over- or underflows f32.
    pub fn contract(&self, pictures: Tensor<3, Int>) -> Result<(Tensor<1>, Tensor<1>), GwmError> {
        let [batch, h, w] = pictures.dims();
        if h < 2 || w < 2 {
            return Err(GwmError::Pictures(format!(
                "pictures are {h}×{w}; both sides must be ≥ 2"
            )));
        }
        let types: Vec<Tensor<5>> = PositionType::ALL
            .iter()
            .map(|&t| self.effective(t))
            .collect();
        // Contract along the shorter side: rows of width min(h, w).
        let transposed = w > h;
        let (rows, cols) = if transposed { (w, h) } else { (h, w) };
        let device = pictures.device();
        let mut state: Tensor<2> = Tensor::ones([batch, 1], &device);
        let mut log_scale: Tensor<1> = Tensor::zeros([batch], &device);
        for i in 0..rows {
            // x: [b, A, h, rest] with A = finished down legs, h = horizontal bond.
            let mut x: Tensor<3> = state.clone().reshape([batch, 1, state.dims()[1]]);
            let mut a = 1;
            for j in 0..cols {
                let (oi, oj) = if transposed { (j, i) } else { (i, j) };
                let mut e = types[PositionType::at(oi, oj, h, w).index()].clone();
                if transposed {
                    // transposed grid: left' = up, right' = down, up' = left, down' = right
                    e = e.permute([0, 3, 4, 1, 2]);
                }
                let symbols: Tensor<1, Int> = pictures
                    .clone()
                    .slice([0..batch, oi..oi + 1, oj..oj + 1])
                    .reshape([batch]);
                let e = e.select(0, symbols); // [b, l, r, u, dn]
                let [_, dl, dr, du, ddn] = e.dims();
                let rest = x.dims()[2] / (dl * du);
                // [b, A, (l·u·B)] → [b, l·u, A·B]
                let xm = x
                    .reshape([batch, a, dl * du, rest])
                    .swap_dims(1, 2)
                    .reshape([batch, dl * du, a * rest]);
                // [b, l, r, u, dn] → [b, r·dn, l·u]
                let em = e
                    .permute([0, 2, 4, 1, 3])
                    .reshape([batch, dr * ddn, dl * du]);
                let y = em.matmul(xm); // [b, r·dn, A·B]
                // → [b, A, dn, r, B] → [b, A·dn, r·B]
                x = y
                    .reshape([batch, dr, ddn, a, rest])
                    .permute([0, 3, 2, 1, 4])
                    .reshape([batch, a * ddn, dr * rest]);
                a *= ddn;
            }
            // After the row: [b, A, r = 1]
            let carried: Tensor<2> = x.reshape([batch, a]);
            let scale = carried
                .clone()
                .abs()
                .max_dim(1)
                .clamp_min(f32::MIN_POSITIVE);
            state = carried / scale.clone();
            log_scale = log_scale + scale.log().reshape([batch]);
        }
        Ok((state.reshape([batch]), log_scale))
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

#[cfg(test)]
mod tests {
    use super::*;
    use kindling_testing::device;

    /// Brute force: the sum over every assignment of every bond of the product of the pixels'
    /// tensor entries, on the host.
    fn brute_force(model: &PictureGwm, picture: &[Vec<u8>]) -> f64 {
        let (h, w) = (picture.len(), picture[0].len());
        let d = model.bond;
        let tensors: Vec<(Vec<f32>, [usize; 5])> = PositionType::ALL
            .iter()
            .map(|&t| {
                let e = model.effective(t);
                let dims = e.dims();
                (e.try_into_vec_as::<f32>().unwrap(), dims)
            })
            .collect();
        let horizontal = h * (w - 1);
        let vertical = (h - 1) * w;
        let edges = horizontal + vertical;
        let mut total = 0.0;
        for assignment in 0..d.pow(edges as u32) {
            let edge = |k: usize| (assignment / d.pow(k as u32)) % d;
            let mut product = 1.0f64;
            for (i, row) in picture.iter().enumerate() {
                for (j, &symbol) in row.iter().enumerate() {
                    let t = PositionType::at(i, j, h, w);
                    let (values, dims) = &tensors[t.index()];
                    let l = if j > 0 { edge(i * (w - 1) + j - 1) } else { 0 };
                    let r = if j < w - 1 { edge(i * (w - 1) + j) } else { 0 };
                    let u = if i > 0 {
                        edge(horizontal + (i - 1) * w + j)
                    } else {
                        0
                    };
                    let dn = if i < h - 1 {
                        edge(horizontal + i * w + j)
                    } else {
                        0
                    };
                    let s = symbol as usize;
                    let idx = (((s * dims[1] + l) * dims[2] + r) * dims[3] + u) * dims[4] + dn;
                    product *= values[idx] as f64;
                }
            }
            total += product;
        }
        total
    }

    fn picture_tensor(pictures: &[Vec<Vec<u8>>]) -> Tensor<3, Int> {
        let (h, w) = (pictures[0].len(), pictures[0][0].len());
        let flat: Vec<i64> = pictures
            .iter()
            .flatten()
            .flatten()
            .map(|&v| v as i64)
            .collect();
        Tensor::from_data(TensorData::new(flat, [pictures.len(), h, w]), &device())
    }

    /// The row-by-row contraction equals the brute-force sum over all bond indices on 2×2,
    /// 2×3 (contracted transposed), 3×2 and 3×3 grids, for random tensors, both encodings.
    #[test]
    fn contraction_equals_brute_force() {
        for boundary in [BoundaryEncoding::Typed, BoundaryEncoding::Vectors] {
            let model = PictureGwmConfig::new()
                .with_bond(2)
                .with_boundary(boundary)
                .with_init(GwmInit::Gaussian { std: 0.8 })
                .init_with_seed(7, &device());
            for (h, w) in [(2, 2), (2, 3), (3, 2), (3, 3), (2, 4)] {
                let pictures: Vec<Vec<Vec<u8>>> = (0..3)
                    .map(|s| {
                        (0..h)
                            .map(|i| {
                                (0..w)
                                    .map(|j| ((i * 3 + j * 5 + s) % 3 == 0) as u8)
                                    .collect()
                            })
                            .collect()
                    })
                    .collect();
                let values: Vec<f32> = model
                    .forward(picture_tensor(&pictures))
                    .try_into_vec_as()
                    .unwrap();
                for (p, v) in pictures.iter().zip(values) {
                    let expected = brute_force(&model, p);
                    assert!(
                        (v as f64 - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                        "{boundary:?} {h}×{w}: contraction {v} vs brute force {expected}"
                    );
                }
            }
        }
    }

    /// Hand-set tensors computing a known function: with bond 2 and diagonal tensors
    /// `T[σ](s, s, s, s) = a_s[σ]`, `a_0 = (1, 1)`, `a_1 = (1, 2)`, the network computes
    /// `f(P) = Σ_s Π_v a_s[P(v)] = 1 + 2^{#ones}` at every size — the tying and the symbol
    /// selection at every position type.
    #[test]
    fn hand_set_tensors_compute_one_plus_two_to_the_ones() {
        let device = device();
        let tensors = PositionType::ALL
            .iter()
            .map(|t| {
                let legs = t.legs();
                let dims = legs.map(|has| if has { 2 } else { 1 });
                let mut values = vec![0.0f32; 2 * dims.iter().product::<usize>()];
                for s in 0..2 {
                    let at = |leg: usize| if legs[leg] { s } else { 0 };
                    for symbol in 0..2 {
                        let idx = (((symbol * dims[0] + at(0)) * dims[1] + at(1)) * dims[2]
                            + at(2))
                            * dims[3]
                            + at(3);
                        values[idx] = if s == 1 && symbol == 1 { 2.0 } else { 1.0 };
                    }
                }
                Param::from_data(
                    TensorData::new(values, [2, dims[0], dims[1], dims[2], dims[3]]),
                    &device,
                )
            })
            .collect();
        let model = PictureGwm {
            tensors,
            boundary: None,
            alphabet: 2,
            bond: 2,
        };
        for (h, w) in [(2, 2), (3, 4), (5, 3), (4, 4)] {
            let pictures: Vec<Vec<Vec<u8>>> = (0..4)
                .map(|s| {
                    (0..h)
                        .map(|i| (0..w).map(|j| ((i * w + j) % (s + 2) == 0) as u8).collect())
                        .collect()
                })
                .collect();
            let values: Vec<f32> = model
                .forward(picture_tensor(&pictures))
                .try_into_vec_as()
                .unwrap();
            for (p, v) in pictures.iter().zip(values) {
                let ones: i32 = p.iter().flatten().map(|&x| x as i32).sum();
                let expected = 1.0 + 2f32.powi(ones);
                assert!(
                    (v - expected).abs() <= 1e-4 * expected,
                    "{h}×{w}: {v} vs {expected}"
                );
            }
        }
    }

    /// The near-constant initialisation without noise evaluates every picture of every size to
    /// exactly 1 (value preserving).
    #[test]
    fn noiseless_near_constant_init_is_one_everywhere() {
        for boundary in [BoundaryEncoding::Typed, BoundaryEncoding::Vectors] {
            let model = PictureGwmConfig::new()
                .with_boundary(boundary)
                .with_init(GwmInit::NearConstant { noise: 0.0 })
                .init_with_seed(0, &device());
            for (h, w) in [(2, 2), (3, 7), (6, 4)] {
                let pictures = vec![
                    vec![vec![1u8; w]; h],
                    (0..h)
                        .map(|i| (0..w).map(|j| ((i + j) % 2) as u8).collect())
                        .collect(),
                ];
                let values: Vec<f32> = model
                    .forward(picture_tensor(&pictures))
                    .try_into_vec_as()
                    .unwrap();
                assert_eq!(values, vec![1.0, 1.0], "{boundary:?} {h}×{w}");
            }
        }
    }

    #[test]
    fn invalid_configs_and_pictures_are_errors() {
        let err = PictureGwmConfig::new().with_bond(0).validate().unwrap_err();
        assert!(err.to_string().contains("bond"), "{err}");
        let model = PictureGwmConfig::new().init_with_seed(0, &device());
        let thin = Tensor::<3, Int>::zeros([1, 1, 4], &device());
        assert!(matches!(
            model.try_forward(thin),
            Err(GwmError::Pictures(_))
        ));
    }
}

//! The UCI Optical Recognition of Handwritten Digits data set (8×8 images, CC BY 4.0), bundled
//! in `examples/data/digits.csv.gz` and embedded in the binary. See `examples/data/README.md`
//! for its source and licence.

use std::io::Read;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;

/// Pixels per image (8 × 8).
pub const PIXELS: usize = 64;
/// Number of classes (the digits 0..9).
pub const CLASSES: usize = 10;
/// Largest pixel value in the data (pixels are counts 0..=16).
pub const MAX_PIXEL: f32 = 16.0;

static DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Why the bundled data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DigitsError {
    /// The gzip stream is damaged.
    #[error("cannot decompress the digits data: {0}")]
    Decompress(#[from] std::io::Error),
    /// A line does not hold 64 pixels in 0..=16 and a label in 0..=9.
    #[error("line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole data set on the host: pixels scaled to `[0, 1]` and labels.
#[derive(Debug, Clone)]
pub struct Digits {
    /// `len × 64` pixel values in `[0, 1]`, row-major, one image a row.
    pub pixels: Vec<f32>,
    /// One label 0..=9 per image.
    pub labels: Vec<u8>,
}

/// A set of images as tensors on one device.
#[derive(Debug, Clone)]
pub struct DigitsSet {
    /// `[len, 64]` pixels in `[0, 1]`.
    pub images: Tensor<2>,
    /// `[len]` labels 0..=9.
    pub labels: Tensor<1, Int>,
}

impl DigitsSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.dims()[0]
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `range` of the set (a mini-batch).
    pub fn slice(&self, range: std::ops::Range<usize>) -> DigitsSet {
        DigitsSet {
            images: self.images.clone().slice([range.clone(), 0..PIXELS]),
            labels: self.labels.clone().slice([range]),
        }
    }

    /// The same set on another device (for example an autodiff device for training).
    pub fn to_device(&self, device: &Device) -> DigitsSet {
        DigitsSet {
            images: self.images.clone().to_device(device),
            labels: self.labels.clone().to_device(device),
        }
    }
}

/// A seeded train/test split.
#[derive(Debug, Clone)]
pub struct DigitsSplit {
    /// Training images.
    pub train: DigitsSet,
    /// Held-out images.
    pub test: DigitsSet,
}

impl Digits {
    /// Decompresses and parses the bundled file (1797 images).
    pub fn load() -> Result<Self, DigitsError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_GZ).read_to_string(&mut text)?;
        Self::parse(&text)
    }

    /// Parses CSV text: per line 64 pixel values 0..=16, then the label 0..=9.
    pub fn parse(text: &str) -> Result<Self, DigitsError> {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let err = |reason: String| DigitsError::Parse {
                line: i + 1,
                reason,
            };
            let values: Vec<u8> = line
                .split(',')
                .map(|v| v.trim().parse::<u8>())
                .collect::<Result<_, _>>()
                .map_err(|e| err(format!("not an integer list: {e}")))?;
            if values.len() != PIXELS + 1 {
                return Err(err(format!(
                    "{} values, expected {}",
                    values.len(),
                    PIXELS + 1
                )));
            }
            if let Some(p) = values[..PIXELS].iter().find(|&&p| p as f32 > MAX_PIXEL) {
                return Err(err(format!("pixel value {p} above {MAX_PIXEL}")));
            }
            let label = values[PIXELS];
            if label as usize >= CLASSES {
                return Err(err(format!("label {label} is not a digit")));
            }
            pixels.extend(values[..PIXELS].iter().map(|&p| p as f32 / MAX_PIXEL));
            labels.push(label);
        }
        Ok(Self { pixels, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shuffles the images with `seed` and puts `test_fraction` of them (rounded) in the test
    /// set, the rest in the training set, as tensors on `device`. The same seed gives the same
    /// split on every machine and backend.
    ///
    /// # Panics
    /// When `test_fraction` is not in `[0, 1]`.
    pub fn split(&self, test_fraction: f64, seed: u64, device: &Device) -> DigitsSplit {
        let (train, test) = self.split_indices(test_fraction, seed);
        DigitsSplit {
            train: self.subset(&train, device),
            test: self.subset(&test, device),
        }
    }

    /// The indices of [`split`](Self::split)'s training and test sets, in their order.
    ///
    /// # Panics
    /// When `test_fraction` is not in `[0, 1]`.
    pub fn split_indices(&self, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        assert!(
            (0.0..=1.0).contains(&test_fraction),
            "test_fraction {test_fraction} is not in [0, 1]"
        );
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let n_test = (self.len() as f64 * test_fraction).round() as usize;
        let train = order.split_off(n_test);
        (train, order)
    }

    /// The images at `indices`, in that order, as tensors on `device`.
    pub fn subset(&self, indices: &[usize], device: &Device) -> DigitsSet {
        let mut pixels = Vec::with_capacity(indices.len() * PIXELS);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * PIXELS..(i + 1) * PIXELS]);
            labels.push(self.labels[i] as i64);
        }
        DigitsSet {
            images: Tensor::from_data(TensorData::new(pixels, [indices.len(), PIXELS]), device),
            labels: Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_file_has_1797_valid_images() {
        let digits = Digits::load().unwrap();
        assert_eq!(digits.len(), 1797);
        assert_eq!(digits.pixels.len(), 1797 * PIXELS);
        // Each class appears between 174 and 183 times (the UCI counts).
        for class in 0..CLASSES as u8 {
            let count = digits.labels.iter().filter(|&&l| l == class).count();
            assert!((174..=183).contains(&count), "class {class}: {count}");
        }
        assert!(digits.pixels.iter().all(|&p| (0.0..=1.0).contains(&p)));
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let device = kindling_testing::device();
        let digits = Digits::load().unwrap();
        let a = digits.split(0.2, 42, &device);
        let b = digits.split(0.2, 42, &device);
        let c = digits.split(0.2, 43, &device);
        assert_eq!(a.test.len(), 359);
        assert_eq!(a.train.len(), 1797 - 359);
        let labels = |s: &DigitsSet| -> Vec<i64> { s.labels.try_to_vec_as().unwrap() };
        assert_eq!(labels(&a.test), labels(&b.test));
        assert_ne!(labels(&a.test), labels(&c.test));
        // Pixel sums are a permutation-invariant fingerprint: train + test = all.
        let total: f32 = digits.pixels.iter().sum();
        let sum = |s: &DigitsSet| s.images.clone().sum().into_scalar::<f32>();
        assert!((sum(&a.train) + sum(&a.test) - total).abs() / total < 1e-5);
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        let good = format!("{},3", vec!["0"; PIXELS].join(","));
        assert_eq!(Digits::parse(&good).unwrap().labels, vec![3]);
        let short = "1,2,3";
        assert!(matches!(
            Digits::parse(short),
            Err(DigitsError::Parse { line: 1, .. })
        ));
        let bad_label = format!("{good}\n{},10", vec!["0"; PIXELS].join(","));
        let err = Digits::parse(&bad_label).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("label 10"), "{err}");
        let bright = format!("17,{},1", vec!["0"; PIXELS - 1].join(","));
        assert!(
            Digits::parse(&bright)
                .unwrap_err()
                .to_string()
                .contains("pixel value 17")
        );
    }
}

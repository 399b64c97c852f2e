//! Codec configurations shaped like burn's: `#[derive(Config)]` structs (serde, `new`, `with_*`,
//! `save`/`load`) with `validate()`, `try_init()` (the typed error names the invalid field) and
//! `init()`. The codecs' own constructors (`Qsgd::new(16)?.with_bucket(512)?`, …) remain for
//! code that builds them directly.
//!
//! ```
//! use kindling_compress::{Compressor, CompressError, QsgdConfig};
//!
//! let qsgd = QsgdConfig::new(16).with_bucket(Some(512)).init(); // the paper's setting
//! assert_eq!(qsgd.levels(), 16);
//! let bad = QsgdConfig::new(0).try_init();
//! assert!(matches!(bad, Err(CompressError::InvalidParameter { field: "levels", .. })));
//! ```

use burn::config::Config;

use crate::{
    Atomo, Budget, CompressError, Count, Half, HalfFormat, LevelCoding, Qsgd, RandomK, Spectral,
    TernGrad, TopK, TritPacking,
};

/// Panics with the error's message (the `init` of every config).
fn or_panic<T>(built: Result<T, CompressError>) -> T {
    built.unwrap_or_else(|e| panic!("{e}"))
}

/// Settings of [`Qsgd`]: `s` levels per bucket.
#[derive(Config, Debug, PartialEq)]
pub struct QsgdConfig {
    /// Levels `s` in `1..=32767` (the paper's practical setting: 16).
    pub levels: u32,
    /// Entries per bucket, each with its own norm (`None`: the whole tensor; the paper: 512).
    pub bucket: Option<usize>,
    /// How levels are written.
    #[config(default = "LevelCoding::Smallest")]
    pub coding: LevelCoding,
}

impl QsgdConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), CompressError> {
        self.try_init().map(drop)
    }

    /// The codec, or the validation error.
    pub fn try_init(&self) -> Result<Qsgd, CompressError> {
        let qsgd = Qsgd::new(self.levels)?.with_coding(self.coding);
        match self.bucket {
            Some(b) => qsgd.with_bucket(b),
            None => Ok(qsgd),
        }
    }

    /// The codec.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init(&self) -> Qsgd {
        or_panic(self.try_init())
    }
}

/// Settings of [`TernGrad`].
#[derive(Config, Debug, PartialEq)]
pub struct TernGradConfig {
    /// Clip entries to `±c·σ` before ternarising (`None`: no clipping; the paper: 2.5).
    pub clip: Option<f32>,
    /// How ternaries are packed.
    #[config(default = "TritPacking::TwoBits")]
    pub packing: TritPacking,
}

impl TernGradConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), CompressError> {
        self.try_init().map(drop)
    }

    /// The codec, or the validation error.
    pub fn try_init(&self) -> Result<TernGrad, CompressError> {
        let tern = TernGrad::new().with_packing(self.packing);
        match self.clip {
            Some(c) => tern.with_clipping(c),
            None => Ok(tern),
        }
    }

    /// The codec.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init(&self) -> TernGrad {
        or_panic(self.try_init())
    }
}

/// Settings of [`TopK`] and [`RandomK`]: how many entries they keep.
#[derive(Config, Debug, PartialEq)]
pub struct SparsifyConfig {
    /// Entries kept: `Count::Entries(k)` or `Count::Fraction(f)`.
    pub count: Count,
}

impl SparsifyConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), CompressError> {
        TopK::new(self.count).map(drop)
    }

    /// Top-k, or the validation error.
    pub fn try_init_top_k(&self) -> Result<TopK, CompressError> {
        TopK::new(self.count)
    }

    /// Top-k.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init_top_k(&self) -> TopK {
        or_panic(self.try_init_top_k())
    }

    /// Random-k, or the validation error.
    pub fn try_init_random_k(&self) -> Result<RandomK, CompressError> {
        RandomK::new(self.count)
    }

    /// Random-k.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init_random_k(&self) -> RandomK {
        or_panic(self.try_init_random_k())
    }
}

/// Settings of [`Half`].
#[derive(Config, Debug, PartialEq)]
pub struct HalfConfig {
    /// f16 or bf16.
    #[config(default = "HalfFormat::F16")]
    pub format: HalfFormat,
}

impl HalfConfig {
    /// The codec (every setting is valid).
    pub fn init(&self) -> Half {
        Half::new(self.format)
    }
}

/// Settings of [`Atomo`]: the budget, and for spectral atoms the SVD.
///
/// ```
/// use kindling_compress::{AtomoConfig, Budget, EntryWise, Fourier};
///
/// let entry_wise = AtomoConfig::new(Budget::QsgdEquivalent).init_entry_wise();
/// let fourier = AtomoConfig::new(Budget::Fraction(0.01)).init_fourier();
/// let spectral = AtomoConfig::new(Budget::Atoms(4.0)).with_rank(Some(8)).init_spectral();
/// # let _ = (entry_wise, fourier, spectral);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct AtomoConfig {
    /// The expected number of atoms sent.
    pub budget: Budget,
    /// Spectral atoms only: a randomized rank-`r` SVD instead of the full one (`None`).
    pub rank: Option<usize>,
    /// Spectral atoms only: power iterations of the randomized SVD.
    #[config(default = 2)]
    pub power_iterations: usize,
}

impl AtomoConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), CompressError> {
        self.try_init_spectral().map(drop)
    }

    /// ATOMO over any atom set, or the validation error of the budget.
    pub fn try_init<A>(&self, atoms: A) -> Result<Atomo<A>, CompressError> {
        Atomo::new(atoms, self.budget)
    }

    /// Entry-wise ATOMO.
    ///
    /// # Panics
    /// When the budget is invalid.
    pub fn init_entry_wise(&self) -> Atomo<crate::EntryWise> {
        or_panic(self.try_init(crate::EntryWise))
    }

    /// Fourier ATOMO.
    ///
    /// # Panics
    /// When the budget is invalid.
    pub fn init_fourier(&self) -> Atomo<crate::Fourier> {
        or_panic(self.try_init(crate::Fourier))
    }

    /// Spectral ATOMO (full or randomized SVD by [`rank`](Self::rank)), or the validation error.
    pub fn try_init_spectral(&self) -> Result<Atomo<Spectral>, CompressError> {
        let atoms = match self.rank {
            Some(rank) => Spectral::truncated(rank, self.power_iterations)?,
            None => Spectral::full(),
        };
        self.try_init(atoms)
    }

    /// Spectral ATOMO.
    ///
    /// # Panics
    /// When the configuration is invalid (see [`validate`](Self::validate)).
    pub fn init_spectral(&self) -> Atomo<Spectral> {
        or_panic(self.try_init_spectral())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_the_codecs_and_name_invalid_fields() {
        let field = |e: CompressError| match e {
            CompressError::InvalidParameter { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(
            QsgdConfig::new(16).with_bucket(Some(512)).init().levels(),
            16
        );
        assert_eq!(field(QsgdConfig::new(0).validate().unwrap_err()), "levels");
        assert_eq!(
            field(
                QsgdConfig::new(4)
                    .with_bucket(Some(0))
                    .validate()
                    .unwrap_err()
            ),
            "bucket"
        );
        assert_eq!(
            field(
                TernGradConfig::new()
                    .with_clip(Some(-1.0))
                    .validate()
                    .unwrap_err()
            ),
            "clip"
        );
        assert_eq!(
            field(
                SparsifyConfig::new(Count::Fraction(1.5))
                    .validate()
                    .unwrap_err()
            ),
            "fraction"
        );
        assert_eq!(
            field(AtomoConfig::new(Budget::Atoms(0.0)).validate().unwrap_err()),
            "budget"
        );
        assert_eq!(
            field(
                AtomoConfig::new(Budget::Atoms(2.0))
                    .with_rank(Some(0))
                    .validate()
                    .unwrap_err()
            ),
            "rank"
        );
        assert!(std::panic::catch_unwind(|| QsgdConfig::new(0).init()).is_err());
    }

    #[test]
    fn configs_round_trip_through_json() {
        let dir =
            std::env::temp_dir().join(format!("kindling-codec-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qsgd.json");
        let config = QsgdConfig::new(16)
            .with_bucket(Some(512))
            .with_coding(LevelCoding::Fixed);
        config.save(&path).unwrap();
        assert_eq!(QsgdConfig::load(&path).unwrap(), config);
        let atomo = AtomoConfig::new(Budget::Fraction(0.25)).with_rank(Some(4));
        let path = dir.join("atomo.json");
        atomo.save(&path).unwrap();
        assert_eq!(AtomoConfig::load(&path).unwrap(), atomo);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! Picture languages: Bars & Stripes and Shifting Bits, their membership tests, negative sampling
//! and seeded balanced data sets.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::GwmError;

/// A binary picture, row-major.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Picture {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// `h·w` pixels (0 or 1), row by row.
    pub pixels: Vec<u8>,
}

impl Picture {
    /// Pixel `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> u8 {
        self.pixels[i * self.w + j]
    }

    /// The picture with pixel `k` flipped.
    pub fn flipped(&self, k: usize) -> Picture {
        let mut p = self.clone();
        p.pixels[k] ^= 1;
        p
    }

    /// Text art: `█` for 1, `·` for 0, one line per row.
    pub fn render(&self) -> String {
        (0..self.h)
            .map(|i| {
                (0..self.w)
                    .map(|j| if self.at(i, j) == 1 { '█' } else { '·' })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A picture language over {0, 1}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Every column constant (bars) or every row constant (stripes).
    BarsAndStripes,
    /// Each row is the previous one shifted cyclically by `shift` positions (positive: to the
    /// right). The paper's exact definition could not be checked; shift 1 to the right is this
    /// crate's default.
    ShiftingBits {
        /// Cyclic shift per row.
        shift: isize,
    },
}

impl Language {
    /// Shifting Bits with the default shift (1 to the right).
    pub const SHIFTING_BITS: Language = Language::ShiftingBits { shift: 1 };

    /// Whether `p` belongs to the language.
    pub fn contains(&self, p: &Picture) -> bool {
        match self {
            Language::BarsAndStripes => is_bars_and_stripes(p),
            Language::ShiftingBits { shift } => is_shifting_bits(p, *shift),
        }
    }

    /// Every member of size `h × w`.
    pub fn members(&self, h: usize, w: usize) -> Vec<Picture> {
        match self {
            Language::BarsAndStripes => bars_and_stripes(h, w),
            Language::ShiftingBits { shift } => shifting_bits(h, w, *shift),
        }
    }
}

fn from_fn(h: usize, w: usize, mut f: impl FnMut(usize, usize) -> u8) -> Picture {
    Picture {
        h,
        w,
        pixels: (0..h * w).map(|k| f(k / w, k % w)).collect(),
    }
}

/// All Bars & Stripes pictures of size `h × w` (`2^h + 2^w − 2` of them; the two constant
/// pictures are both bars and stripes).
pub fn bars_and_stripes(h: usize, w: usize) -> Vec<Picture> {
    let mut out: Vec<Picture> = (0..1usize << w)
        .map(|cols| from_fn(h, w, |_, j| ((cols >> j) & 1) as u8))
        .collect();
    for rows in 1..(1usize << h) - 1 {
        out.push(from_fn(h, w, |i, _| ((rows >> i) & 1) as u8));
    }
    out
}

/// Whether every column or every row of `p` is constant.
pub fn is_bars_and_stripes(p: &Picture) -> bool {
    let bars = (0..p.w).all(|j| (0..p.h).all(|i| p.at(i, j) == p.at(0, j)));
    let stripes = (0..p.h).all(|i| (0..p.w).all(|j| p.at(i, j) == p.at(i, 0)));
    bars || stripes
}

/// All Shifting Bits pictures of size `h × w` with cyclic shift `shift` per row: one per first
/// row, `2^w` of them (fewer when different first rows give the same picture — they cannot: the
/// first row is the picture's first row).
pub fn shifting_bits(h: usize, w: usize, shift: isize) -> Vec<Picture> {
    (0..1usize << w)
        .map(|first| {
            from_fn(h, w, |i, j| {
                let src = (j as isize - shift * i as isize).rem_euclid(w as isize) as usize;
                ((first >> src) & 1) as u8
            })
        })
        .collect()
}

/// Whether each row of `p` is the previous one shifted cyclically by `shift`.
pub fn is_shifting_bits(p: &Picture, shift: isize) -> bool {
    (1..p.h).all(|i| {
        (0..p.w).all(|j| {
            let src = (j as isize - shift).rem_euclid(p.w as isize) as usize;
            p.at(i, j) == p.at(i - 1, src)
        })
    })
}

/// A labelled set of pictures of one size.
#[derive(Debug, Clone)]
pub struct PictureSet {
    /// The pictures.
    pub pictures: Vec<Picture>,
    /// 1.0 for members, 0.0 for non-members.
    pub labels: Vec<f32>,
}

impl PictureSet {
    /// Number of pictures.
    pub fn len(&self) -> usize {
        self.pictures.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.pictures.is_empty()
    }

    /// The pictures as `[n, h, w]` symbols and the labels as `[n]`, on `device`.
    pub fn tensors(&self, device: &Device) -> (Tensor<3, Int>, Tensor<1>) {
        let n = self.len();
        let (h, w) = self.pictures.first().map_or((0, 0), |p| (p.h, p.w));
        let pixels: Vec<i64> = self
            .pictures
            .iter()
            .flat_map(|p| p.pixels.iter().map(|&v| v as i64))
            .collect();
        (
            Tensor::from_data(TensorData::new(pixels, [n, h, w]), device),
            Tensor::from_data(TensorData::new(self.labels.clone(), [n]), device),
        )
    }

    fn push(&mut self, p: Picture, label: f32) {
        self.pictures.push(p);
        self.labels.push(label);
    }
}

/// A seeded data set: a training set, and test sets of members and of the two kinds of held-out
/// negatives, kept apart for reporting.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training set (members and both kinds of negatives, shuffled).
    pub train: PictureSet,
    /// The members (all of them: every member is also in the training set).
    pub test_positives: PictureSet,
    /// Held-out uniform non-members.
    pub test_uniform: PictureSet,
    /// Held-out near misses (a member with one pixel flipped, not itself a member).
    pub test_near_misses: PictureSet,
}

/// A uniformly random picture outside the language (rejection sampling).
pub fn uniform_negative(language: &Language, h: usize, w: usize, rng: &mut ChaCha8Rng) -> Picture {
    loop {
        let p = from_fn(h, w, |_, _| rng.random_range(0..2u8));
        if !language.contains(&p) {
            return p;
        }
    }
}

/// A near miss: a random member with one random pixel flipped, redrawn until it is not a member.
pub fn near_miss(language: &Language, members: &[Picture], rng: &mut ChaCha8Rng) -> Picture {
    loop {
        let m = &members[rng.random_range(0..members.len())];
        let p = m.flipped(rng.random_range(0..m.pixels.len()));
        if !language.contains(&p) {
            return p;
        }
    }
}

/// Builds a data set of size `h × w`: the training set holds every member (the languages are
/// finite at each size) and `negatives` non-members per member, half uniform and half near
/// misses; the test sets hold the members again and up to `test_size` fresh uniform non-members
/// and up to `test_size` fresh near misses (fewer when a small size has no more), none of them
/// seen in training. Seeded.
///
/// (Held-out *negatives* measure whether the model learned the language rather than memorised
/// pictures: the members are all needed to define it at small sizes — 14 at 3×3.)
pub fn dataset(
    language: Language,
    h: usize,
    w: usize,
    negatives: usize,
    test_size: usize,
    seed: u64,
) -> Result<Dataset, GwmError> {
    if h < 2 || w < 2 || h * w > 64 {
        return Err(GwmError::Pictures(format!(
            "data sets are built for sizes from 2×2 to 64 pixels, not {h}×{w}"
        )));
    }
    if negatives == 0 {
        return Err(GwmError::InvalidField {
            config: "dataset",
            field: "negatives",
            value: "0".into(),
            reason: "needs at least one negative per member",
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let members = language.members(h, w);
    let mut seen: std::collections::HashSet<Picture> = members.iter().cloned().collect();
    // A picture not used yet, or None when 1000 draws in a row were all seen (small sizes have
    // few near misses).
    let mut fresh = |draw: &mut dyn FnMut(&mut ChaCha8Rng) -> Picture, rng: &mut ChaCha8Rng| {
        (0..1000).find_map(|_| {
            let p = draw(rng);
            seen.insert(p.clone()).then_some(p)
        })
    };
    let mut train = PictureSet {
        pictures: vec![],
        labels: vec![],
    };
    for (k, p) in members.iter().enumerate() {
        train.push(p.clone(), 1.0);
        for j in 0..negatives {
            let negative = if (k + j) % 2 == 0 {
                fresh(&mut |r| uniform_negative(&language, h, w, r), &mut rng)
            } else {
                fresh(&mut |r| near_miss(&language, &members, r), &mut rng)
            };
            if let Some(negative) = negative {
                train.push(negative, 0.0);
            }
        }
    }
    let mut test_uniform = PictureSet {
        pictures: vec![],
        labels: vec![],
    };
    let mut test_near_misses = PictureSet {
        pictures: vec![],
        labels: vec![],
    };
    for _ in 0..test_size {
        if let Some(p) = fresh(&mut |r| uniform_negative(&language, h, w, r), &mut rng) {
            test_uniform.push(p, 0.0);
        }
        if let Some(p) = fresh(&mut |r| near_miss(&language, &members, r), &mut rng) {
            test_near_misses.push(p, 0.0);
        }
    }
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rng);
    Ok(Dataset {
        train: PictureSet {
            pictures: order.iter().map(|&i| train.pictures[i].clone()).collect(),
            labels: order.iter().map(|&i| train.labels[i]).collect(),
        },
        test_positives: PictureSet {
            labels: vec![1.0; members.len()],
            pictures: members,
        },
        test_uniform,
        test_near_misses,
    })
}

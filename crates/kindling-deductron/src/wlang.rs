//! The W-language: a cursive script over {X, O} whose characters need unbounded memory to tell
//! apart, its three reference samples, a generator for any string, and the decoder.
//!
//! An image is a sequence of 3-pixel columns, each one-hot (the pen's height: 0 = bottom,
//! 1 = middle, 2 = top) or blank. `X` is drawn as the stroke `top → bottom → top` and `O` as
//! `bottom → top → bottom`: the upper halves of the letters, ∨ for `X` (its two upper arms) and
//! ∧ for `O` (its upper arc), as in the paper. Consecutive letters that meet at the same height share
//! that column; otherwise the pen jumps. The network reads frames — column `t` followed by
//! column `t+1` — and must say "X" or "O" at the frame of each letter's turning point. Locally,
//! the shared bottom of two merged `O`s looks exactly like the turning point of an `X`: only the
//! parity of turning points since the last jump tells them apart, and that can lie arbitrarily
//! far back.
//!
//! The samples come from the public-domain DeductronCode repository by Marek Rychlik (see
//! `data/README.md`).

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, RngExt};
use serde::Deserialize;

use crate::DeductronError;

/// One column of an image, indexed by height: `[bottom, middle, top]`, one-hot or blank.
pub type Column = [u8; 3];
/// One input frame: column `t` followed by column `t + 1`.
pub type Frame = [f32; 6];
/// One target: `[X decided, O decided]`.
pub type Target = [f32; 2];

/// A W-language sequence: the string, its image and the network's frames and targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The string written.
    pub string: String,
    /// The image, one column per entry (`frames + 1` columns).
    pub image: Vec<Column>,
    /// Input frames.
    pub inputs: Vec<Frame>,
    /// Targets per frame.
    pub targets: Vec<Target>,
}

#[derive(Deserialize)]
struct RawSample {
    string: String,
    inputs: Vec<[u8; 6]>,
    targets: Vec<[u8; 2]>,
}

#[derive(Deserialize)]
struct RawFile {
    tiny: RawSample,
    small: RawSample,
    large: RawSample,
}

static FILE: &str = include_str!("../data/w_language.json");

fn samples() -> &'static [Sample; 3] {
    static SAMPLES: OnceLock<[Sample; 3]> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let raw: RawFile = serde_json::from_str(FILE).expect("the bundled W-language file parses");
        [raw.tiny, raw.small, raw.large].map(|s| {
            let inputs: Vec<Frame> = s.inputs.iter().map(|f| f.map(|v| v as f32)).collect();
            let mut image: Vec<Column> = s.inputs.iter().map(|f| [f[0], f[1], f[2]]).collect();
            if let Some(last) = s.inputs.last() {
                image.push([last[3], last[4], last[5]]);
            }
            Sample {
                string: s.string,
                image,
                inputs,
                targets: s.targets.iter().map(|t| t.map(|v| v as f32)).collect(),
            }
        })
    })
}

/// The reference `tiny` sample: "XO", 12 frames (a blank column at the jump).
pub fn tiny() -> Sample {
    samples()[0].clone()
}

/// The reference `small` sample: "XOOXXO", 29 frames.
pub fn small() -> Sample {
    samples()[1].clone()
}

/// The reference `large` sample: a hand-drawn, stretched "XOOXXXOOO", 518 frames.
pub fn large() -> Sample {
    samples()[2].clone()
}

/// `small` followed by `large` as one sequence of 547 frames (the memory is not reset).
pub fn combined() -> Sample {
    let (s, l) = (small(), large());
    Sample {
        string: format!("{}{}", s.string, l.string),
        image: s.image.into_iter().chain(l.image).collect(),
        inputs: s.inputs.into_iter().chain(l.inputs).collect(),
        targets: s.targets.into_iter().chain(l.targets).collect(),
    }
}

impl Sample {
    /// Number of frames.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether the sample has no frames.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The frames as a `[1, time, 6]` tensor.
    pub fn inputs(&self, device: &Device) -> Tensor<3> {
        let flat: Vec<f32> = self.inputs.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [1, self.len(), 6]), device)
    }

    /// The targets as a `[1, time, 2]` tensor.
    pub fn targets(&self, device: &Device) -> Tensor<3> {
        let flat: Vec<f32> = self.targets.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [1, self.len(), 2]), device)
    }

    /// The image as three lines of text art: `/` where the pen rises, `\\` where it falls, `∧`
    /// and `∨` at turning points, `|` before a jump, `─` where it stays, blank columns as spaces.
    pub fn render(&self) -> String {
        render(&self.image)
    }
}

fn height(c: &Column) -> Option<usize> {
    c.iter().position(|&v| v == 1)
}

/// Text art of an image (see [`Sample::render`]): three lines, the top height first.
pub fn render(image: &[Column]) -> String {
    let mut rows = vec![String::new(); 3];
    for (i, c) in image.iter().enumerate() {
        let here = height(c);
        let prev = i.checked_sub(1).and_then(|j| height(&image[j]));
        let next = image.get(i + 1).and_then(height);
        for (r, row) in rows.iter_mut().enumerate() {
            let glyph = match here {
                Some(h) if h == 2 - r => match (prev, next) {
                    (Some(p), Some(n)) if p < h && n < h => '∧',
                    (Some(p), Some(n)) if p > h && n > h => '∨',
                    (_, Some(n)) if n.abs_diff(h) > 1 => '|',
                    (_, Some(n)) if n > h => '/',
                    (_, Some(n)) if n < h => '\\',
                    (Some(p), None) if p < h => '/',
                    (Some(p), None) if p > h => '\\',
                    _ => '─',
                },
                _ => ' ',
            };
            row.push(glyph);
        }
    }
    rows.join("\n")
}

/// Frames of an image: column `t` followed by column `t + 1`.
pub fn frames(image: &[Column]) -> Vec<Frame> {
    image
        .windows(2)
        .map(|w| {
            let mut f = [0.0; 6];
            for k in 0..3 {
                f[k] = w[0][k] as f32;
                f[3 + k] = w[1][k] as f32;
            }
            f
        })
        .collect()
}

/// How the generator draws strings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawing {
    /// Each column of a stroke is repeated a uniform number of times in `1..=max_stretch`
    /// (1 = unit stretching, as `small`).
    pub max_stretch: usize,
    /// Put a blank column at every jump (as `tiny` does) instead of jumping directly (as `small`).
    pub blank_jumps: bool,
}

impl Default for Drawing {
    fn default() -> Self {
        Self {
            max_stretch: 1,
            blank_jumps: false,
        }
    }
}

const X_STROKE: [usize; 5] = [2, 1, 0, 1, 2];
const O_STROKE: [usize; 5] = [0, 1, 2, 1, 0];

/// Draws `text` (over {X, O}) with `drawing`, using `rng` for the stretching. The image starts
/// and ends with a blank column; each letter is decided at the frame of its turning point's
/// first column. `generate("XOOXXO", unit stretching)` is exactly [`small`]; with blank jumps,
/// `generate("XO", …)` is exactly [`tiny`].
pub fn generate(text: &str, drawing: Drawing, rng: &mut dyn Rng) -> Result<Sample, DeductronError> {
    if drawing.max_stretch == 0 {
        return Err(DeductronError::InvalidField {
            config: "Drawing",
            field: "max_stretch",
            value: "0".into(),
            reason: "must be ≥ 1",
        });
    }
    // (height or blank, letter decided at this column's first repetition)
    let mut columns: Vec<(Option<usize>, Option<char>)> = vec![(None, None)];
    let mut end: Option<usize> = None;
    for (position, character) in text.chars().enumerate() {
        let stroke = match character {
            'X' => X_STROKE,
            'O' => O_STROKE,
            _ => {
                return Err(DeductronError::NotInAlphabet {
                    character,
                    position,
                });
            }
        };
        let skip = match end {
            Some(e) if e == stroke[0] => 1,
            Some(_) if drawing.blank_jumps => {
                columns.push((None, None));
                0
            }
            _ => 0,
        };
        for (i, &h) in stroke.iter().enumerate().skip(skip) {
            columns.push((Some(h), (i == 2).then_some(character)));
        }
        end = Some(stroke[4]);
    }
    columns.push((None, None));
    let mut image = Vec::new();
    let mut decisions = Vec::new();
    for (h, decided) in columns {
        let repeat = rng.random_range(1..=drawing.max_stretch);
        for k in 0..repeat {
            let mut c = [0u8; 3];
            if let Some(h) = h {
                c[h] = 1;
            }
            image.push(c);
            decisions.push(if k == 0 { decided } else { None });
        }
    }
    let inputs = frames(&image);
    let targets = decisions[..inputs.len()]
        .iter()
        .map(|d| match d {
            Some('X') => [1.0, 0.0],
            Some(_) => [0.0, 1.0],
            None => [0.0, 0.0],
        })
        .collect();
    Ok(Sample {
        string: text.to_string(),
        image,
        inputs,
        targets,
    })
}

/// Reads strings back from network outputs `[batch, time, 2]`: a letter wherever an output
/// exceeds 0.5 (X for the first, O for the second); consecutive frames with the same decision
/// count once.
pub fn decode(y: &Tensor<3>) -> Vec<String> {
    let [batch, time, _] = y.dims();
    let values: Vec<f32> = y
        .to_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("outputs");
    (0..batch)
        .map(|b| {
            let mut out = String::new();
            let mut previous = None;
            for t in 0..time {
                let at = |k: usize| values[(b * time + t) * 2 + k];
                let decision = match (at(0) > 0.5, at(1) > 0.5) {
                    (true, false) => Some('X'),
                    (false, true) => Some('O'),
                    _ => None,
                };
                if let Some(d) = decision
                    && decision != previous
                {
                    out.push(d);
                }
                previous = decision;
            }
            out
        })
        .collect()
}

/// Classification errors as the reference counts them: `Σ |round(y) − target|`.
pub fn errors(y: &Tensor<3>, targets: &Tensor<3>) -> usize {
    (y.clone().round() - targets.clone())
        .abs()
        .sum()
        .into_scalar::<f32>()
        .round() as usize
}

use thiserror::Error;

/// Why a Deductron configuration, input or training run was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DeductronError {
    /// A configuration field is out of range.
    #[error("{config}.{field} = {value} is invalid: {reason}")]
    InvalidField {
        /// The configuration type.
        config: &'static str,
        /// The field.
        field: &'static str,
        /// The offending value, printed.
        value: String,
        /// What it must satisfy.
        reason: &'static str,
    },
    /// A string holds a character other than `X` and `O`.
    #[error(
        "character {character:?} at position {position} is not in the W-language alphabet {{X, O}}"
    )]
    NotInAlphabet {
        /// The character.
        character: char,
        /// Its position in the string.
        position: usize,
    },
    /// Inputs or targets have the wrong shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

use thiserror::Error;

/// Why a picture model, picture or data set request was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GwmError {
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
    /// Pictures of a batch must all have the same size, at least 2×2, with symbols in the
    /// alphabet.
    #[error("invalid picture batch: {0}")]
    Pictures(String),
}

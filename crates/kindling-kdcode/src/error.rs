use thiserror::Error;

/// Why a KD-embedding configuration or input was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum KdError {
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
    /// A table given for distillation or evaluation does not fit.
    #[error("invalid table: {reason}")]
    InvalidTable {
        /// What is wrong with it.
        reason: String,
    },
}

use thiserror::Error;

/// Why an optimizer configuration or call was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum OptimError {
    /// A configuration field holds a value the algorithm cannot use.
    #[error("{config}.{field} = {value} is invalid: {reason}")]
    InvalidField {
        /// The configuration type, for example `SignumConfig`.
        config: &'static str,
        /// The field name.
        field: &'static str,
        /// The offending value, printed.
        value: String,
        /// What the field must satisfy.
        reason: &'static str,
    },
    /// Gradients handed to an optimizer do not match the module (missing or extra parameters,
    /// or too few micro-batches to estimate a variance).
    #[error("gradients do not fit: {0}")]
    Gradients(String),
}

/// Checks a configuration field; one place for the wording of every rule.
pub(crate) struct Check {
    pub(crate) config: &'static str,
}

impl Check {
    fn fail(&self, field: &'static str, value: impl ToString, reason: &'static str) -> OptimError {
        OptimError::InvalidField {
            config: self.config,
            field,
            value: value.to_string(),
            reason,
        }
    }

    /// `0 ≤ value < 1` (a momentum or averaging factor).
    pub(crate) fn unit_interval(&self, field: &'static str, value: f32) -> Result<(), OptimError> {
        if (0.0..1.0).contains(&value) {
            Ok(())
        } else {
            Err(self.fail(field, value, "must be in [0, 1)"))
        }
    }

    /// `value ≥ 0` and finite (a weight decay).
    pub(crate) fn non_negative(&self, field: &'static str, value: f32) -> Result<(), OptimError> {
        if value.is_finite() && value >= 0.0 {
            Ok(())
        } else {
            Err(self.fail(field, value, "must be finite and ≥ 0"))
        }
    }

    /// A free-form rule.
    pub(crate) fn require(
        &self,
        ok: bool,
        field: &'static str,
        value: impl ToString,
        reason: &'static str,
    ) -> Result<(), OptimError> {
        if ok {
            Ok(())
        } else {
            Err(self.fail(field, value, reason))
        }
    }
}

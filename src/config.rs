//! [`ConfigError`]: what `build()` returns for a configuration that cannot work.

use std::fmt;
use std::time::Duration;

/// The longest duration any setting accepts (one day). Longer values are almost
/// certainly a unit mistake (milliseconds passed as seconds) and are refused.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A configuration value that cannot work, found by a `build()` call.
///
/// It names the field and the rule it broke, so the message points at the fix:
///
/// ```
/// use steadfast::breaker::Breaker;
///
/// let err = Breaker::builder("users").failure_rate(1.5).build().unwrap_err();
/// assert_eq!(err.field(), "failure_rate");
/// assert_eq!(err.rule(), "must be in (0, 1], got 1.5");
/// assert_eq!(err.to_string(), "invalid `failure_rate`: must be in (0, 1], got 1.5");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    field: &'static str,
    rule: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, rule: impl Into<String>) -> Self {
        Self {
            field,
            rule: rule.into(),
        }
    }

    /// The setting at fault, as its setter is named (`"failure_rate"`).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The rule the value broke, with the value (`"must be in (0, 1], got 1.5"`).
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.rule)
    }
}

impl std::error::Error for ConfigError {}

/// Checks a rate is in (0, 1].
pub(crate) fn check_rate(field: &'static str, rate: f64) -> Result<(), ConfigError> {
    if rate > 0.0 && rate <= 1.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be in (0, 1], got {rate}"),
        ))
    }
}

/// Checks a duration is above zero and at most [`MAX_DURATION`].
pub(crate) fn check_duration(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(field, "must be above zero"))
    } else if d > MAX_DURATION {
        Err(ConfigError::new(
            field,
            format!("must be at most one day, got {d:?}"),
        ))
    } else {
        Ok(())
    }
}

/// Input that breaks a rule: names the field and says why, so the caller can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    pub field: String,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A namespace is 1..=64 characters of `[a-z0-9_.-]`, starting with a letter or digit.
pub fn validate_namespace(field: &str, namespace: &str) -> Result<(), InvalidInput> {
    let ok_len = (1..=64).contains(&namespace.len());
    let mut chars = namespace.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = chars
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' || c == '.');
    if ok_len && ok_first && ok_rest {
        Ok(())
    } else {
        Err(InvalidInput::new(
            field,
            format!(
                "namespace {namespace:?} must be 1-64 characters of a-z, 0-9, '_', '-', '.', \
                 starting with a letter or digit"
            ),
        ))
    }
}

/// Refuses text holding a NUL character (U+0000): PostgreSQL cannot store one, so every
/// service refuses it whatever its backend, and the embedded default and a production
/// deployment accept the same input.
pub fn check_no_nul(field: &str, text: &str) -> Result<(), InvalidInput> {
    if text.contains('\0') {
        Err(InvalidInput::new(
            field,
            "holds a NUL character (U+0000), which no text field accepts",
        ))
    } else {
        Ok(())
    }
}

/// The largest state (or search text) any service accepts, in bytes: Decide and the curator's
/// RenderContext and SearchPlaybook share it, so a state Decide accepts is never refused by
/// the curator behind it.
pub const MAX_STATE_BYTES: usize = 16 * 1024;

/// The largest token budget a policy or a RenderContext request may ask for.
pub const MAX_TOKEN_BUDGET: u32 = 32_768;

/// The Wilson score interval of `k` successes in `n` trials, at 95%: (0, 1) when `n` is 0.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.96_f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        for ok in ["driving", "support-eu", "a", "team_1.prod"] {
            assert!(validate_namespace("namespace", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Driving", "-x", "a b", "é", &"x".repeat(65)] {
            let err = validate_namespace("namespace", bad).unwrap_err();
            assert_eq!(err.field, "namespace");
        }
    }
}

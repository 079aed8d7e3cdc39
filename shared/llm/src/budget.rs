use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{LlmError, Usage};

/// Token accounting for a run, shared by every call that run makes: calls are refused once the
/// limit is reached.
#[derive(Debug, Clone)]
pub struct TokenBudget {
    limit: Option<u64>,
    used: Arc<AtomicU64>,
}

impl TokenBudget {
    pub fn unlimited() -> Self {
        Self {
            limit: None,
            used: Arc::default(),
        }
    }

    pub fn limited(limit: u64) -> Self {
        Self {
            limit: Some(limit),
            used: Arc::default(),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Fails when nothing is left.
    pub fn check(&self) -> Result<(), LlmError> {
        match self.limit {
            Some(limit) if self.used() >= limit => Err(LlmError::BudgetExhausted {
                used: self.used(),
                limit,
            }),
            _ => Ok(()),
        }
    }

    pub fn record(&self, usage: Usage) {
        self.used.fetch_add(usage.total(), Ordering::SeqCst);
    }
}

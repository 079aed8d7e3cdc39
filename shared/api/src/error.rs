//! How a call to any service fails, the same whether the service answered in process or over
//! gRPC: the conversions to and from `tonic::Status` keep the code, and the field of an invalid
//! argument.

use agent_learning_domain::InvalidInput;
use tonic::{Code, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request breaks a rule; the field says where.
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the state it needs is missing (an untrained namespace).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency failed; retrying may help.
    #[error("{message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A fault of the service itself.
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A remote answer whose code has no meaning above, passed on as it came.
    #[error("{}: {}", .0.code(), .0.message())]
    Remote(#[source] Status),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(InvalidInput::new(field, reason))
    }

    /// A dependency failed: `what` says which, `source` why.
    pub fn unavailable(what: impl std::fmt::Display, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        Self::Unavailable {
            message: format!("{what}: {source}"),
            source: Some(source),
        }
    }

    pub fn internal(what: impl std::fmt::Display, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        Self::Internal {
            message: format!("{what}: {source}"),
            source: Some(source),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unavailable { .. } => Code::Unavailable,
            Self::Internal { .. } => Code::Internal,
            Self::Remote(s) => s.code(),
        }
    }
}

/// A status's message, or what its code means when it came without one (a transport that
/// gave up says nothing else), so an error never prints as an empty line.
fn message_of(s: &Status) -> String {
    if s.message().trim().is_empty() {
        s.code().description().to_owned()
    } else {
        s.message().to_owned()
    }
}

impl ApiError {
    /// Whether trying the same call again may succeed: the service was unavailable,
    /// overloaded, or gave up on the call (a deadline, a cancellation).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::ResourceExhausted
        )
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::InvalidArgument => {
                // InvalidInput travels as "field: reason".
                let (field, reason) = s
                    .message()
                    .split_once(": ")
                    .unwrap_or(("request", s.message()));
                Self::Invalid(InvalidInput::new(field, reason))
            }
            Code::NotFound => Self::NotFound(message_of(&s)),
            Code::FailedPrecondition => Self::FailedPrecondition(message_of(&s)),
            Code::Unavailable => Self::Unavailable {
                message: message_of(&s),
                source: Some(Box::new(s)),
            },
            _ => Self::Remote(s),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(i) => Status::invalid_argument(i.to_string()),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unavailable { message, .. } => Status::unavailable(message),
            ApiError::Internal { message, .. } => {
                tracing::error!(error = %message, "internal error");
                Status::internal(message)
            }
            ApiError::Remote(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_keep_the_code_and_the_field() {
        let s: Status = ApiError::invalid("valid_actions[2]", "must not be empty").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        match ApiError::from(s) {
            ApiError::Invalid(i) => {
                assert_eq!(i.field, "valid_actions[2]");
                assert_eq!(i.reason, "must not be empty");
            }
            other => panic!("{other:?}"),
        }
        for code in [
            Code::NotFound,
            Code::FailedPrecondition,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::PermissionDenied,
            Code::Internal,
        ] {
            let back: Status = ApiError::from(Status::new(code, "x")).into();
            assert_eq!(back.code(), code, "{code:?} survives a hop");
        }
    }

    #[test]
    fn a_status_without_a_message_still_says_what_happened() {
        for code in [Code::Unavailable, Code::NotFound, Code::FailedPrecondition] {
            let e = ApiError::from(Status::new(code, ""));
            assert_eq!(e.to_string(), code.description(), "{code:?}");
        }
        let e = ApiError::from(Status::new(Code::Unavailable, "redis down"));
        assert_eq!(e.to_string(), "redis down");
        assert!(e.is_transient());
        assert!(ApiError::from(Status::deadline_exceeded("")).is_transient());
        assert!(ApiError::from(Status::cancelled("Timeout expired")).is_transient());
        assert!(!ApiError::invalid("state", "empty").is_transient());
        assert!(!ApiError::from(Status::not_found("no policy")).is_transient());
    }
}

//! The service's error type and its one mapping onto gRPC status codes.

use crate::store::StoreError;

/// Why a call failed. Every variant names the failing input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the call is missing, malformed or out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A rules file was refused; the rules in force stay in force.
    #[error("rules refused (the rules in force stay in force):\n{0}")]
    Rules(#[from] policy::PolicyError),
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing exists but is not in a state that allows the call.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// No or an unknown credential.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The service is stopping; retry on another replica.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a caller reads of a storage failure; the driver's text names tables and queries, so it
/// goes to the log only.
pub const STORE_FAILED: &str = "the database failed; try again (details are in central's log)";

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) | Error::Rules(_) => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            Error::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            Error::Unavailable(_) => tonic::Status::unavailable(msg),
            Error::Store(s) if s.is_transient() => {
                tracing::warn!(error = %s, "a call failed in storage (transient)");
                tonic::Status::unavailable(STORE_FAILED)
            }
            Error::Store(s) => {
                tracing::error!(error = %s, "a call failed in storage");
                tonic::Status::internal(STORE_FAILED)
            }
        }
    }
}

/// Result of the service's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn status_codes() {
        let cases = [
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::Unauthenticated("x".into()), Code::Unauthenticated),
            (Error::PermissionDenied("x".into()), Code::PermissionDenied),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (
                Error::Store(StoreError::Query {
                    op: "x".into(),
                    source: sqlx::Error::PoolTimedOut,
                }),
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(tonic::Status::from(e).code(), code);
        }
        let driver = Error::Store(StoreError::Query {
            op: "reading table secret_things".into(),
            source: sqlx::Error::Protocol("driver detail".into()),
        });
        let s = tonic::Status::from(driver);
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), STORE_FAILED);
        let refused = policy::RuleSet::parse("r.yaml", "rules: [").expect_err("not yaml");
        let s = tonic::Status::from(Error::from(refused));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("r.yaml:"), "{}", s.message());
    }
}

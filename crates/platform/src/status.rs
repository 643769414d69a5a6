//! Errors across service boundaries: gRPC statuses carrying the standard rich error details
//! (`google.rpc.BadRequest`, `PreconditionFailure`, `ErrorInfo`, `RetryInfo`, via `tonic-types`)
//! instead of ad-hoc metadata, so any gRPC client can read them and the gateway maps them to its
//! envelope in one place.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error the bookstore's services raise.
pub(crate) const DOMAIN: &str = "bookstore";

/// `ErrorInfo.reason`s the gateway turns into API error codes of their own.
pub mod reason {
    /// Some lines of a basket could not be reserved (with a `PreconditionFailure` per line).
    pub const OUT_OF_STOCK: &str = "OUT_OF_STOCK";
    /// An idempotency key came back with a different request.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
    /// A sign-up with an email another account has: the edge answers it as it answers a
    /// sign-up that worked, so nobody learns who is a customer.
    pub const EMAIL_TAKEN: &str = "EMAIL_TAKEN";
}

/// Why a value was refused, naming the field so the client knows what to fix. Every service's
/// parsers return it; as a [`Status`] it is `INVALID_ARGUMENT` with a `BadRequest` violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

impl From<InvalidField> for Status {
    fn from(err: InvalidField) -> Self {
        invalid_field(err.field, &err.reason)
    }
}

/// `INVALID_ARGUMENT` naming the field and what is wrong with it.
pub(crate) fn invalid_field(field: &str, description: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, description);
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
}

/// A status with `code` whose `ErrorInfo` gives a machine-readable `reason`.
pub fn with_reason(code: Code, message: impl Into<String>, reason: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

/// What a service answers for a failure that is not the caller's doing: the whole error goes to
/// the log, the caller learns only `INTERNAL`. One cause is the caller's to retry: no database
/// connection came free within the request's deadline (a burst, not a bug), which is
/// `UNAVAILABLE` with a retry delay, as an overloaded peer answers.
pub fn unexpected(service: &str, err: &anyhow::Error) -> Status {
    let pool_busy = err
        .chain()
        .any(|cause| matches!(cause.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::PoolTimedOut)));
    if pool_busy {
        tracing::warn!(service, error = %format!("{err:#}"), "no database connection came free in time");
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_secs(1)));
        return Status::with_error_details(
            Code::Unavailable,
            format!("the {service} service is busy"),
            details,
        );
    }
    tracing::error!(service, error = %format!("{err:#}"), "service failed");
    Status::internal("internal error")
}

/// `RESOURCE_EXHAUSTED` that says when to try again.
pub fn retry_after(message: impl Into<String>, wait: Duration) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(wait));
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// One basket line that could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Shortfall {
    pub book_id: String,
    /// Why, for a person: `not enough stock`, `no such book`.
    pub reason: String,
    pub requested: i64,
    /// Units on the shelf; 0 for a book that does not exist.
    pub available: i64,
}

/// `FAILED_PRECONDITION` for a basket: a `PreconditionFailure` violation per line (subject the
/// book), the numbers in the `ErrorInfo` metadata (`requested/<book>`, `available/<book>`).
pub fn out_of_stock(message: impl Into<String>, lines: &[Shortfall]) -> Status {
    let mut details = ErrorDetails::new();
    let mut numbers = HashMap::new();
    for line in lines {
        details.add_precondition_failure_violation("STOCK", &line.book_id, &line.reason);
        numbers.insert(format!("requested/{}", line.book_id), line.requested.to_string());
        numbers.insert(format!("available/{}", line.book_id), line.available.to_string());
    }
    details.set_error_info(reason::OUT_OF_STOCK, DOMAIN, numbers);
    Status::with_error_details(Code::FailedPrecondition, message, details)
}

/// The lines an [`out_of_stock`] status names; empty for any other status.
pub fn shortfalls(status: &Status) -> Vec<Shortfall> {
    let details = status.get_error_details();
    let (Some(failure), Some(info)) = (details.precondition_failure(), details.error_info()) else {
        return Vec::new();
    };
    if info.reason != reason::OUT_OF_STOCK {
        return Vec::new();
    }
    let number = |key: String| info.metadata.get(&key).and_then(|n| n.parse().ok()).unwrap_or(0);
    failure
        .violations
        .iter()
        .map(|v| Shortfall {
            book_id: v.subject.clone(),
            reason: v.description.clone(),
            requested: number(format!("requested/{}", v.subject)),
            available: number(format!("available/{}", v.subject)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What crosses the wire: code, message and the encoded details (`grpc-status-details-bin`).
    fn over_the_wire(status: Status) -> Status {
        Status::with_details(status.code(), status.message(), status.details().to_vec().into())
    }

    #[test]
    fn a_database_too_busy_to_lend_a_connection_is_unavailable_and_anything_else_internal() {
        let busy = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("starting an order");
        let status = over_the_wire(unexpected("orders", &busy));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "the orders service is busy");
        assert_eq!(
            status.get_error_details().retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(1))
        );

        let broken = anyhow::Error::new(sqlx::Error::RowNotFound).context("reading an order");
        let status = unexpected("orders", &broken);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error", "the cause stays in the log");
    }

    #[test]
    fn details_survive_the_trip_between_services() {
        let lines = [
            Shortfall { book_id: "b1".into(), reason: "not enough stock".into(), requested: 3, available: 1 },
            Shortfall { book_id: "nope".into(), reason: "no such book".into(), requested: 1, available: 0 },
        ];
        let status = over_the_wire(out_of_stock("not enough stock", &lines));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(shortfalls(&status), lines);

        let status = over_the_wire(invalid_field("isbn", "has a wrong check digit"));
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(
            (violations[0].field.as_str(), violations[0].description.as_str()),
            ("isbn", "has a wrong check digit")
        );

        let status = over_the_wire(retry_after("slow down", Duration::from_secs(7)));
        assert_eq!(
            status.get_error_details().retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(7))
        );

        let status =
            over_the_wire(with_reason(Code::FailedPrecondition, "reused", reason::IDEMPOTENCY_KEY_REUSED));
        assert_eq!(status.get_error_details().error_info().unwrap().reason, reason::IDEMPOTENCY_KEY_REUSED);
        assert!(shortfalls(&status).is_empty());
    }
}

//! Why a call to the service failed.

use std::path::PathBuf;
use std::time::Duration;

use kora_model::{ApiError, ErrorCode};

/// Why a call to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service answered with an error (`{error, message, field?}`), and the `Retry-After`
    /// it sent with it, if any.
    #[error("{}", service_message(*.status, .body))]
    Service {
        status: u16,
        body: ApiError,
        retry_after: Option<Duration>,
    },
    /// The service could not be reached, or the connection failed before the answer came.
    #[error("cannot reach the service at {base}: {source}")]
    Unreachable {
        base: String,
        #[source]
        source: ureq::Error,
    },
    /// The answer could not be read, or is not what the API describes.
    #[error("{what}: the service's answer is unreadable: {reason}")]
    Answer { what: String, reason: String },
    /// The request could not be encoded (a query or body the API cannot carry).
    #[error("{what}: cannot encode the request: {reason}")]
    Encode { what: String, reason: String },
    /// `service.json` of a data directory is missing or unreadable.
    #[error("cannot read {}: {reason}", .path.display())]
    ServiceFile { path: PathBuf, reason: String },
    /// No service answers for a data directory.
    #[error(
        "no kora-telemetry service answers for {}; start it with `kora-telemetry serve`",
        .data_dir.display()
    )]
    NotRunning { data_dir: PathBuf },
}

fn service_message(status: u16, body: &ApiError) -> String {
    match &body.field {
        Some(field) => format!("{} ({status} {}, field {field})", body.message, body.error),
        None => format!("{} ({status} {})", body.message, body.error),
    }
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of an error answer (`None` for a code this client does not know).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Service { body, .. } => ErrorCode::parse(&body.error),
            _ => None,
        }
    }

    /// How long the service asked to wait before trying again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Service { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The service said that nothing of the request was stored and that it may be retried as
    /// it is: `429`, `503 unavailable` (admission, a full write queue, shutting down, a store
    /// being reopened) and `507 disk_full`.
    pub fn is_refused_for_now(&self) -> bool {
        matches!(self.status(), Some(429 | 503 | 507))
    }

    /// The service refused the records themselves: retrying the same request can never
    /// succeed (`400`, `409 id_conflict`, `413`, `422 limit_exceeded`: a batch that would
    /// cross a cardinality limit, which waiting does not lift).
    pub fn rejects_records(&self) -> bool {
        matches!(self.status(), Some(400 | 409 | 413 | 422))
    }

    /// The request certainly never reached the service (the connection was refused or could
    /// not be made), so that even a call that is not idempotent may be tried again.
    pub fn never_sent(&self) -> bool {
        let ClientError::Unreachable { source, .. } = self else {
            return false;
        };
        match source {
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
            ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect),
            ureq::Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16) -> ClientError {
        ClientError::Service {
            status,
            body: ApiError {
                error: "forbidden".into(),
                message: "export is off".into(),
                field: None,
                limit: None,
            },
            retry_after: None,
        }
    }

    #[test]
    fn a_service_error_prints_the_service_message() {
        assert_eq!(service(403).to_string(), "export is off (403 forbidden)");
        assert_eq!(service(403).code(), Some(ErrorCode::Forbidden));
    }

    #[test]
    fn statuses_are_classified() {
        for s in [429, 503, 507] {
            assert!(service(s).is_refused_for_now(), "{s}");
            assert!(!service(s).rejects_records(), "{s}");
        }
        for s in [400, 409, 413, 422] {
            assert!(service(s).rejects_records(), "{s}");
            assert!(!service(s).is_refused_for_now(), "{s}");
        }
        for s in [401, 403, 404, 500] {
            assert!(!service(s).rejects_records() && !service(s).is_refused_for_now());
        }
        let refused = ClientError::Unreachable {
            base: "http://127.0.0.1:1".into(),
            source: ureq::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        };
        assert!(refused.never_sent());
        let reset = ClientError::Unreachable {
            base: "http://127.0.0.1:1".into(),
            source: ureq::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
        };
        assert!(!reset.never_sent());
    }
}

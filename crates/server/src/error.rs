//! One error type for every handler: user mistakes are reported as they are, internal failures
//! get a generic body and are logged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kora_model::{ApiError, ErrorCode};

/// What a request can fail with.
#[derive(Debug)]
pub enum AppError {
    /// 400 (`code`'s status): the request is malformed or a record is invalid.
    Invalid {
        code: ErrorCode,
        message: String,
        field: Option<String>,
    },
    /// 401: the endpoint needs the per-install token.
    Unauthorized(String),
    /// 403: the request was refused by the trust boundary, or export is off.
    Forbidden(String),
    /// 502: a collector the user named could not take an export.
    BadGateway(String),
    /// 404
    NotFound(String),
    /// 405: the path exists, the method does not.
    MethodNotAllowed(String),
    /// 409: a client id was reused for other content.
    Conflict { message: String, field: String },
    /// 413
    TooLarge(String),
    /// 415
    UnsupportedMediaType(String),
    /// 422: the batch would cross a cardinality limit; nothing of it was stored.
    LimitExceeded {
        message: String,
        field: String,
        limit: kora_model::LimitStatus,
    },
    /// 503 with Retry-After: the write queue is full or the service is stopping.
    Unavailable { message: String, retry_after_s: u32 },
    /// 507: the disk is full; nothing of the request was stored.
    DiskFull,
    /// 500: logged, with a generic body.
    Internal(String),
}

impl AppError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::Invalid {
            code: ErrorCode::InvalidRecord,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        AppError::Invalid {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The code this error is answered with; its status is [`ErrorCode::status`].
    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::Invalid { code, .. } => *code,
            AppError::Unauthorized(_) => ErrorCode::Unauthorized,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::BadGateway(_) => ErrorCode::BadGateway,
            AppError::NotFound(_) => ErrorCode::NotFound,
            AppError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            AppError::Conflict { .. } => ErrorCode::IdConflict,
            AppError::TooLarge(_) => ErrorCode::TooLarge,
            AppError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            AppError::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            AppError::Unavailable { .. } => ErrorCode::Unavailable,
            AppError::DiskFull => ErrorCode::DiskFull,
            AppError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<kora_pipeline::WriteFailure> for AppError {
    fn from(e: kora_pipeline::WriteFailure) -> Self {
        use kora_pipeline::WriteFailure;
        match e {
            WriteFailure::Unavailable {
                message,
                retry_after_s,
            } => AppError::Unavailable {
                message,
                retry_after_s,
            },
            WriteFailure::Conflict { message, field } => AppError::Conflict { message, field },
            WriteFailure::Limit(r) => AppError::LimitExceeded {
                message: r.message,
                field: r.field,
                limit: r.status,
            },
            WriteFailure::DiskFull(_) => AppError::DiskFull,
            WriteFailure::Internal(m) => AppError::Internal(m),
        }
    }
}

impl From<kora_store::ReadError> for AppError {
    fn from(e: kora_store::ReadError) -> Self {
        match e {
            kora_store::ReadError::Reopening => AppError::Unavailable {
                message: e.to_string(),
                retry_after_s: 1,
            },
            e => AppError::Internal(e.to_string()),
        }
    }
}

/// Runs a store read on the blocking pool; its failure (or the task's) is an [`AppError`].
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, kora_store::ReadError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(AppError::from)
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let code = self.code();
        let mut limit = None;
        let (message, field, retry) = match self {
            AppError::Invalid { message, field, .. } => (message, field, None),
            AppError::LimitExceeded {
                message,
                field,
                limit: status,
            } => {
                limit = Some(status);
                (message, Some(field), None)
            }
            AppError::Unauthorized(m)
            | AppError::Forbidden(m)
            | AppError::BadGateway(m)
            | AppError::NotFound(m)
            | AppError::MethodNotAllowed(m)
            | AppError::TooLarge(m)
            | AppError::UnsupportedMediaType(m) => (m, None, None),
            AppError::Conflict { message, field } => (message, Some(field), None),
            AppError::Unavailable {
                message,
                retry_after_s,
            } => (message, None, Some(retry_after_s)),
            AppError::DiskFull => (
                "the disk holding the data directory is full; nothing of this request was stored"
                    .to_owned(),
                None,
                Some(5),
            ),
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                ("internal error; see the service log".to_owned(), None, None)
            }
        };
        let body = ApiError {
            error: code.as_str().to_owned(),
            message,
            field,
            limit,
        };
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(s) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant is answered with the status its code names.
    #[test]
    fn the_status_is_the_codes() {
        let errors = [
            AppError::invalid("f", "m"),
            AppError::bad_request(ErrorCode::InvalidQuery, "m"),
            AppError::bad_request(ErrorCode::InvalidBody, "m"),
            AppError::Unauthorized("m".into()),
            AppError::Forbidden("m".into()),
            AppError::BadGateway("m".into()),
            AppError::NotFound("m".into()),
            AppError::MethodNotAllowed("m".into()),
            AppError::Conflict {
                message: "m".into(),
                field: "f".into(),
            },
            AppError::TooLarge("m".into()),
            AppError::UnsupportedMediaType("m".into()),
            AppError::LimitExceeded {
                message: "m".into(),
                field: "f".into(),
                limit: kora_model::LimitStatus {
                    name: kora_model::LimitName::Models,
                    limit: 1,
                    count: 1,
                    refused_batches: 1,
                },
            },
            AppError::Unavailable {
                message: "m".into(),
                retry_after_s: 1,
            },
            AppError::DiskFull,
            AppError::Internal("m".into()),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for e in errors {
            let code = e.code();
            seen.insert(code);
            let response = e.into_response();
            assert_eq!(response.status().as_u16(), code.status(), "{code}");
        }
        // Every code is answered by one of them.
        assert_eq!(seen.len(), ErrorCode::ALL.len(), "{seen:?}");
    }
}

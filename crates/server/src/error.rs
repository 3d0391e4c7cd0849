//! One error type for every handler: user mistakes are reported as they are, internal failures
//! get a generic body and are logged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kora_model::ApiError;

/// What a request can fail with.
#[derive(Debug)]
pub enum AppError {
    /// 400: the request is malformed or a record is invalid.
    Invalid {
        code: &'static str,
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
            code: "invalid_record",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Invalid {
            code,
            message: message.into(),
            field: None,
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

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, error, message, field, retry) = match self {
            AppError::Invalid {
                code,
                message,
                field,
            } => (StatusCode::BAD_REQUEST, code, message, field, None),
            AppError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m, None, None),
            AppError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m, None, None),
            AppError::BadGateway(m) => (StatusCode::BAD_GATEWAY, "bad_gateway", m, None, None),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m, None, None),
            AppError::MethodNotAllowed(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                m,
                None,
                None,
            ),
            AppError::Conflict { message, field } => (
                StatusCode::CONFLICT,
                "id_conflict",
                message,
                Some(field),
                None,
            ),
            AppError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m, None, None),
            AppError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
                None,
                None,
            ),
            AppError::Unavailable {
                message,
                retry_after_s,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message,
                None,
                Some(retry_after_s),
            ),
            AppError::DiskFull => (
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the disk holding the data directory is full; nothing of this request was stored"
                    .to_owned(),
                None,
                Some(5),
            ),
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the service log".to_owned(),
                    None,
                    None,
                )
            }
        };
        let body = ApiError {
            error: error.to_owned(),
            message,
            field,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(s) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

//! The `error` codes of [`ApiError`](super::ApiError): one list, used by the server's error
//! mapping and by the OpenAPI document's error responses.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// Defines [`ErrorCode`] and everything about each code from one table, so that no code can
/// be missing from [`ErrorCode::ALL`].
macro_rules! error_codes {
    ($($variant:ident = $code:literal, $status:literal, $description:literal;)*) => {
        /// Every `error` code the service answers, with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(JsonSchema))]
        pub enum ErrorCode {
            $(
                #[doc = $description]
                #[serde(rename = $code)]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, in status order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code as the `error` field carries it (its serde form).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status the code is answered with.
            pub const fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            /// When the service answers it, in a few words (http-api.md's error table says
            /// more).
            pub const fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $description,)*
                }
            }
        }
    };
}

error_codes! {
    InvalidBody = "invalid_body", 400,
        "The body does not decode: malformed JSON or MessagePack, a wrong type, an unknown \
         field; `field` names the offending field when known.";
    InvalidRecord = "invalid_record", 400,
        "A decoded item breaks a rule of its endpoint; `field` names it.";
    InvalidQuery = "invalid_query", 400, "A query parameter is wrong; `field` names it.";
    Unauthorized = "unauthorized", 401,
        "The per-install token is missing or wrong (`Authorization: Bearer <token>`, the file \
         `token` in the data directory). Needed by the token routes; by every route only when \
         the service listens beyond loopback (`serve --allow-non-loopback`).";
    Forbidden = "forbidden", 403,
        "The request failed the trust boundary: a Host that is not this service, or a write \
         from a foreign Origin or `Sec-Fetch-Site: cross-site`. `POST /v1/export` also while \
         export is off.";
    NotFound = "not_found", 404, "No such resource.";
    MethodNotAllowed = "method_not_allowed", 405,
        "The path exists, but not with this method; `Allow` lists the methods it takes.";
    IdConflict = "id_conflict", 409,
        "An item's `id` was stored before with other content; `field` names it. Nothing of the \
         batch was stored.";
    TooLarge = "too_large", 413,
        "The body is over 8 MiB or the batch has more than 10,000 items.";
    UnsupportedMediaType = "unsupported_media_type", 415,
        "`Content-Type` is missing or is not `application/json` or MessagePack \
         (`application/msgpack`, `application/x-msgpack`, `application/vnd.msgpack`).";
    LimitExceeded = "limit_exceeded", 422,
        "The batch would cross a cardinality limit (distinct models, series, or sessions open \
         at once): nothing of it was stored. `limit` names the limit, its value and the count \
         now; `field` the first item that would cross it. Retrying does not help until the \
         limit is raised (or, for sessions, some end).";
    Internal = "internal", 500,
        "An internal failure; the detail is in the service log, never in the response.";
    BadGateway = "bad_gateway", 502,
        "The OTLP collector could not be reached or answered non-2xx; nothing was recorded as \
         exported.";
    Unavailable = "unavailable", 503,
        "Nothing was done; retry after `Retry-After` seconds: the write queue is full, the \
         service is shutting down, the store file is being reopened after a storage failure, \
         or (profile, fit) the probe has not taken its first reading yet.";
    DiskFull = "disk_full", 507,
        "The disk holding the data directory is full; nothing was stored. Retry after \
         `Retry-After` seconds.";
}

impl ErrorCode {
    /// The code an `error` field names; `None` for a code this build does not know.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_status_order() {
        let mut sorted = ErrorCode::ALL.to_vec();
        sorted.sort_by_key(|c| c.status());
        assert_eq!(sorted, ErrorCode::ALL, "ALL is in status order");
        let names: std::collections::BTreeSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::ALL.len(), 15);
    }

    #[test]
    fn the_serde_form_is_as_str_and_parses_back() {
        for &c in ErrorCode::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert_eq!(c.to_string(), c.as_str());
            assert!((400..600).contains(&c.status()), "{c:?}");
            assert!(!c.description().is_empty());
        }
        assert_eq!(ErrorCode::parse("teapot"), None);
        assert!(serde_json::from_str::<ErrorCode>("\"teapot\"").is_err());
    }
}

//! The trust boundary, applied before routing: Host allowlist (DNS rebinding), Origin checks on
//! state-changing requests, and security headers on every response.
//!
//! A web page in the user's browser can reach 127.0.0.1. It cannot choose the Host header of a
//! request to a name that resolves there, so an exact Host allowlist stops DNS rebinding; and a
//! cross-site page's writes carry its Origin (or `Sec-Fetch-Site: cross-site`), which is refused.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
pub use crate::hosts::HostPolicy;
use crate::state::AppState;

fn single(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<&str>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    match first {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ()),
    }
}

/// Refuses requests that do not name this service, or that a foreign page sent.
///
/// Every response, a refusal included, carries the security headers.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = match admit(&state, &request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    };
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The trust boundary: the Host and Origin checks, and the token everywhere beyond loopback.
fn admit(state: &AppState, request: &Request) -> Result<(), AppError> {
    check(&state.config.hosts, request).map_err(AppError::Forbidden)?;
    if state.token_everywhere {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|t| state.config.token.matches(t)) {
            return Err(AppError::Unauthorized(
                "this service listens beyond loopback: every request needs \
                 `Authorization: Bearer <token>` (the file `token` in the data directory)"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn check(policy: &HostPolicy, request: &Request) -> Result<(), String> {
    let headers = request.headers();
    let host = match single(headers, header::HOST) {
        Ok(Some(h)) if !h.is_empty() => h,
        Ok(_) => return Err("the Host header is missing or empty".into()),
        Err(()) => return Err("the Host header is repeated or not text".into()),
    };
    if !policy.allows_authority(host) {
        return Err(format!(
            "Host {host:?} is not this service; use http://127.0.0.1:{}",
            policy.port
        ));
    }
    // An absolute-form target must name this service too.
    if let Some(authority) = request.uri().authority()
        && !policy.allows_authority(authority.as_str())
    {
        return Err(format!(
            "the request target names another host ({authority})"
        ));
    }
    let changes_state = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if changes_state {
        match single(headers, header::ORIGIN) {
            Ok(None) => {}
            Ok(Some(origin)) if policy.allows_origin(origin) => {}
            Ok(Some(origin)) => {
                return Err(format!(
                    "writes from origin {origin:?} are refused; only this service's own pages may write"
                ));
            }
            Err(()) => return Err("the Origin header is repeated or not text".into()),
        }
        if let Ok(Some(site)) = single(headers, header::HeaderName::from_static("sec-fetch-site"))
            && site.eq_ignore_ascii_case("cross-site")
        {
            return Err("cross-site writes are refused".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_allowlist_is_exact() {
        let p = HostPolicy {
            port: 7433,
            extra_names: vec![],
        };
        for ok in [
            "127.0.0.1:7433",
            "localhost:7433",
            "LOCALHOST:7433",
            "[::1]:7433",
        ] {
            assert!(p.allows_authority(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:80",
            "localhost.:7433",
            "evil.com:7433",
            "127.0.0.1.evil.com:7433",
            "localhost:7433:7433",
            "[::1]",
            "",
        ] {
            assert!(!p.allows_authority(bad), "{bad}");
        }
        assert!(p.allows_origin("http://127.0.0.1:7433"));
        assert!(!p.allows_origin("null"));
        assert!(!p.allows_origin("https://127.0.0.1:7433"));
        assert!(!p.allows_origin("http://evil.com:7433"));
    }
}

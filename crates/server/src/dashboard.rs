//! The bundled local dashboards: static files from `dashboards/`, embedded into the binary at
//! compile time and served at `GET /` and `GET /dashboards/{file}`.
//!
//! The pages are plain HTML, CSS and JavaScript (no build step) and a vendored copy of uPlot;
//! nothing is fetched from outside the machine. They read the same public API as any other
//! client. The security layer's `Content-Security-Policy: default-src 'self'` holds for them:
//! there is no inline script, inline style or inline event handler, so the policy needs no
//! exception. Only the files listed here are served; any other path is a `404`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::AppError;

/// One embedded file.
#[derive(Debug)]
struct Asset {
    /// The path under `/dashboards/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../../dashboards/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the dashboards consist of. A file added to `dashboards/` must be listed here.
static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("app.js", JS),
    asset!("app.css", CSS),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/uplot/uPlot.iife.min.js", JS),
    asset!("vendor/uplot/uPlot.min.css", CSS),
    asset!("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
];

/// The dashboard routes, to be merged into the application router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/dashboards", get(to_index))
        .route("/dashboards/", get(to_index))
        .route("/dashboards/{*file}", get(file))
        .route("/favicon.ico", get(favicon))
}

/// The names `GET /dashboards/{file}` answers.
pub fn files() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}

/// The `Content-Type`s the dashboard files are served with, each once.
pub fn content_types() -> Vec<&'static str> {
    let mut types: Vec<_> = ASSETS.iter().map(|a| a.content_type).collect();
    types.sort_unstable();
    types.dedup();
    types
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

fn respond(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The files change only with the binary; revalidating is cheap on loopback and means a
    // new version is never hidden behind a stale cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn missing(path: &str) -> AppError {
    AppError::NotFound(format!(
        "no dashboard file {path:?}; the dashboards start at /"
    ))
}

async fn index() -> Result<Response, AppError> {
    find("index.html")
        .map(respond)
        .ok_or_else(|| missing("index.html"))
}

async fn to_index() -> Redirect {
    Redirect::to("/")
}

async fn favicon() -> Result<Response, AppError> {
    find("favicon.svg")
        .map(respond)
        .ok_or_else(|| missing("favicon.svg"))
}

async fn file(Path(path): Path<String>) -> Result<Response, AppError> {
    find(&path).map(respond).ok_or_else(|| missing(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_typed() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
            assert!(!a.path.contains(".."), "{}", a.path);
        }
        assert!(find("index.html").is_some());
        assert!(find("../Cargo.toml").is_none());
    }

    /// The pages must run under `default-src 'self'`: no inline script, style or handler.
    #[test]
    fn pages_have_nothing_inline() {
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".html")) {
            let text = String::from_utf8_lossy(a.body).to_ascii_lowercase();
            assert!(!text.contains(" style="), "{}: inline style", a.path);
            assert!(!text.contains("<style"), "{}: inline style", a.path);
            assert!(!text.contains(" onclick="), "{}: inline handler", a.path);
            assert!(!text.contains(" onload="), "{}: inline handler", a.path);
            for script in text.split("<script").skip(1) {
                let tag = script.split('>').next().unwrap_or_default();
                assert!(tag.contains("src="), "{}: an inline script", a.path);
            }
        }
    }
}

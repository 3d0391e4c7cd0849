//! A typed client of the running service's HTTP API, used by every command that talks to it
//! and by the demo's workload. Requests and answers are the API's own types; an answer the
//! service refused becomes [`ClientError::Service`] with the service's message.

use std::path::Path;
use std::time::Duration;

use kora_model::service::{SERVICE_FILE, ServiceFile};
use kora_model::{
    ApiError, Category, EventBatch, Feedback, FitVerdict, Health, IngestAck, LogPage,
    ProductMetrics, ProfileRecord, Readiness, RunBatch, SampleBatch,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use kora_model::{
    ConsentChange, ConsentState, ExportOutcome, ExportPreview, ExportRequest, SuggestionsView,
};
pub use kora_server::views::TriggersView;

/// The largest answer the client reads (bytes).
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// Why a call to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service answered with an error (`{error, message, field?}`).
    #[error("{}", service_message(*.status, .body))]
    Service { status: u16, body: ApiError },
    /// The service could not be reached.
    #[error("cannot reach the service at {base}: {source}")]
    Unreachable {
        base: String,
        #[source]
        source: ureq::Error,
    },
    /// The answer could not be read, or is not what the API describes.
    #[error("{what}: the service's answer is unreadable: {reason}")]
    Answer { what: String, reason: String },
}

fn service_message(status: u16, body: &ApiError) -> String {
    match &body.field {
        Some(field) => format!("{} ({status} {}, field {field})", body.message, body.error),
        None => format!("{} ({status} {})", body.message, body.error),
    }
}

/// A client of one running service.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// The per-install token, sent with the calls that change state.
    token: Option<String>,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Reads `service.json` of `data_dir`.
pub fn read_service_file(data_dir: &Path) -> anyhow::Result<ServiceFile> {
    use anyhow::Context;
    let path = data_dir.join(SERVICE_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not what a running service writes", path.display()))
}

impl Client {
    /// A client of the service at `base` (e.g. `http://127.0.0.1:7433`), waiting at most
    /// `timeout` for each call.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Client {
        Client {
            agent: agent(timeout),
            base: base.into(),
            token: None,
        }
    }

    /// The same client, sending `token` with the calls that need it.
    pub fn with_token(mut self, token: String) -> Client {
        self.token = Some(token);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The service running on `data_dir`, if `service.json` names one that answers its health
    /// check within 2 s.
    pub fn running(data_dir: &Path) -> Option<Client> {
        let service = read_service_file(data_dir).ok()?;
        let probe = Client::new(service.base_url(), Duration::from_secs(2));
        probe.health().ok()?;
        Some(Client::new(service.base_url(), Duration::from_secs(30)))
    }

    /// The service running on `data_dir`, or an error that says how to start one.
    pub fn connect(data_dir: &Path) -> anyhow::Result<Client> {
        Client::running(data_dir).ok_or_else(|| {
            anyhow::anyhow!(
                "no kora-telemetry service answers for {}; start it with `kora-telemetry serve`",
                data_dir.display()
            )
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn token(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let mut request = self.agent.get(self.url(path));
        for (k, v) in query {
            request = request.query(*k, v);
        }
        if let Some(t) = self.token() {
            request = request.header("authorization", t);
        }
        self.answer(&format!("GET {path}"), request.call())
    }

    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut request = match method {
            "PUT" => self.agent.put(url),
            _ => self.agent.post(url),
        };
        if let Some(t) = self.token() {
            request = request.header("authorization", t);
        }
        self.answer(&format!("{method} {path}"), request.send_json(body))
    }

    fn answer<T: DeserializeOwned>(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = response.map_err(|source| ClientError::Unreachable {
            base: self.base.clone(),
            source,
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| ClientError::Answer {
                what: what.to_owned(),
                reason: e.to_string(),
            })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| ClientError::Answer {
                what: what.to_owned(),
                reason: e.to_string(),
            });
        }
        let body = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| ApiError {
            error: "unexpected_answer".into(),
            message: format!("{what} was refused"),
            field: None,
        });
        Err(ClientError::Service {
            status: status.as_u16(),
            body,
        })
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health", &[])
    }

    /// `GET /v1/log`: the newest `limit` entries, of one kind when given.
    pub fn log(&self, limit: usize, kind: Option<&str>) -> Result<LogPage, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(kind.map(|k| ("kind", k.to_owned())));
        self.get("/v1/log", &query)
    }

    /// `GET /v1/profile`.
    pub fn profile(&self) -> Result<ProfileRecord, ClientError> {
        self.get("/v1/profile", &[])
    }

    /// `GET /v1/fit`.
    pub fn fit(
        &self,
        model_required_vram_mb: f64,
        context_tokens: Option<u64>,
    ) -> Result<FitVerdict, ClientError> {
        let mut query = vec![("model_required_vram_mb", model_required_vram_mb.to_string())];
        query.extend(context_tokens.map(|c| ("context_tokens", c.to_string())));
        self.get("/v1/fit", &query)
    }

    /// `GET /v1/consent`.
    pub fn consent(&self) -> Result<ConsentState, ClientError> {
        self.get("/v1/consent", &[])
    }

    /// `PUT /v1/consent` (token).
    pub fn set_consent(&self, change: &ConsentChange) -> Result<ConsentState, ClientError> {
        self.send("PUT", "/v1/consent", change)
    }

    /// `GET /v1/export/preview`.
    pub fn export_preview(&self) -> Result<ExportPreview, ClientError> {
        self.get("/v1/export/preview", &[])
    }

    /// `POST /v1/export` (token).
    pub fn export(&self, request: &ExportRequest) -> Result<ExportOutcome, ClientError> {
        self.send("POST", "/v1/export", request)
    }

    /// `GET /v1/metrics/product`.
    pub fn product_metrics(&self, range: &str) -> Result<ProductMetrics, ClientError> {
        self.get("/v1/metrics/product", &[("range", range.to_owned())])
    }

    /// `GET /v1/triggers`.
    pub fn triggers(&self) -> Result<TriggersView, ClientError> {
        self.get("/v1/triggers", &[])
    }

    /// `GET /v1/suggestions`, newest first.
    pub fn suggestions(
        &self,
        category: Option<Category>,
        limit: Option<usize>,
    ) -> Result<SuggestionsView, ClientError> {
        let mut query = Vec::new();
        query.extend(category.map(|c| ("category", c.as_str().to_owned())));
        query.extend(limit.map(|l| ("limit", l.to_string())));
        self.get("/v1/suggestions", &query)
    }

    /// `POST /v1/suggestions/{id}/feedback`.
    pub fn feedback(
        &self,
        suggestion_id: &str,
        feedback: &Feedback,
    ) -> Result<IngestAck, ClientError> {
        let path = format!("/v1/suggestions/{}/feedback", path_segment(suggestion_id));
        self.send("POST", &path, feedback)
    }

    /// `PUT /v1/cloud/readiness`.
    pub fn readiness(&self, readiness: &Readiness) -> Result<IngestAck, ClientError> {
        self.send("PUT", "/v1/cloud/readiness", readiness)
    }

    /// `POST /v1/samples`.
    pub fn samples(&self, batch: &SampleBatch) -> Result<IngestAck, ClientError> {
        self.send("POST", "/v1/samples", batch)
    }

    /// `POST /v1/runs`.
    pub fn runs(&self, batch: &RunBatch) -> Result<IngestAck, ClientError> {
        self.send("POST", "/v1/runs", batch)
    }

    /// `POST /v1/events`.
    pub fn events(&self, batch: &EventBatch) -> Result<IngestAck, ClientError> {
        self.send("POST", "/v1/events", batch)
    }
}

/// `s` percent-encoded for one path segment (RFC 3986 unreserved characters stay).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_segment_is_encoded() {
        assert_eq!(path_segment("sg-1a_b.c~"), "sg-1a_b.c~");
        assert_eq!(path_segment("a/b c?"), "a%2Fb%20c%3F");
    }

    #[test]
    fn a_service_error_prints_the_service_message() {
        let e = ClientError::Service {
            status: 403,
            body: ApiError {
                error: "forbidden".into(),
                message: "export is off".into(),
                field: None,
            },
        };
        assert_eq!(e.to_string(), "export is off (403 forbidden)");
    }
}

//! [`Client`]: one typed call per endpoint of the service's HTTP API, each retried by its
//! [`RetryPolicy`] when the failure allows it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use kora_model::service::{SERVICE_FILE, ServiceFile};
use kora_model::{
    ApiError, ConsentChange, ConsentState, EventBatch, ExportOutcome, ExportPreview, ExportRequest,
    Feedback, FitQuery, FitVerdict, Health, IngestAck, IngestQuery, LogPage, LogQuery, MAX_WAIT_MS,
    ProductMetrics, ProfileRecord, RangeQuery, Readiness, RunBatch, SampleBatch, SeriesQuery,
    SeriesView, SuggestionsQuery, SuggestionsView, TriggersQuery, WaitFor, WindowsQuery,
    WindowsView,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ClientError;
use crate::record::{ClientId, Endpoint, IdSource, with_ids};
use crate::retry::{Backoff, RetryPolicy, Safety};
use crate::stream::EventStream;
use crate::views::{ThresholdsView, TriggersView};

/// The largest answer the client reads (bytes).
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// How request bodies are encoded (answers are always JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    #[default]
    Json,
    /// `application/msgpack`, maps with field names (`rmp_serde::to_vec_named`): smaller and
    /// cheaper to decode for high-rate samples.
    MessagePack,
}

/// How to build a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    timeout: Duration,
    retry: RetryPolicy,
    encoding: Encoding,
    token: Option<String>,
    service_dir: Option<PathBuf>,
    assign_ids: bool,
}

impl ClientBuilder {
    /// The longest one attempt of a call may take, answer included (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How calls are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The per-install token (the file `token` of the data directory), sent as
    /// `Authorization: Bearer` with every call: `PUT /v1/consent` and `POST /v1/export` need
    /// it, and every route does when the service listens beyond loopback.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Follow the service of `data_dir`: when the service cannot be reached, the client reads
    /// `service.json` there again and uses the address it names (a restarted service may
    /// listen on another port).
    pub fn follow_service_file(mut self, data_dir: impl Into<PathBuf>) -> Self {
        self.service_dir = Some(data_dir.into());
        self
    }

    /// Whether records sent without an `id` get one (default: yes). Without ids, a batch
    /// whose answer was lost is not retried, since it may have been stored.
    pub fn assign_ids(mut self, assign: bool) -> Self {
        self.assign_ids = assign;
        self
    }

    pub fn build(self) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .build()
            .into();
        Client {
            agent,
            base: Arc::new(RwLock::new(self.base)),
            service_dir: self.service_dir.map(Arc::new),
            token: self.token,
            retry: self.retry,
            encoding: self.encoding,
            ids: self.assign_ids.then(|| Arc::new(IdSource::new())),
        }
    }
}

/// A client of one running service.
///
/// Thread-safety: `Client` is `Send + Sync` and cheap to clone; clones share the connection
/// pool, the id source and the followed address. Calls from many threads run concurrently
/// (each blocks its own thread: the client is synchronous, built on `ureq`). A benchmark that
/// wants one connection per thread builds one client per thread.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: Arc<RwLock<String>>,
    service_dir: Option<Arc<PathBuf>>,
    token: Option<String>,
    retry: RetryPolicy,
    encoding: Encoding,
    ids: Option<Arc<IdSource>>,
}

/// Reads `service.json` of `data_dir`: where the service running on it listens.
pub fn read_service_file(data_dir: &Path) -> Result<ServiceFile, ClientError> {
    let path = data_dir.join(SERVICE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ClientError::ServiceFile {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ClientError::ServiceFile {
        path,
        reason: format!("not what a running service writes: {e}"),
    })
}

/// A request before it is sent: method, path, query and encoded body.
struct Call<'a> {
    method: &'static str,
    path: &'a str,
    query: Vec<(String, String)>,
    body: Option<(Vec<u8>, &'static str)>,
    safety: Safety,
}

impl Call<'_> {
    fn what(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// The pairs of a query struct (its JSON object's members; absent ones left out).
fn query_pairs<Q: Serialize>(what: &str, q: &Q) -> Result<Vec<(String, String)>, ClientError> {
    let encode = |reason: String| ClientError::Encode {
        what: what.to_owned(),
        reason,
    };
    let value = serde_json::to_value(q).map_err(|e| encode(e.to_string()))?;
    let map = match value {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => return Ok(Vec::new()),
        other => return Err(encode(format!("a query is an object, not {other}"))),
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some((k, s)),
            other => Some((k, other.to_string())),
        })
        .collect())
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

fn retry_after(response: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl Client {
    /// A client of the service at `base` (e.g. `http://127.0.0.1:7433`) with the defaults.
    pub fn new(base: impl Into<String>) -> Client {
        Client::builder(base).build()
    }

    /// A client of the service at `base`, to configure.
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            encoding: Encoding::Json,
            token: None,
            service_dir: None,
            assign_ids: true,
        }
    }

    /// The same client, sending `token` with every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// The address calls go to now.
    pub fn base(&self) -> String {
        self.base
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The service running on `data_dir`, if `service.json` names one that answers its health
    /// check within 2 s; the client follows that file.
    pub fn running(data_dir: &Path) -> Option<Client> {
        let service = read_service_file(data_dir).ok()?;
        let probe = Client::builder(service.base_url())
            .timeout(Duration::from_secs(2))
            .retry(RetryPolicy::none())
            .build();
        probe.health().ok()?;
        Some(
            Client::builder(service.base_url())
                .follow_service_file(data_dir)
                .build(),
        )
    }

    /// The service running on `data_dir`, or [`ClientError::NotRunning`] (which says how to
    /// start one).
    pub fn connect(data_dir: &Path) -> Result<Client, ClientError> {
        Client::running(data_dir).ok_or_else(|| ClientError::NotRunning {
            data_dir: data_dir.to_owned(),
        })
    }

    /// Reads the followed `service.json` again; answers whether the address changed.
    fn refresh_base(&self) -> bool {
        let Some(dir) = &self.service_dir else {
            return false;
        };
        let Ok(service) = read_service_file(dir) else {
            return false;
        };
        let fresh = service.base_url();
        let mut base = self.base.write().unwrap_or_else(PoisonError::into_inner);
        if *base == fresh {
            return false;
        }
        *base = fresh;
        true
    }

    fn encode<B: Serialize>(
        &self,
        what: &str,
        body: &B,
    ) -> Result<(Vec<u8>, &'static str), ClientError> {
        let encoded = match self.encoding {
            Encoding::Json => serde_json::to_vec(body)
                .map(|b| (b, "application/json"))
                .map_err(|e| e.to_string()),
            Encoding::MessagePack => rmp_serde::to_vec_named(body)
                .map(|b| (b, "application/msgpack"))
                .map_err(|e| e.to_string()),
        };
        encoded.map_err(|reason| ClientError::Encode {
            what: what.to_owned(),
            reason,
        })
    }

    /// `request` with the call's query and the token.
    fn decorate<B>(
        &self,
        mut request: ureq::RequestBuilder<B>,
        call: &Call<'_>,
    ) -> ureq::RequestBuilder<B> {
        for (k, v) in &call.query {
            request = request.query(k, v);
        }
        match &self.token {
            Some(t) => request.header("authorization", format!("Bearer {t}")),
            None => request,
        }
    }

    /// One attempt of `call`, its answer read: the raw text of a success.
    fn attempt(&self, call: &Call<'_>) -> Result<String, ClientError> {
        let base = self.base();
        let url = format!("{base}{}", call.path);
        let unreachable = |source| ClientError::Unreachable {
            base: base.clone(),
            source,
        };
        let response = match &call.body {
            None => self.decorate(self.agent.get(&url), call).call(),
            Some((bytes, content_type)) => {
                let request = match call.method {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                self.decorate(request, call)
                    .content_type(*content_type)
                    .send(&bytes[..])
            }
        };
        let mut response = response.map_err(unreachable)?;
        let status = response.status();
        let wait = retry_after(&response);
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| ClientError::Answer {
                what: call.what(),
                reason: e.to_string(),
            })?;
        if status.is_success() {
            return Ok(text);
        }
        let body = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| ApiError {
            error: "unexpected_answer".into(),
            message: format!("{} was refused", call.what()),
            field: None,
            limit: None,
        });
        Err(ClientError::Service {
            status: status.as_u16(),
            body,
            retry_after: wait,
        })
    }

    /// `call`, retried as the policy and its safety allow.
    fn run(&self, call: &Call<'_>, policy: RetryPolicy) -> Result<String, ClientError> {
        let mut backoff = Backoff::new(policy);
        loop {
            match self.attempt(call) {
                Ok(text) => return Ok(text),
                Err(e) => {
                    // A restarted service may listen elsewhere: look again before waiting.
                    if matches!(e, ClientError::Unreachable { .. }) {
                        self.refresh_base();
                    }
                    match backoff.retry(&e, call.safety) {
                        Some(wait) => std::thread::sleep(wait),
                        None => return Err(e),
                    }
                }
            }
        }
    }

    fn decode<T: DeserializeOwned>(call: &Call<'_>, text: &str) -> Result<T, ClientError> {
        serde_json::from_str(text).map_err(|e| ClientError::Answer {
            what: call.what(),
            reason: e.to_string(),
        })
    }

    fn get<T: DeserializeOwned, Q: Serialize>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        let call = Call {
            method: "GET",
            path,
            query: query_pairs(path, query)?,
            body: None,
            safety: Safety::Idempotent,
        };
        let text = self.run(&call, self.retry)?;
        Client::decode(&call, &text)
    }

    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: &B,
        safety: Safety,
        policy: RetryPolicy,
    ) -> Result<T, ClientError> {
        let call = Call {
            method,
            path,
            query: Vec::new(),
            body: Some(self.encode(path, body)?),
            safety,
        };
        let text = self.run(&call, policy)?;
        Client::decode(&call, &text)
    }

    /// One attempt of an ingest batch of `records` (every one with its id), no retry: a
    /// [`crate::Sender`] retries by itself.
    pub(crate) fn ingest_once<T: Serialize>(
        &self,
        endpoint: Endpoint,
        records: &[T],
    ) -> Result<IngestAck, ClientError> {
        let body = BTreeMap::from([(endpoint.key(), records)]);
        let once = RetryPolicy::none();
        self.send("POST", endpoint.path(), &body, Safety::Idempotent, once)
    }

    /// An ingest batch, ids given where missing: idempotent when every record has one. With
    /// `wait`, the service answers once the engine has folded the batch (`?wait=decisions`).
    fn ingest<T: Serialize + ClientId + Clone>(
        &self,
        endpoint: Endpoint,
        records: &[T],
        wait: Option<Duration>,
    ) -> Result<IngestAck, ClientError> {
        let records = with_ids(self.ids.as_deref(), records);
        let safety = match records.iter().all(ClientId::has_id) {
            true => Safety::Idempotent,
            false => Safety::Once,
        };
        // `{"runs": [...]}`: the same document (JSON or MessagePack) as the batch type.
        let body = BTreeMap::from([(endpoint.key(), &*records)]);
        let query = IngestQuery {
            wait: wait.map(|_| WaitFor::Decisions),
            timeout_ms: wait.map(|w| {
                u64::try_from(w.as_millis())
                    .unwrap_or(MAX_WAIT_MS)
                    .min(MAX_WAIT_MS)
            }),
        };
        let call = Call {
            method: "POST",
            path: endpoint.path(),
            query: query_pairs(endpoint.path(), &query)?,
            body: Some(self.encode(endpoint.path(), &body)?),
            safety,
        };
        let text = self.run(&call, self.retry)?;
        Client::decode(&call, &text)
    }

    /// `GET /v1/stream`: the push stream of decisions, resuming after `last_event_id` when
    /// given (nothing missed, nothing twice); with `follow: false` it ends after the catch-up
    /// (`ready`). Opened once, not retried, and without the client's timeout (it stays open):
    /// when it ends, open it again after [`EventStream::last_event_id`].
    pub fn stream(
        &self,
        last_event_id: Option<&str>,
        follow: bool,
    ) -> Result<EventStream, ClientError> {
        let base = self.base();
        let url = format!("{base}/v1/stream");
        let mut request = self.agent.get(&url).config().timeout_global(None).build();
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        if !follow {
            request = request.query("follow", "false");
        }
        if let Some(t) = &self.token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let mut response = request.call().map_err(|source| ClientError::Unreachable {
            base: base.clone(),
            source,
        })?;
        let status = response.status();
        if !status.is_success() {
            let wait = retry_after(&response);
            let text = response.body_mut().read_to_string().unwrap_or_default();
            let body = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| ApiError {
                error: "unexpected_answer".into(),
                message: "GET /v1/stream was refused".into(),
                field: None,
                limit: None,
            });
            return Err(ClientError::Service {
                status: status.as_u16(),
                body,
                retry_after: wait,
            });
        }
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        Ok(EventStream::new(
            Box::new(reader),
            last_event_id.map(str::to_owned),
        ))
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health", &())
    }

    /// `GET /v1/log`: log entries, newest first.
    pub fn log(&self, query: &LogQuery) -> Result<LogPage, ClientError> {
        self.get("/v1/log", query)
    }

    /// `GET /v1/profile`: the capability profile and the hardware snapshot it came from.
    pub fn profile(&self) -> Result<ProfileRecord, ClientError> {
        self.get("/v1/profile", &())
    }

    /// `GET /v1/fit`: whether a model (and a context) fits this machine now.
    pub fn fit(&self, query: &FitQuery) -> Result<FitVerdict, ClientError> {
        self.get("/v1/fit", query)
    }

    /// `GET /v1/triggers`: one page of each category's state per scope, in category then scope
    /// order (500 by default); pass the answer's `next_after` as `after` for the next.
    pub fn triggers(&self, query: &TriggersQuery) -> Result<TriggersView, ClientError> {
        self.get("/v1/triggers", query)
    }

    /// `GET /v1/thresholds`: the active thresholds and the cloud tier table.
    pub fn thresholds(&self) -> Result<ThresholdsView, ClientError> {
        self.get("/v1/thresholds", &())
    }

    /// `GET /v1/suggestions`, newest first.
    pub fn suggestions(&self, query: &SuggestionsQuery) -> Result<SuggestionsView, ClientError> {
        self.get("/v1/suggestions", query)
    }

    /// `POST /v1/suggestions/{id}/feedback`. Not idempotent (feedback carries no id): retried
    /// only when the service certainly did not take it.
    pub fn feedback(
        &self,
        suggestion_id: &str,
        feedback: &Feedback,
    ) -> Result<IngestAck, ClientError> {
        let path = format!("/v1/suggestions/{}/feedback", path_segment(suggestion_id));
        self.send("POST", &path, feedback, Safety::Once, self.retry)
    }

    /// `PUT /v1/cloud/readiness`: the KrakoBackend plugin's report.
    pub fn readiness(&self, readiness: &Readiness) -> Result<IngestAck, ClientError> {
        self.send(
            "PUT",
            "/v1/cloud/readiness",
            readiness,
            Safety::Idempotent,
            self.retry,
        )
    }

    /// `GET /v1/windows`: closed windows, newest first.
    pub fn windows(&self, query: &WindowsQuery) -> Result<WindowsView, ClientError> {
        self.get("/v1/windows", query)
    }

    /// `GET /v1/series`: the series keys, or one series downsampled.
    pub fn series(&self, query: &SeriesQuery) -> Result<SeriesView, ClientError> {
        self.get("/v1/series", query)
    }

    /// `GET /v1/metrics/product`: the Section 8 product metrics.
    pub fn product_metrics(&self, query: &RangeQuery) -> Result<ProductMetrics, ClientError> {
        self.get("/v1/metrics/product", query)
    }

    /// `GET /v1/consent`.
    pub fn consent(&self) -> Result<ConsentState, ClientError> {
        self.get("/v1/consent", &())
    }

    /// `PUT /v1/consent` (token).
    pub fn set_consent(&self, change: &ConsentChange) -> Result<ConsentState, ClientError> {
        self.send("PUT", "/v1/consent", change, Safety::Once, self.retry)
    }

    /// `GET /v1/export/preview`: exactly what an export would send.
    pub fn export_preview(&self) -> Result<ExportPreview, ClientError> {
        self.get("/v1/export/preview", &())
    }

    /// `POST /v1/export` (token). Not idempotent: retried only when the service certainly did
    /// not act on it.
    pub fn export(&self, request: &ExportRequest) -> Result<ExportOutcome, ClientError> {
        self.send("POST", "/v1/export", request, Safety::Once, self.retry)
    }

    /// `GET /metrics`: the Prometheus text exposition, as it is.
    pub fn prometheus(&self) -> Result<String, ClientError> {
        let call = Call {
            method: "GET",
            path: "/metrics",
            query: Vec::new(),
            body: None,
            safety: Safety::Idempotent,
        };
        self.run(&call, self.retry)
    }

    /// `POST /v1/samples`. Samples without an `id` get one (unless turned off), so that a
    /// retry of a batch whose answer was lost stores nothing twice.
    pub fn samples(&self, batch: &SampleBatch) -> Result<IngestAck, ClientError> {
        self.ingest(Endpoint::Samples, &batch.samples, None)
    }

    /// `POST /v1/runs`, with client ids as [`Client::samples`].
    pub fn runs(&self, batch: &RunBatch) -> Result<IngestAck, ClientError> {
        self.ingest(Endpoint::Runs, &batch.runs, None)
    }

    /// `POST /v1/runs?wait=decisions`: answers once the engine has folded the batch (at most
    /// `timeout`, capped at 10 s by the service), with the ids of the decisions it caused in
    /// [`IngestAck::decisions`] (read-your-writes).
    pub fn runs_waiting(
        &self,
        batch: &RunBatch,
        timeout: Duration,
    ) -> Result<IngestAck, ClientError> {
        self.ingest(Endpoint::Runs, &batch.runs, Some(timeout))
    }

    /// `POST /v1/samples?wait=decisions`: as [`Client::runs_waiting`], for the decisions of
    /// the time windows the samples close.
    pub fn samples_waiting(
        &self,
        batch: &SampleBatch,
        timeout: Duration,
    ) -> Result<IngestAck, ClientError> {
        self.ingest(Endpoint::Samples, &batch.samples, Some(timeout))
    }

    /// `POST /v1/events?wait=decisions`: as [`Client::runs_waiting`].
    pub fn events_waiting(
        &self,
        batch: &EventBatch,
        timeout: Duration,
    ) -> Result<IngestAck, ClientError> {
        self.ingest(Endpoint::Events, &batch.events, Some(timeout))
    }

    /// `POST /v1/events`, with client ids as [`Client::samples`].
    pub fn events(&self, batch: &EventBatch) -> Result<IngestAck, ClientError> {
        self.ingest(Endpoint::Events, &batch.events, None)
    }
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
    fn a_query_struct_becomes_its_present_members() {
        let q = LogQuery {
            before: Some(12),
            limit: Some(5),
            kind: Some("run".into()),
            substrate: None,
        };
        let mut pairs = query_pairs("/v1/log", &q).unwrap();
        pairs.sort();
        assert_eq!(
            pairs,
            vec![
                ("before".to_owned(), "12".to_owned()),
                ("kind".to_owned(), "run".to_owned()),
                ("limit".to_owned(), "5".to_owned()),
            ]
        );
        assert!(query_pairs("/v1/health", &()).unwrap().is_empty());
        assert!(query_pairs("/v1/health", &1).is_err());
    }

    #[test]
    fn a_service_that_is_not_there_is_unreachable_and_a_followed_file_is_read_again() {
        // A port nobody listens on: bind one, then let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let client = Client::builder(format!("http://127.0.0.1:{port}"))
            .retry(RetryPolicy::none())
            .follow_service_file(dir.path())
            .build();
        let e = client.health().unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        assert!(e.never_sent(), "{e:?}");
        std::fs::write(
            dir.path().join(SERVICE_FILE),
            r#"{"listen":"127.0.0.1:9","pid":1}"#,
        )
        .unwrap();
        assert!(client.refresh_base());
        assert_eq!(client.base(), "http://127.0.0.1:9");
        assert!(!client.refresh_base(), "nothing changed");
    }
}

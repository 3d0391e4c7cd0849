//! kora-client: a client of kora-telemetry's HTTP API for KORA Studio and other integrators.
//!
//! - [`Client`]: one typed call per endpoint, on the contract types of `kora-model` (the
//!   requests and answers the service itself uses). Records sent without an `id` get one, so
//!   a call retried after a lost answer stores nothing twice; calls are retried on `429`,
//!   `503` and `507` (honouring `Retry-After`) and on connection failures, as far as the call
//!   allows (see [`RetryPolicy`]).
//! - [`Sender`]: queues samples, runs and events, sends them in batches of up to N records or
//!   every T, in order, and keeps trying until the service acknowledges them; with a
//!   [`Spool`] on disk, nothing queued is lost while the service (or the client) restarts.
//! - [`normalize_prompt`] and [`prompt_hash`]: the `prompt_hash` a run carries (raw prompts
//!   never leave the client).
//!
//! Everything is blocking (built on `ureq`); [`Client`] and [`Sender`] are `Send + Sync`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let spool_dir = std::path::PathBuf::from("/var/lib/my-app/kora-spool");
//! # let prompt = String::from("summarize this");
//! # let measured_run: kora_client::model::Run = unimplemented!();
//! use kora_client::{Client, Sender, SpoolOptions, prompt_hash, model::Run};
//!
//! let client = Client::new("http://127.0.0.1:7433");           // or Client::connect(data_dir)
//! let (sender, report) = Sender::builder(client.clone())
//!     .spool(spool_dir, SpoolOptions::default())                // 64 MiB, fsync'd, CRC-checked
//!     .start()?;
//! for damage in &report.damage { eprintln!("spool: set aside {damage}"); } // a crash's cut tail
//! let run = Run { prompt_hash: prompt_hash(&prompt), ..measured_run }; // raw prompts stay here
//! sender.enqueue(run)?;                    // checked now; Err when the spool is full, never dropped
//! let triggers = client.triggers(&Default::default())?;         // typed answers (paged)
//! sender.close(std::time::Duration::from_secs(10))?;            // everything acknowledged
//! # let _ = triggers;
//! # Ok(()) }
//! ```
//!
//! (The README's integration example; this copy is compiled by `cargo test -p kora-client`.)
//!
//! `GET /v1/triggers` and `GET /v1/thresholds` answer with types of the policy crate; the
//! client reads them into [`TriggersView`] and [`ThresholdsView`], which have the server's
//! shape (the client depends on `kora-model` and `kora-policy` only, never on the service).

mod error;
mod http;
mod record;
mod retry;
mod sender;
mod spool;
mod stream;
mod views;

pub use error::ClientError;
pub use http::{Client, ClientBuilder, Encoding, read_service_file};
pub use record::{Endpoint, IdSource, Item};
pub use retry::RetryPolicy;
pub use sender::{EnqueueError, FlushTimeout, Rejected, Sender, SenderBuilder, SenderStats};
pub use spool::{Damage, OpenReport, Spool, SpoolError, SpoolOptions};
pub use stream::{EventStream, StreamEvent};
pub use views::{ActiveThresholds, ThresholdsView, TriggersView};

/// The prompt normalization and hash of the contract: `prompt_hash(p)` is the lowercase hex
/// SHA-256 of `normalize_prompt(p)` (whitespace runs become one space, ends trimmed, case kept).
pub use kora_model::{normalize_prompt, prompt_hash};

/// The contract types (every request and answer), re-exported so that a client needs no
/// other dependency.
pub use kora_model as model;

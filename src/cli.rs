//! The command line: flags and subcommands (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use crate::config::{HumanDuration, Source};

/// Local telemetry store and upgrade-detection service of KORA Studio.
///
/// Records hardware samples and run events in an append-only store on this machine, detects
/// when the machine hits a limit, and serves it all on a localhost-only HTTP API. Nothing
/// leaves the machine unless you opt in.
#[derive(Debug, Parser)]
#[command(name = "kora-telemetry", version, about, long_about)]
pub struct Cli {
    /// Where the store (and the optional config.toml) lives. Defaults to the platform's data
    /// directory (e.g. ~/.local/share/kora-telemetry on Linux).
    #[arg(
        long,
        global = true,
        env = "KORA_TELEMETRY_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments (exiting with clap's message on a mistake), with where
    /// `--data-dir` came from: the flag, its environment variable, or neither.
    pub fn parse_with_sources() -> (Cli, Source) {
        let matches = Cli::command().get_matches();
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let source = match matches.value_source("data_dir") {
            Some(clap::parser::ValueSource::CommandLine) => Source::Flag("--data-dir"),
            Some(clap::parser::ValueSource::EnvVariable) => Source::Env("KORA_TELEMETRY_DATA_DIR"),
            _ => Source::Default,
        };
        (cli, source)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (HTTP API on 127.0.0.1:7433 by default). Stop it with Ctrl-C.
    ///
    /// Every setting below can also be set in `config.toml` in the data directory and by an
    /// environment variable; a flag wins over the environment, which wins over the file,
    /// which wins over the default. `kora-telemetry config` shows the effective settings.
    Serve(ServeArgs),
    /// Print the effective service settings and where each came from (default, config.toml,
    /// an environment variable or a flag), then check them as `serve` would. Takes the same
    /// setting flags as `serve`.
    Config {
        #[command(flatten)]
        settings: ServeArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what this machine can run: the LocalCapabilityProfile and the readings behind it.
    /// Asks the running service, or probes the machine itself when none runs.
    Profile {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-derive every firing, suggestion and suppression from the log and report any
    /// difference from what was recorded (exit code 1 when there is one). With --scenario, run
    /// a golden scenario file instead and check its expectations.
    Replay {
        /// Report differences only from this seq on.
        #[arg(long)]
        from: Option<u64>,
        /// Report differences only up to this seq.
        #[arg(long)]
        to: Option<u64>,
        /// The thresholds the log was recorded with (default: the embedded set).
        #[arg(long, value_name = "FILE")]
        thresholds: Option<PathBuf>,
        /// A scenario file (tests/scenarios/*.json) to run instead of the log.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["from", "to"])]
        scenario: Option<PathBuf>,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What would have fired, been suppressed and been suggested over the stored history with
    /// another thresholds file, side by side with the active set.
    Backtest {
        /// The candidate thresholds file.
        #[arg(long, value_name = "FILE")]
        thresholds: PathBuf,
        /// The active set to compare with (default: the embedded set).
        #[arg(long, value_name = "FILE")]
        active: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Turn the opt-in export of aggregated statistics on or off (needs the running service;
    /// uses the per-install token in the data directory).
    Consent {
        /// `on`, `off`, or `show`.
        #[arg(value_parser = ["on", "off", "show"])]
        state: String,
    },
    /// Export the aggregated statistics (only after `consent on`): to a new file, or to an
    /// OpenTelemetry collector over OTLP/HTTP. `--dry-run` sends nothing and prints what would go.
    Export {
        /// Write the bundle to this new file.
        #[arg(long, value_name = "PATH", conflicts_with = "otlp")]
        file: Option<PathBuf>,
        /// Push to this OTLP/HTTP metrics endpoint, e.g. http://127.0.0.1:4318/v1/metrics.
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
        #[arg(long, requires = "otlp")]
        dry_run: bool,
        /// Print the preview (exactly what an export would contain) and export nothing.
        #[arg(long, conflicts_with_all = ["file", "otlp"])]
        preview: bool,
    },
    /// The product metrics of the specification's Section 8, with the runs that executed on
    /// Krako Cloud (they stay on this machine).
    Metrics {
        /// 24h, 7d or all.
        #[arg(long, default_value = "24h")]
        range: String,
        #[arg(long)]
        json: bool,
    },
    /// Work with thresholds files.
    #[command(subcommand)]
    Thresholds(ThresholdsCommand),
    /// Check whether a model (and a context size) fits this machine now, before loading it.
    Fit {
        /// VRAM the model needs, in MB.
        #[arg(long, value_name = "MB")]
        model_required_vram_mb: f64,
        /// Context tokens to fit as well (KV cache).
        #[arg(long, value_name = "TOKENS")]
        context_tokens: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the most recent log records, newest first. Asks the running service when there is
    /// one, and reads the store file directly when there is none.
    Log {
        /// How many records to print (1 to 1000).
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Only records of this kind (run, model_load, context_request, firing, suggestion, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Print JSON (one object per line) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Try it out: run the service on a temporary data directory, print the dashboard URL and
    /// drive a simulated KORA Studio workload through the HTTP API (runs of three models, one
    /// slowing down until the latency trigger fires, a model that does not fit, a context
    /// request beyond the limit, a growing queue), so that every dashboard view fills within a
    /// minute. Stop it with Ctrl-C; the temporary data is removed.
    Demo {
        /// Stop after this long (e.g. 90s, 10m) instead of at Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Keep the temporary data directory when the demo ends.
        #[arg(long)]
        keep_data: bool,
        /// Address of the demo service (loopback; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum ThresholdsCommand {
    /// Validate a thresholds file: its values, and its version against the pinned fingerprints.
    Check { file: PathBuf },
    /// Print the embedded default thresholds file.
    Show,
}

/// The setting flags of `serve` (and `config`): the top layer of the settings. A flag that is
/// not given is left out, so that the layers below it show through. The names are the keys of
/// `config.toml` (see `config::Settings`).
#[derive(Debug, Default, Args, Serialize)]
pub struct ServeArgs {
    /// Address to listen on [config: listen; env: KORA_TELEMETRY_LISTEN; default:
    /// 127.0.0.1:7433]. Only loopback addresses are accepted unless --allow-non-loopback is
    /// given.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Accept a non-loopback --listen address [config: allow_non_loopback]. Anyone who can
    /// reach it can read your telemetry: use only on a network you trust.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_loopback: bool,
    /// An extra host name the service answers to, besides localhost, 127.0.0.1 and [::1]
    /// (repeat for more) [config: hosts = ["name", ...]].
    #[arg(long = "host", value_name = "NAME")]
    #[serde(rename = "hosts", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// How often the hardware probe samples CPU, RAM and GPU VRAM, e.g. 5s, 500ms; at least
    /// 100ms [config: probe_interval; env: KORA_TELEMETRY_PROBE_INTERVAL; default: 5s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_interval: Option<HumanDuration>,
    /// How long samples are kept raw; older ones are rolled up (count, min, max, sum per
    /// bucket) and the raw chunks dropped. The log (runs, events, decisions) is kept whole
    /// [config: retain_raw; env: KORA_TELEMETRY_RETAIN_RAW; default: 14d].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_raw: Option<HumanDuration>,
    /// How long the rollups of samples are kept [config: retain_rollups; env:
    /// KORA_TELEMETRY_RETAIN_ROLLUPS; default: 400d].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_rollups: Option<HumanDuration>,
    /// The width of a rollup bucket, more than 0 [config: rollup_step; env:
    /// KORA_TELEMETRY_ROLLUP_STEP; default: 1h].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollup_step: Option<HumanDuration>,
    /// How long client ids are remembered, more than 0: a record sent again with the id of
    /// one stored within this time is recognised as a retry and not stored twice; after it,
    /// the id is forgotten [config: retain_ids; env: KORA_TELEMETRY_RETAIN_IDS; default: 30d].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_ids: Option<HumanDuration>,
    /// A thresholds file to use instead of the embedded default (schema/thresholds.json)
    /// [config: thresholds, relative to the data directory; env: KORA_TELEMETRY_THRESHOLDS].
    /// It is checked at start: changed content without a MINOR version bump is refused.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<PathBuf>,
    /// What the service logs: a tracing filter such as `info` or `kora_store=debug` [config:
    /// log; env: KORA_TELEMETRY_LOG; default: info].
    #[arg(long, value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The most distinct model ids (of runs, events and samples) the service takes; a batch
    /// that would add one more is refused whole (422 limit_exceeded), nothing stored is dropped
    /// [config: max_models; env: KORA_TELEMETRY_MAX_MODELS; default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_models: Option<u64>,
    /// The most distinct sample series (signal, device, model) the service takes [config:
    /// max_series; env: KORA_TELEMETRY_MAX_SERIES; default: 4000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_series: Option<u64>,
    /// The most sessions open at once (session_started without its session_ended) [config:
    /// max_open_sessions; env: KORA_TELEMETRY_MAX_OPEN_SESSIONS; default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_open_sessions: Option<u64>,
    /// The most items one page of GET /v1/triggers or of the series list holds; ?limit= asks
    /// for fewer [config: max_view_scopes; env: KORA_TELEMETRY_MAX_VIEW_SCOPES; default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_view_scopes: Option<u64>,
}

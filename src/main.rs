//! `kora-telemetry`: the command line of the local telemetry and upgrade-detection service.
//!
//! The binary is glue: it parses flags, opens the store, and runs the server or a query. Errors
//! become a plain message on stderr and a non-zero exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kora_model::{FitVerdict, LogEntry, LogPage, ProfileRecord, Record};
use kora_pipeline::{Pipeline, PipelineOptions};
use kora_policy::Thresholds;
use kora_probe::{ModelCatalog, Probe};
use kora_server::{AppState, Config, HostPolicy};
use kora_store::{OpenError, Store, StoreOptions};

mod analysis;
mod demo;
mod report;

const DB_FILE: &str = "kora-telemetry.redb";
const ENDPOINT_FILE: &str = "service.json";

/// Local telemetry store and upgrade-detection service of KORA Studio.
///
/// Records hardware samples and run events in an append-only store on this machine, detects
/// when the machine hits a limit, and serves it all on a localhost-only HTTP API. Nothing
/// leaves the machine unless you opt in.
#[derive(Debug, Parser)]
#[command(name = "kora-telemetry", version, about, long_about)]
struct Cli {
    /// Where the store lives. Defaults to the platform's data directory
    /// (e.g. ~/.local/share/kora-telemetry on Linux).
    #[arg(
        long,
        global = true,
        env = "KORA_TELEMETRY_DATA_DIR",
        value_name = "DIR"
    )]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (HTTP API on 127.0.0.1:7433 by default). Stop it with Ctrl-C.
    Serve {
        /// Address to listen on. Only loopback addresses are accepted unless
        /// --allow-non-loopback is given.
        #[arg(long, env = "KORA_TELEMETRY_LISTEN", default_value = "127.0.0.1:7433")]
        listen: SocketAddr,
        /// Accept a non-loopback --listen address. Anyone who can reach it can read your
        /// telemetry: use only on a network you trust.
        #[arg(long)]
        allow_non_loopback: bool,
        /// An extra host name the service answers to (besides localhost, 127.0.0.1, [::1]).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// How often the hardware probe samples CPU, RAM and GPU VRAM (e.g. 5s, 500ms).
        #[arg(long, env = "KORA_TELEMETRY_PROBE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
        probe_interval: std::time::Duration,
        /// How long samples are kept raw; older ones are rolled up (count, min, max, sum per
        /// bucket) and the raw chunks dropped. The log (runs, events, decisions) is kept whole.
        #[arg(long, env = "KORA_TELEMETRY_RETAIN_RAW", default_value = "14d", value_parser = humantime::parse_duration)]
        retain_raw: std::time::Duration,
        /// How long the rollups of samples are kept.
        #[arg(long, env = "KORA_TELEMETRY_RETAIN_ROLLUPS", default_value = "400d", value_parser = humantime::parse_duration)]
        retain_rollups: std::time::Duration,
        /// The width of a rollup bucket.
        #[arg(long, env = "KORA_TELEMETRY_ROLLUP_STEP", default_value = "1h", value_parser = humantime::parse_duration)]
        rollup_step: std::time::Duration,
        /// A thresholds file to use instead of the embedded default (schema/thresholds.json).
        /// It is checked at start: changed content without a MINOR version bump is refused.
        #[arg(long, env = "KORA_TELEMETRY_THRESHOLDS", value_name = "FILE")]
        thresholds: Option<PathBuf>,
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
enum ThresholdsCommand {
    /// Validate a thresholds file: its values, and its version against the pinned fingerprints.
    Check { file: PathBuf },
    /// Print the embedded default thresholds file.
    Show,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The service logs what it does; the one-shot commands only warnings, so their output
    // stays readable.
    let default_filter = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KORA_TELEMETRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kora-telemetry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let data_dir = match cli.data_dir {
        Some(d) => d,
        None => directories::ProjectDirs::from("dev", "kora", "kora-telemetry")
            .context(
                "cannot find a home directory for the default data directory; pass --data-dir",
            )?
            .data_dir()
            .to_owned(),
    };
    match cli.command {
        Command::Serve {
            listen,
            allow_non_loopback,
            hosts,
            probe_interval,
            retain_raw,
            retain_rollups,
            rollup_step,
            thresholds,
        } => {
            let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if rollup_step.is_zero() {
                bail!("--rollup-step must be more than 0");
            }
            serve(
                &data_dir,
                ServeOptions {
                    listen,
                    allow_non_loopback,
                    hosts,
                    probe_interval,
                    retention: kora_store::Retention {
                        raw_ms: ms(retain_raw),
                        rollup_step_ms: ms(rollup_step),
                        rollup_ms: ms(retain_rollups),
                    },
                    thresholds,
                },
            )
        }
        Command::Log { limit, kind, json } => log(&data_dir, limit, kind, json),
        Command::Profile { json } => profile(&data_dir, json),
        Command::Replay {
            from,
            to,
            thresholds,
            scenario,
            json,
        } => {
            let clean = match scenario {
                Some(path) => analysis::replay_scenario(&path)?,
                None => analysis::replay_log(
                    &data_dir.join(DB_FILE),
                    load_thresholds(thresholds.as_deref())?,
                    from,
                    to,
                    json,
                )?,
            };
            if !clean {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Backtest {
            thresholds,
            active,
            json,
        } => analysis::backtest(
            &data_dir.join(DB_FILE),
            load_thresholds(active.as_deref())?,
            load_thresholds(Some(&thresholds))?,
            json,
        ),
        Command::Thresholds(ThresholdsCommand::Check { file }) => {
            let t = load_thresholds(Some(&file))?;
            println!(
                "{}: valid, version {}, fingerprint {}",
                file.display(),
                t.version(),
                t.fingerprint()
            );
            Ok(())
        }
        Command::Consent { state } => consent(&data_dir, &state),
        Command::Export {
            file,
            otlp,
            dry_run,
            preview,
        } => export(&data_dir, file, otlp, dry_run, preview),
        Command::Metrics { range, json } => metrics(&data_dir, &range, json),
        Command::Thresholds(ThresholdsCommand::Show) => {
            print!("{}", kora_policy::EMBEDDED_THRESHOLDS);
            Ok(())
        }
        Command::Fit {
            model_required_vram_mb,
            context_tokens,
            json,
        } => fit(&data_dir, model_required_vram_mb, context_tokens, json),
        Command::Demo {
            duration,
            keep_data,
            listen,
        } => demo::run(demo::DemoOptions {
            duration,
            keep_data,
            listen,
        }),
    }
}

fn ensure_data_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    }
    Ok(())
}

struct ServeOptions {
    listen: SocketAddr,
    allow_non_loopback: bool,
    hosts: Vec<String>,
    probe_interval: std::time::Duration,
    retention: kora_store::Retention,
    thresholds: Option<PathBuf>,
}

fn load_thresholds(file: Option<&Path>) -> Result<Thresholds> {
    match file {
        None => Ok(Thresholds::embedded()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the thresholds file {}", path.display()))?;
            Thresholds::parse(&text)
                .with_context(|| format!("the thresholds file {} is refused", path.display()))
        }
    }
}

fn serve(data_dir: &Path, options: ServeOptions) -> Result<()> {
    let ServeOptions {
        listen,
        allow_non_loopback,
        hosts,
        probe_interval,
        retention,
        thresholds,
    } = options;
    if probe_interval < std::time::Duration::from_millis(100) {
        bail!("--probe-interval must be at least 100ms");
    }
    let thresholds = load_thresholds(thresholds.as_deref())?;
    if !listen.ip().is_loopback() {
        if !allow_non_loopback {
            bail!(
                "refusing to listen on {listen}: not a loopback address. Your telemetry would be \
                 reachable from other machines; pass --allow-non-loopback if you really mean it"
            );
        }
        tracing::warn!(%listen, "listening on a NON-LOOPBACK address: other machines can reach this service");
    }
    ensure_data_dir(data_dir)?;
    let db_path = data_dir.join(DB_FILE);
    let faults = kora_pipeline::Faults::from_env().map_err(anyhow::Error::msg)?;
    let pipeline = Pipeline::open(
        &db_path,
        PipelineOptions {
            thresholds,
            faults,
            ..PipelineOptions::default()
        },
    )
    .map_err(|e| match e {
        kora_pipeline::OpenError::Store(e @ OpenError::AlreadyOpen { .. }) => anyhow::anyhow!(
            "{e}; is another `kora-telemetry serve` running on {}?",
            data_dir.display()
        ),
        kora_pipeline::OpenError::Rebuild(e) => anyhow::Error::new(e).context(format!(
            "{}: cannot rebuild the derived state from the log; the file was left as it is",
            db_path.display()
        )),
        e => anyhow::Error::new(e),
    })?;
    let pipeline = Arc::new(pipeline);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr()?;
        let config = Config {
            token: kora_server::token::Token::load_or_create(data_dir)?,
            data_dir: data_dir.to_owned(),
            hosts: HostPolicy {
                port: bound.port(),
                extra_names: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            },
        };
        let mut state = AppState::new(pipeline.clone(), config);
        // Beyond loopback, anyone on the network could read the telemetry: every route then
        // needs the token.
        state.token_everywhere = !listen.ip().is_loopback();
        let sampler = tokio::spawn(async move {
            pipeline
                .sample(Probe::new(), probe_interval, retention)
                .await
        });
        let endpoint = data_dir.join(ENDPOINT_FILE);
        std::fs::write(
            &endpoint,
            serde_json::to_vec(
                &serde_json::json!({ "listen": bound.to_string(), "pid": std::process::id() }),
            )?,
        )
        .with_context(|| format!("cannot write {}", endpoint.display()))?;
        let stop = shutdown_signal()?;
        println!(
            "kora-telemetry listening on http://{bound} (data: {})",
            data_dir.display()
        );
        tracing::info!(%bound, data_dir = %data_dir.display(), "serving");
        let result = kora_server::serve(listener, state, async move {
            stop.await;
            sampler.abort();
        })
        .await;
        let _ = std::fs::remove_file(&endpoint);
        result.context("the server stopped with an error")
    })?;
    tracing::info!("stopped; every acknowledged record is on disk");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when it
/// is first polled, so a signal that arrives right after start is a graceful stop too.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            tracing::info!("shutting down: finishing in-flight requests and commits");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down: finishing in-flight requests and commits");
        })
    }
}

fn log(data_dir: &Path, limit: usize, kind: Option<String>, json: bool) -> Result<()> {
    if limit == 0 || limit > kora_model::MAX_LOG_PAGE {
        bail!("--limit must be 1 to {}", kora_model::MAX_LOG_PAGE);
    }
    let kind_filter = match kind.as_deref() {
        None => None,
        Some(k) => Some(
            kora_model::RecordKind::parse(k)
                .with_context(|| format!("unknown record kind {k:?}"))?,
        ),
    };
    let db_path = data_dir.join(DB_FILE);
    if !db_path.exists() {
        bail!(
            "no store at {}: nothing recorded yet (start the service with `kora-telemetry serve`)",
            db_path.display()
        );
    }
    let entries = match Store::open(&db_path, StoreOptions::default()) {
        Ok(store) => store.recent(None, kind_filter, limit)?,
        Err(OpenError::AlreadyOpen { .. }) => ask_service(data_dir, limit, kind.as_deref())?,
        Err(e) => return Err(e.into()),
    };
    if json {
        for e in &entries {
            println!("{}", serde_json::to_string(e)?);
        }
    } else {
        print_table(&entries);
    }
    Ok(())
}

/// The address of a running service on `data_dir`, if one answers.
fn running_service(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(ENDPOINT_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let listen = v["listen"].as_str()?.to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(2)))
        .build()
        .into();
    agent
        .get(format!("http://{listen}/v1/health"))
        .call()
        .ok()
        .map(|_| listen)
}

/// Reads the model records of the store (when no service holds it) for the profile.
fn local_catalog(data_dir: &Path) -> Result<ModelCatalog> {
    let mut catalog = ModelCatalog::new();
    let db_path = data_dir.join(DB_FILE);
    if db_path.exists() {
        let store = Store::open(&db_path, StoreOptions::default())?;
        for kind in [
            kora_model::RecordKind::ModelLoad,
            kora_model::RecordKind::ContextRequest,
        ] {
            for e in store.scan_kind(kind, 0, usize::MAX)? {
                catalog.observe_record(&e.record);
            }
        }
    }
    Ok(catalog)
}

/// Probes this machine (twice, a second apart, so that CPU load is a real figure).
fn local_snapshot() -> kora_model::HardwareSnapshot {
    let mut probe = Probe::new();
    let _ = probe.snapshot(kora_pipeline::clock::wall_ms());
    std::thread::sleep(std::time::Duration::from_secs(1));
    probe.snapshot(kora_pipeline::clock::wall_ms())
}

fn profile(data_dir: &Path, json: bool) -> Result<()> {
    let record: ProfileRecord = match running_service(data_dir) {
        Some(listen) => ureq::get(format!("http://{listen}/v1/profile"))
            .call()
            .with_context(|| format!("the service at {listen} gave no profile"))?
            .body_mut()
            .read_json()?,
        None => {
            let thresholds = Thresholds::embedded();
            let hardware = local_snapshot();
            let catalog = local_catalog(data_dir)?;
            ProfileRecord {
                ts_ms: hardware.ts_ms,
                profile: kora_probe::compute_profile(
                    &hardware,
                    &catalog,
                    &thresholds.file().profile,
                    thresholds.version(),
                ),
                hardware,
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print!("{}", report::render_profile(&record));
    }
    Ok(())
}

fn fit(data_dir: &Path, vram: f64, context_tokens: Option<u64>, json: bool) -> Result<()> {
    if !vram.is_finite() || vram < 0.0 {
        bail!("--model-required-vram-mb must be a finite number >= 0");
    }
    let verdict: FitVerdict = match running_service(data_dir) {
        Some(listen) => {
            let mut url = format!("http://{listen}/v1/fit?model_required_vram_mb={vram}");
            if let Some(c) = context_tokens {
                url.push_str(&format!("&context_tokens={c}"));
            }
            ureq::get(url)
                .call()
                .with_context(|| format!("the service at {listen} gave no fit check"))?
                .body_mut()
                .read_json()?
        }
        None => kora_probe::fit_check(
            &local_snapshot(),
            &local_catalog(data_dir)?,
            vram,
            context_tokens,
            &Thresholds::embedded().file().profile,
        ),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        print!("{}", report::render_fit(&verdict));
    }
    Ok(())
}

/// The running service's address, or a clear error.
fn service(data_dir: &Path) -> Result<String> {
    running_service(data_dir).with_context(|| {
        format!(
            "no kora-telemetry service answers for {}; start it with `kora-telemetry serve`",
            data_dir.display()
        )
    })
}

fn token(data_dir: &Path) -> Result<String> {
    Ok(kora_server::token::Token::load_or_create(data_dir)?
        .expose()
        .to_owned())
}

/// Sends a request and returns its JSON, turning an API error into its message.
fn call(
    request: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<serde_json::Value> {
    let mut resp = request.context("the service could not be reached")?;
    let status = resp.status();
    let v: serde_json::Value = resp
        .body_mut()
        .read_json()
        .context("the service answered something that is not JSON")?;
    if !status.is_success() {
        bail!(
            "{} ({status})",
            v["message"]
                .as_str()
                .unwrap_or("the service refused the request")
        );
    }
    Ok(v)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into()
}

fn consent(data_dir: &Path, state: &str) -> Result<()> {
    let listen = service(data_dir)?;
    let url = format!("http://{listen}/v1/consent");
    let v = if state == "show" {
        call(agent().get(&url).call())?
    } else {
        let body = serde_json::json!({"enabled": state == "on", "actor": "cli"});
        call(
            agent()
                .put(&url)
                .header("authorization", &format!("Bearer {}", token(data_dir)?))
                .send_json(&body),
        )?
    };
    println!(
        "export of aggregated statistics is {}",
        if v["export_enabled"] == true {
            "ON"
        } else {
            "OFF"
        }
    );
    println!("{}", v["text"].as_str().unwrap_or(""));
    if let Some(history) = v["history"].as_array() {
        for c in history {
            println!(
                "  {} {} by {}",
                c["ts_ms"],
                if c["enabled"] == true { "on" } else { "off" },
                c["actor"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn export(
    data_dir: &Path,
    file: Option<PathBuf>,
    otlp: Option<String>,
    dry_run: bool,
    preview: bool,
) -> Result<()> {
    let listen = service(data_dir)?;
    if preview || (file.is_none() && otlp.is_none()) {
        let v = call(
            agent()
                .get(&format!("http://{listen}/v1/export/preview"))
                .call(),
        )?;
        println!("{}", v["bytes"].as_str().unwrap_or(""));
        eprintln!(
            "(preview, sha256 {}; export is {})",
            v["sha256"].as_str().unwrap_or("?"),
            if v["export_enabled"] == true {
                "on"
            } else {
                "off: nothing leaves this machine"
            }
        );
        return Ok(());
    }
    let body = if let Some(path) = file {
        let path = std::path::absolute(&path)
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        serde_json::json!({"to": "file", "path": path})
    } else {
        serde_json::json!({"to": "otlp", "endpoint": otlp, "dry_run": dry_run})
    };
    let v = call(
        agent()
            .post(&format!("http://{listen}/v1/export"))
            .header("authorization", &format!("Bearer {}", token(data_dir)?))
            .send_json(&body),
    )?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn metrics(data_dir: &Path, range: &str, json: bool) -> Result<()> {
    let listen = service(data_dir)?;
    let v = call(
        agent()
            .get(&format!("http://{listen}/v1/metrics/product?range={range}"))
            .call(),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let m: kora_model::ProductMetrics = serde_json::from_value(v)?;
    let rate = |r: &kora_model::Rate| match r.value {
        Some(x) => format!("{:.1}% ({} of {})", x * 100.0, r.numerator, r.denominator),
        None => "none yet".into(),
    };
    println!(
        "product metrics, range {} (they stay on this machine)",
        m.range
    );
    println!(
        "  upgrade_suggestion_count       {} ({} offered Krako Cloud)",
        m.upgrade_suggestion_count, m.cloud_offer_count
    );
    println!(
        "  suggestion_accept_rate         {}",
        rate(&m.suggestion_accept_rate)
    );
    println!(
        "  suggestion_dismiss_rate        {}",
        rate(&m.suggestion_dismiss_rate)
    );
    println!(
        "  local_mitigation_success_rate  {}",
        rate(&m.local_mitigation_success_rate)
    );
    println!("  top_trigger_categories");
    for c in &m.top_trigger_categories {
        println!("    {:<14} {}", c.category.as_str(), c.firings);
    }
    let tokens = |n: u64, without: u64| {
        if without == 0 {
            format!("{n} tokens")
        } else {
            format!("{n} tokens; {without} without token counts")
        }
    };
    println!(
        "  cloud runs (Krako Cloud)       {} ({})",
        m.cloud_run_count,
        tokens(m.cloud_run_tokens, m.cloud_runs_without_tokens)
    );
    for x in m.cloud_runs_by_model.iter().flatten() {
        println!(
            "    {:<28} {} ({})",
            x.model_id,
            x.runs,
            tokens(x.tokens, x.runs_without_tokens)
        );
    }
    Ok(())
}

/// The store is held by a running service: ask it over HTTP.
fn ask_service(data_dir: &Path, limit: usize, kind: Option<&str>) -> Result<Vec<LogEntry>> {
    let endpoint = data_dir.join(ENDPOINT_FILE);
    let text = std::fs::read_to_string(&endpoint).with_context(|| {
        format!(
            "the store is in use by another process, and {} (written by a running service) cannot be read",
            endpoint.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", endpoint.display()))?;
    let listen = v["listen"]
        .as_str()
        .with_context(|| format!("{} names no listen address", endpoint.display()))?;
    let mut url = format!("http://{listen}/v1/log?limit={limit}");
    if let Some(k) = kind {
        url.push_str("&kind=");
        url.push_str(k);
    }
    let page: LogPage = ureq::get(&url)
        .call()
        .with_context(|| format!("cannot reach the running service at {listen}"))?
        .body_mut()
        .read_json()
        .context("the service answered with something that is not a log page")?;
    Ok(page.entries)
}

fn print_table(entries: &[LogEntry]) {
    println!(
        "{:>10}  {:<24}  {:<16}  summary",
        "seq", "time (UTC)", "kind"
    );
    for e in entries {
        let time = e
            .record
            .ts_ms()
            .and_then(|t| u64::try_from(t).ok())
            .map(|t| {
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(t),
                )
                .to_string()
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>10}  {:<24}  {:<16}  {}",
            e.seq,
            time,
            e.record.kind().as_str(),
            summary(&e.record)
        );
    }
    if entries.is_empty() {
        println!("(no records)");
    }
}

fn summary(r: &Record) -> String {
    match r {
        Record::Run(x) => format!(
            "{} run {} ({:?}): model {:.0} ms, total {:.0} ms, retries {}",
            x.model_id,
            x.run_id,
            x.substrate,
            x.model_latency_ms,
            x.total_latency_ms,
            x.validation_retry_count
        ),
        Record::ModelLoad(x) => format!(
            "{} needs {:.0} MB VRAM: {:?}",
            x.model_id, x.model_required_vram_mb, x.outcome
        ),
        Record::ContextRequest(x) => format!(
            "{} asks for {} context tokens",
            x.model_id, x.requested_context_tokens
        ),
        Record::ContextOom(x) => format!("{} ran out of memory for its context", x.model_id),
        Record::SessionStarted(x) => format!("session {} started", x.session_id),
        Record::SessionEnded(x) => format!("session {} ended", x.session_id),
        Record::Readiness(x) => format!(
            "plugin {} network {} auth {} credits {}",
            x.plugin_installed, x.network_available, x.authenticated, x.credits_available
        ),
        Record::Feedback(x) => format!("{:?} suggestion {}", x.action, x.suggestion_id),
        Record::Window(x) => format!(
            "{} {} {}: n={} p95={}",
            x.window_kind, x.scope, x.metric, x.count, x.p95
        ),
        Record::Firing(x) => format!(
            "{} fired for {}: {}",
            x.category.as_str(),
            x.scope,
            x.reason
        ),
        Record::Suggestion(x) => format!(
            "step {} for {} {}",
            x.ladder_step,
            x.category.as_str(),
            x.scope
        ),
        Record::Suppression(x) => format!("{} held back by {:?}", x.category.as_str(), x.rule),
        Record::MitigationOutcome(x) => {
            format!("{} on {}: {:?}", x.choice, x.scope, x.effect)
        }
        Record::Profile(_) => "capability profile recomputed".into(),
        Record::Consent(x) => format!(
            "export {} for {}",
            if x.enabled { "on" } else { "off" },
            x.scope
        ),
        Record::Export(x) => format!("{} bytes to {}", x.bytes, x.destination),
        Record::Checkpoint(x) => format!("engine state up to seq {}", x.up_to_seq),
    }
}

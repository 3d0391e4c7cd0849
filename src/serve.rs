//! `kora-telemetry serve`: the pipeline (store, follower, sampler) and the server, wired
//! together with the validated settings.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use kora_model::service::{SERVICE_FILE, ServiceFile};
use kora_pipeline::{Faults, Pipeline, PipelineOptions};
use kora_probe::Probe;
use kora_server::{AppState, Config, HostPolicy};
use kora_store::OpenError;

use crate::config::{DB_FILE, ServeConfig};

/// Creates the data directory, readable by its owner only.
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

/// Runs the service on `data_dir` until SIGINT or SIGTERM.
pub fn serve(data_dir: &Path, config: ServeConfig) -> Result<()> {
    let ServeConfig {
        listen,
        hosts,
        probe_interval,
        retention,
        thresholds,
        log: _,
        limits,
        max_view_scopes,
    } = config;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "listening on a NON-LOOPBACK address: other machines can reach this service");
    }
    ensure_data_dir(data_dir)?;
    let db_path = data_dir.join(DB_FILE);
    let faults = Faults::from_env().map_err(anyhow::Error::msg)?;
    let pipeline = Pipeline::open(
        &db_path,
        PipelineOptions {
            thresholds,
            faults,
            limits,
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
                extra_names: hosts,
            },
        };
        let mut state = AppState::new(pipeline.clone(), config);
        // Beyond loopback, anyone on the network could read the telemetry: every route then
        // needs the token.
        state.token_everywhere = !listen.ip().is_loopback();
        state.max_view_scopes = max_view_scopes;
        let sampler = tokio::spawn(async move {
            pipeline
                .sample(Probe::new(), probe_interval, retention)
                .await
        });
        let endpoint = data_dir.join(SERVICE_FILE);
        let service = ServiceFile {
            listen: bound,
            pid: std::process::id(),
        };
        std::fs::write(&endpoint, serde_json::to_vec(&service)?)
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
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
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

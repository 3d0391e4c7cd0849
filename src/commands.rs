//! The commands that read the log or talk to the running service: `log`, `consent`, `export`,
//! `metrics`, and `config` (the effective settings).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kora_client::Client;
use kora_model::{ConsentChange, ExportRequest, LogEntry, LogQuery, RangeQuery};
use kora_store::{OpenError, Store, StoreOptions};

use crate::cli::ServeArgs;
use crate::config::{DB_FILE, DataDir, Layered};
use crate::print;

/// The client of the running service, with the per-install token for the calls that change
/// state.
fn with_token(data_dir: &Path) -> Result<Client> {
    let client = Client::connect(data_dir)?;
    let token = kora_server::token::Token::load_or_create(data_dir)?
        .expose()
        .to_owned();
    Ok(client.with_token(token))
}

pub fn log(data_dir: &Path, limit: usize, kind: Option<String>, json: bool) -> Result<()> {
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
    let entries: Vec<LogEntry> = match Store::open(&db_path, StoreOptions::default()) {
        Ok(store) => store.recent(None, kind_filter, limit)?,
        // The store is held by a running service: ask it over HTTP.
        Err(OpenError::AlreadyOpen { .. }) => {
            Client::connect(data_dir)
                .context("the store is in use by another process")?
                .log(&LogQuery {
                    limit: Some(limit),
                    kind: kind.clone(),
                    ..LogQuery::default()
                })
                .context("the running service gave no log page")?
                .entries
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        for e in &entries {
            println!("{}", serde_json::to_string(e)?);
        }
    } else {
        print::print_table(&entries);
    }
    Ok(())
}

pub fn consent(data_dir: &Path, state: &str) -> Result<()> {
    let consent = if state == "show" {
        Client::connect(data_dir)?.consent()?
    } else {
        with_token(data_dir)?.set_consent(&ConsentChange {
            enabled: state == "on",
            scope: None,
            actor: Some("cli".into()),
        })?
    };
    print::print_consent(&consent);
    Ok(())
}

pub fn export(
    data_dir: &Path,
    file: Option<PathBuf>,
    otlp: Option<String>,
    dry_run: bool,
    preview: bool,
) -> Result<()> {
    let request = match (file, otlp) {
        (Some(path), _) if !preview => {
            let path = std::path::absolute(&path)
                .with_context(|| format!("cannot resolve {}", path.display()))?;
            let path = path
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8", path.display()))?
                .to_owned();
            Some(ExportRequest::File { path })
        }
        (None, Some(endpoint)) if !preview => Some(ExportRequest::Otlp { endpoint, dry_run }),
        _ => None,
    };
    let Some(request) = request else {
        let p = Client::connect(data_dir)?.export_preview()?;
        println!("{}", p.bytes);
        eprintln!(
            "(preview, sha256 {}; export is {})",
            p.sha256,
            if p.export_enabled {
                "on"
            } else {
                "off: nothing leaves this machine"
            }
        );
        return Ok(());
    };
    let outcome = with_token(data_dir)?.export(&request)?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}

pub fn metrics(data_dir: &Path, range: &str, json: bool) -> Result<()> {
    let m = Client::connect(data_dir)?.product_metrics(&RangeQuery {
        range: Some(range.to_owned()),
        ..RangeQuery::default()
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print::print_metrics(&m);
    }
    Ok(())
}

/// `config`: the effective settings and where each came from, then the check `serve` makes.
pub fn config(data_dir: DataDir, flags: &ServeArgs, json: bool) -> Result<()> {
    let layered = Layered::load(data_dir, flags)?;
    if json {
        println!("{}", layered.to_json()?);
    } else {
        print!("{}", layered.render()?);
    }
    layered.validate()?;
    Ok(())
}

//! `profile` and `fit`: asked of the running service, or computed on this machine when none
//! runs (probing the hardware and reading the model records of the store).

use std::path::Path;

use anyhow::{Context, Result, bail};
use kora_model::{FitVerdict, ProfileRecord};
use kora_policy::Thresholds;
use kora_probe::{ModelCatalog, Probe};
use kora_store::{Store, StoreOptions};

use crate::client::Client;
use crate::config::DB_FILE;
use crate::report;

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
    let _ = probe.snapshot(kora_server::now_ms());
    std::thread::sleep(std::time::Duration::from_secs(1));
    probe.snapshot(kora_server::now_ms())
}

pub fn profile(data_dir: &Path, json: bool) -> Result<()> {
    let record: ProfileRecord = match Client::running(data_dir) {
        Some(client) => client
            .profile()
            .with_context(|| format!("the service at {} gave no profile", client.base()))?,
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

pub fn fit(data_dir: &Path, vram: f64, context_tokens: Option<u64>, json: bool) -> Result<()> {
    if !vram.is_finite() || vram < 0.0 {
        bail!("--model-required-vram-mb must be a finite number >= 0");
    }
    let verdict: FitVerdict = match Client::running(data_dir) {
        Some(client) => client
            .fit(vram, context_tokens)
            .with_context(|| format!("the service at {} gave no fit check", client.base()))?,
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

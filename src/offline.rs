//! `profile` and `fit`: asked of the running service, or computed on this machine when none
//! runs (probing the hardware and reading the model records of the store).

use std::path::Path;

use anyhow::{Context, Result, bail};
use kora_client::Client;
use kora_model::{FitQuery, FitVerdict, ProfileRecord};
use kora_pipeline::clock::wall_ms;
use kora_pipeline::profile::profile_of;
use kora_policy::Thresholds;
use kora_probe::{ModelCatalog, Probe};
use kora_store::{Store, StoreOptions};

use crate::config::DB_FILE;
use crate::report;

/// The models the store's log reported (when no service holds it), folded as the service
/// folds them.
fn local_catalog(data_dir: &Path) -> Result<ModelCatalog> {
    let db_path = data_dir.join(DB_FILE);
    let store = match db_path.exists() {
        true => Some(Store::open(&db_path, StoreOptions::default())?),
        false => None,
    };
    Ok(kora_pipeline::profile::catalog_of(store.as_ref())?)
}

/// Probes this machine (twice, a second apart, so that CPU load is a real figure).
fn local_snapshot() -> kora_model::HardwareSnapshot {
    let mut probe = Probe::new();
    let _ = probe.snapshot(wall_ms());
    std::thread::sleep(std::time::Duration::from_secs(1));
    probe.snapshot(wall_ms())
}

pub fn profile(data_dir: &Path, json: bool) -> Result<()> {
    let record: ProfileRecord = match Client::running(data_dir) {
        Some(client) => client
            .profile()
            .with_context(|| format!("the service at {} gave no profile", client.base()))?,
        None => {
            // The service's own computation, on this machine's hardware and the store's models.
            let hardware = local_snapshot();
            let catalog = local_catalog(data_dir)?;
            ProfileRecord {
                ts_ms: hardware.ts_ms,
                profile: profile_of(&Thresholds::embedded(), &catalog, &hardware),
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
            .fit(&FitQuery {
                model_required_vram_mb: Some(vram),
                context_tokens,
            })
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

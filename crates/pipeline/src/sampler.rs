//! The probe sampler and the retention schedule.

use std::sync::{Arc, Mutex};

use kora_model::{HardwareSnapshot, Record};
use kora_probe::{Probe, snapshot_to_samples};
use kora_store::{Batch, Compacted, Retention, WriteError};

use crate::follower::Follower;
use crate::write::{WriteFailure, Writer};

/// How often the sampler applies the retention (and once at its first tick).
pub const RETENTION_EVERY_MS: i64 = 3600 * 1000;

/// Records one snapshot: its samples (the store closes the time windows they complete in the
/// same transaction), and the profile if it changed.
pub async fn ingest_snapshot(
    writer: &Writer,
    follower: &Follower,
    snapshot: HardwareSnapshot,
) -> Result<(), WriteFailure> {
    let samples = snapshot_to_samples(&snapshot);
    if !samples.is_empty() {
        writer.append("samples", Batch::Samples(samples)).await?;
    }
    if let Some(profile) = follower.observe_hardware(snapshot) {
        writer
            .append("profile", Batch::Records(vec![Record::Profile(profile)]))
            .await?;
    }
    Ok(())
}

/// Samples the hardware every `interval` and records the readings like a client would.
///
/// The first snapshot is taken at once; the later ones on the interval's boundaries (multiples
/// of `interval` since the epoch, by the pipeline's clock), and every snapshot is stamped with
/// its tick: the time rounded to the interval. Stamps a few milliseconds late on every tick
/// would cost the series store about twice the bytes a sample (pco encodes a constant step in
/// almost nothing).
///
/// Every [`RETENTION_EVERY_MS`] (and at the first tick) it also applies `retention`.
pub async fn run(
    writer: &Writer,
    follower: &Follower,
    probe: Probe,
    interval: std::time::Duration,
    retention: Retention,
) {
    let clock = writer.clock().clone();
    let probe = Arc::new(Mutex::new(probe));
    let period_ms = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let now = clock.now_ms();
    let to_boundary = u64::try_from(period_ms - now.rem_euclid(period_ms)).unwrap_or(0);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_millis(to_boundary),
        interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut compacted_at: Option<i64> = None;
    loop {
        if !std::mem::take(&mut first) {
            ticker.tick().await;
        }
        let now = clock.now_ms();
        if compacted_at.is_none_or(|t| now - t >= RETENTION_EVERY_MS) {
            compacted_at = Some(now);
            compact(writer, retention).await;
        }
        let tick = tick_of(now, period_ms);
        let p = probe.clone();
        let snapshot = match tokio::task::spawn_blocking(move || {
            p.lock().unwrap_or_else(|e| e.into_inner()).snapshot(tick)
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "the hardware probe failed");
                continue;
            }
        };
        match ingest_snapshot(writer, follower, snapshot).await {
            Ok(()) => {}
            // Shutting down, or a full queue: the next tick samples again.
            Err(e @ WriteFailure::Unavailable { .. }) => {
                tracing::debug!(error = %e, "hardware snapshot not recorded")
            }
            Err(e) => tracing::warn!(error = %e, "could not record a hardware snapshot"),
        }
    }
}

/// Applies the sample retention, a bounded step at a time so writers never wait long.
pub async fn compact(writer: &Writer, retention: Retention) {
    let store = writer.store().clone();
    let clock = writer.clock().clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut total = Compacted::default();
        loop {
            let c = store.compact(clock.now_ms(), &retention)?;
            total.chunks_rolled_up += c.chunks_rolled_up;
            total.samples_rolled_up += c.samples_rolled_up;
            total.rollups_dropped += c.rollups_dropped;
            total.ids_forgotten += c.ids_forgotten;
            if !c.more {
                return Ok::<_, WriteError>(total);
            }
        }
    })
    .await;
    match done {
        Ok(Ok(c)) if c != Compacted::default() => tracing::info!(
            chunks = c.chunks_rolled_up,
            samples = c.samples_rolled_up,
            rollups_dropped = c.rollups_dropped,
            ids_forgotten = c.ids_forgotten,
            "retention applied: old samples rolled up, old client ids forgotten"
        ),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "retention failed; retrying in an hour"),
        Err(e) => tracing::error!(error = %e, "retention panicked"),
    }
}

/// `now_ms` rounded to the nearest multiple of `period_ms`.
pub fn tick_of(now_ms: i64, period_ms: i64) -> i64 {
    let period = period_ms.max(1);
    (now_ms + period / 2).div_euclid(period) * period
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshots_are_stamped_with_their_tick() {
        assert_eq!(super::tick_of(1_700_000_004_998, 5000), 1_700_000_005_000);
        assert_eq!(super::tick_of(1_700_000_005_003, 5000), 1_700_000_005_000);
        assert_eq!(super::tick_of(1_700_000_002_499, 5000), 1_700_000_000_000);
        assert_eq!(super::tick_of(1_700_000_000_123, 1), 1_700_000_000_123);
    }
}

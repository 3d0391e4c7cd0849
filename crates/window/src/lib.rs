//! kora-window: run windows, time windows and their p95s.
//!
//! The crate is pure. It folds values by the timestamps they carry, never reads a clock, does
//! no I/O and iterates only ordered maps, so the same inputs always give the same windows. The
//! server feeds it raw samples (time windows) and the policy engine feeds it runs (run
//! windows); both write what closes into the log as `window` records.
//!
//! # The p95 (DESIGN.md section 3)
//!
//! A quantile is taken with hdrhistogram at 3 significant digits: the values (milliseconds or
//! counts, `f64`) are recorded as `round(value * 1000)` into an auto-resizing
//! `Histogram::<u64>::new(3)`, and `value_at_quantile(q)` picks the rank (nearest rank:
//! `ceil(q * count)`). hdrhistogram answers with the highest value equivalent to that rank's
//! bucket, which can lie up to 0.1 % above every recorded value; we report instead the largest
//! recorded value that is not above it, scaled back by 1/1000. So the reported p95 is always a
//! value that was really measured (within 0.001 of a unit), and a run measured exactly at a
//! limit is reported at the limit, not a bucket width above it. For 10 values the p95 is the
//! maximum, which is why the latency and concurrency triggers require a sustained breach.
//!
//! Negative and non-finite values (which validation rejects upstream) are recorded as 0.
//!
//! # Run windows
//!
//! [`RunWindows`]: per `model_id`, tumbling blocks of N runs. Pushing the Nth run of a block
//! returns the closed [`RunBlock`] (p95s of the per-run signals, first and last seq, start and
//! end time). The last N runs of each model are kept as well, for rolling evaluations.
//!
//! # Time windows
//!
//! [`TimeWindows`]: tumbling windows of `window_ms` aligned to the Unix epoch, per series key.
//! A window closes when the watermark (the newest sample time seen across all series) minus
//! the grace passes its end. An empty window produces no record (a gap). A sample older than
//! the end of its series' last closed window, or more than [`SERIES_IDLE_MS`] (7 days) older
//! than the watermark, is late: it is reported as such and never changes a closed window. So a
//! series with no window open or closed in those 7 days is forgotten (swept at the first
//! sample of each hour) without changing any window: memory follows the series in use.
//!
//! # Product metrics and cloud runs
//!
//! [`ProductIndex`] folds the derived records of the log into the specification's Section 8
//! metrics, answered over any range from small rows and running totals ([`product_metrics`]
//! folds a slice of entries the same way). [`CloudRuns`] folds the log's runs into one small row per run
//! that executed on Krako Cloud, so that the metrics can count them (per model too) and the
//! service can list them without reading every run again: cloud execution is never hidden.
//! [`RunMetrics`] folds the runs into bounded per-model histograms (latencies, queue wait) and
//! token counters for the Prometheus exposition.

mod cloud;
mod metrics;
mod quantile;
mod run_metrics;
mod runs;
mod time;

pub use cloud::{CloudRunSummary, CloudRuns};
pub use metrics::{ProductIndex, product_metrics};
pub use quantile::{Digest, SCALE, SIGNIFICANT_DIGITS, Summary, quantile, summarize};
pub use run_metrics::{
    Histogram, LATENCY_BUCKETS_S, MAX_MODEL_LABELS, OTHER_MODELS, QUEUE_WAIT_BUCKETS_S, RunMetrics,
    RunSeries,
};
pub use runs::{RunBlock, RunPoint, RunWindows, WINDOW_KIND_RUNS};
pub use time::{PushOutcome, SERIES_IDLE_MS, TimeWindows, WINDOW_KIND_TIME, scope_of_series};

//! Validation of client records beyond what their types already enforce.
//!
//! Types reject unknown fields and signals, wrong types and negative counts. These checks add
//! what a type cannot say: finite values, non-negative durations, timestamps between
//! 2000-01-01 and 5 minutes ahead of the server, token arithmetic, bounded strings.

use crate::limits::{MAX_FUTURE_MS, MAX_ID_LEN, MAX_STAGES, MIN_TS_MS};
use crate::prompt::is_prompt_hash;
use crate::record::{
    ContextOom, ContextRequest, Event, Feedback, ModelLoad, Readiness, Run, Sample, SessionEvent,
};

/// A validation failure: the offending field (a path such as `samples[3].value`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, e.g. with `samples[3]`.
    pub fn under(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// A client record that can be checked against the server's clock.
pub trait Validate {
    fn validate(&self, now_ms: i64) -> Result<(), FieldError>;
}

type Check = Result<(), FieldError>;

fn ts(ts_ms: Option<i64>, now_ms: i64) -> Check {
    let Some(t) = ts_ms else { return Ok(()) };
    if t < MIN_TS_MS {
        return Err(FieldError::new(
            "ts_ms",
            format!(
                "{t} is before 2000-01-01 ({MIN_TS_MS}); ts_ms is milliseconds since the Unix epoch"
            ),
        ));
    }
    if t > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(FieldError::new(
            "ts_ms",
            format!(
                "{t} is {} ms ahead of the server clock; at most {MAX_FUTURE_MS} ms is allowed",
                t - now_ms
            ),
        ));
    }
    Ok(())
}

fn text(field: &str, s: &str) -> Check {
    if s.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(FieldError::new(
            field,
            format!(
                "is {} bytes long; at most {MAX_ID_LEN} are allowed",
                s.len()
            ),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn opt_text(field: &str, s: &Option<String>) -> Check {
    s.as_deref().map_or(Ok(()), |s| text(field, s))
}

fn non_negative(field: &str, v: f64) -> Check {
    if !v.is_finite() {
        return Err(FieldError::new(
            field,
            format!("must be a finite number, got {v}"),
        ));
    }
    if v < 0.0 {
        return Err(FieldError::new(
            field,
            format!("must not be negative, got {v}"),
        ));
    }
    Ok(())
}

fn opt_non_negative(field: &str, v: Option<f64>) -> Check {
    v.map_or(Ok(()), |v| non_negative(field, v))
}

fn hash(field: &str, s: &str) -> Check {
    if is_prompt_hash(s) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be the SHA-256 of the normalized prompt: 64 lowercase hex digits (raw prompts are never accepted)",
        ))
    }
}

impl Validate for Sample {
    fn validate(&self, now_ms: i64) -> Check {
        opt_text("id", &self.id)?;
        ts(self.ts_ms, now_ms)?;
        opt_text("model_id", &self.model_id)?;
        opt_text("session_id", &self.session_id)?;
        match (self.value, &self.unavailable) {
            (Some(_), Some(_)) => Err(FieldError::new(
                "unavailable",
                "a sample has either a value or an unavailable reason, not both",
            )),
            (None, None) => Err(FieldError::new(
                "value",
                "is missing: give the reading, or `unavailable` with the reason it could not be taken",
            )),
            (None, Some(reason)) => text("unavailable", reason),
            (Some(v), None) => {
                non_negative("value", v)?;
                if self.signal.is_count() && v.fract() != 0.0 {
                    return Err(FieldError::new(
                        "value",
                        format!(
                            "{} counts things and must be a whole number, got {v}",
                            self.signal
                        ),
                    ));
                }
                if self.signal.is_percent() && v > 100.0 {
                    return Err(FieldError::new(
                        "value",
                        format!("{} is a percentage (0 to 100), got {v}", self.signal),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Validate for Run {
    fn validate(&self, now_ms: i64) -> Check {
        opt_text("id", &self.id)?;
        ts(self.ts_ms, now_ms)?;
        text("run_id", &self.run_id)?;
        text("session_id", &self.session_id)?;
        text("model_id", &self.model_id)?;
        hash("prompt_hash", &self.prompt_hash)?;
        non_negative("model_latency_ms", self.model_latency_ms)?;
        non_negative("total_latency_ms", self.total_latency_ms)?;
        non_negative("deterministic_stage_ms", self.deterministic_stage_ms)?;
        non_negative("model_stage_ms", self.model_stage_ms)?;
        opt_non_negative("queue_wait_ms", self.queue_wait_ms)?;
        if self.total_latency_ms < self.model_latency_ms {
            return Err(FieldError::new(
                "total_latency_ms",
                format!(
                    "{} is less than model_latency_ms {}; the total includes the model's time",
                    self.total_latency_ms, self.model_latency_ms
                ),
            ));
        }
        if let (Some(i), Some(o)) = (self.tokens_in, self.tokens_out) {
            let Some(sum) = i.checked_add(o) else {
                return Err(FieldError::new(
                    "tokens_out",
                    "tokens_in + tokens_out overflows",
                ));
            };
            if let Some(t) = self.total_tokens
                && t != sum
            {
                return Err(FieldError::new(
                    "total_tokens",
                    format!("{t} is not tokens_in + tokens_out = {i} + {o} = {sum}"),
                ));
            }
        }
        if let Some(stages) = &self.stages {
            if stages.len() > MAX_STAGES {
                return Err(FieldError::new(
                    "stages",
                    format!(
                        "has {} entries; at most {MAX_STAGES} are allowed",
                        stages.len()
                    ),
                ));
            }
            for (i, s) in stages.iter().enumerate() {
                let at = format!("stages[{i}]");
                text("name", &s.name).map_err(|e| e.under(&at))?;
                non_negative("ms", s.ms).map_err(|e| e.under(&at))?;
            }
        }
        Ok(())
    }
}

impl Validate for ModelLoad {
    fn validate(&self, now_ms: i64) -> Check {
        opt_text("id", &self.id)?;
        ts(self.ts_ms, now_ms)?;
        text("model_id", &self.model_id)?;
        non_negative("model_required_vram_mb", self.model_required_vram_mb)?;
        opt_non_negative("vram_reclaimable_mb_est", self.vram_reclaimable_mb_est)?;
        opt_text("quantization", &self.quantization)?;
        opt_non_negative("params_b", self.params_b)?;
        opt_non_negative("kv_cache_bytes_per_token", self.kv_cache_bytes_per_token)?;
        opt_text("session_id", &self.session_id)
    }
}

impl Validate for ContextRequest {
    fn validate(&self, now_ms: i64) -> Check {
        opt_text("id", &self.id)?;
        ts(self.ts_ms, now_ms)?;
        text("model_id", &self.model_id)?;
        opt_text("session_id", &self.session_id)?;
        if let Some(h) = &self.prompt_hash {
            hash("prompt_hash", h)?;
        }
        Ok(())
    }
}

impl Validate for ContextOom {
    fn validate(&self, now_ms: i64) -> Check {
        opt_text("id", &self.id)?;
        ts(self.ts_ms, now_ms)?;
        text("model_id", &self.model_id)?;
        text("session_id", &self.session_id)
    }
}

impl Validate for SessionEvent {
    fn validate(&self, now_ms: i64) -> Check {
        opt_text("id", &self.id)?;
        ts(self.ts_ms, now_ms)?;
        text("session_id", &self.session_id)
    }
}

impl Validate for Event {
    fn validate(&self, now_ms: i64) -> Check {
        match self {
            Event::ModelLoad(x) => x.validate(now_ms),
            Event::ContextRequest(x) => x.validate(now_ms),
            Event::ContextOom(x) => x.validate(now_ms),
            Event::SessionStarted(x) | Event::SessionEnded(x) => x.validate(now_ms),
        }
    }
}

impl Validate for Readiness {
    fn validate(&self, now_ms: i64) -> Check {
        ts(self.ts_ms, now_ms)
    }
}

impl Validate for Feedback {
    fn validate(&self, now_ms: i64) -> Check {
        ts(self.ts_ms, now_ms)?;
        text("suggestion_id", &self.suggestion_id)?;
        opt_text("choice", &self.choice)
    }
}

/// Validates a batch, naming the first offending item as `{name}[{index}].{field}`.
pub fn validate_batch<T: Validate>(name: &str, items: &[T], now_ms: i64) -> Result<(), FieldError> {
    for (i, item) in items.iter().enumerate() {
        item.validate(now_ms)
            .map_err(|e| e.under(&format!("{name}[{i}]")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Signal;

    const NOW: i64 = 1_800_000_000_000;

    fn sample(signal: Signal, value: Option<f64>) -> Sample {
        Sample {
            id: None,
            ts_ms: Some(NOW),
            signal,
            value,
            unavailable: None,
            device: None,
            model_id: None,
            session_id: None,
        }
    }

    #[test]
    fn sample_rules() {
        assert!(sample(Signal::RamFreeMb, Some(10.5)).validate(NOW).is_ok());
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let e = sample(Signal::RamFreeMb, Some(bad))
                .validate(NOW)
                .unwrap_err();
            assert_eq!(e.field, "value");
        }
        let e = sample(Signal::CpuCores, Some(2.5))
            .validate(NOW)
            .unwrap_err();
        assert!(e.message.contains("whole"), "{e}");
        let e = sample(Signal::CpuLoadPct, Some(100.5))
            .validate(NOW)
            .unwrap_err();
        assert!(e.message.contains("percentage"), "{e}");
        assert_eq!(
            sample(Signal::RamFreeMb, None)
                .validate(NOW)
                .unwrap_err()
                .field,
            "value"
        );
        let mut s = sample(Signal::GpuVramFreeMb, None);
        s.unavailable = Some("no NVIDIA GPU".into());
        assert!(s.validate(NOW).is_ok());
        s.value = Some(1.0);
        assert_eq!(s.validate(NOW).unwrap_err().field, "unavailable");
    }

    #[test]
    fn timestamps_are_bounded() {
        let mut s = sample(Signal::RamFreeMb, Some(1.0));
        s.ts_ms = Some(NOW + MAX_FUTURE_MS);
        assert!(s.validate(NOW).is_ok());
        s.ts_ms = Some(NOW + MAX_FUTURE_MS + 1);
        assert_eq!(s.validate(NOW).unwrap_err().field, "ts_ms");
        s.ts_ms = Some(MIN_TS_MS - 1);
        assert_eq!(s.validate(NOW).unwrap_err().field, "ts_ms");
    }

    #[test]
    fn batch_errors_name_the_index() {
        let items = vec![
            sample(Signal::RamFreeMb, Some(1.0)),
            sample(Signal::RamFreeMb, Some(-3.0)),
        ];
        let e = validate_batch("samples", &items, NOW).unwrap_err();
        assert_eq!(e.field, "samples[1].value");
    }
}

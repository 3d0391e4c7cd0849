//! The text the `profile` and `fit` commands print: readable on an 80-column terminal, every
//! line at most [`WIDTH`] characters. A `from` string is cut into its steps (at the `; ` that
//! are not inside parentheses), one step a line, and long steps are wrapped and indented.

use kora_model::{Derived, FitOutcome, FitVerdict, ProfileRecord};
use kora_probe::fmt_num;

/// The widest line printed (characters).
pub const WIDTH: usize = 80;

/// Words of `text`, filled into lines of at most `WIDTH` characters; the first line starts
/// with `first`, the others with `rest` (both counted in the width). A word too long for a
/// line is cut.
pub fn wrap(text: &str, first: &str, rest: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_owned();
    let mut empty = true;
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let len = line.chars().count();
            let sep = usize::from(!empty);
            if len + sep + word.len() <= WIDTH {
                if !empty {
                    line.push(' ');
                }
                line.extend(word.iter());
                empty = false;
                break;
            }
            if empty {
                // Not even an empty line holds the word: cut it.
                let room = WIDTH.saturating_sub(len).max(1);
                let head: String = word.drain(..room.min(word.len())).collect();
                line.push_str(&head);
                lines.push(std::mem::replace(&mut line, rest.to_owned()));
                if word.is_empty() {
                    break;
                }
                continue;
            }
            lines.push(std::mem::replace(&mut line, rest.to_owned()));
            empty = true;
        }
    }
    if !empty || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The steps of a `from` string: split at `; ` outside parentheses.
pub fn steps(from: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = from.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b';' if depth <= 0 && bytes.get(i + 1) == Some(&b' ') => {
                out.push(from[start..i].trim());
                start = i + 2;
            }
            _ => {}
        }
    }
    out.push(from[start.min(from.len())..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// A derived value and how it was computed, indented under its name.
fn derived(out: &mut Vec<String>, name: &str, d: &Derived, unit: &str) {
    let value = match (d.value, &d.unknown) {
        (Some(v), _) => format!("{}{unit}", fmt_num(v)),
        (None, Some(why)) => format!("unknown: {why}"),
        (None, None) => "unknown".to_owned(),
    };
    out.extend(wrap(&format!("{name}: {value}"), "  ", "      "));
    for (i, step) in steps(&d.from).iter().enumerate() {
        let first = if i == 0 { "      from " } else { "        " };
        out.extend(wrap(step, first, "          "));
    }
}

/// The `profile` command's text.
pub fn render_profile(record: &ProfileRecord) -> String {
    let h = &record.hardware;
    let show = |v: Option<f64>, unit: &str| {
        v.map_or_else(
            || "unavailable".to_owned(),
            |v| format!("{} {unit}", fmt_num(v)),
        )
    };
    let why = |field: &str| {
        h.unavailable
            .get(field)
            .map(|w| format!(" ({w})"))
            .unwrap_or_default()
    };
    let mut out = vec!["Hardware".to_owned()];
    let mut row = |label: &str, value: String| {
        out.extend(wrap(&value, &format!("  {label:<14} "), &" ".repeat(19)));
    };
    row(
        "CPU cores",
        h.cpu_cores
            .map_or_else(|| "unavailable".into(), |c| c.to_string())
            + &why("cpu_cores"),
    );
    row("CPU load", show(h.cpu_load_pct, "%") + &why("cpu_load_pct"));
    row(
        "RAM total",
        show(h.ram_total_mb, "MB") + &why("ram_total_mb"),
    );
    row("RAM free", show(h.ram_free_mb, "MB") + &why("ram_free_mb"));
    match &h.gpu_unavailable {
        Some(reason) => row("GPU", reason.clone()),
        None => {
            for g in &h.gpus {
                let mut v = format!(
                    "{}: {} total, {} free",
                    g.name.as_deref().unwrap_or("unnamed"),
                    show(g.vram_total_mb, "MB"),
                    show(g.vram_free_mb, "MB"),
                );
                if let Some(r) = g.vram_reserved_mb {
                    v.push_str(&format!(", {} MB reserved", fmt_num(r)));
                }
                if let Some(u) = &g.unavailable {
                    v.push_str(&format!(" ({u})"));
                }
                row(&format!("GPU {}", g.index), v);
            }
        }
    }
    let p = &record.profile;
    out.push(String::new());
    out.push(format!(
        "LocalCapabilityProfile (thresholds {}): what this machine can run",
        p.thresholds_version
    ));
    derived(
        &mut out,
        "max_recommended_model_vram_mb",
        &p.max_recommended_model_vram_mb,
        " MB",
    );
    derived(
        &mut out,
        "max_recommended_context_tokens",
        &p.max_recommended_context_tokens,
        " tokens",
    );
    derived(
        &mut out,
        "max_recommended_concurrency",
        &p.max_recommended_concurrency,
        " sessions",
    );
    for m in p.models.values() {
        derived(
            &mut out,
            &format!("model {}: supported context", m.model_id),
            &m.supported_context_tokens,
            " tokens",
        );
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The `fit` command's text.
pub fn render_fit(v: &FitVerdict) -> String {
    let word = match v.verdict {
        FitOutcome::Fits => "fits",
        FitOutcome::DoesNotFit => "does not fit",
        FitOutcome::Unknown => "unknown",
    };
    let mut out = wrap(&format!("{word}: {}", v.reason), "", "    ");
    for line in &v.arithmetic {
        for (i, step) in steps(line).iter().enumerate() {
            let first = if i == 0 { "  " } else { "    " };
            out.extend(wrap(step, first, "      "));
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kora_model::Event;
    use kora_probe::{ModelCatalog, Probe, Recording, compute_profile, fit_check};

    fn fixture(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/probe/tests/fixtures")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Each tick of a recorded machine, with every event of the fixture folded.
    fn records(name: &str) -> Vec<(ProfileRecord, ModelCatalog)> {
        let f = fixture(name);
        let recording = Recording::from_json(&f["recording"].to_string()).unwrap();
        let mut probe = Probe::from_recording(recording);
        let thresholds = kora_policy::Thresholds::embedded();
        let mut catalog = ModelCatalog::new();
        let mut events: Vec<serde_json::Value> =
            f["events"].as_array().cloned().unwrap_or_default();
        for t in f["ticks"].as_array().unwrap() {
            events.extend(t["events"].as_array().cloned().unwrap_or_default());
        }
        for e in events {
            catalog.observe_event(&serde_json::from_value::<Event>(e).unwrap());
        }
        (0..f["ticks"].as_array().unwrap().len())
            .map(|i| {
                let hardware = probe.snapshot(1_760_000_000_000 + i as i64 * 5000);
                let profile = compute_profile(
                    &hardware,
                    &catalog,
                    &thresholds.file().profile,
                    thresholds.version(),
                );
                let r = ProfileRecord {
                    ts_ms: hardware.ts_ms,
                    profile,
                    hardware,
                };
                (r, catalog.clone())
            })
            .collect()
    }

    fn assert_fits_80_columns(text: &str) {
        for line in text.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} characters: {line:?}\n{text}",
                line.chars().count()
            );
        }
    }

    #[test]
    fn the_profile_and_fit_texts_fit_an_80_column_terminal() {
        let names = [
            "desktop_24gb_16gb_loaded.json",
            "desktop_rtx4090.json",
            "two_gpus.json",
            "cpu_only.json",
            "cpu_only_16c_64gb_busy.json",
            "nvml_fails_mid_run.json",
            "laptop_8gb.json",
        ];
        let c = kora_policy::Thresholds::embedded().file().profile.clone();
        for name in names {
            for (r, catalog) in records(name) {
                let text = render_profile(&r);
                assert_fits_80_columns(&text);
                assert!(text.contains("max_recommended_concurrency: "), "{text}");
                for vram in [4096.0, 16384.0, 60000.0] {
                    let v = fit_check(&r.hardware, &catalog, vram, Some(4096), &c);
                    assert_fits_80_columns(&render_fit(&v));
                }
            }
        }
    }

    #[test]
    fn the_profile_text_shows_the_arithmetic_step_by_step() {
        let (r, _) = &records("desktop_24gb_16gb_loaded.json")[1];
        let text = render_profile(r);
        for part in [
            "  max_recommended_model_vram_mb: 22500 MB",
            "      from max over GPUs of floor(usable)",
            "        gpu0: usable = max(0, total 24564 - reserved 330 - headroom 512 - other",
            "          1222) = 22500",
            "        runtime's models = min(used 17606, loaded 16384) = 16384 (reclaimable)",
            "  model mistral-small-24b-instruct: supported context: 48928 tokens",
        ] {
            assert!(text.contains(part), "{part:?} not in\n{text}");
        }
        // No step is lost: every word of every `from` is printed.
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let printed = words(&text);
        for d in [
            &r.profile.max_recommended_model_vram_mb,
            &r.profile.max_recommended_context_tokens,
            &r.profile.max_recommended_concurrency,
        ] {
            let from = words(&d.from.replace("; ", " "));
            assert!(printed.windows(3).any(|w| w == &from[..3]), "{:?}", d.from);
            for w in &from {
                let w = w.trim_end_matches(';');
                assert!(text.contains(w), "{w:?} not in\n{text}");
            }
        }
    }

    #[test]
    fn wrap_cuts_words_longer_than_a_line() {
        let long = "x".repeat(200);
        let lines = wrap(&format!("a {long} b"), "  ", "    ");
        assert!(
            lines.iter().all(|l| l.chars().count() <= WIDTH),
            "{lines:?}"
        );
        assert_eq!(lines.concat().matches('x').count(), 200);
        assert_eq!(wrap("", "  ", "    "), ["  "]);
    }

    #[test]
    fn steps_split_outside_parentheses_only() {
        assert_eq!(
            steps("a = 1 (x; y); b = 2; c (d; e)"),
            ["a = 1 (x; y)", "b = 2", "c (d; e)"]
        );
    }
}

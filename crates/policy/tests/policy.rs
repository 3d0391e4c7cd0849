//! The policy engine's integration tests: golden scenarios, invariants, and the fold's
//! determinism under checkpoint and resume.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use kora_model::{Category, LogEntry, OptionKind, Record};
use kora_policy::scenario::Scenario;
use kora_policy::{CloudTiers, Engine, EngineState, Thresholds, replay};

fn engine() -> Engine {
    Engine::new(Thresholds::embedded(), CloudTiers::embedded())
}

fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")
}

fn scenarios() -> Vec<(String, Scenario)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let s = Scenario::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, s)
        })
        .collect()
}

#[test]
fn every_golden_scenario_produces_exactly_what_it_expects() {
    let all = scenarios();
    assert!(all.len() >= 25, "only {} scenario files", all.len());
    let mut failures = Vec::new();
    for (name, s) in &all {
        assert_eq!(
            name.trim_end_matches(".json"),
            s.name,
            "the file name is the scenario name"
        );
        let mut e = engine();
        match s.run(&mut e) {
            Err(err) => failures.push(format!("{name}: {err}")),
            Ok((_, errors)) => {
                for err in errors {
                    failures.push(format!("{name}: {err}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The log the server would write: each input followed by what the engine derived from it.
fn as_log(entries: &[LogEntry]) -> Vec<LogEntry> {
    let mut e = engine();
    let mut log = Vec::new();
    let mut next = entries.last().map_or(1, |x| x.seq + 1);
    // Derived records get seqs after the inputs, as the server appends them later.
    let mut derived = Vec::new();
    for entry in entries {
        log.push(entry.clone());
        for r in e.step(entry) {
            derived.push(LogEntry {
                seq: next,
                record: r,
            });
            next += 1;
        }
    }
    log.extend(derived);
    log
}

#[test]
fn every_scenario_replays_clean_and_a_tampered_log_is_reported() {
    let mut tampered_seen = false;
    for (name, s) in scenarios() {
        let log = as_log(&s.entries().unwrap());
        let report = replay(log.clone(), &mut engine());
        assert!(report.is_clean(), "{name}: {:#?}", report.differences);
        assert_eq!(report.recorded, report.rederived, "{name}");
        // Change the first firing's recorded reason: replay must notice.
        let mut bad = log;
        if let Some(pos) = bad
            .iter()
            .position(|e| matches!(e.record, Record::Firing(_)))
        {
            if let Record::Firing(f) = &mut bad[pos].record {
                f.reason.push_str(" (edited)");
            }
            let report = replay(bad, &mut engine());
            assert_eq!(report.differences.len(), 1, "{name}");
            tampered_seen = true;
        }
    }
    assert!(tampered_seen);
}

/// Every suggestion answers an earlier firing with evidence, and none offers Krako Cloud
/// before a local step was offered for its category and scope.
fn check_invariants(derived: &[Record]) -> Result<(), String> {
    let mut firings: BTreeMap<String, usize> = BTreeMap::new();
    let mut local_offered: BTreeMap<(Category, String), bool> = BTreeMap::new();
    for r in derived {
        match r {
            Record::Firing(f) => {
                if f.evidence.is_empty() {
                    return Err(format!("firing {} has no evidence", f.firing_id));
                }
                for e in &f.evidence {
                    if e.value.partial_cmp(&e.threshold) != Some(std::cmp::Ordering::Greater) {
                        return Err(format!(
                            "firing {} evidence not over its limit",
                            f.firing_id
                        ));
                    }
                    if e.first_seq > e.last_seq {
                        return Err(format!("firing {} evidence seq range", f.firing_id));
                    }
                }
                firings.insert(f.firing_id.clone(), f.evidence.len());
            }
            Record::Suggestion(s) => {
                if !firings.contains_key(&s.firing_id) {
                    return Err(format!("suggestion {} without a firing", s.suggestion_id));
                }
                let key = (s.category, s.scope.clone());
                let has_cloud = s.options.iter().any(|o| o.kind == OptionKind::Cloud);
                let has_local = s.options.iter().any(|o| o.kind == OptionKind::Local);
                if !has_local {
                    return Err(format!(
                        "suggestion {} without a local option",
                        s.suggestion_id
                    ));
                }
                if has_cloud && !local_offered.get(&key).copied().unwrap_or(false) {
                    return Err(format!(
                        "suggestion {} offers cloud before a local step",
                        s.suggestion_id
                    ));
                }
                for o in &s.options {
                    if o.kind == OptionKind::Cloud
                        && (o.estimate.is_none() || o.action_ready.is_none())
                    {
                        return Err(format!(
                            "cloud option of {} without estimate",
                            s.suggestion_id
                        ));
                    }
                }
                if !s.message.starts_with("Local execution hit a limit: ") {
                    return Err(format!("message of {}", s.suggestion_id));
                }
                local_offered.insert(key, true);
            }
            Record::Suppression(s) if !firings.contains_key(&s.firing_id) => {
                return Err(format!("suppression of unknown firing {}", s.firing_id));
            }
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn no_suggestion_without_a_firing_and_no_cloud_before_a_local_step_in_scenarios() {
    for (name, s) in scenarios() {
        let (derived, _) = s.run(&mut engine()).unwrap();
        let records: Vec<Record> = derived.into_iter().map(|(_, r)| r).collect();
        check_invariants(&records).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn derived_records_fed_back_change_nothing() {
    for (name, s) in scenarios() {
        let entries = s.entries().unwrap();
        let mut plain = engine();
        for e in &entries {
            plain.step(e);
        }
        let mut with_derived = engine();
        for e in as_log(&entries) {
            with_derived.step(&e);
        }
        assert_eq!(plain.state(), with_derived.state(), "{name}");
    }
}

#[test]
fn trigger_status_serializes_with_a_state_tag() {
    let s = Scenario::parse(
        &std::fs::read_to_string(scenario_dir().join("latency_pending.json")).unwrap(),
    )
    .unwrap();
    let mut e = engine();
    s.run(&mut e).unwrap();
    let v = serde_json::to_value(e.triggers()).unwrap();
    let lat = v
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["category"] == "latency")
        .unwrap();
    assert_eq!(lat["state"], "pending");
    assert_eq!(lat["k"], 2);
    assert_eq!(lat["w"], 3);
    assert_eq!(v.as_array().unwrap().len(), 5);
}

mod generated {
    use super::*;
    use kora_model::{
        ContextOom, ContextRequest, Feedback, FeedbackAction, LoadOutcome, ModelLoad, Readiness,
        Run, SessionEvent, Signal, Substrate, WindowRecord,
    };
    use kora_policy::WINDOWED_SIGNALS;
    use proptest::prelude::*;

    const T0: i64 = 1_699_999_980_000;

    #[derive(Debug, Clone)]
    enum Gen {
        Run {
            model: u8,
            lat: u32,
            retry: u8,
            breach: bool,
            sent_extra: u8,
            session: u8,
            wait: Option<u16>,
        },
        Load {
            model: u8,
            vram: u32,
            failed: bool,
        },
        Ctx {
            model: u8,
            req: u32,
            sup: u32,
            session: u8,
            prompt: u8,
        },
        Oom {
            model: u8,
            session: u8,
        },
        Window {
            metric: u8,
            value: u32,
        },
        SessionEnd {
            session: u8,
        },
        Ready {
            ok: bool,
        },
        Feedback {
            back: u8,
            accept: bool,
            insist: bool,
        },
    }

    fn gen_item() -> impl Strategy<Value = (Gen, u32)> {
        let g = prop_oneof![
            6 => (0u8..3, 500u32..9000, 0u8..5, proptest::bool::weighted(0.05), 0u8..3, 0u8..3, proptest::option::weighted(0.3, 0u16..3000))
                .prop_map(|(model, lat, retry, breach, sent_extra, session, wait)| Gen::Run { model, lat, retry, breach, sent_extra, session, wait }),
            1 => (0u8..3, 1000u32..20000, proptest::bool::weighted(0.2))
                .prop_map(|(model, vram, failed)| Gen::Load { model, vram, failed }),
            1 => (0u8..3, 1000u32..40000, 4000u32..20000, 0u8..3, 0u8..2)
                .prop_map(|(model, req, sup, session, prompt)| Gen::Ctx { model, req, sup, session, prompt }),
            1 => (0u8..3, 0u8..3).prop_map(|(model, session)| Gen::Oom { model, session }),
            3 => (0u8..5, 0u32..3000).prop_map(|(metric, value)| Gen::Window { metric, value }),
            1 => (0u8..3).prop_map(|session| Gen::SessionEnd { session }),
            1 => any::<bool>().prop_map(|ok| Gen::Ready { ok }),
            2 => (0u8..10, any::<bool>(), any::<bool>()).prop_map(|(back, accept, insist)| Gen::Feedback { back, accept, insist }),
        ];
        // Seconds to the next record: mostly short, sometimes long (past cooldowns).
        (g, prop_oneof![8 => 1u32..60, 1 => 60u32..2400])
    }

    /// Items with a gap of 1 to 12 days now and then: models and scopes go idle past the
    /// retirement horizon (7 days) and come back.
    fn gen_item_with_gaps() -> impl Strategy<Value = (Gen, u32)> {
        (
            gen_item(),
            prop_oneof![30 => Just(0u32), 1 => 86_400u32..1_036_800],
        )
            .prop_map(|((g, dt), gap)| (g, dt + gap))
    }

    fn build(items: &[(Gen, u32)]) -> Vec<LogEntry> {
        let mut out = Vec::new();
        let mut t = T0;
        let mut minute = T0;
        let mut suggestion_ids: Vec<String> = Vec::new();
        let mut probe = engine();
        for (i, (g, dt)) in items.iter().enumerate() {
            t += i64::from(*dt) * 1000;
            let seq = i as u64 + 1;
            let model = |m: &u8| format!("m{m}");
            let record = match g {
                Gen::Run {
                    model: m,
                    lat,
                    retry,
                    breach,
                    sent_extra,
                    session,
                    wait,
                } => Record::Run(Run {
                    id: None,
                    ts_ms: Some(t),
                    run_id: format!("r{seq}"),
                    session_id: format!("s{session}"),
                    model_id: model(m),
                    substrate: Substrate::Local,
                    prompt_hash: "b".repeat(64),
                    context_tokens: 2048,
                    tokens_in: Some(1500),
                    tokens_out: Some(u64::from(*lat) / 20),
                    total_tokens: None,
                    model_latency_ms: f64::from(*lat),
                    total_latency_ms: f64::from(*lat) * 1.3,
                    deterministic_stage_ms: 100.0,
                    model_stage_ms: f64::from(*lat),
                    validation_retry_count: u32::from(*retry),
                    budget_breach_count: u32::from(*breach),
                    queue_wait_ms: wait.map(f64::from),
                    prompt_tokens_sent: Some(1500 + u64::from(*sent_extra / 2) * 100),
                    stages: None,
                }),
                Gen::Load {
                    model: m,
                    vram,
                    failed,
                } => Record::ModelLoad(ModelLoad {
                    id: None,
                    ts_ms: Some(t),
                    model_id: model(m),
                    model_required_vram_mb: f64::from(*vram),
                    vram_reclaimable_mb_est: Some(500.0),
                    outcome: if *failed {
                        LoadOutcome::Failed
                    } else {
                        LoadOutcome::Ok
                    },
                    quantization: None,
                    params_b: None,
                    kv_cache_bytes_per_token: None,
                    session_id: None,
                }),
                Gen::Ctx {
                    model: m,
                    req,
                    sup,
                    session,
                    prompt,
                } => Record::ContextRequest(ContextRequest {
                    id: None,
                    ts_ms: Some(t),
                    model_id: model(m),
                    requested_context_tokens: u64::from(*req),
                    local_supported_context_tokens: Some(u64::from(*sup)),
                    session_id: Some(format!("s{session}")),
                    prompt_hash: Some(format!("{prompt}").repeat(64)),
                }),
                Gen::Oom { model: m, session } => Record::ContextOom(ContextOom {
                    id: None,
                    ts_ms: Some(t),
                    model_id: model(m),
                    session_id: format!("s{session}"),
                }),
                Gen::Window { metric, value } => {
                    // The minutes follow the records' time (they keep up after a gap).
                    minute = (minute + 60_000).max(t.div_euclid(60_000) * 60_000);
                    let name = [
                        "queue_wait_ms",
                        "active_sessions",
                        "gpu_vram_free_mb",
                        "gpu_vram_total_mb",
                        // The clock the service windows (see `WINDOWED_SIGNALS`).
                        "cpu_cores",
                    ][*metric as usize % 5];
                    let v = if *metric == 1 {
                        f64::from(*value % 6)
                    } else {
                        f64::from(*value) * 4.0
                    };
                    Record::Window(WindowRecord {
                        ts_ms: minute + 60_000,
                        window_kind: "time".to_owned(),
                        metric: name.to_owned(),
                        scope: "host".to_owned(),
                        start_ms: minute,
                        end_ms: minute + 60_000,
                        first_seq: None,
                        last_seq: None,
                        count: 3,
                        min: v / 2.0,
                        max: v,
                        p50: v,
                        p95: v,
                    })
                }
                Gen::SessionEnd { session } => Record::SessionEnded(SessionEvent {
                    id: None,
                    ts_ms: Some(t),
                    session_id: format!("s{session}"),
                }),
                Gen::Ready { ok } => Record::Readiness(Readiness {
                    ts_ms: Some(t),
                    plugin_installed: true,
                    network_available: true,
                    authenticated: *ok,
                    credits_available: true,
                }),
                Gen::Feedback {
                    back,
                    accept,
                    insist,
                } => {
                    let id = suggestion_ids
                        .iter()
                        .rev()
                        .nth(usize::from(*back) % 3)
                        .cloned()
                        .unwrap_or_else(|| "s-0-none".to_owned());
                    Record::Feedback(Feedback {
                        ts_ms: Some(t),
                        suggestion_id: id,
                        action: if *accept {
                            FeedbackAction::Accepted
                        } else {
                            FeedbackAction::Dismissed
                        },
                        choice: None,
                        insist_same_tier: Some(*insist),
                    })
                }
            };
            let entry = LogEntry { seq, record };
            for r in probe.step(&entry) {
                if let Record::Suggestion(s) = r {
                    suggestion_ids.push(s.suggestion_id);
                }
            }
            out.push(entry);
        }
        out
    }

    fn fold(e: &mut Engine, entries: &[LogEntry]) -> Vec<Record> {
        entries.iter().flat_map(|x| e.step(x)).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn a_fold_cut_anywhere_and_resumed_equals_the_whole_fold(
            items in proptest::collection::vec(gen_item(), 1..400),
            cut in any::<proptest::sample::Index>(),
        ) {
            let entries = build(&items);
            let mut whole = engine();
            let all = fold(&mut whole, &entries);

            let at = cut.index(entries.len() + 1);
            let mut first = engine();
            let mut resumed_out = fold(&mut first, &entries[..at]);
            let bytes = rmp_serde::to_vec_named(first.state()).unwrap();
            let state: EngineState = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&state, first.state());
            let json = serde_json::to_string(first.state()).unwrap();
            let _: EngineState = serde_json::from_str(&json).unwrap();
            let mut second = Engine::with_state(Thresholds::embedded(), CloudTiers::embedded(), state);
            resumed_out.extend(fold(&mut second, &entries[at..]));
            prop_assert_eq!(&resumed_out, &all);
            prop_assert_eq!(second.state(), whole.state());

            // Folding twice gives identical output.
            let again = fold(&mut engine(), &entries);
            prop_assert_eq!(&again, &all);

            // Re-feeding the same entries changes nothing.
            prop_assert!(fold(&mut whole, &entries).is_empty());

            prop_assert!(check_invariants(&all).is_ok(), "{:?}", check_invariants(&all));
            let report = replay(as_log(&entries), &mut engine());
            prop_assert!(report.is_clean());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Retirement is exact: the engine that retires idle models and scopes decides
        /// exactly as the one that keeps everything, on logs with gaps of days; and its fold
        /// cut anywhere and resumed is the whole fold.
        #[test]
        fn retiring_idle_state_changes_no_decision(
            items in proptest::collection::vec(gen_item_with_gaps(), 1..400),
            cut in any::<proptest::sample::Index>(),
        ) {
            let entries = build(&items);
            let mut retiring = engine();
            let all = fold(&mut retiring, &entries);
            let mut oracle = engine().without_retirement();
            prop_assert_eq!(&fold(&mut oracle, &entries), &all);

            let at = cut.index(entries.len() + 1);
            let mut first = engine();
            let mut resumed_out = fold(&mut first, &entries[..at]);
            let bytes = rmp_serde::to_vec_named(first.state()).unwrap();
            let state: EngineState = rmp_serde::from_slice(&bytes).unwrap();
            let mut second = Engine::with_state(Thresholds::embedded(), CloudTiers::embedded(), state);
            resumed_out.extend(fold(&mut second, &entries[at..]));
            prop_assert_eq!(&resumed_out, &all);
            prop_assert_eq!(second.state(), retiring.state());
            prop_assert!(check_invariants(&all).is_ok(), "{:?}", check_invariants(&all));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The engine reads the values of the windows of `WINDOWED_SIGNALS` only: a window of
        /// any other signal, whatever its values, tells it that a minute is over, exactly as the
        /// `cpu_cores` window the service writes for that does. So a log with windows of those
        /// signals only (what the service writes now) is decided as one with windows of all.
        #[test]
        fn a_window_of_a_signal_the_engine_does_not_read_is_only_a_clock(
            items in proptest::collection::vec(gen_item(), 1..400),
            which in any::<proptest::sample::Index>(),
            scale in 0.0f64..1e6,
        ) {
            let unread: Vec<Signal> = Signal::ALL
                .into_iter()
                .filter(|s| !WINDOWED_SIGNALS.contains(s))
                .collect();
            let name = which.get(&unread).as_str();
            let entries = build(&items);
            let renamed: Vec<LogEntry> = entries
                .iter()
                .map(|e| match &e.record {
                    Record::Window(w) if w.metric == "cpu_cores" => LogEntry {
                        seq: e.seq,
                        record: Record::Window(WindowRecord {
                            metric: name.to_owned(),
                            min: w.min * scale,
                            max: w.max * scale + 1.0,
                            p50: w.p50 * scale + 0.5,
                            p95: w.p95 * scale + 1.0,
                            ..w.clone()
                        }),
                    },
                    _ => e.clone(),
                })
                .collect();
            prop_assert_eq!(fold(&mut engine(), &renamed), fold(&mut engine(), &entries));
        }
    }

    /// A model back after eight idle days: its state was retired (the sweep ran), and it is
    /// decided as by the engine that kept it: its nine old runs do not close a block with
    /// its next run.
    #[test]
    fn a_model_back_after_a_week_starts_afresh_in_both_engines() {
        let mut items: Vec<(Gen, u32)> = Vec::new();
        let slow = |model| Gen::Run {
            model,
            lat: 8_000,
            retry: 0,
            breach: false,
            sent_extra: 0,
            session: 0,
            wait: None,
        };
        for _ in 0..29 {
            items.push((slow(0), 10));
        }
        // Model 1 keeps the clock going for eight days, an hour apart.
        for _ in 0..(8 * 24) {
            items.push((slow(1), 3_600));
        }
        for _ in 0..31 {
            items.push((slow(0), 10));
        }
        let entries = build(&items);
        let away = 29 + 8 * 24;
        let mut retiring = engine();
        let mut all = fold(&mut retiring, &entries[..away]);
        let mut oracle = engine().without_retirement();
        let mut expected = fold(&mut oracle, &entries[..away]);
        assert_eq!(retiring.state().runs().runs_seen("m0"), 0, "m0 was retired");
        assert_eq!(
            oracle.state().runs().runs_seen("m0"),
            29,
            "the oracle kept m0"
        );
        all.extend(fold(&mut retiring, &entries[away..]));
        expected.extend(fold(&mut oracle, &entries[away..]));
        assert_eq!(expected, all);
        assert_eq!(retiring.state().runs().runs_seen("m0"), 31);
        assert_eq!(
            oracle.state().runs().runs_seen("m0"),
            31,
            "m0 started afresh"
        );
        // m0's blocks after the gap hold only its new runs.
        let blocks: Vec<(u64, u64)> = all
            .iter()
            .filter_map(|r| match r {
                Record::Window(w) if w.scope == "m0" && w.metric == "model_latency_ms" => {
                    Some((w.first_seq.unwrap(), w.count))
                }
                _ => None,
            })
            .collect();
        assert_eq!(blocks.len(), 2 + 3, "{blocks:?}");
        assert!(
            blocks[2..]
                .iter()
                .all(|(first, n)| *first > 29 + 8 * 24 && *n == 10),
            "{blocks:?}"
        );
    }
}

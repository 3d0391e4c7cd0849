//! The client crate against the real binary: every endpoint through its typed call, a record the
//! service refuses set aside without holding the others back, and 10,000 runs sent through a
//! spooled `Sender` while the service is killed (SIGKILL) twice, aborts once right after
//! committing a batch it never answered, and the client itself restarts once: all arrive, none
//! twice, in the order they were queued.

use std::path::Path;
use std::time::{Duration, Instant};

use kora_client::{
    Client, Encoding, EnqueueError, Item, RetryPolicy, Sender, SenderStats, SpoolOptions,
};
use kora_model::*;
use kora_store::{Store, StoreOptions};

use super::common::Server;

fn run(i: usize) -> Run {
    Run {
        id: None,
        ts_ms: None,
        run_id: format!("r{i:05}"),
        session_id: format!("s{}", i / 100),
        model_id: format!("model-{}", i % 3),
        substrate: Substrate::Local,
        prompt_hash: kora_client::prompt_hash(&format!("prompt  {i}\n")),
        context_tokens: 2048,
        tokens_in: Some(800),
        tokens_out: Some(120),
        total_tokens: None,
        model_latency_ms: 900.0 + (i % 50) as f64,
        total_latency_ms: 1_200.0 + (i % 50) as f64,
        deterministic_stage_ms: 250.0,
        model_stage_ms: 900.0 + (i % 50) as f64,
        validation_retry_count: 0,
        budget_breach_count: 0,
        queue_wait_ms: Some(5.0),
        prompt_tokens_sent: None,
        stages: None,
    }
}

fn token(dir: &Path) -> String {
    kora_server::token::Token::load_or_create(dir)
        .unwrap()
        .expose()
        .to_owned()
}

/// The run ids of the stored runs, in seq order.
fn stored_run_ids(data_dir: &Path) -> Vec<String> {
    let store = Store::open(
        &data_dir.join("kora-telemetry.redb"),
        StoreOptions::default(),
    )
    .unwrap();
    store
        .scan_kind(RecordKind::Run, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.record {
            Record::Run(r) => Some(r.run_id),
            _ => None,
        })
        .collect()
}

#[test]
fn every_endpoint_answers_through_its_typed_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = Client::connect(dir.path())
        .unwrap()
        .with_token(token(dir.path()));
    assert_eq!(client.base(), server.base);

    let health = client.health().unwrap();
    assert_eq!(health.status, "ok");

    // Ingest: records without ids get them, so the same batch sent twice is stored once.
    let runs = RunBatch {
        runs: (0..12).map(run).collect(),
    };
    let first = client.runs(&runs).unwrap();
    assert_eq!((first.accepted, first.duplicates), (12, 0));
    let page = client
        .log(&LogQuery {
            kind: Some("run".into()),
            limit: Some(15),
            ..LogQuery::default()
        })
        .unwrap();
    assert_eq!(page.entries.len(), 12, "{page:?}");
    let ids: Vec<String> = page
        .entries
        .iter()
        .map(|e| match &e.record {
            Record::Run(r) => r.id.clone().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(ids.iter().all(|id| id.starts_with("kc-")), "{ids:?}");
    // The stored runs, sent again with their ids: all recognised.
    let again = RunBatch {
        runs: page
            .entries
            .iter()
            .rev()
            .map(|e| match &e.record {
                Record::Run(r) => Run {
                    ts_ms: None,
                    ..r.clone()
                },
                other => panic!("{other:?}"),
            })
            .collect(),
    };
    let second = client.runs(&again).unwrap();
    assert_eq!((second.accepted, second.duplicates), (0, 12));

    let samples = SampleBatch {
        samples: vec![Sample {
            id: None,
            ts_ms: None,
            signal: Signal::QueueWaitMs,
            value: Some(120.0),
            unavailable: None,
            device: None,
            model_id: Some("model-0".into()),
            session_id: None,
        }],
    };
    assert_eq!(client.samples(&samples).unwrap().accepted, 1);
    let events = EventBatch {
        events: vec![Event::SessionStarted(SessionEvent {
            id: None,
            ts_ms: None,
            session_id: "s-client".into(),
        })],
    };
    assert_eq!(client.events(&events).unwrap().accepted, 1);
    // The same calls in MessagePack.
    let msgpack = Client::builder(server.base.clone())
        .encoding(Encoding::MessagePack)
        .build();
    let more = RunBatch {
        runs: (100..103).map(run).collect(),
    };
    assert_eq!(msgpack.runs(&more).unwrap().accepted, 3);
    assert_eq!(
        msgpack.events(&events).unwrap().accepted,
        1,
        "a new id each time"
    );
    let readiness = Readiness {
        ts_ms: None,
        plugin_installed: true,
        network_available: true,
        authenticated: false,
        credits_available: true,
    };
    assert_eq!(client.readiness(&readiness).unwrap().accepted, 1);

    // Reads. The profile waits for the probe's first reading (503 with Retry-After: retried).
    let profile = client.profile().unwrap();
    assert!(profile.hardware.ram_total_mb.is_some_and(|mb| mb > 0.0));
    let fit = client
        .fit(&FitQuery {
            model_required_vram_mb: Some(100.0),
            context_tokens: Some(1024),
        })
        .unwrap();
    assert!(!fit.reason.is_empty());
    let triggers = client.triggers(&Default::default()).unwrap();
    let thresholds = client.thresholds().unwrap();
    let embedded = kora_policy::Thresholds::embedded();
    assert_eq!(triggers.thresholds_version, embedded.version());
    assert_eq!(&thresholds.thresholds.file, embedded.file());
    assert_eq!(thresholds.fingerprint, embedded.fingerprint());
    assert_eq!(thresholds.thresholds.fingerprint, embedded.fingerprint());
    assert!(!thresholds.cloud_tiers.tiers.is_empty());
    let suggestions = client
        .suggestions(&SuggestionsQuery {
            limit: Some(5),
            ..SuggestionsQuery::default()
        })
        .unwrap();
    assert!(suggestions.suggestions.len() <= 5);
    let windows = client
        .windows(&WindowsQuery {
            kind: Some("runs".into()),
            ..WindowsQuery::default()
        })
        .unwrap();
    // 12 runs over 3 models: 4 each, no block of 10 closed yet.
    assert!(windows.windows.is_empty(), "{:?}", windows.windows);
    let SeriesView::List(list) = client.series(&SeriesQuery::default()).unwrap() else {
        panic!("a series list without `series`");
    };
    assert!(
        list.series.iter().any(|s| s == "queue_wait_ms/model-0"),
        "{:?}",
        list.series
    );
    let metrics = client
        .product_metrics(&RangeQuery {
            range: Some("all".into()),
            ..RangeQuery::default()
        })
        .unwrap();
    assert_eq!(metrics.range, "all");
    let prometheus = client.prometheus().unwrap();
    assert!(prometheus.contains("# TYPE"), "{prometheus}");

    // Consent and export (token).
    assert!(!client.consent().unwrap().export_enabled);
    let on = client
        .set_consent(&ConsentChange {
            enabled: true,
            scope: None,
            actor: Some("client-test".into()),
        })
        .unwrap();
    assert!(on.export_enabled);
    let preview = client.export_preview().unwrap();
    assert!(preview.export_enabled);
    let path = dir.path().join("export.json");
    let outcome = client
        .export(&ExportRequest::File {
            path: path.to_str().unwrap().to_owned(),
        })
        .unwrap();
    assert!(matches!(outcome, ExportOutcome::Exported(_)), "{outcome:?}");
    assert!(path.exists());

    // An error answer is typed: feedback for a suggestion that does not exist.
    let e = client
        .feedback(
            "s-0-none",
            &Feedback {
                ts_ms: None,
                suggestion_id: String::new(),
                action: FeedbackAction::Dismissed,
                choice: None,
                insist_same_tier: None,
            },
        )
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    // Without the token, the calls that need it are refused with 401.
    let anonymous = Client::builder(server.base.clone())
        .retry(RetryPolicy::none())
        .build();
    let e = anonymous
        .set_consent(&ConsentChange {
            enabled: false,
            scope: None,
            actor: None,
        })
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    server.stop();
}

#[test]
fn a_refused_record_is_set_aside_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = Client::connect(dir.path()).unwrap();
    // The service holds `taken` with other content: the same id is then a 409.
    let mut taken = run(0);
    taken.id = Some("taken".into());
    client.runs(&RunBatch { runs: vec![taken] }).unwrap();

    let (sender, report) = Sender::builder(client.clone())
        .batch_size(50)
        .flush_interval(Duration::from_millis(20))
        .spool(dir.path().join("spool"), SpoolOptions::default())
        .start()
        .unwrap();
    assert!(report.damage.is_empty() && report.pending == 0);
    // Refused on the spot: what the service would refuse.
    let mut invalid = run(1);
    invalid.model_latency_ms = f64::NAN;
    match sender.enqueue(invalid) {
        Err(EnqueueError::Invalid { index: 0, error }) => {
            assert_eq!(error.field, "model_latency_ms")
        }
        other => panic!("{other:?}"),
    }
    let mut batch: Vec<Item> = (1..=20).map(|i| run(i).into()).collect();
    let Item::Run(conflicting) = &mut batch[10] else {
        unreachable!()
    };
    conflicting.id = Some("taken".into());
    sender.enqueue_all(batch).unwrap();
    sender.flush(Duration::from_secs(30)).unwrap();
    let stats = sender.stats();
    assert_eq!(
        (stats.delivered, stats.rejected, stats.pending),
        (19, 1, 0),
        "{stats:?}"
    );
    let rejected = sender.take_rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].error.code(), Some(ErrorCode::IdConflict));
    assert_eq!(rejected[0].item.id(), Some("taken"));
    let kept = std::fs::read_to_string(dir.path().join("spool/rejected.jsonl")).unwrap();
    assert_eq!(kept.lines().count(), 1, "{kept}");
    drop(sender);
    server.stop();
    let mut want: Vec<String> = vec!["r00000".into()];
    want.extend((1..=20).filter(|i| *i != 11).map(|i| format!("r{i:05}")));
    assert_eq!(stored_run_ids(dir.path()), want);
}

/// A batch that would cross a cardinality limit (`422 limit_exceeded`) is not retried as it
/// is: the sender sends its records one at a time, sets aside those over the limit and
/// delivers the rest.
#[test]
fn records_over_a_cardinality_limit_are_set_aside_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("KORA_TELEMETRY_MAX_MODELS", "3")]);
    let client = Client::connect(dir.path()).unwrap();
    let (sender, _) = Sender::builder(client.clone())
        .batch_size(50)
        .flush_interval(Duration::from_millis(20))
        .spool(dir.path().join("spool"), SpoolOptions::default())
        .start()
        .unwrap();
    // Three models fit; a run with a hash in its model name is a fourth, and a fifth.
    let mut batch: Vec<Item> = (1..=20).map(|i| run(i).into()).collect();
    for (at, model) in [(7, "model-7f3a9c"), (15, "model-9b1d22")] {
        let Item::Run(r) = &mut batch[at] else {
            unreachable!()
        };
        r.model_id = model.into();
    }
    sender.enqueue_all(batch).unwrap();
    sender.flush(Duration::from_secs(30)).unwrap();
    let stats = sender.stats();
    assert_eq!(
        (stats.delivered, stats.rejected, stats.pending),
        (18, 2, 0),
        "{stats:?}"
    );
    let rejected = sender.take_rejected();
    assert!(
        rejected
            .iter()
            .all(|r| r.error.code() == Some(ErrorCode::LimitExceeded)),
        "{rejected:?}"
    );
    let health = client.health().unwrap();
    assert_eq!(health.limits[0].count, 3, "{health:?}");
    assert_eq!(
        health.last_limit_hit.map(|h| h.name),
        Some(LimitName::Models)
    );
    drop(sender);
    server.stop();
    let want: Vec<String> = (1..=20)
        .filter(|i| *i != 8 && *i != 16)
        .map(|i| format!("r{i:05}"))
        .collect();
    assert_eq!(stored_run_ids(dir.path()), want);
}

/// Waits until the sender has delivered at least `n` records.
fn wait_delivered(sender: &Sender, n: u64) {
    let start = Instant::now();
    while sender.stats().delivered < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            sender.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Queues runs `from..to` one at a time, a little apart, as a runtime finishing them would.
fn queue(sender: &Sender, from: usize, to: usize) {
    for i in from..to {
        sender.enqueue(run(i)).unwrap();
        if i % 25 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn ten_thousand_runs_survive_kills_and_restarts_in_order_and_once() {
    const RUNS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&data).unwrap();
    let started = Instant::now();
    let mut server = Server::start(&data);
    // The client follows `service.json`: each restarted service listens on a new port.
    let client = Client::builder(server.base.clone())
        .timeout(Duration::from_secs(10))
        .follow_service_file(&data)
        .build();
    let build = |client: &Client| {
        Sender::builder(client.clone())
            .batch_size(200)
            .flush_interval(Duration::from_millis(20))
            .backoff(RetryPolicy {
                initial_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(250),
                ..RetryPolicy::default()
            })
            .spool(&spool, SpoolOptions::max_bytes(64 * 1024 * 1024))
            .start()
            .unwrap()
    };
    let (sender, report) = build(&client);
    assert_eq!(report.pending, 0);
    let mut totals = SenderStats::default();
    let add = |totals: &mut SenderStats, s: &SenderStats| {
        totals.delivered += s.delivered;
        totals.stored += s.stored;
        totals.duplicates += s.duplicates;
        totals.batches += s.batches;
        totals.failed_attempts += s.failed_attempts;
        totals.rejected += s.rejected;
    };

    // 1. Runs flow; the service is killed with SIGKILL while the sender is at work.
    queue(&sender, 0, 2_500);
    wait_delivered(&sender, 1_500);
    let first_pid = server.child.id();
    server.kill();
    let down = Instant::now();
    // 2. While it is down, runs go on being queued: they wait in the spool.
    queue(&sender, 2_500, 4_000);
    let s = sender.stats();
    assert!(s.pending > 0, "{s:?}");
    // 3. The client restarts too (stopped without a flush): its spool keeps what waits.
    add(&mut totals, &sender.shutdown());
    let (sender, report) = build(&client);
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    let after_client_restart = report.pending;
    assert!(after_client_restart >= 1_500, "{report:?}");
    queue(&sender, 4_000, 5_000);
    // 4. The service comes back (another port) and the spool drains in order; this instance
    //    aborts right after committing its 5th batch, before answering it: the sender must
    //    send that batch again, and the service recognises its runs by their ids.
    server = Server::start_with_env(&data, &[("KORA_TEST_ABORT_AFTER_COMMIT", "5")]);
    assert_ne!(server.child.id(), first_pid);
    let first_outage = down.elapsed();
    queue(&sender, 5_000, 6_000);
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the service was to abort: {status}");
    let down = Instant::now();
    queue(&sender, 6_000, 6_500);
    server = Server::start(&data);
    let second_outage = down.elapsed();
    queue(&sender, 6_500, 8_000);
    wait_delivered(&sender, 5_000);
    // 5. Killed again with SIGKILL while runs are queued, and restarted at once.
    server.kill();
    let down = Instant::now();
    queue(&sender, 8_000, 8_500);
    server = Server::start(&data);
    let third_outage = down.elapsed();
    queue(&sender, 8_500, RUNS);
    sender.flush(Duration::from_secs(120)).unwrap();
    let s = sender.close(Duration::from_secs(10)).unwrap();
    add(&mut totals, &s);
    server.stop();

    let ids = stored_run_ids(&data);
    let want: Vec<String> = (0..RUNS).map(|i| format!("r{i:05}")).collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a run was stored twice");
    assert_eq!(ids.len(), RUNS, "runs were lost");
    assert_eq!(ids, want, "the runs are not in the order they were queued");
    assert_eq!(totals.rejected, 0);
    // Every record was acknowledged once by a sender: stored then, or recognised by its id
    // (stored by an attempt whose answer was lost in a kill).
    assert_eq!(totals.delivered as usize, RUNS, "{totals:?}");
    assert_eq!(
        (totals.stored + totals.duplicates) as usize,
        RUNS,
        "{totals:?}"
    );
    assert!(
        totals.duplicates > 0,
        "the batch the service committed but never answered was sent again: {totals:?}"
    );
    println!(
        "RESULT client restart test: {RUNS} runs queued, {RUNS} stored once each in queue order; \
         {} batches acknowledged, {} duplicates recognised by id (the batch the aborted service committed but never answered), \
         {} failed attempts retried; service down {:.2} s, {:.2} s, {:.2} s; the restarted \
         client found {after_client_restart} runs in its spool; {:.1} s in all",
        totals.batches,
        totals.duplicates,
        totals.failed_attempts,
        first_outage.as_secs_f64(),
        second_outage.as_secs_f64(),
        third_outage.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
}

/// Read-your-writes and the push stream through the client: a batch of slow runs sent with
/// `runs_waiting` answers with the firing and the suggestion it caused, and the stream, opened
/// from the start, replays exactly those decisions under the same seqs, then `ready`.
#[test]
fn decisions_come_back_with_the_batch_and_through_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let _server = Server::start(dir.path());
    let client = Client::connect(dir.path()).unwrap();
    let t0 = kora_pipeline::clock::wall_ms() - 600_000;
    // Three blocks of ten slow runs of one model, a second apart: a sustained latency trigger.
    let runs: Vec<Run> = (0..30)
        .map(|i| Run {
            ts_ms: Some(t0 + i as i64 * 1000),
            model_id: "slow-13b".into(),
            model_latency_ms: 9_000.0,
            total_latency_ms: 9_300.0,
            model_stage_ms: 9_000.0,
            ..run(i)
        })
        .collect();
    let ack = client
        .runs_waiting(&RunBatch { runs }, Duration::from_secs(10))
        .unwrap();
    assert_eq!(ack.accepted, 30);
    let decisions = ack.decisions.clone().unwrap_or_default();
    let kinds: Vec<DecisionKind> = decisions.iter().map(|d| d.kind).collect();
    assert!(
        kinds.contains(&DecisionKind::Firing) && kinds.contains(&DecisionKind::Suggestion),
        "the batch's decisions: {decisions:?}"
    );

    let mut want: Vec<u64> = decisions
        .iter()
        .filter(|d| matches!(d.kind, DecisionKind::Firing | DecisionKind::Suggestion))
        .map(|d| d.seq)
        .collect();
    want.sort();
    // The follower publishes a decision to the stream when it folds it back, a pass after
    // committing it: the catch-up (`follow=false`) is asked again until it holds them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let mut seen = Vec::new();
        let mut ready = false;
        for event in client.stream(Some("0"), false).unwrap() {
            let event = event.unwrap();
            match event.event.as_str() {
                "firing" | "suggestion" => {
                    let entry: LogEntry = event.json().unwrap();
                    assert_eq!(event.id, Some(entry.seq.to_string()));
                    seen.push(entry.seq);
                }
                "ready" => ready = true,
                _ => {}
            }
        }
        assert!(ready, "the catch-up ends with ready");
        if seen.len() >= want.len() || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        seen, want,
        "the stream replays the batch's decisions, once each"
    );
}

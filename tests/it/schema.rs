//! The JSON Schemas in `schema/` are generated from the Rust types; a stale file fails here.
//! Regenerate with `KORA_UPDATE_SCHEMAS=1 cargo test schema`.

use std::path::Path;

use kora_model::*;
use schemars::schema_for;

fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("sample-batch", schema_for!(SampleBatch)),
        ("run-batch", schema_for!(RunBatch)),
        ("event-batch", schema_for!(EventBatch)),
        ("ingest-ack", schema_for!(IngestAck)),
        ("error", schema_for!(ApiError)),
        ("health", schema_for!(Health)),
        ("log-page", schema_for!(LogPage)),
        ("record", schema_for!(Record)),
        ("readiness", schema_for!(Readiness)),
        ("feedback", schema_for!(Feedback)),
        ("profile-record", schema_for!(ProfileRecord)),
        ("fit-verdict", schema_for!(FitVerdict)),
        ("thresholds-file", schema_for!(ThresholdsFile)),
    ]
}

#[test]
fn checked_in_schemas_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let update = std::env::var_os("KORA_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, schema) in schemas() {
        let path = dir.join(format!("{name}.schema.json"));
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale JSON Schemas (regenerate with KORA_UPDATE_SCHEMAS=1 cargo test schema): {stale:?}"
    );
}

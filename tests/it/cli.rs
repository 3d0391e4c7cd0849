//! The command line's settings: defaults → `config.toml` in the data directory → environment →
//! flags, each value's source as `kora-telemetry config` shows it, and what the real `serve`
//! does with them; and `service.json`, read through its type.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};

use kora_model::service::{SERVICE_FILE, ServiceFile};
use serde_json::Value;

use super::common::{BIN, Server};

/// Every environment variable that sets something, so that a test sees only its own.
const SETTING_ENV: [&str; 9] = [
    "KORA_TELEMETRY_DATA_DIR",
    "KORA_TELEMETRY_LISTEN",
    "KORA_TELEMETRY_PROBE_INTERVAL",
    "KORA_TELEMETRY_RETAIN_RAW",
    "KORA_TELEMETRY_RETAIN_ROLLUPS",
    "KORA_TELEMETRY_ROLLUP_STEP",
    "KORA_TELEMETRY_RETAIN_IDS",
    "KORA_TELEMETRY_THRESHOLDS",
    "KORA_TELEMETRY_LOG",
];

/// `kora-telemetry --data-dir DIR ARGS` with exactly the setting variables of `env`.
fn cli(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    for name in SETTING_ENV {
        command.env_remove(name);
    }
    command
        .envs(env.iter().copied())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

/// `config --json`, which must succeed.
fn effective(data_dir: &Path, env: &[(&str, &str)], flags: &[&str]) -> Value {
    let mut args = vec!["config", "--json"];
    args.extend_from_slice(flags);
    let out = cli(data_dir, env, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value and the source (`[source, from]`) of one setting in `config --json`.
fn setting(effective: &Value, key: &str) -> (Value, String, Option<String>) {
    let s = &effective["settings"][key];
    assert!(s.is_object(), "no {key} in {effective}");
    (
        s["value"].clone(),
        s["source"].as_str().unwrap().to_owned(),
        s["from"].as_str().map(str::to_owned),
    )
}

fn write_config(data_dir: &Path, text: &str) -> String {
    let file = data_dir.join("config.toml");
    std::fs::write(&file, text).unwrap();
    file.display().to_string()
}

/// The status code of `GET /v1/health` sent to `server` with this Host header.
fn status_with_host(server: &Server, host: &str) -> u16 {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[test]
fn a_config_toml_value_overrides_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let before = effective(dir.path(), &[], &[]);
    assert_eq!(
        setting(&before, "probe_interval"),
        ("5s".into(), "default".into(), None)
    );
    assert_eq!(before["config_file"]["read"], false);

    let file = write_config(
        dir.path(),
        "probe_interval = \"2s\"\nhosts = [\"Kora.Test\"]\n",
    );
    let after = effective(dir.path(), &[], &[]);
    assert_eq!(
        setting(&after, "probe_interval"),
        ("2s".into(), "file".into(), Some(file.clone()))
    );
    assert_eq!(
        setting(&after, "hosts"),
        (serde_json::json!(["Kora.Test"]), "file".into(), Some(file))
    );
    assert_eq!(after["config_file"]["read"], true);

    // The real service answers to the host name of the file (lowercased), and to no other.
    let server = Server::start(dir.path());
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    assert_eq!(status_with_host(&server, &format!("kora.test:{port}")), 200);
    assert_eq!(status_with_host(&server, &format!("127.0.0.1:{port}")), 200);
    assert_eq!(
        status_with_host(&server, &format!("other.test:{port}")),
        403
    );
    server.stop();
}

#[test]
fn an_environment_variable_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "retain_raw = \"1d\"\nprobe_interval = \"50ms\"\n",
    );
    let both = effective(
        dir.path(),
        &[
            ("KORA_TELEMETRY_RETAIN_RAW", "3d"),
            ("KORA_TELEMETRY_PROBE_INTERVAL", "2s"),
        ],
        &[],
    );
    assert_eq!(
        setting(&both, "retain_raw"),
        (
            "3d".into(),
            "env".into(),
            Some("KORA_TELEMETRY_RETAIN_RAW".into())
        )
    );
    let without = cli(
        dir.path(),
        &[("KORA_TELEMETRY_RETAIN_RAW", "3d")],
        &["config"],
    );
    assert!(!without.status.success());
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(
        err.contains(&format!(
            "{file}: probe_interval must be at least 100ms; got 50ms"
        )),
        "{err}"
    );

    // The real service: the file's probe interval is refused, naming the file...
    let out = cli(dir.path(), &[], &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success(), "started with a 50ms probe interval");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{file}: probe_interval must be at least 100ms")),
        "{err}"
    );
    assert!(
        !dir.path().join("kora-telemetry.redb").exists(),
        "a refused start created the store"
    );
    // ...and the environment's wins over it.
    let server = Server::start_with_env(dir.path(), &[("KORA_TELEMETRY_PROBE_INTERVAL", "2s")]);
    server.stop();
}

#[test]
fn a_flag_overrides_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "rollup_step = \"30m\"\n");
    let env = [("KORA_TELEMETRY_ROLLUP_STEP", "0s")];
    let flagged = effective(dir.path(), &env, &["--rollup-step", "2h"]);
    assert_eq!(
        setting(&flagged, "rollup_step"),
        ("2h".into(), "flag".into(), Some("--rollup-step".into()))
    );
    // Without the flag, the environment's value is the one checked, and refused by name.
    let out = cli(dir.path(), &env, &["config"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "environment variable KORA_TELEMETRY_ROLLUP_STEP: rollup_step must be more than 0"
        ),
        "{err}"
    );
    // The data directory has its own layers: the flag wins over its variable.
    let other = tempfile::tempdir().unwrap();
    let d = effective(
        dir.path(),
        &[("KORA_TELEMETRY_DATA_DIR", other.path().to_str().unwrap())],
        &[],
    );
    assert_eq!(d["data_dir"]["source"], "flag");
    assert_eq!(d["data_dir"]["value"], dir.path().to_str().unwrap());
}

#[test]
fn an_unknown_key_in_config_toml_is_refused_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "probe_intervall = \"2s\"\n");
    for args in [&["config"][..], &["serve", "--listen", "127.0.0.1:0"]] {
        let out = cli(dir.path(), &[], args);
        assert!(!out.status.success(), "{args:?} accepted an unknown key");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{file}: unknown setting `probe_intervall`")),
            "{err}"
        );
    }
    assert!(!dir.path().join("kora-telemetry.redb").exists());
    // The data directory is not a setting of the file that lives in it.
    write_config(dir.path(), "data_dir = \"/elsewhere\"\n");
    let err = String::from_utf8_lossy(&cli(dir.path(), &[], &["config"]).stderr).into_owned();
    assert!(
        err.contains("unknown setting `data_dir`") && err.contains("--data-dir"),
        "{err}"
    );
    // A value of the wrong type names the key and the file too.
    write_config(dir.path(), "allow_non_loopback = \"yes\"\n");
    let err = String::from_utf8_lossy(&cli(dir.path(), &[], &["config"]).stderr).into_owned();
    assert!(
        err.contains(&format!("{file}: allow_non_loopback: invalid type")),
        "{err}"
    );
}

#[test]
fn config_prints_the_source_of_each_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "retain_rollups = \"90d\"\n");
    let env = [
        ("KORA_TELEMETRY_LOG", "warn,kora_store=debug"),
        ("KORA_TELEMETRY_MAX_MODELS", "50"),
    ];
    let out = cli(
        dir.path(),
        &env,
        &[
            "config",
            "--probe-interval",
            "750ms",
            "--max-series",
            "20000",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("retain_rollups"), format!("retain_rollups 90d {file}"));
    assert_eq!(
        line("log"),
        "log warn,kora_store=debug environment variable KORA_TELEMETRY_LOG"
    );
    assert_eq!(
        line("probe_interval"),
        "probe_interval 750ms flag --probe-interval"
    );
    assert_eq!(line("listen"), "listen 127.0.0.1:7433 default");
    assert_eq!(line("retain_raw"), "retain_raw 14d default");
    assert_eq!(line("retain_ids"), "retain_ids 30d default");
    assert_eq!(line("thresholds"), "thresholds (embedded) default");
    assert_eq!(
        line("max_models"),
        "max_models 50 environment variable KORA_TELEMETRY_MAX_MODELS"
    );
    assert_eq!(line("max_series"), "max_series 20000 flag --max-series");
    assert_eq!(line("max_open_sessions"), "max_open_sessions 1000 default");
    assert_eq!(line("max_view_scopes"), "max_view_scopes 1000 default");
    assert!(
        text.contains(&format!(
            "data directory  {}  (flag --data-dir)",
            dir.path().display()
        )),
        "{text}"
    );

    // The JSON form names every setting, each with a source.
    let v = effective(dir.path(), &env, &["--probe-interval", "750ms"]);
    let settings = v["settings"].as_object().unwrap();
    assert_eq!(settings.len(), 14, "{v}");
    for (key, s) in settings {
        let source = s["source"].as_str().unwrap();
        assert!(
            ["default", "file", "env", "flag"].contains(&source),
            "{key}: {s}"
        );
        assert_eq!(s["from"].is_string(), source != "default", "{key}: {s}");
    }
}

#[test]
fn service_json_names_the_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let text = std::fs::read_to_string(dir.path().join(SERVICE_FILE)).unwrap();
    let service: ServiceFile = serde_json::from_str(&text).unwrap();
    assert_eq!(service.base_url(), server.base);
    assert_eq!(service.pid, server.child.id());
    server.stop();
    assert!(
        !dir.path().join(SERVICE_FILE).exists(),
        "a stopped service left service.json behind"
    );
}

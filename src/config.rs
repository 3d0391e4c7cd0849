//! The service's settings: one serde struct ([`Settings`]) that denies unknown keys, layered by
//! figment as defaults → `config.toml` in the data directory (optional) → environment
//! variables → flags, and validated once into the values `serve` runs with ([`ServeConfig`]).
//! Every value keeps where it came from ([`Source`]), so that an error names the setting and
//! its source, and `kora-telemetry config` shows both.
//!
//! The data directory itself comes first, from `--data-dir`, `KORA_TELEMETRY_DATA_DIR` or the
//! platform default, since `config.toml` lives in it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Metadata, Provider};
use kora_policy::Thresholds;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cli::ServeArgs;

/// The store's file, in the data directory.
pub const DB_FILE: &str = "kora-telemetry.redb";
/// The optional settings file, in the data directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The environment variable of the data directory.
pub const DATA_DIR_ENV: &str = "KORA_TELEMETRY_DATA_DIR";
/// The prefix of the settings' environment variables (`KORA_TELEMETRY_` + the key in capitals).
const ENV_PREFIX: &str = "KORA_TELEMETRY_";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The embedded default.
    Default,
    /// A settings file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl Source {
    /// `default`, `file`, `env` or `flag`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File(_) => "file",
            Source::Env(_) => "env",
            Source::Flag(_) => "flag",
        }
    }

    /// The file, variable or flag; `None` for a default.
    pub fn origin(&self) -> Option<String> {
        match self {
            Source::Default => None,
            Source::File(p) => Some(p.display().to_string()),
            Source::Env(name) | Source::Flag(name) => Some((*name).to_owned()),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// A duration as a person writes it (`5s`, `500ms`, `14d`: humantime's syntax), keeping the
/// text it was written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanDuration {
    text: String,
    value: Duration,
}

impl HumanDuration {
    pub fn get(&self) -> Duration {
        self.value
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let value = humantime::parse_duration(text).map_err(|e| {
            format!("{text:?} is not a duration ({e}); write it like \"5s\", \"500ms\" or \"14d\"")
        })?;
        Ok(HumanDuration {
            text: text.to_owned(),
            value,
        })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration in a string, like \"5s\", \"500ms\" or \"14d\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A default: its text and its value (a test checks that they agree).
fn duration(text: &str, value: Duration) -> HumanDuration {
    HumanDuration {
        text: text.to_owned(),
        value,
    }
}

/// Every setting of the service, as `config.toml` spells it. The same names, in capitals after
/// `KORA_TELEMETRY_`, are the environment variables (for the settings that have one), and with
/// dashes the flags of `serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Accept a non-loopback `listen` address.
    pub allow_non_loopback: bool,
    /// Extra host names the service answers to, besides localhost, 127.0.0.1 and [::1].
    pub hosts: Vec<String>,
    /// How often the hardware probe samples.
    pub probe_interval: HumanDuration,
    /// How long samples are kept raw.
    pub retain_raw: HumanDuration,
    /// How long rollups of samples are kept.
    pub retain_rollups: HumanDuration,
    /// The width of a rollup bucket.
    pub rollup_step: HumanDuration,
    /// How long client ids are remembered, so that a retry of a stored record is recognised.
    pub retain_ids: HumanDuration,
    /// A thresholds file instead of the embedded set; in `config.toml`, relative to the data
    /// directory.
    pub thresholds: Option<PathBuf>,
    /// What the service logs (a tracing filter).
    pub log: String,
    /// The most distinct model ids (runs, events and samples) the service takes.
    pub max_models: u64,
    /// The most distinct sample series the service takes.
    pub max_series: u64,
    /// The most sessions open at once (started and not ended).
    pub max_open_sessions: u64,
    /// The most items one page of a scope view holds (`GET /v1/triggers`, the series list).
    pub max_view_scopes: u64,
}

const DAY_S: u64 = 86_400;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 7433)),
            allow_non_loopback: false,
            hosts: Vec::new(),
            probe_interval: duration("5s", Duration::from_secs(5)),
            retain_raw: duration("14d", Duration::from_secs(14 * DAY_S)),
            retain_rollups: duration("400d", Duration::from_secs(400 * DAY_S)),
            rollup_step: duration("1h", Duration::from_secs(3_600)),
            retain_ids: duration("30d", Duration::from_secs(30 * DAY_S)),
            thresholds: None,
            log: "info".into(),
            max_models: kora_model::DEFAULT_MAX_MODELS,
            max_series: kora_model::DEFAULT_MAX_SERIES,
            max_open_sessions: kora_model::DEFAULT_MAX_OPEN_SESSIONS,
            max_view_scopes: kora_model::DEFAULT_MAX_VIEW_SCOPES as u64,
        }
    }
}

/// The highest value a cardinality limit may be set to: far above any machine's use, low
/// enough that a typo (an extra zero or two) is caught.
pub const MAX_LIMIT: u64 = 10_000_000;
/// The highest `max_view_scopes`: a page of that many trigger states is a few tens of MB.
pub const MAX_VIEW_SCOPES: u64 = 100_000;

/// One setting: its key, its environment variable (if it has one) and its flag.
#[derive(Debug)]
struct Spec {
    key: &'static str,
    env: Option<&'static str>,
    flag: &'static str,
}

/// Every setting, in the order `config` prints them.
const SPECS: [Spec; 14] = [
    Spec {
        key: "listen",
        env: Some("KORA_TELEMETRY_LISTEN"),
        flag: "--listen",
    },
    Spec {
        key: "allow_non_loopback",
        env: None,
        flag: "--allow-non-loopback",
    },
    Spec {
        key: "hosts",
        env: None,
        flag: "--host",
    },
    Spec {
        key: "probe_interval",
        env: Some("KORA_TELEMETRY_PROBE_INTERVAL"),
        flag: "--probe-interval",
    },
    Spec {
        key: "retain_raw",
        env: Some("KORA_TELEMETRY_RETAIN_RAW"),
        flag: "--retain-raw",
    },
    Spec {
        key: "retain_rollups",
        env: Some("KORA_TELEMETRY_RETAIN_ROLLUPS"),
        flag: "--retain-rollups",
    },
    Spec {
        key: "rollup_step",
        env: Some("KORA_TELEMETRY_ROLLUP_STEP"),
        flag: "--rollup-step",
    },
    Spec {
        key: "retain_ids",
        env: Some("KORA_TELEMETRY_RETAIN_IDS"),
        flag: "--retain-ids",
    },
    Spec {
        key: "thresholds",
        env: Some("KORA_TELEMETRY_THRESHOLDS"),
        flag: "--thresholds",
    },
    Spec {
        key: "log",
        env: Some("KORA_TELEMETRY_LOG"),
        flag: "--log",
    },
    Spec {
        key: "max_models",
        env: Some("KORA_TELEMETRY_MAX_MODELS"),
        flag: "--max-models",
    },
    Spec {
        key: "max_series",
        env: Some("KORA_TELEMETRY_MAX_SERIES"),
        flag: "--max-series",
    },
    Spec {
        key: "max_open_sessions",
        env: Some("KORA_TELEMETRY_MAX_OPEN_SESSIONS"),
        flag: "--max-open-sessions",
    },
    Spec {
        key: "max_view_scopes",
        env: Some("KORA_TELEMETRY_MAX_VIEW_SCOPES"),
        flag: "--max-view-scopes",
    },
];

fn spec(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.key == key)
}

/// The data directory, and where it came from.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub path: PathBuf,
    pub source: Source,
}

impl DataDir {
    /// The directory `--data-dir` or its environment variable gave (`source` says which), or
    /// the platform's data directory.
    pub fn resolve(given: Option<PathBuf>, source: Source) -> Result<DataDir> {
        match given {
            Some(path) => Ok(DataDir { path, source }),
            None => Ok(DataDir {
                path: directories::ProjectDirs::from("dev", "kora", "kora-telemetry")
                    .context(
                        "cannot find a home directory for the default data directory; pass --data-dir",
                    )?
                    .data_dir()
                    .to_owned(),
                source: Source::Default,
            }),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.path.join(DB_FILE)
    }
}

/// The names figment gives the layers, to tell them apart in a value's metadata.
#[derive(Debug)]
struct LayerNames {
    env: String,
    flags: String,
}

impl LayerNames {
    /// Where the value of `key` with this metadata came from.
    fn source(&self, key: &str, md: Option<&Metadata>) -> Source {
        let Some(md) = md else {
            return Source::Default;
        };
        if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
            return Source::File(path.to_owned());
        }
        let spec = spec(key);
        if md.name == self.env.as_str() {
            if let Some(env) = spec.and_then(|s| s.env) {
                return Source::Env(env);
            }
        } else if md.name == self.flags.as_str()
            && let Some(s) = spec
        {
            return Source::Flag(s.flag);
        }
        Source::Default
    }
}

/// The settings after layering, before validation, with where each value came from.
#[derive(Debug)]
pub struct Layered {
    pub data_dir: DataDir,
    /// `config.toml` in the data directory, and whether it was there to read.
    pub file: PathBuf,
    pub file_read: bool,
    pub settings: Settings,
    sources: BTreeMap<&'static str, Source>,
}

impl Layered {
    /// Layers the defaults, `config.toml` of `data_dir` (when there is one), the environment
    /// and `flags`. Refuses an unknown key or a value of the wrong type, naming the key and
    /// where it came from.
    pub fn load(data_dir: DataDir, flags: &ServeArgs) -> Result<Layered> {
        let file = data_dir.path.join(CONFIG_FILE);
        let file_read = file.is_file();
        let env_keys: Vec<&str> = SPECS
            .iter()
            .filter(|s| s.env.is_some())
            .map(|s| s.key)
            .collect();
        let env = Env::prefixed(ENV_PREFIX).only(&env_keys);
        let flags = Serialized::defaults(flags);
        let names = LayerNames {
            env: env.metadata().name.into_owned(),
            flags: flags.metadata().name.into_owned(),
        };
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if file_read {
            figment = figment.merge(Toml::file_exact(&file));
        }
        let figment = figment.merge(env).merge(flags);
        let settings: Settings = figment
            .extract()
            .map_err(|e| explain(&figment, &names, e))?;
        let sources = SPECS
            .iter()
            .map(|s| (s.key, names.source(s.key, figment.find_metadata(s.key))))
            .collect();
        Ok(Layered {
            data_dir,
            file,
            file_read,
            settings,
            sources,
        })
    }

    /// Where the value of `key` came from.
    pub fn source(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    /// Checks every setting and turns it into the value `serve` runs with. An error names the
    /// setting and where its value came from.
    pub fn validate(&self) -> Result<ServeConfig> {
        let s = &self.settings;
        let refuse = |key: &str, problem: String| anyhow!("{}: {key} {problem}", self.source(key));
        if !s.listen.ip().is_loopback() && !s.allow_non_loopback {
            bail!(
                "{}: refusing to listen on {}: not a loopback address. Your telemetry would be \
                 reachable from other machines; set allow_non_loopback (--allow-non-loopback, or \
                 `allow_non_loopback = true` in {CONFIG_FILE}) if you really mean it",
                self.source("listen"),
                s.listen
            );
        }
        let hosts = s
            .hosts
            .iter()
            .map(|h| {
                if is_host_name(h) {
                    Ok(h.to_ascii_lowercase())
                } else {
                    Err(refuse(
                        "hosts",
                        format!(
                            "must be host names without a port (like kora.local or \
                             [fe80::1]); got {h:?}"
                        ),
                    ))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if s.probe_interval.get() < Duration::from_millis(100) {
            return Err(refuse(
                "probe_interval",
                format!("must be at least 100ms; got {}", s.probe_interval),
            ));
        }
        for (key, d) in [
            ("rollup_step", &s.rollup_step),
            ("retain_ids", &s.retain_ids),
        ] {
            if d.get().is_zero() {
                return Err(refuse(key, format!("must be more than 0; got {d}")));
            }
        }
        let ms = |d: &HumanDuration| i64::try_from(d.get().as_millis()).unwrap_or(i64::MAX);
        let thresholds_file = s
            .thresholds
            .as_ref()
            .map(|p| match self.source("thresholds") {
                Source::File(file) if p.is_relative() => {
                    file.parent().map_or_else(|| p.clone(), |dir| dir.join(p))
                }
                _ => p.clone(),
            });
        let thresholds = load_thresholds(thresholds_file.as_deref())
            .with_context(|| format!("{}: thresholds", self.source("thresholds")))?;
        tracing_subscriber::EnvFilter::try_new(&s.log).map_err(|e| {
            refuse(
                "log",
                format!("is not a tracing filter such as `info` or `kora_store=debug`: {e}"),
            )
        })?;
        for (key, value, max) in [
            ("max_models", s.max_models, MAX_LIMIT),
            ("max_series", s.max_series, MAX_LIMIT),
            ("max_open_sessions", s.max_open_sessions, MAX_LIMIT),
            ("max_view_scopes", s.max_view_scopes, MAX_VIEW_SCOPES),
        ] {
            if !(1..=max).contains(&value) {
                return Err(refuse(key, format!("must be 1 to {max}; got {value}")));
            }
        }
        Ok(ServeConfig {
            listen: s.listen,
            hosts,
            probe_interval: s.probe_interval.get(),
            retention: kora_store::Retention {
                raw_ms: ms(&s.retain_raw),
                rollup_step_ms: ms(&s.rollup_step),
                rollup_ms: ms(&s.retain_rollups),
                ids_ms: ms(&s.retain_ids),
            },
            thresholds,
            log: s.log.clone(),
            limits: kora_pipeline::Limits {
                max_models: s.max_models,
                max_series: s.max_series,
                max_open_sessions: s.max_open_sessions,
            },
            max_view_scopes: usize::try_from(s.max_view_scopes).unwrap_or(usize::MAX),
        })
    }

    /// Every setting with its value (as JSON) and source, in `config`'s order.
    fn rows(&self) -> Result<Vec<(&'static str, serde_json::Value, Source)>> {
        let serde_json::Value::Object(mut values) = serde_json::to_value(&self.settings)? else {
            bail!("the settings are not a JSON object");
        };
        Ok(SPECS
            .iter()
            .map(|s| {
                let value = values.remove(s.key).unwrap_or(serde_json::Value::Null);
                (s.key, value, self.source(s.key))
            })
            .collect())
    }

    /// The effective settings as a table: value and source of each.
    pub fn render(&self) -> Result<String> {
        use std::fmt::Write;
        let mut out = String::new();
        let dir = &self.data_dir;
        writeln!(
            out,
            "data directory  {}  ({})",
            dir.path.display(),
            dir.source
        )?;
        if self.file_read {
            writeln!(out, "settings file   {}", self.file.display())?;
        } else {
            writeln!(out, "settings file   {} (none)", self.file.display())?;
        }
        writeln!(out)?;
        writeln!(out, "{:<20}  {:<24}  from", "setting", "value")?;
        for (key, value, source) in self.rows()? {
            let shown = match (key, &value) {
                ("thresholds", serde_json::Value::Null) => "(embedded)".to_owned(),
                ("hosts", serde_json::Value::Array(a)) if a.is_empty() => "(none)".to_owned(),
                ("hosts", serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|h| h.as_str().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", "),
                (_, serde_json::Value::String(s)) => s.clone(),
                (_, v) => v.to_string(),
            };
            writeln!(out, "{key:<20}  {shown:<24}  {source}")?;
        }
        Ok(out)
    }

    /// The effective settings as JSON: `{data_dir, config_file, settings: {key: {value,
    /// source, from?}}}`.
    pub fn to_json(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Entry<T> {
            value: T,
            source: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            from: Option<String>,
        }
        #[derive(Serialize)]
        struct File<'a> {
            path: &'a Path,
            read: bool,
        }
        #[derive(Serialize)]
        struct Effective<'a> {
            data_dir: Entry<&'a Path>,
            config_file: File<'a>,
            settings: BTreeMap<&'static str, Entry<serde_json::Value>>,
        }
        let entry = |value, source: Source| Entry {
            value,
            source: source.kind(),
            from: source.origin(),
        };
        let settings = self
            .rows()?
            .into_iter()
            .map(|(key, value, source)| (key, entry(value, source)))
            .collect();
        Ok(serde_json::to_string_pretty(&Effective {
            data_dir: Entry {
                value: &self.data_dir.path,
                source: self.data_dir.source.kind(),
                from: self.data_dir.source.origin(),
            },
            config_file: File {
                path: &self.file,
                read: self.file_read,
            },
            settings,
        })?)
    }
}

/// A figment error as "where: key: what", one per error.
fn explain(figment: &Figment, names: &LayerNames, error: figment::Error) -> anyhow::Error {
    let known = SPECS.iter().map(|s| s.key).collect::<Vec<_>>().join(", ");
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| match &e.kind {
            figment::error::Kind::UnknownField(name, _) => {
                // The key is only in the layer that gave it (the file: the environment and the
                // flags give known keys only).
                let source = names.source(name, figment.find_metadata(name));
                let hint = if name == "data_dir" {
                    format!(
                        "; the data directory is chosen by --data-dir or {DATA_DIR_ENV}, since \
                         {CONFIG_FILE} lives in it"
                    )
                } else {
                    String::new()
                };
                format!("{source}: unknown setting `{name}` (the settings are: {known}){hint}")
            }
            kind => {
                let key = e.path.join(".");
                let source = names.source(&key, e.metadata.as_ref());
                if key.is_empty() {
                    format!("{source}: {kind}")
                } else {
                    format!("{source}: {key}: {kind}")
                }
            }
        })
        .collect();
    anyhow!(messages.join("; "))
}

/// A host name, IPv4 address or bracketed IPv6 address, without a port.
fn is_host_name(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// The validated settings `serve` runs with.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Extra host names, lowercase.
    pub hosts: Vec<String>,
    pub probe_interval: Duration,
    pub retention: kora_store::Retention,
    pub thresholds: Thresholds,
    /// The tracing filter, checked.
    pub log: String,
    /// The cardinality limits on client batches.
    pub limits: kora_pipeline::Limits,
    /// The most items one page of a scope view holds.
    pub max_view_scopes: usize,
}

/// The thresholds in `file`, or the embedded set.
pub fn load_thresholds(file: Option<&Path>) -> Result<Thresholds> {
    match file {
        None => Ok(Thresholds::embedded()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the thresholds file {}", path.display()))?;
            Thresholds::parse(&text)
                .with_context(|| format!("the thresholds file {} is refused", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `settings` as if they were all defaults of a data dir that does not exist.
    fn layered(settings: Settings) -> Layered {
        Layered {
            data_dir: DataDir {
                path: PathBuf::from("/nonexistent"),
                source: Source::Default,
            },
            file: PathBuf::from("/nonexistent").join(CONFIG_FILE),
            file_read: false,
            settings,
            sources: BTreeMap::new(),
        }
    }

    #[test]
    fn every_setting_has_a_spec_and_the_defaults_are_valid() {
        let serde_json::Value::Object(keys) = serde_json::to_value(Settings::default()).unwrap()
        else {
            panic!("not an object");
        };
        let layered = layered(Settings::default());
        let config = layered.validate().unwrap();
        assert_eq!(config.probe_interval, Duration::from_secs(5));
        assert_eq!(config.retention.rollup_step_ms, 3_600_000);
        let d = Settings::default();
        for h in [
            d.probe_interval,
            d.retain_raw,
            d.retain_rollups,
            d.rollup_step,
            d.retain_ids,
        ] {
            assert_eq!(h.to_string().parse::<HumanDuration>().unwrap(), h);
        }
        let mut specs: Vec<&str> = SPECS.iter().map(|s| s.key).collect();
        specs.sort_unstable();
        let mut keys: Vec<&str> = keys.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, specs);
        for s in SPECS {
            if let Some(env) = s.env {
                assert_eq!(env, format!("{ENV_PREFIX}{}", s.key.to_ascii_uppercase()));
            }
            assert_eq!(s.flag.trim_start_matches("--").replace('-', "_"), {
                if s.key == "hosts" { "host" } else { s.key }
            });
        }
    }

    #[test]
    fn the_readme_example_is_a_valid_config_toml() {
        let readme = include_str!("../README.md");
        let example = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README.md has a ```toml block");
        let settings: Settings = Figment::from(Toml::string(example)).extract().unwrap();
        assert_eq!(settings.hosts, ["kora.local"]);
        let defaults = Settings::default();
        assert_eq!(
            (settings.listen, &settings.probe_interval, &settings.log),
            (defaults.listen, &defaults.probe_interval, &defaults.log),
            "the README shows the defaults"
        );
        assert_eq!(
            (
                &settings.retain_raw,
                &settings.retain_rollups,
                &settings.rollup_step,
                &settings.retain_ids
            ),
            (
                &defaults.retain_raw,
                &defaults.retain_rollups,
                &defaults.rollup_step,
                &defaults.retain_ids
            ),
        );
        assert_eq!(
            (
                settings.max_models,
                settings.max_series,
                settings.max_open_sessions,
                settings.max_view_scopes
            ),
            (
                defaults.max_models,
                defaults.max_series,
                defaults.max_open_sessions,
                defaults.max_view_scopes
            ),
        );
    }

    #[test]
    fn limits_are_checked_and_named_with_their_source() {
        let mut layered = layered(Settings {
            max_models: 50,
            max_view_scopes: 20,
            ..Settings::default()
        });
        let config = layered.validate().unwrap();
        assert_eq!(config.limits.max_models, 50);
        assert_eq!(config.limits.max_series, kora_model::DEFAULT_MAX_SERIES);
        assert_eq!(config.max_view_scopes, 20);
        for (key, settings) in [
            (
                "max_series",
                Settings {
                    max_series: 0,
                    ..Settings::default()
                },
            ),
            (
                "max_open_sessions",
                Settings {
                    max_open_sessions: MAX_LIMIT + 1,
                    ..Settings::default()
                },
            ),
            (
                "max_view_scopes",
                Settings {
                    max_view_scopes: MAX_VIEW_SCOPES + 1,
                    ..Settings::default()
                },
            ),
        ] {
            layered.settings = settings;
            layered.sources.insert(
                spec(key).unwrap().key,
                Source::Env(spec(key).unwrap().env.unwrap()),
            );
            let e = layered.validate().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("must be 1 to"), "{e}");
            assert!(e.contains("KORA_TELEMETRY_"), "{e}");
        }
    }

    /// `retain_ids` is the store's retry horizon for client ids; 0 is refused with its source.
    #[test]
    fn the_id_retention_reaches_the_store_and_zero_is_refused() {
        let mut layered = layered(Settings::default());
        assert_eq!(
            layered.validate().unwrap().retention.ids_ms,
            30 * 86_400_000
        );
        layered.settings.retain_ids = "2h".parse().unwrap();
        assert_eq!(layered.validate().unwrap().retention.ids_ms, 7_200_000);
        layered.settings.retain_ids = "0s".parse().unwrap();
        layered
            .sources
            .insert("retain_ids", Source::Flag("--retain-ids"));
        let e = layered.validate().unwrap_err().to_string();
        assert!(
            e.contains("--retain-ids") && e.contains("must be more than 0"),
            "{e}"
        );
    }

    #[test]
    fn host_names() {
        for ok in [
            "kora.local",
            "my-box",
            "10.0.0.2",
            "[fe80::1]",
            "KORA.Local",
        ] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            "kora.local:7433",
            "[fe80::1]:80",
            "a b",
            "http://x",
            "[zz]",
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    #[test]
    fn durations_keep_their_text() {
        let d: HumanDuration = "500ms".parse().unwrap();
        assert_eq!(
            (d.get(), d.to_string()),
            (Duration::from_millis(500), "500ms".into())
        );
        let e = "5".parse::<HumanDuration>().unwrap_err();
        assert!(e.contains("\"5\" is not a duration"), "{e}");
    }
}

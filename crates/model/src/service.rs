//! `service.json`: how a running service tells the command line where it listens.
//!
//! `kora-telemetry serve` writes this file into its data directory once it is bound, and
//! removes it when it stops; the command line reads it to find the service (and then asks
//! `GET /v1/health` before trusting it, since a killed service leaves it behind). It is written
//! and read only as [`ServiceFile`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// The name of the file, in the data directory.
pub const SERVICE_FILE: &str = "service.json";

/// The content of `service.json`. Readers ignore fields they do not know, so that a newer
/// service may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ServiceFile {
    /// The address the service is bound to: the real port, also when it was asked for port 0.
    pub listen: SocketAddr,
    /// The process id of the service.
    pub pid: u32,
}

impl ServiceFile {
    /// The base URL of the service's HTTP API, e.g. `http://127.0.0.1:7433`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_what_it_writes_and_ignores_unknown_fields() {
        let file = ServiceFile {
            listen: "127.0.0.1:7433".parse().unwrap(),
            pid: 42,
        };
        let text = serde_json::to_string(&file).unwrap();
        assert_eq!(text, r#"{"listen":"127.0.0.1:7433","pid":42}"#);
        assert_eq!(serde_json::from_str::<ServiceFile>(&text).unwrap(), file);
        let newer: ServiceFile =
            serde_json::from_str(r#"{"listen":"[::1]:9","pid":7,"started_ms":1}"#).unwrap();
        assert_eq!(newer.base_url(), "http://[::1]:9");
    }
}

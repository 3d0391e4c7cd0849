//! Running the real `kora-telemetry` binary as a child process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kora-telemetry");

/// A running `kora-telemetry serve` on 127.0.0.1 with an ephemeral port.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        let mut command = Command::new(BIN);
        command.env("KORA_TELEMETRY_LOG", "warn");
        Server::spawn(command, data_dir)
    }

    /// Like [`Server::start`], with extra environment variables (the test knobs). The service
    /// runs with core dumps off (`ulimit -c 0`), so that one aborted by a test fault point
    /// leaves no core file behind.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new("sh");
        command
            .args(["-c", "ulimit -c 0; exec \"$0\" \"$@\"", BIN])
            .env("KORA_TELEMETRY_LOG", "warn")
            .envs(env.iter().copied());
        Server::spawn(command, data_dir)
    }

    fn spawn(mut command: Command, data_dir: &Path) -> Server {
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kora-telemetry serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Server {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().expect("wait") {
                assert!(s.success(), "serve exited with {s} after SIGTERM");
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("serve did not stop within 5 s of SIGTERM");
    }

    /// Waits for the service to exit by itself (a test fault point), at most `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("serve did not exit by itself within {timeout:?}");
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(self) {
        // Dropping kills the child with SIGKILL and reaps it.
    }
}

impl Drop for Server {
    /// A test that fails before `stop` still leaves no service behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

//! A real Prometheus Pushgateway (Debian package `prometheus-pushgateway`)
//! per test, on a free loopback port the gateway picks itself (read back
//! from its log), with its own persistence file. Killed on drop.
//!
//! ```no_run
//! let pg = backup_tests::pushgateway::Pushgateway::start();
//! // run a tool with PUSHGATEWAY_URL=pg.url() ...
//! assert_eq!(pg.value("nfs-mirror", "nfs_mirror_last_status"), Some(0.0));
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

/// The binary Debian installs.
pub const PUSHGATEWAY_BIN: &str = "prometheus-pushgateway";

pub struct Pushgateway {
    child: Option<Child>,
    addr: String,
    persistence: PathBuf,
    log: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

impl Pushgateway {
    /// Start a gateway with a fresh persistence file in its own temp dir.
    pub fn start() -> Pushgateway {
        let dir = tempfile::Builder::new()
            .prefix("pushgateway-")
            .tempdir()
            .expect("tempdir");
        let file = dir.path().join("pushgateway.state");
        let mut pg = Self::start_with_persistence(&file);
        pg._dir = Some(dir);
        pg
    }

    /// Start a gateway on `persistence` (kept across restarts, as in production).
    pub fn start_with_persistence(persistence: &Path) -> Pushgateway {
        let (child, addr, log) = spawn("127.0.0.1:0", persistence);
        Pushgateway {
            child: Some(child),
            addr,
            persistence: persistence.to_path_buf(),
            log,
            _dir: None,
        }
    }

    /// Start the gateway again on the same address and persistence file
    /// (after [`Pushgateway::stop`], or killing the running one first):
    /// what was pushed before is still there.
    pub fn restart(&mut self) {
        self.stop();
        let (child, addr, log) = spawn(&self.addr, &self.persistence);
        self.child = Some(child);
        self.addr = addr;
        self.log = log;
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (what PUSHGATEWAY_URL takes).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn persistence_file(&self) -> &Path {
        &self.persistence
    }

    /// The gateway's log so far (for assertion messages).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stop the gateway (a gateway that is down): SIGTERM, so it writes its
    /// persistence file as in production, SIGKILL if it lingers. Its URL then
    /// refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) on our own child's pid, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET path` on the gateway: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    /// `GET /api/v1/metrics`, parsed.
    pub fn metrics_json(&self) -> Value {
        let (code, body) = self.get("/api/v1/metrics");
        assert_eq!(code, 200, "GET /api/v1/metrics: {body}");
        serde_json::from_str(&body).expect("pushgateway JSON")
    }

    /// The groups (`data` array) whose grouping labels include `job`.
    pub fn groups(&self, job: &str) -> Vec<Value> {
        let v = self.metrics_json();
        v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|g| g["labels"]["job"].as_str() == Some(job))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Grouping labels of every group of `job` (e.g. `path` after `job`).
    pub fn group_labels(&self, job: &str) -> Vec<serde_json::Map<String, Value>> {
        self.groups(job)
            .iter()
            .filter_map(|g| g["labels"].as_object().cloned())
            .collect()
    }

    /// The value of `metric` (its first sample) in the first group of `job`.
    pub fn value(&self, job: &str, metric: &str) -> Option<f64> {
        self.groups(job)
            .iter()
            .find_map(|g| sample_value(&g[metric]["metrics"][0]))
    }

    /// Every sample of `metric` in `job`'s groups: (sample labels, value).
    pub fn samples(&self, job: &str, metric: &str) -> Vec<(serde_json::Map<String, Value>, f64)> {
        let mut out = Vec::new();
        for g in self.groups(job) {
            for s in g[metric]["metrics"].as_array().into_iter().flatten() {
                if let (Some(l), Some(v)) = (s["labels"].as_object(), sample_value(s)) {
                    out.push((l.clone(), v));
                }
            }
        }
        out
    }
}

/// Start `prometheus-pushgateway` on `listen` and wait for the address it
/// logs (the port it picked for `:0`).
fn spawn(listen: &str, persistence: &Path) -> (Child, String, Arc<Mutex<String>>) {
    let mut child = Command::new(PUSHGATEWAY_BIN)
        .arg(format!("--web.listen-address={listen}"))
        .arg(format!("--persistence.file={}", persistence.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {PUSHGATEWAY_BIN} (Debian package prometheus-pushgateway; `make deps`): {e}"
            )
        });
    let stderr = child.stderr.take().expect("stderr pipe");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let log2 = Arc::clone(&log);
    // Keep draining the log after the address is found so the gateway
    // never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(addr) = listening_address(&line) {
                let _ = tx.send(addr);
                sent = true;
            }
            if let Ok(mut l) = log2.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => (child, addr, log),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let l = log.lock().map(|l| l.clone()).unwrap_or_default();
            panic!("{PUSHGATEWAY_BIN} on {listen} did not log its address within 30 s; log:\n{l}");
        }
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sample_value(s: &Value) -> Option<f64> {
    match &s["value"] {
        Value::String(t) => t.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// `msg="Listening on" address=127.0.0.1:NNNNN` -> `127.0.0.1:NNNNN`.
pub fn listening_address(line: &str) -> Option<String> {
    if !line.contains("Listening on") {
        return None;
    }
    let rest = line.split("address=").nth(1)?;
    let addr: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    addr.rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok_and(|p| p != 0))
        .map(|_| addr.clone())
}

/// A minimal HTTP/1.0 GET (no client library needed for the tests).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
    )
    .expect("send request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::listening_address;

    #[test]
    fn address_from_the_log_line() {
        let l = r#"ts=2026-11-28T06:00:00.000Z caller=tls_config.go:232 level=info msg="Listening on" address=127.0.0.1:40123"#;
        assert_eq!(listening_address(l).as_deref(), Some("127.0.0.1:40123"));
        assert_eq!(
            listening_address(r#"msg="Listening on" address=127.0.0.1:0"#),
            None
        );
        assert_eq!(listening_address("level=info msg=started"), None);
    }
}

//! The Grafana dashboard `units/backup-pipeline.dashboard.json` against a
//! real Prometheus (Debian package `prometheus`).
//!
//! `scripts/demo` (what `make demo` runs) plays a night of every tool, each
//! pushed with the real `push-metric`, and leaves its Pushgateway's
//! persistence file in its sandbox (`KEEP_SANDBOX=1`). A Pushgateway
//! restarted on that file is scraped by Prometheus on loopback
//! (`honor_labels: true`, 1 s interval), and every panel's query runs
//! through `/api/v1/query`: each must return at least one sample, and the
//! per-job panels one per pipeline job the demo pushed.
//!
//! A second test checks the JSON itself: it imports with a
//! `${DS_PROMETHEUS}` datasource input, and its job selectors name every
//! job a unit in `units/` pushes.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_tests::harness::profile_dir;
use backup_tests::pushgateway::Pushgateway;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn dashboard() -> Value {
    let p = repo().join("units").join("backup-pipeline.dashboard.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels array") {
        out.push(p);
        for n in p["panels"].as_array().into_iter().flatten() {
            out.push(n);
        }
    }
    out
}

struct Target {
    panel: String,
    ref_id: String,
    expr: String,
    legend: String,
}

fn targets(d: &Value) -> Vec<Target> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Target {
                panel: p["title"].as_str().unwrap_or("?").to_string(),
                ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                expr: t["expr"].as_str().unwrap_or("").to_string(),
                legend: t["legendFormat"].as_str().unwrap_or("").to_string(),
            });
        }
    }
    out
}

/// Job names in the `job=~"a|b|c"` and `job="a"` selectors of `expr`.
fn selected_jobs(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in expr.match_indices("job=") {
        let rest = &expr[i + "job=".len()..];
        let rest = rest.strip_prefix('~').unwrap_or(rest);
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        let Some((value, _)) = rest.split_once('"') else {
            continue;
        };
        out.extend(value.split('|').map(str::to_string));
    }
    out
}

/// `--job NAME` of every push-metric call in `units/*.service`.
fn unit_jobs() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(repo().join("units")).expect("units/") {
        let p = e.expect("dir entry").path();
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !n.ends_with(".service") || n.starts_with("TEMPLATE.") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read unit");
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with('#') || t.starts_with(';') || !t.contains("push-metric") {
                continue;
            }
            let words: Vec<&str> = t.split_whitespace().collect();
            if let Some(j) = words.iter().position(|w| *w == "--job")
                && let Some(job) = words.get(j + 1)
            {
                out.insert((*job).to_string());
            }
        }
    }
    out
}

#[test]
fn dashboard_imports_with_a_datasource_input_and_selects_every_pushed_job() {
    let d = dashboard();
    let mut problems = Vec::new();
    let ds_input = d["__inputs"].as_array().into_iter().flatten().any(|i| {
        i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource" && i["pluginId"] == "prometheus"
    });
    if !ds_input {
        problems
            .push("__inputs has no DS_PROMETHEUS datasource input (pluginId prometheus)".into());
    }
    if d["title"].as_str().is_none_or(str::is_empty) || d["uid"].as_str().is_none_or(str::is_empty)
    {
        problems.push("the dashboard needs a title and a uid".into());
    }
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        if !ids.insert(p["id"].as_u64().unwrap_or(0)) || p["id"].as_u64().is_none() {
            problems.push(format!("panel {title:?}: missing or repeated id"));
        }
        for k in ["h", "w", "x", "y"] {
            if p["gridPos"][k].as_u64().is_none() {
                problems.push(format!("panel {title:?}: gridPos.{k} missing"));
            }
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${DS_PROMETHEUS}" {
            problems.push(format!(
                "panel {title:?}: datasource is not ${{DS_PROMETHEUS}}"
            ));
        }
        let ts = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if ts.is_empty() {
            problems.push(format!("panel {title:?}: no query"));
        }
        for t in ts {
            if t["datasource"]["uid"] != "${DS_PROMETHEUS}" {
                problems.push(format!(
                    "panel {title:?}: a target's datasource is not ${{DS_PROMETHEUS}}"
                ));
            }
        }
    }
    let mut seen_refs = BTreeSet::new();
    for t in targets(&d) {
        if t.expr.trim().is_empty() {
            problems.push(format!("{} {}: empty expr", t.panel, t.ref_id));
        }
        // The Prometheus test below runs the queries as they are.
        if t.expr.contains('$') {
            problems.push(format!(
                "{} {}: template variable in {:?}",
                t.panel, t.ref_id, t.expr
            ));
        }
        if !seen_refs.insert((t.panel.clone(), t.ref_id.clone())) {
            problems.push(format!("{} {}: repeated refId", t.panel, t.ref_id));
        }
    }
    // Per-job panels: every job a unit pushes is selected.
    let selected: BTreeSet<String> = targets(&d)
        .iter()
        .filter(|t| t.legend == "{{job}}")
        .flat_map(|t| selected_jobs(&t.expr))
        .collect();
    let jobs = unit_jobs();
    assert!(jobs.len() >= 5, "push-metric jobs in units/: {jobs:?}");
    for j in jobs.difference(&selected) {
        problems.push(format!(
            "job {j} (pushed by a unit) is missing from the per-job panels' job=~ selectors"
        ));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// What `scripts/demo` left in /tmp with KEEP_SANDBOX=1: its backup disk
/// (still mounted) is unmounted and the directory removed on drop.
struct DemoSandbox(PathBuf);

impl Drop for DemoSandbox {
    fn drop(&mut self) {
        let disk = self.0.join("backup");
        if let Ok(c) = std::ffi::CString::new(disk.as_os_str().as_encoded_bytes()) {
            // SAFETY: c is a valid NUL-terminated path; umount2 only reads it.
            if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                // SAFETY: as above.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Signal a process group we started (`process_group(0)`: its id is the pid).
fn kill_group(child: &Child, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the group of our own child, not yet reaped.
        unsafe { libc::kill(-pid, sig) };
    }
}

/// Run `scripts/demo` (bounded); returns its kept sandbox, stdout, stderr.
fn run_demo(logs: &Path) -> (Result<(), String>, Option<DemoSandbox>, String) {
    let out_path = logs.join("demo.out");
    let err_path = logs.join("demo.err");
    let mut child = Command::new("bash")
        .arg(repo().join("scripts").join("demo"))
        .current_dir(repo())
        .env("BIN", profile_dir())
        .env("KEEP_SANDBOX", "1")
        .env_remove("PUSHGATEWAY_URL")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("demo.out"))
        .stderr(std::fs::File::create(&err_path).expect("demo.err"))
        .process_group(0)
        .spawn()
        .expect("bash scripts/demo");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut result = Err("timed out after 300 s".to_string());
    loop {
        match child.try_wait().expect("wait demo") {
            Some(st) if st.success() => {
                result = Ok(());
                break;
            }
            Some(st) => {
                result = Err(format!("exited with {st}"));
                break;
            }
            None if Instant::now() > deadline => {
                // SIGTERM first: the demo's EXIT trap stops its Pushgateway
                // and sshd.
                kill_group(&child, libc::SIGTERM);
                let grace = Instant::now() + Duration::from_secs(10);
                while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                kill_group(&child, libc::SIGKILL);
                let _ = child.wait();
                break;
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let kept = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("sandbox kept: "))
        .map(|p| PathBuf::from(p.trim()))
        .find(|p| p.starts_with("/tmp") && p.to_string_lossy().contains("/backup-demo."))
        .map(DemoSandbox);
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    (
        result,
        kept,
        format!(
            "stdout (tail):\n{}\nstderr (tail):\n{}",
            tail(&stdout),
            tail(&stderr)
        ),
    )
}

/// GET on loopback with timeouts; None when nothing answers.
fn try_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let sock = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Percent-encoding for a query-string value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Prometheus server scraping one Pushgateway; stopped on drop.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(pushgateway: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n    static_configs:\n      - targets: ['{pushgateway}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let mut last = String::new();
        // A free port can be taken between our probe and Prometheus' bind:
        // try a few.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let addr = format!("127.0.0.1:{port}");
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("prometheus.log"))
                .spawn()
                .expect("prometheus (Debian package prometheus; `make deps`)");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some((200, _)) = try_get(&addr, "/-/ready") {
                    return Prometheus {
                        child,
                        addr,
                        log,
                        _dir: dir,
                    };
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            last = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("prometheus did not become ready on loopback; log:\n{last}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/api/v1/query` at the present instant: the `data.result` array.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let (code, body) = try_get(&self.addr, &path).ok_or("no answer")?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {code}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn label<'a>(sample: &'a Value, name: &str) -> Option<&'a str> {
    sample["metric"][name].as_str()
}

#[test]
fn every_dashboard_query_returns_data_after_a_demo_night() {
    let started = Instant::now();
    let logs = tempfile::tempdir().expect("tempdir");
    // Declared first, dropped last: after the gateway and Prometheus.
    let (demo, sandbox, demo_log) = run_demo(logs.path());
    let sandbox = sandbox
        .unwrap_or_else(|| panic!("scripts/demo printed no kept sandbox ({demo:?}):\n{demo_log}"));
    assert!(demo.is_ok(), "scripts/demo: {demo:?}\n{demo_log}");
    let state = sandbox.0.join("pushgateway.state");
    assert!(state.is_file(), "the demo left no {}", state.display());
    let pg = Pushgateway::start_with_persistence(&state);
    let groups = pg.metrics_json();
    let pushed: BTreeSet<String> = groups["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["labels"]["job"].as_str().map(str::to_string))
        .collect();
    // The demo's push-metric examples are not pipeline jobs.
    let pipeline: BTreeSet<String> = pushed
        .iter()
        .filter(|j| !j.starts_with("demo-"))
        .cloned()
        .collect();
    assert!(
        pipeline.len() >= 8,
        "the restarted Pushgateway holds too few jobs: {pushed:?}\n{}",
        pg.log()
    );

    let prom = Prometheus::start(pg.addr());
    // Scraped when Prometheus has every group's push_time_seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: BTreeSet<String> = prom
            .query("push_time_seconds")
            .unwrap_or_default()
            .iter()
            .filter_map(|s| label(s, "job").map(str::to_string))
            .collect();
        if seen == pushed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the Pushgateway within 60 s (jobs seen {seen:?}, pushed {pushed:?}); log:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let d = dashboard();
    let ts = targets(&d);
    assert!(ts.len() >= 10, "only {} queries in the dashboard", ts.len());
    let mut problems = Vec::new();
    for t in &ts {
        let what = format!("panel {:?} query {} `{}`", t.panel, t.ref_id, t.expr);
        match prom.query(&t.expr) {
            Err(e) => problems.push(format!("{what}: {e}")),
            Ok(r) if r.is_empty() => problems.push(format!("{what}: no data")),
            Ok(r) => {
                if t.legend == "{{job}}" {
                    let jobs: BTreeSet<String> = r
                        .iter()
                        .filter_map(|s| label(s, "job").map(str::to_string))
                        .collect();
                    if jobs != pipeline {
                        problems.push(format!(
                            "{what}: series for jobs {jobs:?}, the night pushed {pipeline:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "\n{}\nPrometheus log:\n{}",
        problems.join("\n"),
        prom.log()
    );
    eprintln!(
        "{} dashboard queries returned data; demo night, Pushgateway and Prometheus took {:.1} s",
        ts.len(),
        started.elapsed().as_secs_f64()
    );
    drop(prom);
    drop(pg);
    drop(sandbox);
}

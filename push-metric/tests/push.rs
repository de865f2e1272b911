//! push-metric against a real prometheus-pushgateway (one per test, on a
//! loopback port it picks itself) and a real `promtool check metrics`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backup_tests::harness::Run;
use backup_tests::pushgateway::Pushgateway;
use clap::CommandFactory;

fn pm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_push-metric"));
    for v in [
        "PUSHGATEWAY_URL",
        "SERVICE_RESULT",
        "EXIT_CODE",
        "EXIT_STATUS",
        "JOURNAL_STREAM",
    ] {
        c.env_remove(v);
    }
    c
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as f64
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn cli_definition_is_consistent() {
    push_metric::Cli::command().debug_assert();
}

#[test]
fn what_was_pushed_is_read_back() {
    let pg = Pushgateway::start();
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(
        dir.path(),
        "nfs-mirror.prom",
        "# HELP nfs_mirror_bytes Used bytes of the backup disk\n# TYPE nfs_mirror_bytes gauge\nnfs_mirror_bytes 123456\n\
         nfs_mirror_files_total{tree=\"immich\"} 7\n",
    );
    let before = now();
    Run::of(
        pm().args(["--job", "nfs-mirror", "--status", "0", "--file", &f])
            .args(["--metric", "nfs_mirror_extra_seconds=1.5"])
            .args(["--gateway", &pg.url()]),
    )
    .succeeds();
    let after = now();
    assert_eq!(pg.value("nfs-mirror", "nfs_mirror_bytes"), Some(123456.0));
    let files = pg.samples("nfs-mirror", "nfs_mirror_files_total");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0["tree"], "immich");
    assert_eq!(files[0].1, 7.0);
    assert_eq!(
        pg.value("nfs-mirror", "nfs_mirror_extra_seconds"),
        Some(1.5)
    );
    assert_eq!(pg.value("nfs-mirror", "nfs_mirror_last_status"), Some(0.0));
    let run = pg
        .value("nfs-mirror", "nfs_mirror_last_run_timestamp")
        .expect("run timestamp");
    assert!(
        run >= before.floor() && run <= after,
        "{before} <= {run} <= {after}"
    );
    assert_eq!(
        pg.value("nfs-mirror", "nfs_mirror_last_success_timestamp"),
        Some(run)
    );
    // Only `job` groups the series: no instance label is added.
    let groups = pg.group_labels("nfs-mirror");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].len(), 1, "{groups:?}");
}

#[test]
fn env_gateway_and_prefix() {
    let pg = Pushgateway::start();
    Run::of(pm().env("PUSHGATEWAY_URL", pg.url()).args([
        "--job",
        "pfsense-backup",
        "--prefix",
        "backup",
        "--status",
        "1",
    ]))
    .succeeds();
    assert_eq!(pg.value("pfsense-backup", "backup_last_status"), Some(1.0));
    assert!(
        pg.value("pfsense-backup", "backup_last_run_timestamp")
            .is_some()
    );
    assert_eq!(
        pg.value("pfsense-backup", "backup_last_success_timestamp"),
        None
    );
}

/// POST replaces only the names sent: a failure push must not erase the
/// success timestamp (nor any other figure of the good run). A PUT would.
#[test]
fn failure_after_success_keeps_success_timestamp() {
    let pg = Pushgateway::start();
    let url = pg.url();
    Run::of(
        pm().args(["--job", "lvm-pvc-snapshot", "--prefix", "lvm_snapshot"])
            .args([
                "--status",
                "0",
                "--metric",
                "lvm_snapshot_created_total=3",
                "--gateway",
                &url,
            ]),
    )
    .succeeds();
    let success = pg
        .value("lvm-pvc-snapshot", "lvm_snapshot_last_success_timestamp")
        .expect("success timestamp");
    // Make the failure's run timestamp differ from the success one.
    std::thread::sleep(Duration::from_millis(1100));
    Run::of(
        pm().args(["--job", "lvm-pvc-snapshot", "--prefix", "lvm_snapshot"])
            .args(["--status", "1", "--gateway", &url]),
    )
    .succeeds();
    assert_eq!(
        pg.value("lvm-pvc-snapshot", "lvm_snapshot_last_status"),
        Some(1.0)
    );
    let run = pg
        .value("lvm-pvc-snapshot", "lvm_snapshot_last_run_timestamp")
        .expect("run");
    assert!(run > success, "run {run} after success {success}");
    assert_eq!(
        pg.value("lvm-pvc-snapshot", "lvm_snapshot_last_success_timestamp"),
        Some(success)
    );
    assert_eq!(
        pg.value("lvm-pvc-snapshot", "lvm_snapshot_created_total"),
        Some(3.0)
    );
}

#[test]
fn gateway_down_exits_1_with_one_line_reason() {
    let mut pg = Pushgateway::start();
    let url = pg.url();
    pg.stop();
    let start = Instant::now();
    let r = Run::of(
        pm().args(["--job", "nfs-mirror", "--status", "0", "--gateway", &url])
            .args(["--timeout", "2"]),
    );
    r.fails_with(1).stderr_contains("not pushed to");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    // Retries stop at the timeout (generous bound: the box is loaded).
    assert!(start.elapsed() < Duration::from_secs(30));
}

/// A gateway that accepts the connection and never answers: the global
/// timeout must end the push (exit 1) instead of hanging the unit.
#[test]
fn silent_gateway_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let mut child = pm()
        .args(["--job", "nfs-mirror", "--status", "0", "--gateway", &url])
        .args(["--timeout", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Hold accepted connections open without reading or answering.
    let (_conn, _) = l.accept().expect("accept");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("push-metric still waiting on a silent gateway after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
}

/// Stands for a misconfigured URL behind a reverse proxy that redirects
/// (to a login page that answers 200): the 302 must not pass for a push.
#[test]
fn a_redirect_is_not_a_push() {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let url = format!("http://{addr}");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let server = std::thread::spawn(move || {
        let mut methods = Vec::new();
        l.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            c.set_nonblocking(false).expect("blocking");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 65536];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            methods.push(req.split(' ').next().unwrap_or("").to_string());
            let reply = if req.contains(" /login ") {
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nlogin".to_string()
            } else {
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://{addr}/login\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            };
            let _ = c.write_all(reply.as_bytes());
        }
        methods
    });
    let r = Run::of(
        pm().args(["--job", "nfs-mirror", "--status", "0", "--gateway", &url])
            .args(["--timeout", "3"]),
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    r.fails_with(1).stderr_contains("302");
    let methods = server.join().expect("server");
    assert!(
        methods.iter().all(|m| m == "POST"),
        "followed the redirect: {methods:?}"
    );
}

#[test]
fn from_systemd_timeout_reports_aborted() {
    let pg = Pushgateway::start();
    let url = pg.url();
    Run::of(pm().args(["--job", "offsite-sync", "--status", "0", "--gateway", &url])).succeeds();
    let success = pg
        .value("offsite-sync", "offsite_sync_last_success_timestamp")
        .expect("success");
    // What systemd sets for ExecStopPost= after TimeoutStartSec= killed the run.
    Run::of(
        pm().args(["--job", "offsite-sync", "--from-systemd", "--gateway", &url])
            .env("SERVICE_RESULT", "timeout")
            .env("EXIT_CODE", "killed")
            .env("EXIT_STATUS", "TERM"),
    )
    .succeeds();
    assert_eq!(
        pg.value("offsite-sync", "offsite_sync_last_status"),
        Some(2.0)
    );
    assert_eq!(
        pg.value("offsite-sync", "offsite_sync_last_success_timestamp"),
        Some(success)
    );
    // The tool exited 3 (partial): a failed run for the status metric.
    Run::of(
        pm().args(["--job", "offsite-sync", "--from-systemd", "--gateway", &url])
            .env("SERVICE_RESULT", "exit-code")
            .env("EXIT_CODE", "exited")
            .env("EXIT_STATUS", "3"),
    )
    .succeeds();
    assert_eq!(
        pg.value("offsite-sync", "offsite_sync_last_status"),
        Some(1.0)
    );
    // Run by hand, not by systemd: status 1 and a warning.
    Run::of(pm().args(["--job", "offsite-sync", "--from-systemd", "--gateway", &url]))
        .succeeds()
        .stderr_contains("SERVICE_RESULT");
    assert_eq!(
        pg.value("offsite-sync", "offsite_sync_last_status"),
        Some(1.0)
    );
}

#[test]
fn killed_run_without_metrics_file_still_reports() {
    let pg = Pushgateway::start();
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("never-written.prom");
    Run::of(
        pm().args([
            "--job",
            "pvc-copy",
            "--from-systemd",
            "--gateway",
            &pg.url(),
        ])
        .arg("--file")
        .arg(&missing)
        .env("SERVICE_RESULT", "signal")
        .env("EXIT_CODE", "killed")
        .env("EXIT_STATUS", "KILL"),
    )
    .succeeds()
    .stderr_contains("never-written.prom");
    assert_eq!(pg.value("pvc-copy", "pvc_copy_last_status"), Some(2.0));
}

#[test]
fn label_value_with_slash_goes_through_base64() {
    let pg = Pushgateway::start();
    let dir = "/srv/nfs-ssd/immich upload";
    let r = Run::of(
        pm().args([
            "--job",
            "nfs-mirror",
            "--status",
            "0",
            "--gateway",
            &pg.url(),
        ])
        .args(["--label", &format!("tree={dir}"), "--dry-run"]),
    );
    r.succeeds()
        .stdout_contains("/metrics/job/nfs-mirror/tree@base64/");
    Run::of(
        pm().args([
            "--job",
            "nfs-mirror",
            "--status",
            "0",
            "--gateway",
            &pg.url(),
        ])
        .args(["--label", &format!("tree={dir}")]),
    )
    .succeeds();
    let groups = pg.group_labels("nfs-mirror");
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["tree"], dir);
    assert_eq!(pg.value("nfs-mirror", "nfs_mirror_last_status"), Some(0.0));
}

#[test]
fn malformed_file_exits_2_and_pushes_nothing() {
    let pg = Pushgateway::start();
    let dir = tempfile::tempdir().expect("tmp");
    let good = write(dir.path(), "good.prom", "a_bytes 1\n");
    let bad = write(dir.path(), "bad.prom", "b_bytes 1\nb_files{x=\"1\" 2\n");
    let r = Run::of(
        pm().args([
            "--job",
            "sqlite-dump",
            "--status",
            "0",
            "--gateway",
            &pg.url(),
        ])
        .args(["--file", &good, "--file", &bad]),
    );
    r.fails_with(2).stderr_contains(&format!("{bad}:2:"));
    assert!(
        pg.groups("sqlite-dump").is_empty(),
        "{:?}",
        pg.metrics_json()
    );
}

#[test]
fn bad_input_exits_2() {
    for args in [
        vec!["--job", "j", "--status", "0"], // nowhere to send
        vec![
            "--job",
            "j",
            "--status",
            "7",
            "--gateway",
            "http://127.0.0.1:9",
        ],
        vec!["--job", "j", "--gateway", "http://127.0.0.1:9"], // no status
        vec![
            "--job",
            "j",
            "--status",
            "0",
            "--from-systemd",
            "--gateway",
            "http://127.0.0.1:9",
        ],
        vec!["--job", "j", "--status", "0", "--gateway", "127.0.0.1:9"],
        vec![
            "--job",
            "j",
            "--status",
            "0",
            "--gateway",
            "http://127.0.0.1:9",
            "--metric",
            "x=many",
        ],
        vec![
            "--job",
            "j",
            "--status",
            "0",
            "--gateway",
            "http://127.0.0.1:9",
            "--label",
            "bad-name=1",
        ],
        vec![
            "--job",
            "j",
            "--status",
            "0",
            "--timeout",
            "0",
            "--gateway",
            "http://127.0.0.1:9",
        ],
        vec![
            "--job",
            "j",
            "--prefix",
            "9x",
            "--status",
            "0",
            "--gateway",
            "http://127.0.0.1:9",
        ],
    ] {
        let r = Run::of(pm().args(&args));
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.trim().is_empty(), "{args:?}: no reason given");
    }
}

#[test]
fn dry_run_prints_url_and_exact_body_and_sends_nothing() {
    let pg = Pushgateway::start();
    let r = Run::of(
        pm().args([
            "--job",
            "nfs-mirror",
            "--status",
            "2",
            "--gateway",
            &pg.url(),
        ])
        .args(["--metric", "nfs_mirror_bytes=9", "--dry-run"]),
    );
    r.succeeds()
        .stdout_contains(&format!("POST {}/metrics/job/nfs-mirror\n", pg.url()))
        .stdout_contains("\nnfs_mirror_bytes 9\n")
        .stdout_contains("\nnfs_mirror_last_status 2\n");
    assert!(!r.stdout.contains("last_success"), "{}", r.stdout);
    assert!(pg.groups("nfs-mirror").is_empty());
}

fn promtool_check_metrics(path: &Path) -> (i32, String) {
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(path).expect("open"))
        .output()
        .expect("promtool (Debian package prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn textfile_dir_output_is_valid_and_keeps_success_timestamp() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("textfile");
    std::fs::create_dir(&out).expect("mkdir");
    let f = write(
        dir.path(),
        "m.prom",
        "# HELP nfs_mirror_bytes Used bytes\n# TYPE nfs_mirror_bytes gauge\nnfs_mirror_bytes 42\n",
    );
    Run::of(
        pm().args(["--job", "nfs-mirror", "--status", "0", "--file", &f])
            .arg("--textfile-dir")
            .arg(&out),
    )
    .succeeds();
    let prom = out.join("nfs-mirror.prom");
    let (code, text) = promtool_check_metrics(&prom);
    assert_eq!(code, 0, "promtool check metrics: {text}");
    assert_eq!(text.trim(), "", "lint findings");
    let first = backup_core::metrics::Metrics::read(&prom).expect("parse");
    let success = first
        .get("nfs_mirror_last_success_timestamp")
        .expect("success");
    assert_eq!(first.get("nfs_mirror_bytes"), Some(42.0));

    std::thread::sleep(Duration::from_millis(1100));
    Run::of(
        pm().args(["--job", "nfs-mirror", "--status", "1"])
            .arg("--textfile-dir")
            .arg(&out),
    )
    .succeeds();
    let (code, text) = promtool_check_metrics(&prom);
    assert_eq!(code, 0, "promtool check metrics: {text}");
    let second = backup_core::metrics::Metrics::read(&prom).expect("parse");
    assert_eq!(second.get("nfs_mirror_last_status"), Some(1.0));
    assert_eq!(
        second.get("nfs_mirror_last_success_timestamp"),
        Some(success)
    );
    assert!(second.get("nfs_mirror_last_run_timestamp") > Some(success));
    // Only the .prom file: no temp file left for node_exporter to read.
    let names: Vec<_> = std::fs::read_dir(&out)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("nfs-mirror.prom")]);
}

#[test]
fn textfile_and_gateway_together() {
    let pg = Pushgateway::start();
    let dir = tempfile::tempdir().expect("tmp");
    Run::of(
        pm().args([
            "--job",
            "sqlite-dump",
            "--status",
            "0",
            "--gateway",
            &pg.url(),
        ])
        .arg("--textfile-dir")
        .arg(dir.path()),
    )
    .succeeds();
    assert_eq!(
        pg.value("sqlite-dump", "sqlite_dump_last_status"),
        Some(0.0)
    );
    let m = backup_core::metrics::Metrics::read(&dir.path().join("sqlite-dump.prom"))
        .expect("textfile");
    assert_eq!(m.get("sqlite_dump_last_status"), Some(0.0));
}

/// The gateway refuses a body whose metric has another type in another
/// group (as untyped series left by the old scripts would cause): exit 1
/// at once (no pointless retries), a hint in the message, and the gateway
/// records the failed push, which the PushgatewayPushRejected alert reads.
#[test]
fn rejected_push_exits_1_with_a_hint() {
    let pg = Pushgateway::start();
    let dir = tempfile::tempdir().expect("tmp");
    let typed = write(
        dir.path(),
        "typed.prom",
        "# TYPE shared_bytes gauge\nshared_bytes 1\n",
    );
    Run::of(pm().args([
        "--job",
        "job-a",
        "--status",
        "0",
        "--gateway",
        &pg.url(),
        "--file",
        &typed,
    ]))
    .succeeds();
    Run::of(pm().args(["--job", "job-b", "--status", "0", "--gateway", &pg.url()])).succeeds();
    let r = Run::of(
        pm().args(["--job", "job-b", "--status", "0", "--gateway", &pg.url()])
            .args(["--metric", "shared_bytes=2", "--timeout", "30"]),
    );
    r.fails_with(1)
        .stderr_contains("HTTP 400")
        .stderr_contains("another type in another group")
        .stderr_contains("after 1 attempt(s)");
    assert_eq!(pg.value("job-b", "shared_bytes"), None);
    let ok = pg.value("job-b", "push_time_seconds").expect("push time");
    let failed = pg
        .value("job-b", "push_failure_time_seconds")
        .expect("failure time");
    assert!(failed >= ok, "failure {failed} after success {ok}");
}

/// A Pushgateway restarting while a unit ends: push-metric keeps retrying
/// inside its timeout and the result lands; the gateway's persistence keeps
/// the earlier success timestamp across the restart.
#[test]
fn push_retries_until_the_gateway_is_back() {
    use std::io::{BufRead, BufReader};
    let mut pg = Pushgateway::start();
    let url = pg.url();
    Run::of(pm().args(["--job", "nfs-mirror", "--status", "0", "--gateway", &url])).succeeds();
    let success = pg
        .value("nfs-mirror", "nfs_mirror_last_success_timestamp")
        .expect("success");
    pg.stop();
    let mut child = pm()
        .args([
            "-v",
            "--job",
            "nfs-mirror",
            "--status",
            "1",
            "--gateway",
            &url,
        ])
        .args(["--timeout", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    // Wait for a failed attempt (the gateway is down), then bring it back.
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "push-metric ended before a failed attempt:\n{seen}");
        seen.push_str(&line);
        if line.contains("push attempt 1 ") && line.contains("failed") {
            break;
        }
    }
    pg.restart();
    assert_eq!(pg.url(), url);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("read stderr");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{seen}{rest}");
    assert!(
        rest.contains("pushed job nfs-mirror status 1"),
        "{seen}{rest}"
    );
    assert_eq!(pg.value("nfs-mirror", "nfs_mirror_last_status"), Some(1.0));
    assert_eq!(
        pg.value("nfs-mirror", "nfs_mirror_last_success_timestamp"),
        Some(success)
    );
}

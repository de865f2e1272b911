//! Faults injected for real: SIGKILL of sqlite-dump mid-run, and a full
//! destination filesystem (a small tmpfs in a private mount namespace).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backup_tests::harness::Sandbox;
use common::*;

/// SIGKILL while databases are being copied: nothing unverified under a
/// final name, the source untouched, and the next run cleans up and
/// completes.
#[test]
fn sigkill_mid_run_leaves_no_unverified_copy() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    // Big enough that the run is still busy when it is killed.
    for i in 0..3 {
        make_db(&src.join(format!("db{i}.db")), "big", 25_000);
    }
    let before = snapshot(&src);
    let dest = sb.path().join("dest");
    let mut child = tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(&dest)
        .arg("-q")
        .spawn()
        .expect("spawn");
    // Kill as soon as work has started (its scratch directory exists).
    let t = Instant::now();
    loop {
        let started = std::fs::read_dir(&dest).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".sqlite-dump-scratch.")
            })
        });
        if started || child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        None,
        "the run ended before it could be killed"
    );
    assert_unchanged(&before, &src);
    // Whatever finished before the kill is complete and verified.
    for f in files(&dest) {
        let name = f.to_string_lossy().into_owned();
        if name.starts_with(".sqlite-dump-scratch.")
            || name.ends_with(".partial")
            || name.ends_with("-journal")
        {
            continue;
        }
        assert_eq!(
            integrity(&dest.join(&f)),
            "ok",
            "{name} (killed run: {status:?})"
        );
        assert_eq!(count(&dest.join(&f), "big"), 25_000, "{name}");
    }
    run(tool(&sb).arg(&src).arg("--to").arg(&dest)).succeeds();
    let expected: Vec<PathBuf> = (0..3).map(|i| PathBuf::from(format!("db{i}.db"))).collect();
    assert_eq!(files(&dest), expected, "leftovers of the killed run remain");
    for f in &expected {
        assert_eq!(count(&dest.join(f), "big"), 25_000);
    }
}

/// The destination fills up: the database that does not fit fails and is
/// counted, its partial copy is removed, the small one is still copied.
#[test]
fn a_full_destination_fails_the_database_and_removes_the_partial() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("small.db"), "s", 10);
    make_db(&src.join("large.db"), "l", 20_000);
    let dest = sb.mkdir("dest");
    let scratch = sb.mkdir("scratch");
    // 2 MiB tmpfs as DEST, in a private mount namespace (never the host's).
    // The tmpfs is the backup disk: it gets the sandbox's identity marker.
    backup_tests::harness::init_backup_root(sb.path());
    let script = r#"mount --make-rprivate / && mount -t tmpfs -o size=2m tmpfs "$2" && cp "$5" "$2/" && "$1" "$3" --to "$2" --scratch-dir "$4" --json; rc=$?; echo "files:"; cd "$2" && find . -type f ! -name .backup-pipeline-id | sort; exit $rc"#;
    let r = run(std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(env!("CARGO_BIN_EXE_sqlite-dump"))
        .arg(&dest)
        .arg(&src)
        .arg(&scratch)
        .arg(sb.path().join(backup_core::marker::FILE))
        .env("BACKUP_LOCK_DIR", sb.lock_dir()));
    r.fails_with(3)
        .stderr_contains("large.db")
        .stderr_contains("full");
    let listing = r.stdout.split("files:\n").nth(1).expect("listing");
    assert_eq!(listing, "./small.db\n", "{}", r.stdout);
    let json_line = r.stdout.lines().next().expect("json");
    let out: serde_json::Value = serde_json::from_str(json_line).expect("json");
    assert_eq!(out["ok"], 1);
    assert_eq!(out["failed"], 1);
}

/// SIGTERM (systemd's stop or timeout) mid-run: the database in progress
/// is abandoned cleanly (no `.partial`, no scratch left), what was already
/// renamed into place is verified, the run exits 1 and says why.
#[test]
fn sigterm_mid_run_stops_cleanly() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    for i in 0..3 {
        make_db(&src.join(format!("db{i}.db")), "big", 25_000);
    }
    let before = snapshot(&src);
    let dest = sb.path().join("dest");
    let metrics = sb.path().join("m.prom");
    let child = tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(&dest)
        .arg("--metrics-file")
        .arg(&metrics)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let t = Instant::now();
    while !std::fs::read_dir(&dest).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".sqlite-dump-scratch.")
        })
    }) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by signal 15"), "{stderr}");
    assert_unchanged(&before, &src);
    for f in files(&dest) {
        let name = f.to_string_lossy().into_owned();
        assert!(
            name.starts_with("db") && name.ends_with(".db"),
            "debris left by the stopped run: {name}"
        );
        assert_eq!(integrity(&dest.join(&f)), "ok", "{name}");
        assert_eq!(count(&dest.join(&f), "big"), 25_000, "{name}");
    }
    let m = backup_core::metrics::Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("sqlite_dump_exit_code"), Some(1.0));
    assert_eq!(m.get("sqlite_dump_databases_failed"), None);
}

//! `sqlite-dump SRC --to DEST` against real SQLite databases.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use backup_core::ledger::{Ledger, PathKind};
use backup_core::metrics::Metrics;
use backup_tests::harness::Sandbox;
use common::*;
use rusqlite::Connection;

/// Bug 14 (docs/compatibility.md): the old `.backup` fell back to a main-file-only `cp`, losing
/// every transaction still in the WAL.
#[test]
fn bug14_rows_only_in_the_wal_reach_the_copy() {
    let sb = Sandbox::new();
    let live = sb.mkdir("live");
    let src = sb.mkdir("src/ns/pvc/data");
    let db = live.join("vault.db");
    let c = Connection::open(&db).expect("open");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, pad BLOB);",
    )
    .expect("schema");
    insert(&c, "checkpointed", 20);
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    insert(&c, "wal-only", 300);
    // Freeze the state with the writer still open, like a snapshot of a
    // running pod: main file, -wal and -shm.
    for s in ["", "-wal", "-shm"] {
        std::fs::copy(
            live.join(format!("vault.db{s}")),
            src.join(format!("vault.db{s}")),
        )
        .expect("copy");
    }
    drop(c);
    // The main file alone really lacks the WAL rows.
    let main_only = sb.mkdir("main-only").join("vault.db");
    std::fs::copy(src.join("vault.db"), &main_only).expect("copy");
    assert_eq!(count(&main_only, "wal-only"), 0);

    let before = snapshot(&sb.path().join("src"));
    let dest = sb.path().join("dest");
    let metrics = sb.path().join("m.prom");
    run(tool(&sb)
        .arg(sb.path().join("src"))
        .arg("--to")
        .arg(&dest)
        .arg("--metrics-file")
        .arg(&metrics))
    .succeeds();
    assert_unchanged(&before, &sb.path().join("src"));

    // One self-contained file: no sidecar, no partial, no scratch left.
    assert_eq!(files(&dest), vec![PathBuf::from("ns/pvc/data/vault.db")]);
    let copy = dest.join("ns/pvc/data/vault.db");
    assert_eq!(count(&copy, "wal-only"), 300);
    assert_eq!(count(&copy, "checkpointed"), 20);
    assert_eq!(integrity(&copy), "ok");
    // Reading the copy (as a restore test or `check` would) grows no
    // -wal/-shm beside it: offsite-sync ships one file, not three.
    assert_eq!(files(&dest), vec![PathBuf::from("ns/pvc/data/vault.db")]);
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("sqlite_dump_databases_ok"), Some(1.0));
    assert_eq!(m.get("sqlite_dump_databases_failed"), Some(0.0));
    let size = std::fs::metadata(&copy).expect("stat").len() as f64;
    assert_eq!(m.get("sqlite_dump_bytes"), Some(size));
    assert!(m.get("sqlite_dump_duration_seconds").is_some());
}

/// A writer killed (SIGKILL) inside a transaction after SQLite spilled
/// pages into the main file leaves a hot journal: the copy must be the
/// state before that transaction, and the source must keep its journal.
#[test]
fn a_hot_journal_is_rolled_back_in_the_copy_not_in_the_source() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    let db = src.join("app.db");
    make_db(&db, "committed", 100);
    let committed_main = std::fs::read(&db).expect("read");
    let marker = sb.path().join("inside-transaction");
    let script = format!(
        "PRAGMA cache_size=5;\n\
         BEGIN;\n\
         INSERT INTO t(tag, pad) WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x < 3000) SELECT 'uncommitted', randomblob(400) FROM n;\n\
         UPDATE t SET tag = 'overwritten' WHERE tag = 'committed';\n\
         .system touch {}\n\
         .system sleep 120\n\
         COMMIT;\n",
        marker.display()
    );
    let script_file = sb.write("writer.sql", script);
    let child = std::process::Command::new("sqlite3")
        .arg(&db)
        .stdin(std::fs::File::open(&script_file).expect("script"))
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("sqlite3 CLI");
    let pgid = child.id() as i32;
    let waited = Instant::now();
    while !marker.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the writer never reached the middle of its transaction"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL the writer (and its `sleep`) mid-transaction.
    let pg = rustix::process::Pid::from_raw(pgid).expect("pid");
    rustix::process::kill_process_group(pg, rustix::process::Signal::KILL).expect("kill");
    let mut child = child;
    let _ = child.wait();
    std::fs::remove_file(&script_file).expect("rm");

    let journal = src.join("app.db-journal");
    assert!(
        std::fs::metadata(&journal).expect("hot journal").len() > 0,
        "no hot journal left"
    );
    assert_ne!(
        std::fs::read(&db).expect("read"),
        committed_main,
        "the writer never spilled pages into the main file; the test proves nothing"
    );

    let before = snapshot(&src);
    let dest = sb.path().join("dest");
    run(tool(&sb).arg(&src).arg("--to").arg(&dest)).succeeds();
    assert_unchanged(&before, &src);
    let copy = dest.join("app.db");
    assert_eq!(integrity(&copy), "ok");
    assert_eq!(count(&copy, "committed"), 100);
    assert_eq!(count(&copy, "uncommitted"), 0);
    assert_eq!(count(&copy, "overwritten"), 0);
    assert_eq!(files(&dest), vec![PathBuf::from("app.db")]);
}

/// A truncated database with an intact header fails, is counted and
/// listed, and the earlier good copy under the final name stays as it was.
#[test]
fn bug14_a_truncated_database_fails_is_counted_and_keeps_the_previous_copy() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("good.db"), "g", 50);
    make_db(&src.join("sub/bad.db"), "b", 400);
    let dest = sb.path().join("dest");
    run(tool(&sb).arg(&src).arg("--to").arg(&dest)).succeeds();
    let previous = std::fs::read(dest.join("sub/bad.db")).expect("first copy");

    let bad = src.join("sub/bad.db");
    let len = std::fs::metadata(&bad).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&bad)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    drop(f);

    let before = snapshot(&src);
    let metrics = sb.path().join("m.prom");
    run(tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(&dest)
        .arg("--metrics-file")
        .arg(&metrics))
    .fails_with(3)
    .stderr_contains("sub/bad.db")
    .stderr_contains("truncated");
    assert_unchanged(&before, &src);
    assert_eq!(
        std::fs::read(dest.join("sub/bad.db")).expect("copy"),
        previous,
        "the previous good copy was touched"
    );
    assert_eq!(count(&dest.join("good.db"), "g"), 50);
    assert_eq!(
        files(&dest),
        vec![PathBuf::from("good.db"), PathBuf::from("sub/bad.db")],
        "a partial or scratch file was left behind"
    );
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("sqlite_dump_databases_ok"), Some(1.0));
    assert_eq!(m.get("sqlite_dump_databases_failed"), Some(1.0));
    assert_eq!(m.get("sqlite_dump_exit_code"), Some(3.0));
}

/// A truncated database seen for the first time: no file at all under
/// its final name.
#[test]
fn a_truncated_database_never_gets_a_final_name() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("ok.db"), "o", 10);
    let bad = src.join("cut.sqlite");
    make_db(&bad, "c", 400);
    let bytes = std::fs::read(&bad).expect("read");
    // Cut in the middle of a page, header intact.
    std::fs::write(&bad, &bytes[..bytes.len() / 3 + 123]).expect("write");
    let dest = sb.path().join("dest");
    let r = run(tool(&sb).arg(&src).arg("--to").arg(&dest).arg("--json"));
    r.fails_with(3).stderr_contains("cut.sqlite");
    assert!(!dest.join("cut.sqlite").exists());
    assert_eq!(files(&dest), vec![PathBuf::from("ok.db")]);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(out["ok"], 1);
    assert_eq!(out["failed"], 1);
    let failed: Vec<_> = out["databases"]
        .as_array()
        .expect("databases")
        .iter()
        .filter(|d| d["result"] == "failed")
        .map(|d| d["path"].as_str().expect("path").to_owned())
        .collect();
    assert_eq!(failed, vec!["cut.sqlite".to_owned()]);
}

/// Discovery: by header at any depth, whatever the name; not a file that
/// merely ends in `.db`; never through a symlink; hostile names copied as
/// plain names (bug 14: they were spliced into a URI and a dot-command).
#[test]
fn bug14_the_tree_is_searched_by_header_at_any_depth_without_following_symlinks() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    let outside = sb.mkdir("outside");
    make_db(&outside.join("secret.db"), "secret", 5);
    make_db(&outside.join("dir/secret2.db"), "secret", 5);
    std::os::unix::fs::symlink(outside.join("secret.db"), src.join("link.db")).expect("ln");
    std::os::unix::fs::symlink(outside.join("dir"), src.join("linkdir")).expect("ln");
    std::fs::write(src.join("notes.db"), "just text, not SQLite\n").expect("write");
    std::fs::write(src.join("tiny.sqlite"), "").expect("write");
    let names: Vec<PathBuf> = vec![
        PathBuf::from("a/b/c/d/e/f/g/h/deep.db"),
        PathBuf::from("no-extension"),
        PathBuf::from("q?mode=memory&cache=shared.db"),
        PathBuf::from("frag#ment.db"),
        PathBuf::from(std::ffi::OsStr::from_bytes(b"new\nline.db")),
        PathBuf::from("file:uri.db"),
        PathBuf::from(std::ffi::OsStr::from_bytes(b"latin1-\xe9.db")),
        PathBuf::from("it's \"quoted\".db"),
    ];
    for (i, n) in names.iter().enumerate() {
        make_db(&src.join(n), &format!("row{i}"), 3);
    }
    // A -wal sidecar that is a symlink to a file outside is not followed.
    std::fs::write(outside.join("foreign-wal"), b"not ours").expect("write");
    std::os::unix::fs::symlink(outside.join("foreign-wal"), src.join("frag#ment.db-wal"))
        .expect("ln");
    let before = snapshot(&src);
    let dest = sb.path().join("dest");
    let metrics = sb.path().join("m.prom");
    run(tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(&dest)
        .arg("--metrics-file")
        .arg(&metrics))
    .succeeds()
    .stderr_contains("frag#ment.db-wal is a symlink, not followed");
    assert_unchanged(&before, &src);
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(files(&dest), expected);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(count(&dest.join(n), &format!("row{i}")), 3, "{n:?}");
    }
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("sqlite_dump_databases_ok"), Some(names.len() as f64));
    assert_eq!(m.get("sqlite_dump_databases_failed"), Some(0.0));
    // The three symlinks.
    assert_eq!(m.get("sqlite_dump_skipped"), Some(3.0));
}

/// `--dry-run` lists what it found and writes nothing.
#[test]
fn dry_run_lists_and_writes_nothing() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("x/one.db"), "a", 1);
    make_db(&src.join("two.db"), "a", 1);
    let dest = sb.path().join("dest");
    let r = run(tool(&sb).arg(&src).arg("--to").arg(&dest).arg("--dry-run"));
    r.succeeds();
    assert_eq!(r.stdout, "two.db\nx/one.db\n");
    assert!(!dest.exists());
}

/// Each written file goes into the ledger relative to --ledger-root (bug
/// 14: sqlite-backup never entered the manifest).
#[test]
fn bug14_written_files_enter_the_ledger() {
    let sb = Sandbox::new();
    let src = sb.mkdir("pvc-data/2026-W48");
    make_db(&src.join("ns/pvc/a.db"), "a", 2);
    make_db(
        &src.join(std::ffi::OsStr::from_bytes(b"ns/pvc/b\nc.db")),
        "b",
        2,
    );
    std::fs::write(src.join("ns/pvc/plain.txt"), "x").expect("write");
    let root = sb.path();
    let ledger = root.join(".changed-files");
    run(tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(root.join("sqlite-backup/2026-W48"))
        .arg("--ledger")
        .arg(&ledger)
        .arg("--ledger-root")
        .arg(root))
    .succeeds();
    let entries = Ledger::new(&ledger, PathKind::Relative)
        .read()
        .expect("ledger")
        .entries;
    let mut got: Vec<PathBuf> = entries;
    got.sort();
    assert_eq!(
        got,
        vec![
            PathBuf::from("sqlite-backup/2026-W48/ns/pvc/a.db"),
            PathBuf::from(std::ffi::OsStr::from_bytes(
                b"sqlite-backup/2026-W48/ns/pvc/b\nc.db"
            )),
        ]
    );
    for e in &got {
        assert!(root.join(e).is_file(), "{e:?} not written");
    }
}

/// A database that cannot be done in its time budget fails and is counted.
#[test]
fn the_per_database_timeout_fails_the_database() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("slow.db"), "s", 10);
    let dest = sb.path().join("dest");
    run(tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(&dest)
        .arg("--timeout-per-db")
        .arg("0s"))
    .fails_with(3)
    .stderr_contains("timed out");
    assert!(files(&dest).is_empty());
}

/// Leftovers of a killed run (a `.partial`, a scratch directory) are
/// cleaned up by the next run, which then succeeds.
#[test]
fn leftovers_of_a_killed_run_are_cleaned() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("d/x.db"), "x", 5);
    let dest = sb.mkdir("dest");
    std::fs::create_dir_all(dest.join("d")).expect("mkdir");
    std::fs::write(dest.join("d/x.db.partial"), "half a copy").expect("write");
    std::fs::write(dest.join("d/x.db.partial-journal"), "junk").expect("write");
    std::fs::create_dir_all(dest.join(".sqlite-dump-scratch.AbCdEf/0")).expect("mkdir");
    std::fs::write(dest.join(".sqlite-dump-scratch.AbCdEf/0/db"), "x").expect("write");
    run(tool(&sb).arg(&src).arg("--to").arg(&dest)).succeeds();
    assert_eq!(files(&dest), vec![PathBuf::from("d/x.db")]);
    assert_eq!(count(&dest.join("d/x.db"), "x"), 5);
}

/// Bad input: one clear line naming the input, exit 2 (5 for a missing source).
#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    run(tool(&sb).arg(&src).arg("--to").arg(src.join("inside")))
        .fails_with(2)
        .stderr_contains("overlap");
    assert!(!src.join("inside").exists(), "wrote into the source");
    run(tool(&sb)
        .arg(sb.path().join("missing"))
        .arg("--to")
        .arg(sb.path().join("d")))
    .fails_with(5)
    .stderr_contains("missing");
    // A run that stopped early reports its exit code, never "0 failed".
    let metrics = sb.path().join("early.prom");
    run(tool(&sb)
        .arg(sb.path().join("missing"))
        .arg("--to")
        .arg(sb.path().join("d"))
        .arg("--metrics-file")
        .arg(&metrics))
    .fails_with(5);
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("sqlite_dump_exit_code"), Some(5.0));
    assert_eq!(m.get("sqlite_dump_databases_failed"), None);
    // Without --to the copies go to BACKUP_ROOT/sqlite-backup/<week>: a
    // BACKUP_ROOT without the identity marker refuses (exit 5).
    run(tool(&sb)
        .arg(&src)
        .env("BACKUP_ROOT", "/nonexistent-backup-root"))
    .fails_with(5)
    .stderr_contains("/nonexistent-backup-root/sqlite-backup/");
    run(tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(sb.path().join("d"))
        .arg("--timeout-per-db")
        .arg("soon"))
    .fails_with(2)
    .stderr_contains("soon");
    run(tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(sb.path().join("d"))
        .arg("--ledger")
        .arg(sb.path().join("l"))
        .arg("--ledger-root")
        .arg("/nonexistent-root-for-test"))
    .fails_with(2)
    .stderr_contains("not under --ledger-root");
}

/// A second instance while one runs exits 4 (busy).
#[test]
fn a_second_instance_is_busy() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("a.db"), "a", 1);
    let _held = backup_core::lock::acquire_in(&sb.lock_dir(), "sqlite-dump").expect("lock");
    run(tool(&sb).arg(&src).arg("--to").arg(sb.path().join("d"))).fails_with(4);
}

/// A filesystem mounted inside the source is not entered (a private mount
/// namespace via `unshare -m`, so the mount never reaches the host).
#[test]
fn another_filesystem_inside_the_source_is_not_entered() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("here.db"), "h", 1);
    std::fs::create_dir(src.join("mnt")).expect("mkdir");
    let db = sb.path().join("there.db");
    make_db(&db, "t", 1);
    let dest = sb.path().join("dest");
    backup_tests::harness::init_backup_root(sb.path());
    let script = r#"mount --make-rprivate / && mount -t tmpfs tmpfs "$1/mnt" && cp "$2" "$1/mnt/there.db" && exec "$3" "$1" --to "$4" --json"#;
    let r = run(std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&src)
        .arg(&db)
        .arg(env!("CARGO_BIN_EXE_sqlite-dump"))
        .arg(&dest)
        .env("BACKUP_LOCK_DIR", sb.lock_dir())
        .env("ALLOW_UNMOUNTED_ROOT", "1"));
    r.succeeds();
    assert_eq!(files(&dest), vec![PathBuf::from("here.db")]);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(out["skipped_entries"][0]["path"], "mnt");
    assert!(
        Path::new(&src.join("mnt"))
            .read_dir()
            .expect("ls")
            .next()
            .is_none()
    );
}

/// A source whose pages are damaged (header intact, size right) fails the
/// integrity check of its copy: nothing under the final name.
#[test]
fn a_corrupted_database_fails_the_integrity_check() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("fine.db"), "f", 3);
    let bad = src.join("damaged.db");
    make_db(&bad, "d", 400);
    corrupt(&bad);
    let dest = sb.path().join("dest");
    run(tool(&sb).arg(&src).arg("--to").arg(&dest))
        .fails_with(3)
        .stderr_contains("damaged.db");
    assert_eq!(files(&dest), vec![PathBuf::from("fine.db")]);
}

/// A rollback journal ends with a super-journal record when it belongs to
/// a multi-database commit; replaying it, SQLite opens that absolute path
/// and deletes it. A tenant writes those bytes: a crafted `-journal` beside
/// its database made this root process delete a file of the host (found
/// by audit; before the fix the run exited 0 and the victim was gone). The
/// database now fails, counted, and nothing outside DEST is touched.
#[test]
fn a_journal_naming_a_super_journal_never_deletes_a_host_file() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("fine.db"), "f", 3);
    make_db(&src.join("evil/app.db"), "e", 3);
    let victim = sb.write("host-file-of-value", "must survive");
    let name = victim.as_os_str().as_bytes();
    // Journal header (magic, zeroed fields: no page records) and the
    // super-journal record SQLite reads from the end of the file:
    // u32 lock page, name, u32 length, u32 byte-sum checksum, magic.
    const MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
    let mut j = MAGIC.to_vec();
    j.extend_from_slice(&[0u8; 20]);
    j.extend_from_slice(&0u32.to_be_bytes());
    j.extend_from_slice(name);
    j.extend_from_slice(&(name.len() as u32).to_be_bytes());
    let sum = name.iter().fold(0u32, |s, b| s.wrapping_add(u32::from(*b)));
    j.extend_from_slice(&sum.to_be_bytes());
    j.extend_from_slice(&MAGIC);
    std::fs::write(src.join("evil/app.db-journal"), &j).expect("journal");

    let before = snapshot(&src);
    let dest = sb.path().join("dest");
    run(tool(&sb).arg(&src).arg("--to").arg(&dest))
        .fails_with(3)
        .stderr_contains("evil/app.db")
        .stderr_contains("super-journal");
    assert_eq!(
        std::fs::read(&victim).expect("the host file was deleted"),
        b"must survive"
    );
    assert_unchanged(&before, &src);
    assert_eq!(files(&dest), vec![PathBuf::from("fine.db")]);
    assert_eq!(count(&dest.join("fine.db"), "f"), 3);
}

//! `sqlite-dump check DB...`: integrity_check of live databases, read-only.

mod common;

use backup_core::metrics::Metrics;
use backup_tests::harness::Sandbox;
use common::*;
use rusqlite::Connection;

#[test]
fn a_good_and_a_corrupted_database() {
    let sb = Sandbox::new();
    let good = sb.path().join("vault/db.sqlite3");
    let bad = sb.path().join("other/broken.db");
    make_db(&good, "g", 50);
    make_db(&bad, "b", 400);
    corrupt(&bad);
    let metrics = sb.path().join("check.prom");
    let before = std::fs::read(&bad).expect("read");
    let r = run(tool(&sb)
        .arg("check")
        .arg(&good)
        .arg(&bad)
        .arg("--json")
        .arg("--metrics-file")
        .arg(&metrics));
    r.fails_with(3).stderr_contains("broken.db");
    assert_eq!(
        std::fs::read(&bad).expect("read"),
        before,
        "check wrote to the database"
    );
    let m = Metrics::read(&metrics).expect("metrics");
    let g = good.display().to_string();
    let b = bad.display().to_string();
    assert_eq!(metric(&m, "sqlite_check_ok", &[("db", &g)]), Some(1.0));
    assert_eq!(metric(&m, "sqlite_check_ok", &[("db", &b)]), Some(0.0));
    assert!(metric(&m, "sqlite_check_timestamp_seconds", &[("db", &b)]).is_some_and(|t| t > 1.7e9));
    assert_eq!(m.get("sqlite_check_failed"), Some(1.0));
    let out: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(out["failed"], 1);
    assert_eq!(out["ok"], 1);

    let metrics2 = sb.path().join("good.prom");
    run(tool(&sb)
        .arg("check")
        .arg(&good)
        .arg("--metrics-file")
        .arg(&metrics2))
    .succeeds();
    let m = Metrics::read(&metrics2).expect("metrics");
    assert_eq!(metric(&m, "sqlite_check_ok", &[("db", &g)]), Some(1.0));
    assert_eq!(m.get("sqlite_check_failed"), Some(0.0));
}

/// The Vaultwarden case: a live WAL database with a writer holding it open
/// and rows not yet checkpointed. The check reads it without disturbing
/// the writer, which can keep committing afterwards.
#[test]
fn a_live_wal_database_is_checked_while_open() {
    let sb = Sandbox::new();
    let db = sb.path().join("data/db.sqlite3");
    std::fs::create_dir_all(db.parent().expect("parent")).expect("mkdir");
    let c = Connection::open(&db).expect("open");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, pad BLOB);",
    )
    .expect("schema");
    insert(&c, "live", 200);
    run(tool(&sb).arg("check").arg(&db)).succeeds();
    insert(&c, "after", 10);
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 210);
}

/// Not a database, or missing: a failure naming the file, not a crash.
#[test]
fn a_file_that_is_not_a_database_fails_the_check() {
    let sb = Sandbox::new();
    let txt = sb.write("notes.db", "hello");
    run(tool(&sb)
        .arg("check")
        .arg(&txt)
        .arg(sb.path().join("missing.db")))
    .fails_with(3)
    .stderr_contains("notes.db")
    .stderr_contains("not an SQLite 3 database")
    .stderr_contains("missing.db");
    run(tool(&sb).arg("check")).fails_with(2);
}

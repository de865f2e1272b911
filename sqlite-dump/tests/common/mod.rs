//! Helpers shared by the sqlite-dump integration tests (real SQLite via
//! rusqlite and the sqlite3 CLI; no emulators).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::metrics::Metrics;
use backup_tests::harness::{Run, Sandbox};
use rusqlite::Connection;

/// The command, with the sandbox as the backup root its DEST_DIRs are in:
/// the sandbox gets the identity marker `offsite-sync init --local` writes.
pub fn tool(sb: &Sandbox) -> Command {
    backup_tests::harness::init_backup_root(sb.path());
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlite-dump"));
    c.env("BACKUP_LOCK_DIR", sb.lock_dir())
        .env("BACKUP_PIPELINE_CONFIG", sb.config_path())
        .env("ALLOW_UNMOUNTED_ROOT", "1")
        .env_remove("JOURNAL_STREAM")
        .env_remove("METRICS_FILE");
    c
}

pub fn run(cmd: &mut Command) -> Run {
    Run::of(cmd)
}

/// A rollback-journal database with `rows` rows tagged `tag`.
pub fn make_db(path: &Path, tag: &str, rows: i64) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let c = Connection::open(path).expect("open");
    c.execute_batch(
        "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, pad BLOB);",
    )
    .expect("schema");
    insert(&c, tag, rows);
}

pub fn insert(c: &Connection, tag: &str, rows: i64) {
    c.execute(
        "INSERT INTO t(tag, pad) WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x < ?2) SELECT ?1, randomblob(200) FROM n",
        rusqlite::params![tag, rows],
    )
    .expect("insert");
}

/// Rows with `tag` in a database (opened read-only).
pub fn count(path: &Path, tag: &str) -> i64 {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open copy");
    c.query_row("SELECT count(*) FROM t WHERE tag = ?1", [tag], |r| r.get(0))
        .expect("count")
}

pub fn integrity(path: &Path) -> String {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open copy");
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// Every entry under `dir`: (kind, content or link target, mtime ns, mode).
/// Taken before and after a run to show the source was not written to.
pub type Snapshot = BTreeMap<PathBuf, (char, Vec<u8>, i128, u32)>;

pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        let rel = p.strip_prefix(root).expect("rel").to_path_buf();
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&p).expect("readlink");
            out.insert(
                rel,
                (
                    'l',
                    t.into_os_string().into_encoded_bytes(),
                    mtime,
                    m.mode(),
                ),
            );
        } else if m.is_dir() {
            out.insert(rel, ('d', Vec::new(), mtime, m.mode()));
            walk(root, &p, out);
        } else {
            out.insert(
                rel,
                ('f', std::fs::read(&p).expect("read"), mtime, m.mode()),
            );
        }
    }
}

#[track_caller]
pub fn assert_unchanged(before: &Snapshot, dir: &Path) {
    let after = snapshot(dir);
    let names = |s: &Snapshot| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(before),
        names(&after),
        "entries of the source changed"
    );
    for (k, v) in before {
        assert!(
            after[k] == *v,
            "source entry {} changed (bytes, mtime or mode)",
            k.display()
        );
    }
}

/// Every file under `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir)
        .into_iter()
        .filter(|(_, v)| v.0 != 'd')
        .map(|(k, _)| k)
        .collect()
}

/// A labelled metric sample's value.
pub fn metric(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.families()
        .iter()
        .find(|f| f.name == name)?
        .samples
        .iter()
        .find(|s| {
            s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Overwrite the middle of a b-tree page with garbage (header left intact).
pub fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let page = 4096;
    assert!(bytes.len() > 6 * page, "database too small to corrupt");
    for b in &mut bytes[3 * page + 8..3 * page + 1500] {
        *b = 0xA5;
    }
    std::fs::write(path, bytes).expect("write");
}

//! Contract 13 on the backup disk: sqlite-dump writes DEST_DIR only on a
//! backup root carrying its identity marker (found upwards on the same
//! filesystem), and (contract 12) only while it still does: a disk
//! unmounted mid-run leaves nothing on the bare mountpoint beneath and
//! nothing ledgered for a copy that did not land.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backup_tests::harness::{Run, Sandbox, must, tree_of};
use common::*;

/// The command without the sandbox marker `common::tool` gives.
fn bare_tool(sb: &Sandbox) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlite-dump"));
    c.env("BACKUP_LOCK_DIR", sb.lock_dir())
        .env("BACKUP_PIPELINE_CONFIG", sb.config_path())
        .env("ALLOW_UNMOUNTED_ROOT", "1")
        .env_remove("JOURNAL_STREAM")
        .env_remove("METRICS_FILE");
    c
}

#[test]
fn a_destination_on_a_root_without_its_marker_is_refused_and_nothing_is_created() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("app.db"), "a", 10);
    let root = sb.mkdir("backup");
    let dest = root.join("sqlite-backup/2026-W48");
    for extra in [&[][..], &["--dry-run"][..]] {
        Run::of(
            bare_tool(&sb)
                .arg(&src)
                .arg("--to")
                .arg(&dest)
                .arg("--ledger")
                .arg(root.join(".changed-files"))
                .arg("--ledger-root")
                .arg(&root)
                .args(extra),
        )
        .fails_with(5)
        .stderr_contains(&dest.display().to_string())
        .stderr_contains("offsite-sync init --local");
        assert_eq!(tree_of(&root), Vec::<String>::new(), "{extra:?}");
    }
    // Initialised once, the same tree is accepted.
    backup_tests::harness::init_backup_root(&root);
    Run::of(bare_tool(&sb).arg(&src).arg("--to").arg(&dest)).succeeds();
    assert_eq!(count(&dest.join("app.db"), "a"), 10);
}

#[test]
fn a_destination_on_the_initialised_backup_disk_is_accepted() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    make_db(&src.join("app.db"), "a", 10);
    let root = sb.mount_backup_disk("backup", 64 << 20);
    let dest = root.join("sqlite-backup/2026-W48");
    Run::of(
        bare_tool(&sb)
            .arg(&src)
            .arg("--to")
            .arg(&dest)
            .arg("--ledger")
            .arg(root.join(".changed-files"))
            .arg("--ledger-root")
            .arg(&root),
    )
    .succeeds();
    assert_eq!(count(&dest.join("app.db"), "a"), 10);
    let ledger = std::fs::read_to_string(root.join(".changed-files")).expect("ledger");
    assert_eq!(ledger, "sqlite-backup/2026-W48/app.db\n");
}

/// A database of about `mib` MiB of random blobs.
fn big_db(path: &Path, mib: u32) {
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch(&format!(
        "CREATE TABLE t(b BLOB);
         WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {mib})
         INSERT INTO t SELECT randomblob(1048576) FROM n;"
    ))
    .expect("fill");
}

/// The backup disk is detached (`umount -l`, as an operator or a failing
/// USB link does) while the first database is being copied: no later
/// database is started, nothing lands on the bare mountpoint beneath, and
/// the disk's ledger names only copies that are on the disk.
#[test]
fn a_backup_disk_unmounted_mid_run_gets_nothing_more_and_the_bare_mountpoint_nothing() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src");
    for name in ["a.db", "b.db", "c.db", "d.db"] {
        big_db(&src.join(name), 24);
    }
    let root = sb.mount_backup_disk("backup", 512 << 20);
    let dest = root.join("sqlite-backup/2026-W48");
    let mut child = bare_tool(&sb)
        .arg(&src)
        .arg("--to")
        .arg(&dest)
        .arg("--ledger")
        .arg(root.join(".changed-files"))
        .arg("--ledger-root")
        .arg(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The run's scratch directory on the disk: the first copy is under way.
    let start = Instant::now();
    let busy = || {
        std::fs::read_dir(&dest).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".sqlite-dump-scratch.")
            })
        })
    };
    while !busy() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sqlite-dump never started copying"
        );
        assert!(child.try_wait().expect("wait").is_none(), "ended too soon");
        std::thread::sleep(Duration::from_millis(5));
    }
    must(Command::new("umount").arg("-l").arg(&root));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the fault landed after the run ended"
    );
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        tree_of(&root),
        Vec::<String>::new(),
        "written on the bare mountpoint:\n{stderr}"
    );
    assert!(stderr.contains("since the run started"), "{stderr}");

    // The disk itself: what is ledgered there is there, complete.
    let disk = sb.mkdir("disk-again");
    must(
        Command::new("mount")
            .args(["-o", "loop,ro", "-t", "ext4"])
            .arg(sb.path().join("backup.ext4"))
            .arg(&disk),
    );
    let ledger = std::fs::read_to_string(disk.join(".changed-files")).unwrap_or_default();
    let present: Vec<bool> = ledger.lines().map(|l| disk.join(l).is_file()).collect();
    let copies = ["a.db", "b.db", "c.db", "d.db"]
        .iter()
        .filter(|n| disk.join("sqlite-backup/2026-W48").join(n).is_file())
        .count();
    must(Command::new("umount").arg(&disk));
    assert!(present.iter().all(|p| *p), "ledgered but absent: {ledger}");
    assert!(
        copies < 4,
        "every database was copied: the fault came too late"
    );
}

//! `offsite-sync coverage` believes a leg only from its own record: the
//! direct route from nfs-track's state (written here by nfs-track's own
//! state writer), the backup-disk route from nfs-mirror's coverage record
//! (core::mirror_record, the file nfs-mirror writes). Each way a leg can
//! stop carrying a directory is reported as uncovered, naming it.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use backup_core::mirror_record::Record;
use common::World;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn canon(p: &Path) -> Vec<u8> {
    std::fs::canonicalize(p)
        .expect("canon")
        .as_os_str()
        .as_bytes()
        .to_vec()
}

fn tracker(w: &World, ledger: &Path, roots: &[&Path], at: SystemTime) {
    let roots: Vec<_> = roots
        .iter()
        .map(|r| std::fs::canonicalize(r).expect("root"))
        .collect();
    nfs_track::state::State::new(&w.tracker_state, ledger, &roots)
        .stamp(at)
        .expect("state");
}

#[test]
fn the_direct_route_is_covered_only_while_nfs_track_watches_its_root_into_step_2s_ledger() {
    let w = World::new();
    std::fs::create_dir_all(w.nfs.join("immich")).expect("mkdir");
    std::fs::create_dir_all(w.nfs_ssd.join("immich")).expect("mkdir");
    let ssd_immich = format!("uncovered: {}/immich", w.nfs_ssd.display());
    w.run("coverage", &[]).succeeds();

    // The tracker watches only the main root.
    let ledger = w.root.join(".nfs-changes.log");
    tracker(&w, &ledger, &[&w.nfs], SystemTime::now());
    let r = w.run("coverage", &[]);
    r.fails_with(3)
        .stderr_contains(&ssd_immich)
        .stderr_contains("nfs-track does not watch");
    assert_eq!(r.stderr.matches("uncovered:").count(), 1, "{}", r.stderr);

    // It logs somewhere step 2 never reads.
    tracker(
        &w,
        &w.sb.path().join("elsewhere.log"),
        &[&w.nfs, &w.nfs_ssd],
        SystemTime::now(),
    );
    w.run("coverage", &[])
        .fails_with(3)
        .stderr_contains(&ssd_immich)
        .stderr_contains("step 2 reads");

    // It logs another route (a unit edited to `--route never`).
    let roots: Vec<_> = [&w.nfs, &w.nfs_ssd]
        .iter()
        .map(|r| std::fs::canonicalize(r).expect("root"))
        .collect();
    nfs_track::state::State::new(&w.tracker_state, &ledger, &roots)
        .with_route("never")
        .stamp(SystemTime::now())
        .expect("state");
    w.run("coverage", &[])
        .fails_with(3)
        .stderr_contains(&ssd_immich)
        .stderr_contains("nfs-track logs route never");

    // It stopped three days ago.
    tracker(
        &w,
        &ledger,
        &[&w.nfs, &w.nfs_ssd],
        SystemTime::now() - Duration::from_secs(3 * 86_400),
    );
    w.run("coverage", &[])
        .fails_with(3)
        .stderr_contains(&ssd_immich)
        .stderr_contains("last recorded watching 72h ago");

    // It never ran.
    std::fs::remove_file(w.tracker_state.join("last-watching")).expect("rm");
    w.run("coverage", &[])
        .fails_with(3)
        .stderr_contains("nfs-track has recorded no watch");
}

#[test]
fn the_backup_disk_route_is_covered_only_by_a_recent_mirror_of_the_directory() {
    let w = World::new();
    for d in ["nextcloud", "calibre", "paperless"] {
        std::fs::create_dir_all(w.nfs.join(d)).expect("mkdir");
    }
    let root = canon(&w.nfs);
    let names = |v: &[&str]| v.iter().map(|n| n.as_bytes().to_vec()).collect::<Vec<_>>();
    // Last night nfs-mirror saw nextcloud and calibre and mirrored only
    // nextcloud; paperless appeared since.
    let mut rec = Record::default();
    rec.update(
        &root,
        now() - 3600,
        &names(&["nextcloud", "calibre"]),
        &names(&["nextcloud"]),
    );
    rec.save(&w.root).expect("record");
    let r = w.run("coverage", &["--json"]);
    r.fails_with(3)
        .stderr_contains(&format!("uncovered: {}/calibre", w.nfs.display()))
        .stderr_contains(&format!("pending: {}/paperless", w.nfs.display()));
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let states: Vec<(String, String)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("n").into(),
                r["state"].as_str().expect("s").into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("calibre".into(), "uncovered".into()),
            ("nextcloud".into(), "covered".into()),
            ("paperless".into(), "pending".into()),
        ]
    );

    // Every later run fails nextcloud: uncovered from the first run that
    // did not mirror it, whatever --coverage-max-age allows.
    let mut rec = Record::default();
    rec.update(
        &root,
        now() - 4 * 86_400,
        &names(&["nextcloud"]),
        &names(&["nextcloud"]),
    );
    rec.update(
        &root,
        now() - 600,
        &names(&["nextcloud", "calibre", "paperless"]),
        &names(&["calibre", "paperless"]),
    );
    rec.save(&w.root).expect("record");
    w.run("coverage", &[])
        .fails_with(3)
        .stderr_contains(&format!("uncovered: {}/nextcloud", w.nfs.display()))
        .stderr_contains("did not mirror it")
        .stderr_contains("last mirrored 96h ago");
    w.run("coverage", &["--coverage-max-age", "5d"])
        .fails_with(3)
        .stderr_contains("did not mirror it");

    // nfs-mirror stopped running: its whole record goes stale, pending
    // directories included.
    let mut rec = Record::default();
    rec.update(
        &root,
        now() - 3 * 86_400,
        &names(&["nextcloud"]),
        &names(&["nextcloud"]),
    );
    rec.save(&w.root).expect("record");
    let r = w.run("coverage", &[]);
    r.fails_with(3).stderr_contains("nfs-mirror last mirrored");
    assert_eq!(r.stderr.matches("uncovered:").count(), 3, "{}", r.stderr);

    // An unmounted root under --require-mountpoint: its directories cannot
    // be seen, so it is reported rather than counted as empty.
    w.run("coverage", &["--require-mountpoint"])
        .fails_with(3)
        .stderr_contains("not a mountpoint");
}

/// A directory the night's nfs-mirror run refused (its source emptied,
/// the mirror kept) is uncovered that night, not covered by the record of
/// the night before. Before: `coverage` said covered, exit 0, for two
/// more days (the record's age), while nfs-mirror mirrored nothing of it.
#[test]
fn a_directory_the_last_nfs_mirror_run_refused_is_uncovered_at_once() {
    let w = World::new();
    for i in 0..5 {
        World::put(&w.nfs, format!("docs/d{i}").as_bytes(), b"d");
    }
    let mirror = || {
        backup_tests::harness::Run::of(
            w.sb.cmd("nfs-mirror")
                .arg("--source")
                .arg(&w.nfs)
                .arg("--dest")
                .arg(&w.root)
                .arg("--skip-list")
                .arg(&w.skip),
        )
    };
    mirror().succeeds();
    w.run("coverage", &[]).succeeds();
    // The record counts in seconds: the next run is a later one.
    std::thread::sleep(Duration::from_millis(1100));
    for i in 0..5 {
        std::fs::remove_file(w.nfs.join(format!("docs/d{i}"))).expect("rm");
    }
    mirror().fails_with(5).stderr_contains("is empty");
    assert_eq!(World::files(&w.root.join("docs")).len(), 5, "mirror kept");
    let r = w.run("coverage", &[]);
    println!("{}", r.stderr);
    r.fails_with(3)
        .stderr_contains(&format!("uncovered: {}/docs", w.nfs.display()))
        .stderr_contains("did not mirror it");
    // Mirrored again: covered again.
    for i in 0..5 {
        World::put(&w.nfs, format!("docs/d{i}").as_bytes(), b"d");
    }
    mirror().succeeds();
    w.run("coverage", &[]).succeeds();
}

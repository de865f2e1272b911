//! A command pvc-copy needs that is not installed ends the run with exit 5
//! ("command absent") and names it (issue 6), instead of failing each PVC
//! in turn (exit 1 or 3). PATH holds the emulated host's commands and the
//! real ones pvc-copy runs, minus one.

mod common;

use backup_tests::harness::Run;
use backup_tests::without::PathWithout;
use common::{Env, NOW, WEEK};

/// The real programs a copy runs besides the emulated host's.
const REAL: &[&str] = &["mount", "umount", "rsync", "cp", "losetup"];

fn env() -> Env {
    let e = Env::new();
    e.pvc(
        "vm-101-pvc-0a01",
        "app",
        "data",
        &[("a.txt", b"hello"), ("d/b.txt", b"world")],
    );
    e
}

fn run_without(e: &Env, missing: &str) -> Run {
    let path = PathWithout::new(missing, Some(e.host.bin_dir()), REAL);
    let mut c = e.cmd(NOW);
    c.env("PATH", path.path());
    Run::of(&mut c)
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("pvc-copy: error:"))
        .collect()
}

#[test]
fn no_rsync_is_refused_before_anything_is_mounted() {
    let e = env();
    let r = run_without(&e, "rsync");
    r.fails_with(5);
    assert_eq!(
        error_lines(&r.stderr),
        ["pvc-copy: error: command absent: rsync (not found in PATH)"],
        "{}",
        r.stderr
    );
    assert!(!e.dest(WEEK, "app", "data").exists());
    e.assert_no_mounts();
}

#[test]
fn no_lvs_is_command_absent() {
    let e = env();
    let r = run_without(&e, "lvs");
    r.fails_with(5);
    assert_eq!(
        error_lines(&r.stderr),
        ["pvc-copy: error: command absent: lvs (not found in PATH)"],
        "{}",
        r.stderr
    );
}

#[test]
fn no_kubectl_copies_with_the_cache_then_exits_5() {
    let e = env();
    // A first run with kubectl writes the mapping cache.
    e.run(NOW, &[]).succeeds();
    let r = run_without(&e, "kubectl");
    r.fails_with(5).stderr_contains(
        "pvc-copy: error: command absent: kubectl (not found in PATH): PVC names came from the mapping cache",
    );
    // The PVC was copied again (by its cached name) before the exit 5.
    r.stderr_contains("kubectl failed (command absent: kubectl")
        .stderr_contains("app/data (vm-101-pvc-0a01): copied");
    assert!(e.dest(WEEK, "app", "data").join("a.txt").is_file());
}

#[test]
fn preflight_without_exportfs_is_command_absent() {
    let e = env();
    let exports = e.sb.write("exports", "/srv/nfs/x 10.0.0.0/24(rw)\n");
    let path = PathWithout::new("exportfs", None, &["systemctl"]);
    let r = Run::of(
        e.sb.cmd("pvc-copy")
            .env("PATH", path.path())
            .arg("preflight")
            .arg("--exports")
            .arg(&exports),
    );
    r.fails_with(5)
        .stderr_contains("pvc-copy: error: command absent: exportfs (not found in PATH)");
}

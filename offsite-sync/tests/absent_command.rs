//! rsync or ssh not installed ends offsite-sync with exit 5 ("command
//! absent") naming it (issue 6), before any step: a missing ssh only made
//! rsync exit 14, a missing rsync failed each step (exit 1).

mod common;

use backup_tests::harness::Run;
use backup_tests::without::PathWithout;
use common::World;

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("offsite-sync: error:"))
        .collect()
}

fn world() -> World {
    let w = World::with_nas();
    World::put(&w.root, b"pvc-data/a.txt", b"a");
    w.leg1()
        .append_paths([std::path::Path::new("pvc-data/a.txt")])
        .expect("ledger");
    w
}

#[test]
fn no_rsync_on_path_is_command_absent() {
    let w = world();
    let path = PathWithout::new("rsync", None, &["ssh"]);
    let mut c = w.cmd("all", &[]);
    c.env("PATH", path.path())
        .env_remove("RSYNC")
        .env_remove("SSH");
    let r = Run::of(&mut c);
    r.fails_with(5);
    assert_eq!(
        error_lines(&r.stderr),
        [
            "offsite-sync: error: step 1: command absent: rsync (not found in PATH)",
            "offsite-sync: error: step 2: command absent: rsync (not found in PATH)"
        ],
        "{}",
        r.stderr
    );
    // Nothing consumed: the entry waits for a run that can send it.
    assert_eq!(w.leg1().line_count().expect("ledger"), 1);
}

#[test]
fn no_ssh_is_command_absent() {
    let w = world();
    let mut c = w.cmd("step1", &[]);
    c.env("SSH", "/nonexistent/ssh");
    let r = Run::of(&mut c);
    r.fails_with(5);
    assert_eq!(
        error_lines(&r.stderr),
        ["offsite-sync: error: step 1: command absent: ssh (no such file: /nonexistent/ssh)"],
        "{}",
        r.stderr
    );
    assert_eq!(w.leg1().line_count().expect("ledger"), 1);
}

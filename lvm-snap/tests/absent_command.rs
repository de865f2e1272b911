//! A command lvm-snap needs that is not installed ends the run with exit 5
//! ("command absent") and one line naming it (issue 6), instead of exit 1
//! or a per-LV failure. PATH holds the emulated host's commands minus one.

mod common;

use backup_tests::without::PathWithout;
use common::{Host, T0, at};

const APP: &str = "vm-9999-pvc-0a01";
const DB: &str = "vm-9999-pvc-0b02";

fn host() -> Host {
    let h = Host::new();
    h.pvc(APP, "app", "data", &[("a.txt", b"app")]);
    h.pvc(DB, "dbaas", "mysql", &[("db", b"db")]);
    h
}

/// Every emulated command but `missing`, and the `cp` the emulator copies
/// LV images with.
fn path_without(h: &Host, missing: &str) -> PathWithout {
    PathWithout::new(missing, Some(h.emu.bin_dir()), &["cp"])
}

/// `lvm-snap create` with every emulated command on PATH but `missing`.
fn create_without(h: &Host, missing: &str) -> backup_tests::harness::Run {
    let path = path_without(h, missing);
    let mut c = h.cmd(&["create", &at(T0)]);
    c.env("PATH", path.path());
    backup_tests::harness::Run::of(&mut c)
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("lvm-snap: error:"))
        .collect()
}

#[test]
fn no_lvs_is_command_absent() {
    let h = host();
    let r = create_without(&h, "lvs");
    r.fails_with(5);
    assert_eq!(
        error_lines(&r.stderr),
        ["lvm-snap: error: reading the LVs of VG pve: command absent: lvs (not found in PATH)"],
        "{}",
        r.stderr
    );
}

#[test]
fn no_lvcreate_stops_at_the_first_lv_with_exit_5() {
    let h = host();
    let r = create_without(&h, "lvcreate");
    r.fails_with(5);
    assert_eq!(
        error_lines(&r.stderr),
        ["lvm-snap: error: command absent: lvcreate (not found in PATH)"],
        "{}",
        r.stderr
    );
}

#[test]
fn no_kubectl_still_snapshots_then_exits_5() {
    let h = host();
    let r = create_without(&h, "kubectl");
    r.fails_with(5).stderr_contains(
        "command absent: kubectl (not found in PATH): namespaces not known from kubectl (no mapping used)",
    );
    // Fail-open as when the API server is down: no PVC goes unsnapshotted.
    let snaps = h
        .lv_names()
        .into_iter()
        .filter(|n| n.contains("_snap_"))
        .count();
    assert_eq!(snaps, 2, "{:?}\n{}", h.lv_names(), r.stderr);
}

#[test]
fn no_lvremove_stops_prune_with_exit_5() {
    let h = host();
    // The newest snapshot of each PVC is always kept: take two.
    h.run(&["create", &at(T0)]).succeeds();
    let later = T0 + 30 * common::DAY;
    h.run(&["create", &at(later)]).succeeds();
    let path = path_without(&h, "lvremove");
    let mut c = h.cmd(&["prune", &at(later)]);
    c.env("PATH", path.path());
    let r = backup_tests::harness::Run::of(&mut c);
    r.fails_with(5);
    assert_eq!(
        error_lines(&r.stderr),
        ["lvm-snap: error: command absent: lvremove (not found in PATH)"],
        "{}",
        r.stderr
    );
}

//! `lvm-snap prune` and `list` against the emulated host (stands for: the
//! Proxmox host's LVM thin pool pve/data, reached through lvs/lvremove).

mod common;

use common::{DAY, Host, T0, at};

const A: &str = "vm-9999-pvc-0a01";
const B: &str = "vm-9999-pvc-0b02";
const TAG: &str = "backup-pipeline.lvm-snap";

fn name(origin: &str, kind: &str, t: i64) -> String {
    let d = chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0).expect("t");
    format!("{origin}_{kind}_{}", d.format("%Y%m%d_%H%M"))
}

struct Case {
    h: Host,
    exactly_3d: String,
    older: String,
    fresh: String,
    untagged_old: String,
    pre_restore_old: String,
    b_newest_old: String,
}

/// A: snapshots at exactly 3 days, 3 days + 1 minute, 1 hour; an untagged
/// old one (the shell script's); a 30-day-old pre-restore copy.
/// B: its only snapshot is 5 days old.
fn case() -> Case {
    let h = Host::new();
    h.pvc(A, "app", "data", &[("f", b"a")]);
    h.pvc(B, "app", "other", &[("f", b"b")]);
    let exactly_3d = name(A, "snap", T0 - 3 * DAY);
    let older = name(A, "snap", T0 - 3 * DAY - 60);
    let fresh = name(A, "snap", T0 - 3600);
    let untagged_old = name(A, "snap", T0 - 20 * DAY);
    let pre_restore_old = name(A, "pre_restore", T0 - 30 * DAY);
    let b_newest_old = name(B, "snap", T0 - 5 * DAY);
    for n in [&exactly_3d, &older, &fresh, &pre_restore_old] {
        h.emu.add_snapshot("pve", A, n, &[TAG]);
    }
    h.emu.add_snapshot("pve", A, &untagged_old, &[]);
    h.emu.add_snapshot("pve", B, &b_newest_old, &[TAG]);
    Case {
        h,
        exactly_3d,
        older,
        fresh,
        untagged_old,
        pre_restore_old,
        b_newest_old,
    }
}

fn decision<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v.as_array()
        .expect("array")
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no decision for {name} in {v:#}"))
}

#[test]
fn dry_run_json_gives_every_candidate_a_verdict_and_a_reason() {
    let c = case();
    let r = c.h.run(&["prune", "--dry-run", "--json", &at(T0)]);
    r.succeeds();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON on stdout");
    assert_eq!(v.as_array().expect("array").len(), 6, "{v:#}");
    let expect = [
        (&c.exactly_3d, true, "within the retention of 3 days"),
        (&c.older, false, "older than the retention of 3 days"),
        (&c.fresh, true, "within the retention"),
        (&c.untagged_old, true, "not tagged backup-pipeline.lvm-snap"),
        (&c.pre_restore_old, true, "kept until removed by hand"),
        (&c.b_newest_old, true, "newest snapshot of vm-9999-pvc-0b02"),
    ];
    for (n, keep, reason) in expect {
        let d = decision(&v, n);
        assert_eq!(d["keep"], keep, "{d:#}");
        assert!(
            d["reason"].as_str().expect("reason").contains(reason),
            "{d:#}"
        );
        assert_eq!(
            d["result"],
            if keep { "kept" } else { "would remove" },
            "{d:#}"
        );
    }
    assert_eq!(decision(&v, &c.older)["age_seconds"], 3 * DAY + 60);
    assert_eq!(decision(&v, &c.pre_restore_old)["kind"], "pre-restore");
    assert!(c.h.changing_calls().is_empty(), "dry run removed something");
}

/// Regression, docs/compatibility.md bugs 9 and 20: prune matched any `_snap_` or
/// `_pre_restore_` LV, including the pre-restore safety copy and untagged ones.
#[test]
fn prune_removes_only_what_the_decisions_drop() {
    let c = case();
    c.h.run(&["prune", &at(T0)]).succeeds();
    let names = c.h.lv_names();
    assert!(!names.contains(&c.older), "{names:?}");
    for keep in [
        &c.exactly_3d,
        &c.fresh,
        &c.untagged_old,
        &c.pre_restore_old,
        &c.b_newest_old,
    ] {
        assert!(names.contains(keep), "{keep} removed: {names:?}");
    }
    assert_eq!(
        c.h.emu.calls_of("lvremove"),
        vec![vec![
            "lvremove".to_string(),
            "-f".into(),
            "--".into(),
            format!("pve/{}", c.older)
        ]]
    );
    let m = c.h.metrics();
    assert_eq!(m.get("lvm_snapshot_pruned_total"), Some(1.0));
    assert_eq!(m.get("lvm_snapshot_prune_last_status"), Some(0.0));
    assert_eq!(
        m.get("lvm_snapshot_last_run_timestamp"),
        None,
        "create's metric"
    );

    // A pre-restore retention, when configured, applies to pre-restore copies only.
    c.h.run(&["prune", &at(T0), "--pre-restore-keep-days", "7"])
        .succeeds();
    assert!(!c.h.lv_names().contains(&c.pre_restore_old));
    assert!(c.h.lv_names().contains(&c.untagged_old));
}

#[test]
fn retention_is_configurable_and_zero_is_refused() {
    let c = case();
    let r =
        c.h.run(&["prune", "--dry-run", "--json", "--keep-days", "1", &at(T0)]);
    let v: serde_json::Value = serde_json::from_str(&r.succeeds().stdout).expect("json");
    assert_eq!(decision(&v, &c.exactly_3d)["keep"], false);
    c.h.run(&["prune", "--keep-days", "0", &at(T0)])
        .fails_with(2)
        .stderr_contains("0 days");
    assert!(c.h.changing_calls().is_empty());
    assert_eq!(
        c.h.metrics().get("lvm_snapshot_prune_last_status"),
        Some(2.0)
    );
}

#[test]
fn a_failed_removal_is_reported_and_the_rest_goes_on() {
    let c = case();
    let also_old = name(A, "snap", T0 - 4 * DAY);
    c.h.emu.add_snapshot("pve", A, &also_old, &[TAG]);
    c.h.emu.set_fail(
        &format!("lvremove {}", c.older),
        backup_tests::emu::FailRule::new(5, "  Logical volume pve/x in use."),
    );
    c.h.run(&["prune", &at(T0)])
        .fails_with(3)
        .stderr_contains(&c.older);
    assert!(!c.h.lv_names().contains(&also_old));
    let m = c.h.metrics();
    assert_eq!(m.get("lvm_snapshot_pruned_total"), Some(1.0));
    assert_eq!(m.get("lvm_snapshot_prune_failed"), Some(1.0));
    assert_eq!(m.get("lvm_snapshot_prune_last_status"), Some(1.0));
}

#[test]
fn list_shows_snapshots_with_age_and_kind() {
    let c = case();
    let r = c.h.run(&["list", "--json", &at(T0)]);
    let v: serde_json::Value = serde_json::from_str(&r.succeeds().stdout).expect("json");
    let rows = v.as_array().expect("array");
    assert_eq!(rows.len(), 6);
    let fresh = rows
        .iter()
        .find(|r| r["name"] == c.fresh.as_str())
        .expect("fresh");
    assert_eq!(fresh["origin"], A);
    assert_eq!(fresh["lv_origin"], A);
    assert_eq!(fresh["age_seconds"], 3600);
    assert_eq!(fresh["tagged"], true);
    assert!(fresh["lv_path"].as_str().expect("path").ends_with(&c.fresh));
    let table = c.h.run(&["list", &at(T0)]);
    table
        .succeeds()
        .stdout_contains("ORIGIN")
        .stdout_contains("1h0m")
        .stdout_contains("snapshot (foreign)")
        .stdout_contains("30d0h");
    let empty = Host::new();
    empty
        .run(&["list"])
        .succeeds()
        .stdout_contains("(no snapshots found)");
}

#[test]
fn pool_reports_both_figures() {
    let h = Host::new();
    h.emu.set_pool_usage("pve", "data", Some(40.0), Some(12.5));
    let r = h.run(&["pool"]);
    r.succeeds()
        .stdout_contains("data 40.00% used (60.00% free")
        .stdout_contains("metadata 12.50% used (87.50% free");
    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_thinpool_free_pct"), Some(60.0));
    assert_eq!(
        m.get("lvm_snapshot_thinpool_metadata_free_ratio"),
        Some(0.875)
    );
    h.run(&["pool", "--pool", "nosuchpool"])
        .fails_with(5)
        .stderr_contains("thin pool pve/nosuchpool not found");
}

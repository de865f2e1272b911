//! `lvm-snap create` against the emulated host (stands for: the Proxmox
//! host's LVM thin pool pve/data and the cluster's API server, reached only
//! through the lvs/lvcreate/kubectl command lines).

mod common;

use backup_tests::harness::Run;
use common::{DAY, Host, T0, at, sample};

const APP: &str = "vm-9999-pvc-0a01";
const DB: &str = "vm-9999-pvc-0b02";
const MON: &str = "vm-9999-pvc-0c03";

/// Three PVCs: app/data, dbaas/mysql, monitoring/prom; a VM disk; a foreign LV.
fn host() -> Host {
    let h = Host::new();
    h.pvc(APP, "app", "data", &[("a.txt", b"app")]);
    h.pvc(DB, "dbaas", "mysql", &[("db", b"db")]);
    h.pvc(MON, "monitoring", "prom", &[("tsdb", b"m")]);
    h.emu
        .add_thin_lv("pve", "data", "vm-100-disk-0", 4 << 20, &[]);
    h
}

fn snap(origin: &str, t: i64) -> String {
    let d = chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0).expect("t");
    format!("{origin}_snap_{}", d.format("%Y%m%d_%H%M"))
}

#[test]
fn kubectl_up_excluded_namespaces_are_skipped_and_the_cache_refreshed() {
    let h = host();
    h.run(&["create", &at(T0)]).succeeds();
    let s = snap(APP, T0);
    assert_eq!(s, "vm-9999-pvc-0a01_snap_20261128_0300");
    let lv = h.lv(&s).expect("snapshot of the app PVC");
    assert_eq!(lv.origin, APP);
    assert!(lv.tags.iter().any(|t| t == "backup-pipeline.lvm-snap"));
    assert!(
        lv.active && !lv.activation_skip,
        "created with -kn: mountable as is"
    );
    assert!(
        h.lv(&snap(DB, T0)).is_none(),
        "dbaas is excluded by default"
    );
    assert!(
        h.lv(&snap(MON, T0)).is_none(),
        "monitoring is excluded by default"
    );
    assert!(
        h.lv("vm-100-disk-0_snap_20261128_0300").is_none(),
        "not a PVC"
    );
    // The argument vector: -kn, our tag, -- before the operand.
    let creates = h.emu.calls_of("lvcreate");
    assert_eq!(
        creates,
        vec![vec![
            "lvcreate",
            "-s",
            "-kn",
            "--addtag",
            "backup-pipeline.lvm-snap",
            "-n",
            &s,
            "--",
            &format!("pve/{APP}"),
        ]]
    );
    // The cache is kubectl's PV list, including the excluded ones.
    let cache: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.cache_path()).expect("cache written"))
            .expect("cache is JSON");
    let handles: Vec<&str> = cache["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["spec"]["csi"]["volumeHandle"].as_str())
        .collect();
    assert!(handles.iter().any(|h| h.ends_with(DB)), "{handles:?}");

    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_created_total"), Some(1.0));
    assert_eq!(m.get("lvm_snapshot_failed_total"), Some(0.0));
    assert_eq!(m.get("lvm_snapshot_excluded"), Some(2.0));
    assert_eq!(m.get("lvm_snapshot_last_status"), Some(0.0));
    assert_eq!(m.get("lvm_snapshot_last_run_timestamp"), Some(T0 as f64));
    assert_eq!(m.get("lvm_snapshot_mapping_source"), Some(0.0));
    assert!(
        m.get("lvm_snapshot_thinpool_free_pct")
            .is_some_and(|v| v > 50.0)
    );
    assert!(
        m.get("lvm_snapshot_thinpool_metadata_free_ratio")
            .is_some_and(|v| v > 0.5 && v <= 1.0)
    );
    assert_eq!(
        sample(
            &m,
            "lvm_snapshot_newest_timestamp_seconds",
            &[("origin", APP)]
        ),
        Some(T0 as f64)
    );
    assert_eq!(
        sample(
            &m,
            "lvm_snapshot_newest_timestamp_seconds",
            &[("origin", DB)]
        ),
        None,
        "excluded PVCs are not expected to have snapshots"
    );
}

#[test]
fn exclusions_are_configurable() {
    let h = host();
    h.run(&["create", &at(T0), "--exclude-namespace", "app"])
        .succeeds();
    assert!(h.lv(&snap(APP, T0)).is_none());
    assert!(h.lv(&snap(DB, T0)).is_some());
    assert!(h.lv(&snap(MON, T0)).is_some());
    let r = h.run(&["create", &at(T0), "--exclude-namespace", "Not A Namespace"]);
    r.fails_with(2).stderr_contains("--exclude-namespace");
}

#[test]
fn kubectl_down_falls_back_to_the_cached_mapping() {
    let h = host();
    h.run(&["create", &at(T0)]).succeeds();
    h.emu.set_kube_down(true);
    let r = h.run(&["create", &at(T0 + DAY)]);
    r.succeeds().stderr_contains("using the cached PV mapping");
    assert!(h.lv(&snap(APP, T0 + DAY)).is_some());
    assert!(
        h.lv(&snap(DB, T0 + DAY)).is_none(),
        "still excluded, from the cache"
    );
    assert_eq!(h.metrics().get("lvm_snapshot_mapping_source"), Some(1.0));
}

/// docs/compatibility.md, bug 20: kubectl failing means no exclusion (fail-open); it
/// stays fail-open, but loudly and visible in a metric.
#[test]
fn kubectl_down_without_cache_snapshots_everything_and_says_so() {
    let h = host();
    h.emu.set_kube_down(true);
    let r = h.run(&["create", &at(T0)]);
    r.succeeds()
        .stderr_contains("connection to the server")
        .stderr_contains("snapshotting EVERY PVC LV");
    for o in [APP, DB, MON] {
        assert!(
            h.lv(&snap(o, T0)).is_some(),
            "{o} must not go unsnapshotted"
        );
    }
    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_mapping_source"), Some(2.0));
    assert_eq!(m.get("lvm_snapshot_created_total"), Some(3.0));
    assert!(!h.cache_path().exists(), "nothing to cache");
}

#[test]
fn a_corrupt_cache_counts_as_none() {
    let h = host();
    std::fs::write(h.cache_path(), b"{not json").expect("write");
    h.emu.set_kube_down(true);
    h.run(&["create", &at(T0)])
        .succeeds()
        .stderr_contains("unusable");
    assert!(h.lv(&snap(DB, T0)).is_some());
}

#[test]
fn pool_guard_refuses_on_low_data_space_and_still_reports() {
    let h = host();
    h.emu.set_pool_usage("pve", "data", Some(92.5), None);
    let r = h.run(&["create", &at(T0)]);
    r.fails_with(5).stderr_contains("7.5% data space free");
    assert!(h.emu.calls_of("lvcreate").is_empty());
    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_thinpool_free_pct"), Some(7.5));
    assert!(m.get("lvm_snapshot_thinpool_metadata_free_ratio").is_some());
    assert_eq!(m.get("lvm_snapshot_last_status"), Some(2.0));
    assert_eq!(m.get("lvm_snapshot_created_total"), Some(0.0));
    assert_eq!(m.get("lvm_snapshot_last_run_timestamp"), Some(T0 as f64));
    // The threshold is configurable.
    h.run(&["create", &at(T0), "--min-free-pct", "5"])
        .succeeds();
}

/// Regression, docs/compatibility.md bug 20: thin-pool metadata usage was never checked.
#[test]
fn pool_guard_refuses_on_low_metadata_space() {
    let h = host();
    h.emu.set_pool_usage("pve", "data", Some(10.0), Some(85.0));
    h.run(&["create", &at(T0)])
        .fails_with(5)
        .stderr_contains("15.0% metadata space free");
    assert!(h.emu.calls_of("lvcreate").is_empty());
    let m = h.metrics();
    assert_eq!(
        m.get("lvm_snapshot_thinpool_metadata_free_ratio"),
        Some(0.15)
    );
    assert_eq!(m.get("lvm_snapshot_thinpool_free_pct"), Some(90.0));
    assert_eq!(m.get("lvm_snapshot_last_status"), Some(2.0));
    // pool reports both and applies the same guard.
    let r = h.run(&["pool", "--json"]);
    r.fails_with(5);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["metadata_free_pct"], 15.0);
    assert_eq!(v["data_free_pct"], 90.0);
    assert_eq!(v["ok"], false);
}

#[test]
fn a_second_run_in_the_same_minute_is_a_no_op() {
    let h = host();
    h.run(&["create", &at(T0), "--exclude-namespace", ""])
        .succeeds();
    assert_eq!(h.emu.calls_of("lvcreate").len(), 3);
    let r = h.run(&["create", &at(T0 + 30), "--exclude-namespace", ""]);
    r.succeeds().stderr_contains("already exists");
    assert_eq!(h.emu.calls_of("lvcreate").len(), 3, "no new lvcreate");
    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_created_total"), Some(0.0));
    assert_eq!(m.get("lvm_snapshot_skipped"), Some(3.0));
    assert_eq!(m.get("lvm_snapshot_last_status"), Some(0.0));
    // The next minute is a new run.
    h.run(&["create", &at(T0 + 60), "--exclude-namespace", ""])
        .succeeds();
    assert_eq!(h.emu.calls_of("lvcreate").len(), 6);
}

/// Regression, docs/compatibility.md bug 20: the process exited 0 on partial or total failure.
#[test]
fn one_failed_lvcreate_is_a_partial_run() {
    let h = host();
    h.emu.set_fail(
        &format!("lvcreate {}", snap(DB, T0)),
        backup_tests::emu::FailRule::new(5, "  Insufficient free space for thin pool metadata"),
    );
    let r = h.run(&["create", &at(T0), "--exclude-namespace", ""]);
    r.fails_with(3)
        .stderr_contains(DB)
        .stderr_contains("Insufficient free space");
    assert!(h.lv(&snap(APP, T0)).is_some() && h.lv(&snap(MON, T0)).is_some());
    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_created_total"), Some(2.0));
    assert_eq!(m.get("lvm_snapshot_failed_total"), Some(1.0));
    assert_eq!(m.get("lvm_snapshot_last_status"), Some(1.0));
    assert_eq!(
        sample(
            &m,
            "lvm_snapshot_newest_timestamp_seconds",
            &[("origin", DB)]
        ),
        Some(0.0),
        "the PVC without a snapshot shows up as one"
    );
}

/// Regression, docs/compatibility.md bug 20: a failed `lvs` left free_pct empty, so
/// the guard was skipped and the pushed exposition was invalid.
#[test]
fn a_failing_lvs_is_a_failure_not_a_skipped_guard() {
    let h = host();
    h.emu.set_fail(
        "lvs",
        backup_tests::emu::FailRule::new(5, "  Volume group \"pve\" not found"),
    );
    h.run(&["create", &at(T0)])
        .fails_with(1)
        .stderr_contains("Volume group");
    assert!(h.emu.calls_of("lvcreate").is_empty());
    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_last_status"), Some(2.0));
    assert_eq!(
        m.get("lvm_snapshot_thinpool_free_pct"),
        None,
        "unknown, not empty"
    );
}

#[test]
fn an_empty_pool_is_refused() {
    let h = Host::new();
    h.run(&["create", &at(T0)])
        .fails_with(5)
        .stderr_contains("no PVC LVs");
    assert_eq!(h.metrics().get("lvm_snapshot_last_status"), Some(2.0));
}

#[test]
fn dry_run_changes_nothing() {
    let h = host();
    let r = h.run(&["create", &at(T0), "--dry-run"]);
    r.succeeds().stdout_contains(&format!(
        "would run: lvcreate -s -kn --addtag backup-pipeline.lvm-snap -n {} -- pve/{APP}",
        snap(APP, T0)
    ));
    assert!(h.changing_calls().is_empty());
    assert!(!h.cache_path().exists());
}

#[test]
fn a_held_lock_exits_4_and_reports() {
    let h = host();
    let _held = backup_core::lock::acquire_in(&h.sb.lock_dir(), "lvm-snap").expect("lock");
    h.run(&["create", &at(T0)])
        .fails_with(4)
        .stderr_contains("lvm-snap.lock");
    assert!(h.emu.calls().is_empty(), "nothing ran");
    assert_eq!(h.metrics().get("lvm_snapshot_last_status"), Some(2.0));
    assert_eq!(h.metrics().get("lvm_snapshot_exit_code"), Some(4.0));
    h.run(&["prune", &at(T0)]).fails_with(4);
    // Reading is not blocked.
    h.run(&["list"]).succeeds();
}

#[test]
fn a_bad_setting_is_exit_2_and_still_reported() {
    let h = host();
    let r = Run::of(
        h.cmd(&["create", &at(T0)])
            .env("LVM_SNAP_MIN_FREE_PCT", "ten"),
    );
    r.fails_with(2)
        .stderr_contains("--min-free-pct")
        .stderr_contains("ten");
    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_last_status"), Some(2.0));
    assert_eq!(m.get("lvm_snapshot_exit_code"), Some(2.0));
    h.run(&["create", &at(T0), "--min-free-pct", "150"])
        .fails_with(2)
        .stderr_contains("--min-free-pct 150");
    assert!(h.emu.calls().is_empty());
}

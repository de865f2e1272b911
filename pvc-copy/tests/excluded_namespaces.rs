//! lvm-snap and pvc-copy agree on the namespaces lvm-snap never snapshots
//! and on the PV mapping cache, as shipped: both read EXCLUDED_NAMESPACES
//! and MAPPING_CACHE with one default each, and both binaries run in turn on one
//! emulated host (the LVM and kubectl emulators of `backup-tests` stand for
//! the Proxmox thin pool and the Kubernetes API; the volumes are real ext4
//! images that pvc-copy mounts read-only and copies with real rsync).

mod common;

use std::process::Command;

use backup_tests::harness::{Run, bin};
use common::{Env, VG};

/// `lvm-snap create`'s default `--exclude-namespace`, as its --help prints it.
fn lvm_snap_default_excludes() -> Vec<String> {
    let out = Command::new(bin("lvm-snap"))
        .args(["create", "--help"])
        .env_remove("LVM_SNAP_EXCLUDE_NS")
        .output()
        .expect("lvm-snap --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = help
        .lines()
        .find(|l| l.contains("--exclude-namespace"))
        .expect("--exclude-namespace in lvm-snap create --help");
    let default = line
        .split("[default: ")
        .nth(1)
        .and_then(|d| d.split(']').next())
        .unwrap_or_else(|| panic!("no default in {line:?}"));
    default.split(',').map(String::from).collect()
}

#[test]
fn both_tools_default_to_the_same_excluded_namespaces_and_help_says_so() {
    let excluded = lvm_snap_default_excludes();
    assert_eq!(
        excluded.join(","),
        backup_core::k8s::DEFAULT_EXCLUDED_NAMESPACES
    );
    let out = Command::new(bin("pvc-copy"))
        .arg("--help")
        .env("BACKUP_PIPELINE_CONFIG", "/nonexistent")
        .output()
        .expect("pvc-copy --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for needle in [
        "EXCLUDED_NAMESPACES",
        backup_core::k8s::DEFAULT_EXCLUDED_NAMESPACES,
        "MAPPING_CACHE",
        backup_core::k8s::DEFAULT_MAPPING_CACHE,
    ] {
        assert!(help.contains(needle), "pvc-copy --help lacks {needle:?}");
    }
}

/// A night as shipped: lvm-snap create with its defaults, then pvc-copy.
#[test]
fn a_night_with_shipped_defaults_skips_what_lvm_snap_excluded_and_shares_its_cache() {
    let env = Env::new();
    let files = env.tree(&[("f", b"data")]);
    for (lv, ns, claim) in [
        ("vm-1-pvc-aaaa", "app", "data"),
        ("vm-2-pvc-bbbb", "dbaas", "mysql"),
        ("vm-3-pvc-cccc", "monitoring", "prometheus"),
    ] {
        env.host
            .add_thin_lv_from_dir(VG, "data", lv, 32 << 20, files.path());
        env.host.add_pv(ns, claim, lv);
    }
    let cache = env.sb.path().join("state/lv-pvc-mapping.json");
    std::fs::create_dir_all(cache.parent().expect("dir")).expect("state dir");

    let mut snap = env.sb.cmd("lvm-snap");
    snap.envs(env.host.env())
        .env_remove("EXCLUDED_NAMESPACES")
        .env("MAPPING_CACHE", &cache)
        .arg("create");
    Run::of(&mut snap).succeeds();
    let snapshots: Vec<String> = env
        .host
        .lvs_rows()
        .iter()
        .filter_map(|r| r["lv_name"].as_str().map(String::from))
        .filter(|n| n.contains("_snap_"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert!(snapshots[0].starts_with("vm-1-pvc-aaaa_snap_"));
    assert!(cache.is_file(), "lvm-snap wrote the mapping cache");

    let now = chrono::Utc::now().to_rfc3339();
    // With no --skip at all the night is clean, with kubectl down too:
    // pvc-copy skips what lvm-snap excluded (same key, same default) and
    // reads the cache lvm-snap wrote, through the same setting.
    env.host.set_kube_down(true);
    let mut cmd = env.cmd(&now);
    cmd.env_remove("EXCLUDED_NAMESPACES")
        .env("MAPPING_CACHE", &cache)
        .arg("--json");
    let r = Run::of(&mut cmd);
    r.succeeds().stderr_contains("using the mapping cache");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let results: Vec<(String, String)> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["pvc"].as_str().unwrap_or("").to_string(),
                i["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("app/data", "ok"),
        ("dbaas/mysql", "skipped"),
        ("monitoring/prometheus", "skipped"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(results, want);
    assert!(
        !env.root.join(".lv-pvc-mapping.json").exists(),
        "no second cache on the backup disk"
    );
    env.assert_no_mounts();
}

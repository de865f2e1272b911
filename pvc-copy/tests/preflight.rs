//! `pvc-copy preflight`: the NFS export check. systemctl and exportfs are
//! replaced by small scripts (stand-ins for the host's NFS server state);
//! the exports file is a real file.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use backup_tests::harness::{Run, Sandbox};

fn script(sb: &Sandbox, name: &str, body: &str) -> String {
    let p = sb.write(name, format!("#!/bin/sh\n{body}\n"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    p.display().to_string()
}

fn preflight(sb: &Sandbox, exports: &str, active: &str, exportfs_out: &str) -> Run {
    let ex = sb.write("exports", exports);
    let sc = script(
        sb,
        "systemctl",
        &format!("echo {active}; [ {active} = active ]"),
    );
    let ef = script(sb, "exportfs", &format!("printf '{exportfs_out}'"));
    let metrics = sb.path().join("preflight.prom");
    Run::of(
        sb.cmd("pvc-copy")
            .arg("preflight")
            .arg("--exports")
            .arg(&ex)
            .args(["--systemctl", &sc, "--exportfs", &ef, "--json"])
            .arg("--metrics-file")
            .arg(&metrics),
    )
}

#[test]
fn healthy_exports_pass() {
    let sb = Sandbox::new();
    let r = preflight(
        &sb,
        "/srv/nfs/immich 10.0.0.0/24(rw,no_subtree_check)\n",
        "active",
        "/srv/nfs/immich\\t10.0.0.0/24(rw)\\n",
    );
    r.succeeds();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert!(
        v.as_array().expect("list").iter().all(|c| c["ok"] == true),
        "{v}"
    );
    let m = fs::read_to_string(sb.path().join("preflight.prom")).expect("metrics");
    assert!(m.contains("pvc_copy_nfs_exports_ok 1"), "{m}");
}

#[test]
fn the_fsid0_outage_configuration_fails_and_counts() {
    let sb = Sandbox::new();
    let r = preflight(
        &sb,
        "# fsid=0 in a comment is fine\n/srv/nfs 10.0.0.0/24(rw,fsid=0,crossmnt)\n",
        "active",
        "/srv/nfs\\t10.0.0.0/24(rw)\\n",
    );
    r.fails_with(3)
        .stderr_contains("pvc-copy: error: no-fsid0-root");
    let m = fs::read_to_string(sb.path().join("preflight.prom")).expect("metrics");
    assert!(m.contains("pvc_copy_nfs_exports_ok 0"), "{m}");
}

#[test]
fn a_stopped_server_no_exports_and_a_missing_file_each_fail() {
    let sb = Sandbox::new();
    preflight(&sb, "/srv/nfs/a *(rw)\n", "inactive", "")
        .fails_with(3)
        .stderr_contains("pvc-copy: error: nfs-server-active")
        .stderr_contains("pvc-copy: error: exports-active: exportfs -s lists 0 export(s)");
    let r = Run::of(
        sb.cmd("pvc-copy")
            .args(["preflight", "--exports"])
            .arg(sb.path().join("missing"))
            .args(["--systemctl", "true", "--exportfs", "true"]),
    );
    r.fails_with(3)
        .stderr_contains("pvc-copy: error: exports-file");
}

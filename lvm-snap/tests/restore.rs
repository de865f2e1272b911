//! `lvm-snap restore` against the emulated host (stands for: the Proxmox
//! host's LVM thin pool pve/data, its dm-crypt mappings, and the cluster's
//! API server with a Deployment or StatefulSet whose pods mount the claim;
//! scaled-down pods disappear after a delay, like real ones).

mod common;

use backup_tests::emu::FailRule;
use common::{DAY, Host, T0, at};

const A: &str = "vm-9999-pvc-0a01";
const B: &str = "vm-9999-pvc-0b02";

fn stamp(t: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0)
        .expect("t")
        .format("%Y%m%d_%H%M")
        .to_string()
}

/// PVC A (app/data) mounted by Deployment app/web with 2 replicas, snapshot
/// S taken by `lvm-snap create` at T0 holding v1, then A rewritten to v2.
fn scenario() -> (Host, String) {
    let h = Host::new();
    h.pvc(
        A,
        "app",
        "data",
        &[("state.txt", b"v1"), ("dir/keep", b"k")],
    );
    h.pvc(B, "app", "other", &[("b.txt", b"b")]);
    h.emu.add_deployment("app", "web", 2, "data");
    h.run(&["create", &at(T0)]).succeeds();
    let s = format!("{A}_snap_{}", stamp(T0));
    assert!(h.lv(&s).is_some());
    h.rewrite(A, &[("state.txt", b"v2 written after the snapshot")]);
    h.emu.clear_calls();
    (h, s)
}

fn restore_args<'a>(lv: &'a str, snap: &'a str, now: &'a str) -> Vec<&'a str> {
    vec![
        "restore",
        lv,
        snap,
        now,
        "--poll-ms",
        "50",
        "--wait-timeout",
        "30s",
        "--ready-timeout",
        "30s",
    ]
}

fn file(h: &Host, lv: &str, f: &str) -> Vec<u8> {
    h.emu
        .lv_files("pve", lv)
        .remove(f)
        .unwrap_or_else(|| panic!("{f} missing in {lv}"))
}

/// Index of the first call whose argv contains every word.
fn pos(calls: &[Vec<String>], words: &[&str]) -> usize {
    calls
        .iter()
        .position(|c| words.iter().all(|w| c.iter().any(|a| a == w)))
        .unwrap_or_else(|| panic!("no call with {words:?} in {calls:#?}"))
}

/// Regression, docs/compatibility.md bug 9: the PV lookup compared handles with
/// `local-lvm:<lv>` and never matched sinextra handles (`a/b/c/<lv>`, used here).
#[test]
fn restore_puts_the_snapshot_data_in_place_and_keeps_the_old_volume() {
    let (h, s) = scenario();
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &s, &now);
    args.push("--yes");
    let r = h.run(&args);
    r.succeeds()
        .stdout_contains("Restore plan for pve/vm-9999-pvc-0a01")
        .stdout_contains("scale deployment/web -n app from 2 to 0");

    // The restored LV holds exactly the snapshot's files.
    assert_eq!(h.emu.lv_files("pve", A), h.emu.lv_files("pve", &s));
    assert_eq!(file(&h, A, "state.txt"), b"v1");
    // The replaced volume is kept, tagged, with the newer data.
    let pre = format!("{A}_pre_restore_{}", stamp(T0 + DAY));
    assert_eq!(
        file(&h, &pre, "state.txt"),
        b"v2 written after the snapshot"
    );
    let pre_lv = h.lv(&pre).expect("pre-restore copy");
    assert!(pre_lv.tags.iter().any(|t| t == "backup-pipeline.lvm-snap"));
    // The snapshot is not consumed; no scratch volume is left.
    assert!(h.lv(&s).is_some());
    assert!(
        !h.lv_names()
            .iter()
            .any(|n| n.contains("_restore_") && !n.contains("_pre_restore_")),
        "scratch volume left: {:?}",
        h.lv_names()
    );
    let restored = h.lv(A).expect("restored LV");
    assert!(restored.active);
    assert!(
        !restored
            .tags
            .iter()
            .any(|t| t == "backup-pipeline.lvm-snap"),
        "the live volume must never look prunable"
    );
    // The workload is back at its replica count and Ready.
    assert_eq!(h.emu.replicas("app", "web"), Some(2));
    let deploy = h
        .emu
        .k8s_objects("deployments")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "web")
        .expect("deployment");
    assert_eq!(deploy["status"]["readyReplicas"], 2);
    // Order: scale down, deactivate, rename, rename, scale up.
    let calls = h.emu.calls();
    let down = pos(&calls, &["scale", "--replicas=0"]);
    let deact = pos(&calls, &["lvchange", "-an"]);
    let ren1 = pos(&calls, &["lvrename", A, &pre]);
    let ren2 = pos(
        &calls,
        &["lvrename", &format!("{A}_restore_{}", stamp(T0 + DAY)), A],
    );
    let up = pos(&calls, &["scale", "--replicas=2"]);
    assert!(
        down < deact && deact < ren1 && ren1 < ren2 && ren2 < up,
        "{calls:#?}"
    );
    let m = h.metrics();
    assert_eq!(m.get("lvm_snapshot_restore_last_status"), Some(0.0));
    assert!(!h.journal().exists(), "a finished restore left its journal");

    // The same restore can be repeated: older snapshots now have the
    // pre-restore copy as origin, which still counts as this LV's.
    h.rewrite(A, &[("state.txt", b"v3")]);
    let now2 = at(T0 + DAY + 60);
    let mut args = restore_args(A, &s, &now2);
    args.push("--yes");
    h.run(&args).succeeds();
    assert_eq!(file(&h, A, "state.txt"), b"v1");
    let pre2 = format!("{A}_pre_restore_{}", stamp(T0 + DAY + 60));
    assert_eq!(file(&h, &pre2, "state.txt"), b"v3");
}

fn assert_rolled_back(h: &Host, s: &str) {
    assert_volumes_and_replicas_back(h, s);
    assert_eq!(
        h.metrics().get("lvm_snapshot_restore_last_status"),
        Some(2.0)
    );
    assert!(
        !h.journal().exists(),
        "a complete rollback left the journal"
    );
}

/// Names, data, activation and replica count as before the restore.
fn assert_volumes_and_replicas_back(h: &Host, s: &str) {
    let mut names = h.lv_names();
    names.sort();
    let mut want = vec![
        A.to_string(),
        B.to_string(),
        s.to_string(),
        format!("{B}_snap_{}", stamp(T0)),
    ];
    want.sort();
    assert_eq!(names, want, "names not rolled back");
    assert_eq!(file(h, A, "state.txt"), b"v2 written after the snapshot");
    assert!(h.lv(A).expect("A").active, "A re-activated");
    assert_eq!(
        h.emu.replicas("app", "web"),
        Some(2),
        "replicas not restored"
    );
}

#[test]
fn a_kubectl_failure_after_scale_down_rolls_back() {
    let (h, s) = scenario();
    h.emu.set_fail(
        "kubectl volumeattachments",
        FailRule::new(
            1,
            "Unable to connect to the server: net/http: TLS handshake timeout",
        )
        .after("kubectl scale"),
    );
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &s, &now);
    args.push("--yes");
    let r = h.run(&args);
    assert_ne!(r.code, 0);
    r.fails_with(1)
        .stderr_contains("TLS handshake timeout")
        .stderr_contains("done: [created vm-9999-pvc-0a01_restore_")
        .stderr_contains("scaled deployment/web -n app from 2 to 0]")
        .stderr_contains("undone: [scaled deployment/web -n app from 2 to 0; created");
    assert_rolled_back(&h, &s);
}

/// Regression, docs/compatibility.md bug 9: after the first rename the PVC LV was
/// missing and the workload stayed at 0 (no rollback).
#[test]
fn a_failed_second_rename_puts_the_names_back() {
    let (h, s) = scenario();
    let scratch = format!("{A}_restore_{}", stamp(T0 + DAY));
    h.emu.set_fail(
        &format!("lvrename {scratch}"),
        FailRule::new(5, "  Internal error: rename failed"),
    );
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &s, &now);
    args.push("--yes");
    let r = h.run(&args);
    r.fails_with(1)
        .stderr_contains("rename failed")
        .stderr_contains(&format!("renamed {A} -> {A}_pre_restore_"))
        .stderr_contains("undone: [");
    assert_rolled_back(&h, &s);
}

#[test]
fn never_ready_after_the_swap_undoes_everything() {
    let (h, s) = scenario();
    // Every read of the Deployment fails once it has been scaled: the wait
    // for Ready after the swap fails, so the swap must be undone too.
    h.emu.set_fail(
        "kubectl deployment web",
        FailRule::new(1, "Error from server (ServiceUnavailable)").after("kubectl scale"),
    );
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &s, &now);
    args.push("--yes");
    let r = h.run(&args);
    r.fails_with(1)
        .stderr_contains("ServiceUnavailable")
        .stderr_contains("scaled deployment/web -n app back up")
        .stderr_contains(&format!("renamed {A}_restore_"));
    assert_rolled_back(&h, &s);
    let calls = h.emu.calls();
    let scales: Vec<&String> = calls
        .iter()
        .filter(|c| c.iter().any(|a| a == "scale"))
        .filter_map(|c| c.iter().find(|a| a.starts_with("--replicas=")))
        .collect();
    assert_eq!(
        scales,
        [
            "--replicas=0",
            "--replicas=2",
            "--replicas=0",
            "--replicas=2"
        ]
    );
}

/// Regression, docs/compatibility.md bug 9: nothing checked that the snapshot belongs
/// to the target LV.
#[test]
fn a_snapshot_of_another_lv_is_refused() {
    let (h, s) = scenario();
    let _ = s;
    let b_snap = format!("{B}_snap_{}", stamp(T0));
    // By name: refused before any command runs.
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &b_snap, &now);
    args.push("--yes");
    h.run(&args)
        .fails_with(5)
        .stderr_contains("is a snapshot of vm-9999-pvc-0b02, not of vm-9999-pvc-0a01");
    assert!(h.emu.calls().is_empty());
    // A name that claims A on a snapshot whose LVM origin is B: the origin
    // field decides.
    let forged = format!("{A}_snap_{}", stamp(T0 - DAY));
    h.emu
        .add_snapshot("pve", B, &forged, &["backup-pipeline.lvm-snap"]);
    let mut args = restore_args(A, &forged, &now);
    args.push("--yes");
    h.run(&args)
        .fails_with(5)
        .stderr_contains("LVM reports its origin as vm-9999-pvc-0b02");
    assert!(h.changing_calls().is_empty());
    assert_eq!(file(&h, A, "state.txt"), b"v2 written after the snapshot");
}

#[test]
fn without_yes_and_without_a_terminal_nothing_changes() {
    let (h, s) = scenario();
    let now = at(T0 + DAY);
    let r = h.run(&restore_args(A, &s, &now));
    r.fails_with(2).stderr_contains("needs --yes");
    assert!(h.changing_calls().is_empty());
    let mut args = restore_args(A, &s, &now);
    args.push("--dry-run");
    h.run(&args)
        .succeeds()
        .stdout_contains("rename vm-9999-pvc-0a01 -> vm-9999-pvc-0a01_pre_restore_")
        .stdout_contains("dry run: nothing changed");
    assert!(h.changing_calls().is_empty());
}

/// Regression, docs/compatibility.md bug 26: operator LV names reached lvs, lvrename
/// and cryptsetup unvalidated; a leading `-` was read as an option.
#[test]
fn hostile_names_are_rejected_before_any_command_runs() {
    let (h, s) = scenario();
    let now = at(T0 + DAY);
    for (lv, snap) in [
        ("-x", s.as_str()),
        ("vm-9999-pvc-0a01 --yes", s.as_str()),
        (A, "-x"),
        (A, "vm-9999-pvc-0a01_snap_20261128_0300 x"),
        ("../../dev/sda", s.as_str()),
    ] {
        let r = h.run(&["restore", "--yes", &now, "--", lv, snap]);
        r.fails_with(2);
        assert!(
            r.stderr.contains("PVC_LV") || r.stderr.contains("SNAPSHOT_LV"),
            "{lv:?} {snap:?}: {}",
            r.stderr
        );
        assert!(
            h.emu.calls().is_empty(),
            "{lv:?} {snap:?} reached a command"
        );
        assert_eq!(
            h.metrics().get("lvm_snapshot_restore_last_status"),
            Some(2.0)
        );
    }
    // The same for the VG and pool names.
    h.run(&["create", &now, "--vg=-x"])
        .fails_with(2)
        .stderr_contains("--vg");
    h.run(&["prune", &now, "--pool", "data pool"]).fails_with(2);
    assert!(h.emu.calls().is_empty());
}

#[test]
fn a_statefulset_is_found_through_its_pods_and_scaled_back() {
    let h = Host::new();
    h.pvc(A, "db", "data-pg-0", &[("pg", b"old")]);
    h.emu.add_statefulset("db", "pg", 1, "data");
    h.run(&["create", &at(T0)]).succeeds();
    let s = format!("{A}_snap_{}", stamp(T0));
    h.rewrite(A, &[("pg", b"new")]);
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &s, &now);
    args.push("--yes");
    h.run(&args)
        .succeeds()
        .stdout_contains("scale statefulset/pg -n db from 1 to 0");
    assert_eq!(file(&h, A, "pg"), b"old");
    assert_eq!(h.emu.replicas("db", "pg"), Some(1));
}

#[test]
fn an_open_luks_mapping_is_closed_before_deactivation() {
    let h = Host::new();
    let key = h.sb.write("key", b"secret key");
    h.emu
        .add_luks_lv("pve", "data", A, 32 << 20, b"secret key", &[("f", b"old")]);
    h.emu.add_pv("app", "data", A);
    h.emu.add_deployment("app", "web", 1, "data");
    h.run(&["create", &at(T0)]).succeeds();
    let s = format!("{A}_snap_{}", stamp(T0));
    // A mapping named after the LV is open (how the original found one).
    let st = h
        .emu
        .command("cryptsetup")
        .arg("open")
        .arg("--key-file")
        .arg(&key)
        .arg("--")
        .arg(h.emu.lv_path("pve", A))
        .arg(A)
        .status()
        .expect("cryptsetup");
    assert!(st.success());
    assert_eq!(h.emu.open_mappers(), [A]);
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &s, &now);
    args.push("--yes");
    h.run(&args).succeeds();
    assert!(h.emu.open_mappers().is_empty());
    let calls = h.emu.calls();
    assert!(pos(&calls, &["cryptsetup", "close", A]) < pos(&calls, &["lvchange", "-an"]));
    assert_eq!(file(&h, A, "f"), b"old");
}

#[test]
fn pods_that_do_not_go_in_time_end_in_a_rollback() {
    let (h, s) = scenario();
    // Pods take a minute to terminate; the restore waits one second.
    h.emu.set_kube_delay(std::time::Duration::from_secs(60));
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &s, &now);
    let i = args.iter().position(|a| *a == "30s").expect("wait timeout");
    args[i] = "1s";
    args.push("--yes");
    h.run(&args)
        .fails_with(1)
        .stderr_contains("timed out after 1s waiting for the pods mounting app/data to go")
        .stderr_contains("undone: [scaled deployment/web -n app from 2 to 0");
    assert_rolled_back(&h, &s);
    assert!(
        !h.emu
            .calls()
            .iter()
            .any(|c| c[0] == "lvrename" || c[0] == "lvchange"),
        "no LV touched while pods were still running"
    );
}

/// The typed confirmation on a terminal (a pty from util-linux `script`).
#[test]
fn on_a_terminal_only_a_typed_yes_goes_ahead() {
    let (h, s) = scenario();
    let now = at(T0 + DAY);
    let on_tty = |answer: &str| {
        let c = h.cmd(&restore_args(A, &s, &now));
        let line = std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = std::process::Command::new("script");
        script.args(["-q", "-e", "-c", &line, "/dev/null"]);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        let mut child = script
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux)");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{answer}\n").as_bytes())
            .expect("answer");
        let out = child.wait_with_output().expect("script");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = on_tty("no");
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains("Type yes to go ahead") && out.contains("not confirmed"),
        "{out}"
    );
    assert!(h.changing_calls().is_empty());
    let (code, out) = on_tty("yes");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(file(&h, A, "state.txt"), b"v1");
}

/// SIGTERM while waiting for the pods (an operator's Ctrl-C, systemd's
/// stop): the restore stops going forward and rolls back; it never leaves
/// the workload at zero.
#[test]
fn sigterm_mid_restore_rolls_back() {
    let (h, s) = scenario();
    // Pods take 20 s to go: the signal lands while the restore waits.
    h.emu.set_kube_delay(std::time::Duration::from_secs(20));
    let now = at(T0 + DAY);
    let mut args = restore_args(A, &s, &now);
    args.push("--yes");
    let child = h
        .cmd(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_call(&h, &["--replicas=0"]);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by signal 15"), "{stderr}");
    assert!(
        stderr.contains("undone: [scaled deployment/web -n app from 2 to 0"),
        "{stderr}"
    );
    assert_rolled_back(&h, &s);
}

/// Start `restore --yes` of A from `s` in the background.
fn spawn_restore(h: &Host, s: &str, now: &str) -> std::process::Child {
    let mut args = restore_args(A, s, now);
    args.push("--yes");
    h.cmd(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn")
}

/// Wait (generous bound, no timing assumption) for an emulated call
/// with all of `words`.
fn wait_for_call(h: &Host, words: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !h
        .emu
        .calls()
        .iter()
        .any(|c| words.iter().all(|w| c.iter().any(|a| a == w)))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no call with {words:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `restore --recover --yes`, pods coming and going quickly again.
fn recover(h: &Host, now: &str) -> backup_tests::harness::Run {
    h.emu.set_kube_delay(std::time::Duration::from_millis(200));
    h.run(&["restore", "--recover", "--yes", "--poll-ms", "50", now])
}

fn sigkill(mut child: std::process::Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
}

/// A restore SIGKILLed while the pods go (scratch volume made, workload at
/// 0): the journal on disk says so; a new restore is refused, the nightly
/// `create` warns and reports it, and `restore --recover` puts everything
/// back.
#[test]
fn sigkill_while_the_pods_go_is_undone_by_recover() {
    let (h, s) = scenario();
    h.emu.set_kube_delay(std::time::Duration::from_secs(20));
    let now = at(T0 + DAY);
    let child = spawn_restore(&h, &s, &now);
    wait_for_call(&h, &["scale", "--replicas=0"]);
    sigkill(child);
    assert_eq!(h.emu.replicas("app", "web"), Some(0));
    assert!(h.journal().is_file(), "no journal after SIGKILL");
    let scratch = format!("{A}_restore_{}", stamp(T0 + DAY));
    assert!(h.lv(&scratch).is_some());

    // A second restore is refused until the first is recovered.
    let mut args = restore_args(A, &s, &now);
    args.push("--yes");
    h.run(&args)
        .fails_with(5)
        .stderr_contains("was cut short")
        .stderr_contains("lvm-snap restore --recover");
    // The nightly snapshot run says so, in the log and the metrics.
    h.run(&["create", &at(T0 + DAY + 3600)])
        .succeeds()
        .stderr_contains("run `lvm-snap restore --recover`");
    assert_eq!(
        h.metrics().get("lvm_snapshot_restore_interrupted"),
        Some(1.0)
    );

    // Without --yes and without a terminal, recovery changes nothing.
    h.run(&["restore", "--recover", &at(T0 + DAY + 7200)])
        .fails_with(2);
    assert!(h.journal().is_file());
    recover(&h, &at(T0 + DAY + 7200))
        .succeeds()
        .stdout_contains(&format!("remove {scratch}"))
        .stdout_contains("recovered: pve/vm-9999-pvc-0a01");
    assert!(h.lv(&scratch).is_none(), "scratch volume left");
    assert!(!h.journal().exists(), "journal left after recovery");
    assert_eq!(file(&h, A, "state.txt"), b"v2 written after the snapshot");
    assert!(h.lv(A).expect("A").active);
    assert_eq!(h.emu.replicas("app", "web"), Some(2));
    // Recovered, the next create reports nothing pending.
    h.run(&["create", &at(T0 + DAY + 7260)]).succeeds();
    assert_eq!(
        h.metrics().get("lvm_snapshot_restore_interrupted"),
        Some(0.0)
    );
    // And a recovery with nothing to recover is a no-op.
    h.run(&["restore", "--recover", "--yes", &at(T0 + DAY + 7300)])
        .succeeds()
        .stdout_contains("nothing to recover");
}

/// SIGKILL after the swap, while the workload comes back on the restored
/// data: recovery scales it down, swaps the names back, removes the
/// restored copy and scales up. The journal may lag LVM by a step (the run
/// can die between a command and its record); recovery reads LVM, so a
/// journal that only says the first rename was begun gives the same result.
#[test]
fn sigkill_after_the_swap_is_undone_by_recover_even_with_a_lagging_journal() {
    for lagging in [false, true] {
        let (h, s) = scenario();
        let now = at(T0 + DAY);
        let child = spawn_restore(&h, &s, &now);
        wait_for_call(&h, &["scale", "--replicas=0"]);
        // New pods will take a minute to be Ready: the kill lands while
        // the restore waits for them.
        h.emu.set_kube_delay(std::time::Duration::from_secs(60));
        wait_for_call(&h, &["scale", "--replicas=2"]);
        sigkill(child);
        let pre = format!("{A}_pre_restore_{}", stamp(T0 + DAY));
        assert_eq!(
            file(&h, A, "state.txt"),
            b"v1",
            "swap not done before the kill"
        );
        assert!(h.lv(&pre).is_some());
        if lagging {
            let mut j: serde_json::Value =
                serde_json::from_slice(&std::fs::read(h.journal()).expect("journal"))
                    .expect("journal json");
            let done = j["done"].as_array().expect("done").clone();
            let cut = done
                .iter()
                .position(|d| d == "RenamedOrigin")
                .expect("RenamedOrigin recorded");
            j["done"] = serde_json::Value::Array(done[..cut].to_vec());
            j["pending"] = serde_json::json!("RenamedOrigin");
            std::fs::write(h.journal(), serde_json::to_vec(&j).expect("json")).expect("write");
        }
        recover(&h, &at(T0 + DAY + 600))
            .succeeds()
            .stdout_contains("scale deployment/web -n app to 0")
            .stdout_contains(&format!("rename {pre} -> {A}"));
        assert_volumes_and_replicas_back(&h, &s);
        assert!(!h.journal().exists());
        assert!(
            !h.lv_names().iter().any(|n| n.contains("_restore_")),
            "lagging={lagging}: left {:?}",
            h.lv_names()
        );
    }
}

/// A journal that is not lvm-snap's is never acted on.
#[test]
fn a_damaged_journal_is_refused_and_nothing_changes() {
    let (h, _s) = scenario();
    std::fs::create_dir_all(h.state_dir()).expect("mkdir");
    std::fs::write(h.journal(), b"{\"plan\": tru").expect("write");
    h.run(&["restore", "--recover", "--yes", &at(T0 + DAY)])
        .fails_with(5)
        .stderr_contains("lvm-snap-restore.journal.json: expected the JSON lvm-snap writes");
    assert!(h.changing_calls().is_empty());
}

//! units/daily-backup.service run step by step the way systemd runs a
//! oneshot (ExecStart= lines in order, SuccessExitStatus=, then
//! ExecStopPost= with $SERVICE_RESULT/$EXIT_CODE/$EXIT_STATUS), against the
//! emulated host of tests/common (it stands for the Proxmox host's LVM and
//! Kubernetes), real mounts, rsync, sqlite-dump and a real Pushgateway.
//! systemctl and exportfs are stand-in scripts (no NFS server here).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_tests::harness::bin;
use backup_tests::pushgateway::Pushgateway;
use backup_tests::unitfile::{UnitFile, words};
use common::*;

struct Outcome {
    status: i32,
    stderr: String,
}

/// Run the unit's ExecStart= lines like systemd, then ExecStopPost=.
fn run_unit(
    env: &Env,
    run_dir: &Path,
    extra_env: &[(&str, String)],
    extra_args: &[String],
) -> Outcome {
    let u = UnitFile::load("daily-backup.service");
    let ok_codes: Vec<i32> = u
        .values("SuccessExitStatus")
        .iter()
        .flat_map(|v| v.split_whitespace().map(|c| c.parse().expect("code")))
        .chain([0])
        .collect();
    let subst = |line: &str| -> Vec<String> {
        let line = line
            .replace("$$", "$")
            .replace("/run/backup-pipeline/", &format!("{}/", run_dir.display()));
        let mut argv = Vec::new();
        for w in words(&line) {
            let mut w = w;
            for b in ["pvc-copy", "sqlite-dump", "push-metric"] {
                w = w.replace(
                    &format!("/usr/local/bin/{b}"),
                    &bin(b).display().to_string(),
                );
            }
            argv.push(w);
        }
        // The copy step (not preflight): the test's own arguments.
        if argv.first().is_some_and(|p| p.ends_with("/pvc-copy"))
            && argv.get(1).is_some_and(|a| a == "--metrics-file")
        {
            argv.extend(extra_args.iter().cloned());
        }
        argv
    };
    let base = |argv: &[String]| {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..])
            .envs(env.host.env())
            .env("BACKUP_LOCK_DIR", env.sb.lock_dir())
            .env("BACKUP_ROOT", &env.root)
            .env("BACKUP_PIPELINE_CONFIG", env.sb.config_path())
            .env("MAPPING_CACHE", env.root.join(".lv-pvc-mapping.json"))
            .env_remove("ALLOW_UNMOUNTED_ROOT")
            .env("PVC_COPY_MAPPER_DIR", env.host.mapper_dir())
            .env("PVC_COPY_LUKS_KEY", &env.key)
            .env_remove("METRICS_FILE")
            .env_remove("JOURNAL_STREAM");
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c
    };
    let mut stderr = String::new();
    let mut status = 0;
    let mut result = "success";
    for line in u.values("ExecStart") {
        let argv = subst(line);
        let out = base(&argv).output().expect("step");
        stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        status = out.status.code().expect("exit code");
        if !ok_codes.contains(&status) {
            result = "exit-code";
            break;
        }
    }
    for line in u.values("ExecStopPost") {
        let argv = subst(line.trim_start_matches('-'));
        let out = base(&argv)
            .env("SERVICE_RESULT", result)
            .env("EXIT_CODE", "exited")
            .env("EXIT_STATUS", status.to_string())
            .output()
            .expect("stop post");
        stderr.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    Outcome { status, stderr }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("script");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn host_with_a_database() -> Env {
    let env = Env::new();
    let src = env.tree(&[("notes.txt", b"n")]);
    fs::create_dir_all(src.path().join("data")).expect("mkdir");
    let db = src.path().join("data/app.db");
    let o = Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (42);")
        .output()
        .expect("sqlite3");
    assert!(o.status.success());
    // The unit resolves the week from the clock: snapshots are an hour old.
    env.host
        .add_thin_lv_from_dir(VG, "data", "vm-3-pvc-abcd", 32 << 20, src.path());
    env.host.add_pv("apps", "db", "vm-3-pvc-abcd");
    env.snapshot("vm-3-pvc-abcd", chrono::Utc::now().timestamp() - 3600);
    env
}

fn nfs_env(env: &Env, exports: &str) -> Vec<(&'static str, String)> {
    let d = env.sb.mkdir("nfs");
    let ex = env.sb.write("nfs/exports", exports);
    let sc = script(&d, "systemctl", "echo active");
    let ef = script(
        &d,
        "exportfs",
        "printf '/srv/nfs/immich\\t10.0.0.0/24(rw)\\n'",
    );
    vec![
        ("PVC_COPY_EXPORTS", ex.display().to_string()),
        ("PVC_COPY_SYSTEMCTL", sc.display().to_string()),
        ("PVC_COPY_EXPORTFS", ef.display().to_string()),
    ]
}

fn week() -> String {
    let o = Command::new(bin("pvc-copy"))
        .arg("current-week")
        .output()
        .expect("week");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_clean_night_copies_pvcs_dumps_their_databases_and_pushes_success() {
    let env = host_with_a_database();
    let pg = Pushgateway::start();
    let run_dir = env.sb.mkdir("run-unit");
    let mut e = nfs_env(&env, "/srv/nfs/immich 10.0.0.0/24(rw)\n");
    e.push(("PUSHGATEWAY_URL", pg.url()));
    let work = env.sb.mkdir("work").display().to_string();
    let out = run_unit(
        &env,
        &run_dir,
        &e,
        &["--allow-unmounted-root".into(), "--work-dir".into(), work],
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let w = week();
    assert!(env.dest(&w, "apps", "db").join("data/app.db").is_file());
    let copy = env
        .root
        .join(format!("sqlite-backup/{w}/apps/db/data/app.db"));
    assert!(
        copy.is_file(),
        "sqlite-dump did not write {}:\n{}",
        copy.display(),
        out.stderr
    );
    assert_eq!(
        pg.value("daily-backup", "daily_backup_last_status"),
        Some(0.0)
    );
    assert!(
        pg.value("daily-backup", "daily_backup_last_success_timestamp")
            .is_some()
    );
    assert!(
        pg.value("daily-backup", "daily_backup_bytes_synced")
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        pg.value("daily-backup", "pvc_copy_nfs_exports_ok"),
        Some(1.0)
    );
    env.assert_no_mounts();
}

#[test]
fn a_failed_nfs_check_still_copies_everything_and_the_night_counts_as_failed() {
    let env = host_with_a_database();
    let pg = Pushgateway::start();
    let run_dir = env.sb.mkdir("run-unit");
    let mut e = nfs_env(&env, "/srv/nfs 10.0.0.0/24(rw,fsid=0)\n");
    e.push(("PUSHGATEWAY_URL", pg.url()));
    let work = env.sb.mkdir("work").display().to_string();
    let out = run_unit(
        &env,
        &run_dir,
        &e,
        &["--allow-unmounted-root".into(), "--work-dir".into(), work],
    );
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("the NFS export preflight failed"),
        "{}",
        out.stderr
    );
    let w = week();
    assert!(
        env.root
            .join(format!("sqlite-backup/{w}/apps/db/data/app.db"))
            .is_file()
    );
    assert_eq!(
        pg.value("daily-backup", "daily_backup_last_status"),
        Some(1.0)
    );
    assert_eq!(
        pg.value("daily-backup", "daily_backup_last_success_timestamp"),
        None
    );
    let ok: Vec<f64> = pg
        .samples("daily-backup", "pvc_copy_pvcs")
        .into_iter()
        .filter(|(l, _)| l.get("result").and_then(|v| v.as_str()) == Some("ok"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(ok, [1.0], "the PVC itself was copied");
}

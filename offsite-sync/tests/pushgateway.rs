//! The metric names of job offsite-backup-sync as the alerts read them,
//! through the unit's ExecStopPost= command (push-metric --from-systemd
//! --prefix offsite_sync) into a real prometheus-pushgateway.

mod common;

use backup_tests::harness::{Run, bin};
use backup_tests::pushgateway::Pushgateway;
use common::World;

const JOB: &str = "offsite-backup-sync";

/// What the unit's ExecStopPost= runs, with systemd's variables.
fn push(pg: &Pushgateway, file: &std::path::Path, result: &str, code: &str, status: &str) {
    let mut c = std::process::Command::new(bin("push-metric"));
    c.args([
        "--from-systemd",
        "--job",
        JOB,
        "--prefix",
        "offsite_sync",
        "--file",
    ])
    .arg(file)
    .args(["--gateway", &pg.url()])
    .env("SERVICE_RESULT", result)
    .env("EXIT_CODE", code)
    .env("EXIT_STATUS", status);
    Run::of(&mut c).succeeds();
}

#[test]
fn success_failure_and_kill_reach_the_alerts_names() {
    let pg = Pushgateway::start();
    let w = World::with_nas();
    for s in [1, 2] {
        World::put(
            &w.root,
            format!(".offsite-sync/last-full-step{s}").as_bytes(),
            format!(
                "{}\n",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs()
            )
            .as_bytes(),
        );
    }
    World::put(&w.root, b"svc/a", b"a");
    w.leg1().append([b"svc/a"]).expect("append");
    let m = w.sb.path().join("offsite-sync.prom");
    let ms = m.to_str().expect("utf8");

    w.run("all", &["--metrics-file", ms]).succeeds();
    push(&pg, &m, "success", "exited", "0");
    assert_eq!(pg.value(JOB, "offsite_sync_last_status"), Some(0.0));
    let ok_ts = pg
        .value(JOB, "backup_last_success_timestamp")
        .expect("success timestamp");
    assert!(ok_ts > 0.0);
    assert!(
        pg.value(JOB, "offsite_dest_available_bytes")
            .expect("avail")
            > 0.0
    );
    assert!(
        pg.value(JOB, "offsite_dest_capacity_timestamp_seconds")
            .is_some()
    );

    // NAS unreachable: status 1, the success timestamp keeps its value.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    w.leg1().append([b"svc/a"]).expect("append");
    w.run("all", &["--metrics-file", ms, "--ssh-port", "1"])
        .fails_with(1);
    push(&pg, &m, "exit-code", "exited", "1");
    assert_eq!(pg.value(JOB, "offsite_sync_last_status"), Some(1.0));
    assert_eq!(pg.value(JOB, "backup_last_success_timestamp"), Some(ok_ts));

    // Killed by the unit's timeout before writing anything: status 2.
    std::fs::remove_file(&m).expect("rm"); // ExecStartPre= does this
    push(&pg, &m, "timeout", "killed", "TERM");
    assert_eq!(pg.value(JOB, "offsite_sync_last_status"), Some(2.0));
    assert_eq!(pg.value(JOB, "backup_last_success_timestamp"), Some(ok_ts));
}

//! Guards that act before anything is fetched: bad arguments (exit 2), a
//! second run (exit 4), a missing backup root (exit 5).

mod support;

use backup_tests::harness::Run;
use support::Backup;

fn weekday_cmd(b: &Backup) -> std::process::Command {
    let kh =
        b.sb.write("known_hosts", "[127.0.0.1]:1 ssh-ed25519 AAAA\n");
    let mut c = b.cmd("2026-11-24");
    c.arg("--known-hosts").arg(kh);
    c
}

#[test]
fn bad_arguments_are_one_line_usage_errors() {
    let b = Backup::new();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--keep-weeks", "0"],
            "--keep-weeks 0: expected at least 1",
        ),
        (&["--ssh", "pfsense.invalid"], "expected USER@HOST"),
        (
            &["--shrink-ratio", "2"],
            "expected a fraction between 0 and 1",
        ),
        (
            &["--config-from", "api"],
            "--config-from api needs --api-url URL",
        ),
    ];
    for (args, want) in cases {
        let r = Run::of(weekday_cmd(&b).args(args));
        r.fails_with(2).stderr_contains(want);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }
    assert!(!b.dest().exists());
}

#[test]
fn a_second_run_is_refused_while_the_first_holds_the_lock() {
    let b = Backup::new();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(b.sb.lock_dir().join("pfsense-pull.lock"))
        .expect("lock file");
    lock.try_lock().expect("take the lock");
    Run::of(&mut weekday_cmd(&b)).fails_with(4);
    assert!(!b.dest().exists());
}

#[test]
fn a_missing_backup_root_is_refused() {
    let b = Backup::new();
    let mut c = b.sb.cmd("pfsense-pull");
    let kh = b.sb.write("known_hosts", "x\n");
    c.arg("--dest")
        .arg(b.sb.path().join("not-mounted/pfsense"))
        .arg("--known-hosts")
        .arg(kh)
        .arg("--metrics-file")
        .arg(b.metrics_path())
        .args(["--today", "2026-11-24"]);
    Run::of(&mut c)
        .fails_with(5)
        .stderr_contains("is the backup disk mounted?");
    assert!(!b.sb.path().join("not-mounted").exists());
    assert_eq!(b.metric("pfsense_config_ok"), 0.0);
}

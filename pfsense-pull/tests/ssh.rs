//! pfsense-pull against a real OpenSSH sshd on loopback whose "firewall" is
//! a temp tree shaped like pfSense (config.xml in /cf/conf, system files,
//! and the dev/proc/tmp/var/run trees the full tar leaves out). The full
//! tar is a real `tar czf -` over the SSH session.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_tests::harness::Run;
use backup_tests::sshd::{Sshd, SshdOpts};
use backup_tests::stop::{Stop, stop};
use support::{Backup, Firewall, config_xml, tar_names};

// 2026-11-29 is a Sunday (ISO week 2026-W48); 2026-11-22 the one before.
const SUNDAY: &str = "2026-11-29";
const SATURDAY: &str = "2026-11-28";
const MONDAY: &str = "2026-11-30";

#[test]
fn sunday_pulls_the_config_and_a_checked_full_tar_into_the_week() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    Run::of(&mut b.ssh_cmd(&sshd, &fw, SUNDAY)).succeeds();

    assert_eq!(
        b.files(),
        [
            "2026-W48/config-20261129.xml",
            "2026-W48/pfsense-full-20261129.tar.gz"
        ]
    );
    assert_eq!(
        b.read("2026-W48/config-20261129.xml"),
        std::fs::read(fw.config_path()).expect("remote config")
    );
    // Both hold the firewall's secrets: owner-only, whatever the umask.
    for f in b.files() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(b.dest().join(&f))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}: mode {mode:o}");
    }
    let names = tar_names(&b.dest().join("2026-W48/pfsense-full-20261129.tar.gz"));
    let root = fw.path().display().to_string();
    let root = root.trim_start_matches('/');
    for want in [
        "cf/conf/config.xml",
        "etc/rc.conf",
        "var/db/rrd/wan.rrd",
        "boot/loader.conf",
    ] {
        assert!(
            names.iter().any(|n| n == &format!("{root}/{want}")),
            "{want} not in {names:?}"
        );
    }
    for excluded in ["dev", "proc", "tmp", "var/run"] {
        let prefix = format!("{root}/{excluded}");
        assert!(
            !names.iter().any(|n| n.starts_with(&prefix)),
            "{excluded} was not excluded: {names:?}"
        );
    }
    assert_eq!(
        b.ledger_lines(),
        [
            "pfsense/2026-W48/config-20261129.xml",
            "pfsense/2026-W48/pfsense-full-20261129.tar.gz"
        ]
    );
    assert_eq!(b.metric("pfsense_full_tar_taken"), 1.0);
    assert_eq!(b.metric("pfsense_config_ok"), 1.0);
    assert_eq!(b.metric("pfsense_config_changed"), 1.0);
}

#[test]
fn weekdays_take_no_tar_and_an_unchanged_config_is_reported_as_such() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    Run::of(&mut b.ssh_cmd(&sshd, &fw, SATURDAY)).succeeds();
    assert_eq!(b.files(), ["2026-W48/config-20261128.xml"]);
    assert_eq!(b.metric("pfsense_full_tar_taken"), 0.0);
    assert_eq!(b.metric("pfsense_full_tar_wanted"), 0.0);

    Run::of(&mut b.ssh_cmd(&sshd, &fw, MONDAY)).succeeds();
    assert_eq!(
        b.files(),
        [
            "2026-W48/config-20261128.xml",
            "2026-W49/config-20261130.xml"
        ]
    );
    assert_eq!(b.metric("pfsense_config_changed"), 0.0);

    fw.write("cf/conf/config.xml", &config_xml(41, "fw"));
    Run::of(&mut b.ssh_cmd(&sshd, &fw, "2026-12-01")).succeeds();
    assert_eq!(b.metric("pfsense_config_changed"), 1.0);
    assert_eq!(
        b.newest_config().as_deref(),
        Some("2026-W49/config-20261201.xml")
    );
}

#[test]
fn bad_configs_never_replace_the_last_good_copy() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    Run::of(&mut b.ssh_cmd(&sshd, &fw, SATURDAY)).succeeds();
    let good = b.read("2026-W48/config-20261128.xml");
    let before = b.files();
    let ledger_before = b.ledger_lines();

    let html =
        b"<!DOCTYPE html>\n<html><head><title>pfSense - Login</title></head><body></body></html>\n"
            .to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "not well-formed XML",
        ),
        ("html", html, "an HTML page"),
        ("empty", Vec::new(), "empty body"),
        (
            "wrong root",
            b"<?xml version=\"1.0\"?>\n<opnsense><version>24.1</version></opnsense>\n".to_vec(),
            "expected <pfsense>",
        ),
        (
            "no version",
            b"<?xml version=\"1.0\"?>\n<pfsense><system/></pfsense>\n".to_vec(),
            "no <version>",
        ),
    ];
    for (name, body, reason) in cases {
        fw.write("cf/conf/config.xml", &body);
        let r = Run::of(&mut b.ssh_cmd(&sshd, &fw, MONDAY));
        r.fails_with(1)
            .stderr_contains(reason)
            .stderr_contains("stays the newest");
        assert_eq!(b.files(), before, "{name}: the copies changed");
        assert_eq!(
            b.read("2026-W48/config-20261128.xml"),
            good,
            "{name}: good copy altered"
        );
        assert_eq!(
            b.newest_config().as_deref(),
            Some("2026-W48/config-20261128.xml")
        );
        assert_eq!(b.ledger_lines(), ledger_before, "{name}: ledger changed");
        assert_eq!(b.metric("pfsense_config_ok"), 0.0, "{name}");
        assert_eq!(
            b.metric("pfsense_config_previous_bytes"),
            good.len() as f64,
            "{name}"
        );
    }
}

#[test]
fn a_much_smaller_config_is_stored_with_a_warning_in_log_and_metrics() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    Run::of(&mut b.ssh_cmd(&sshd, &fw, SATURDAY)).succeeds();
    assert_eq!(b.metric("pfsense_config_shrink_warning"), 0.0);
    fw.write("cf/conf/config.xml", &config_xml(2, "fw"));
    Run::of(&mut b.ssh_cmd(&sshd, &fw, MONDAY))
        .succeeds()
        .stderr_contains("much smaller than the last good copy");
    assert_eq!(b.metric("pfsense_config_shrink_warning"), 1.0);
    assert!(b.metric("pfsense_config_bytes") < b.metric("pfsense_config_previous_bytes") / 2.0);
    assert_eq!(
        b.newest_config().as_deref(),
        Some("2026-W49/config-20261130.xml")
    );
}

#[test]
fn an_unknown_host_key_is_refused_and_nothing_is_written() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let impostor = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    // The impostor's key recorded under our daemon's name and port.
    let kh = std::fs::read_to_string(impostor.known_hosts())
        .expect("kh")
        .replace(
            &format!(":{}]", impostor.port()),
            &format!(":{}]", sshd.port()),
        );
    let forged = b.sb.write("forged_known_hosts", kh);
    Run::of(&mut b.ssh_cmd_with(&sshd, &fw, SUNDAY, &forged, &fw.config_path()))
        .fails_with(1)
        .stderr_contains("ssh: exited 255");
    assert!(b.files().is_empty(), "{:?}", b.files());

    let missing = b.sb.path().join("no_known_hosts");
    Run::of(&mut b.ssh_cmd_with(&sshd, &fw, SUNDAY, &missing, &fw.config_path()))
        .fails_with(2)
        .stderr_contains("never accepted blindly");
}

#[test]
fn bug22_a_stalled_firewall_is_cut_off_by_the_run_timeout() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    // `cat` of a FIFO nobody writes blocks forever: a hung firewall.
    let fifo = fw.path().join("cf/conf/stalled.xml");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    Run::of(
        b.ssh_cmd_with(&sshd, &fw, SATURDAY, sshd.known_hosts(), &fifo)
            .args(["--timeout", "3s"]),
    )
    .fails_with(1)
    .stderr_contains("timed out");
    assert!(b.files().is_empty(), "{:?}", b.files());
    assert_eq!(b.metric("pfsense_config_ok"), 0.0);
}

/// Start the tool in the background and wait until its tar stream has
/// written at least `bytes` into the `.partial` file.
fn start_until_partial(cmd: &mut Command, partial: &std::path::Path, bytes: u64) -> Child {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::fs::metadata(partial).is_ok_and(|m| m.len() >= bytes) {
            return child;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the run ended ({st}) before the tar stream started");
        }
        assert!(Instant::now() < deadline, "no partial tar appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn big_random_file(fw: &Firewall) {
    // Incompressible, so the stream takes a while and can be cut mid-way.
    let p = fw.path().join("var/db/big.bin");
    let st = Command::new("head")
        .args(["-c", "32M", "/dev/urandom"])
        .stdout(std::fs::File::create(&p).expect("create"))
        .status()
        .expect("head");
    assert!(st.success());
}

#[test]
fn bug22_27_sshd_killed_mid_tar_leaves_no_tar_and_no_rotation() {
    let fw = Firewall::new();
    let mut sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    Run::of(&mut b.ssh_cmd(&sshd, &fw, "2026-11-22")).succeeds();
    let old = b.files();
    assert_eq!(
        old,
        [
            "2026-W47/config-20261122.xml",
            "2026-W47/pfsense-full-20261122.tar.gz"
        ]
    );
    let old_tar = b.read("2026-W47/pfsense-full-20261122.tar.gz");

    big_random_file(&fw);
    let partial = b
        .dest()
        .join("2026-W48/.pfsense-full-20261129.tar.gz.partial");
    // --keep-weeks 1 would drop week 47 if rotation ran after this failure.
    let mut cmd = b.ssh_cmd(&sshd, &fw, SUNDAY);
    cmd.args(["--keep-weeks", "1"]);
    let child = start_until_partial(&mut cmd, &partial, 256 * 1024);
    sshd.kill();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The config came through; the tar did not: partial failure.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("full tar failed"), "{stderr}");
    assert!(stderr.contains("no full tar kept"), "{stderr}");
    assert!(stderr.contains("rotation skipped"), "{stderr}");
    assert_eq!(
        b.files(),
        [
            "2026-W47/config-20261122.xml",
            "2026-W47/pfsense-full-20261122.tar.gz",
            "2026-W48/config-20261129.xml"
        ]
    );
    assert_eq!(b.read("2026-W47/pfsense-full-20261122.tar.gz"), old_tar);
    assert_eq!(b.metric("pfsense_full_tar_wanted"), 1.0);
    assert_eq!(b.metric("pfsense_full_tar_taken"), 0.0);
    assert!(
        !b.ledger_lines()
            .iter()
            .any(|l| l.contains("20261129.tar.gz"))
    );
}

/// A complete gzip stream holding a complete tar (false when absent).
fn whole_tar_gz(path: &std::path::Path) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let Ok(entries) = ar.entries() else {
        return false;
    };
    for e in entries {
        let Ok(mut e) = e else { return false };
        if std::io::copy(&mut e, &mut std::io::sink()).is_err() {
            return false;
        }
    }
    // The gzip trailer comes after the tar's end marker.
    let mut rest = ar.into_inner();
    let mut buf = [0u8; 8192];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// A run stopped mid-tar (last week's copies on disk, `--keep-weeks 1`):
/// status != 0 and no ssh left; last week's copies byte-identical (no
/// rotation ran); nothing but whole, checked copies under final names, each
/// already in the ledger (the next run may be days later); the next run
/// replaces the partial and stores and ledgers config and tar.
fn stopped_mid_tar(how: Stop) {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    Run::of(&mut b.ssh_cmd(&sshd, &fw, "2026-11-22")).succeeds();
    let good: Vec<(String, Vec<u8>)> = b
        .files()
        .into_iter()
        .map(|f| (f.clone(), b.read(&f)))
        .collect();
    assert_eq!(good.len(), 2, "{:?}", b.files());

    big_random_file(&fw);
    let partial = b
        .dest()
        .join("2026-W48/.pfsense-full-20261129.tar.gz.partial");
    let mut cmd = b.ssh_cmd(&sshd, &fw, SUNDAY);
    cmd.args(["--keep-weeks", "1"]);
    let mut child = start_until_partial(&mut cmd, &partial, 256 * 1024);
    stop(&mut child, how).failed_mid("ssh").left_no_process();

    // An ssh that outlived pfsense-pull would have finished the stream.
    assert!(
        !whole_tar_gz(&partial),
        "ssh went on writing the tar after pfsense-pull was stopped"
    );
    for (f, bytes) in &good {
        assert_eq!(&b.read(f), bytes, "{f} changed");
    }
    // The config was stored before the tar started.
    let config = std::fs::read(fw.config_path()).expect("remote config");
    assert_eq!(b.read("2026-W48/config-20261129.xml"), config);
    let ledger = b.ledger_lines();
    for f in b.files() {
        if f.rsplit('/').next().is_some_and(|n| n.starts_with('.')) {
            continue; // the .partial, which the next run removes
        }
        assert!(
            good.iter().any(|(g, _)| *g == f)
                || (f == "2026-W48/config-20261129.xml" && b.read(&f) == config),
            "after the stop, {f} sits under a final name"
        );
        assert!(
            ledger.contains(&format!("pfsense/{f}")),
            "{f} is on the backup disk but not in the ledger: {ledger:?}"
        );
    }

    let r = Run::of(&mut b.ssh_cmd(&sshd, &fw, SUNDAY));
    r.succeeds().stderr_contains("left by an interrupted run");
    assert_eq!(
        b.files(),
        [
            "2026-W47/config-20261122.xml",
            "2026-W47/pfsense-full-20261122.tar.gz",
            "2026-W48/config-20261129.xml",
            "2026-W48/pfsense-full-20261129.tar.gz"
        ]
    );
    for (f, bytes) in &good {
        assert_eq!(&b.read(f), bytes, "{f} changed");
    }
    assert_eq!(b.read("2026-W48/config-20261129.xml"), config);
    let names = tar_names(&b.dest().join("2026-W48/pfsense-full-20261129.tar.gz"));
    assert!(names.iter().any(|n| n.ends_with("var/db/big.bin")));
    let ledger = b.ledger_lines();
    for f in [
        "pfsense/2026-W48/config-20261129.xml",
        "pfsense/2026-W48/pfsense-full-20261129.tar.gz",
    ] {
        assert!(ledger.iter().any(|l| l == f), "{f} not in {ledger:?}");
    }
}

#[test]
fn bug27_a_killed_run_leaves_only_a_partial_that_the_next_run_replaces() {
    stopped_mid_tar(Stop::Kill);
}

/// `kill PID`: pfsense-pull does not catch SIGTERM, so it dies as with
/// SIGKILL and ssh goes by PR_SET_PDEATHSIG.
#[test]
fn bug27_sigterm_mid_tar_leaves_only_a_partial_that_the_next_run_replaces() {
    stopped_mid_tar(Stop::Term);
}

/// systemd's stop and TimeoutStartSec=: SIGTERM to pfsense-pull and ssh.
#[test]
fn bug27_systemd_stop_sigterm_to_every_process_mid_tar_leaves_only_a_partial() {
    stopped_mid_tar(Stop::TermUnit);
}

#[test]
fn old_flat_files_are_recognised_and_rotated_by_date() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    let cfg = std::fs::read(fw.config_path()).expect("cfg");
    // The old script's flat layout: weeks 2026-W40, W41 and W47.
    b.sb.write("backup/pfsense/config-20261001.xml", &cfg);
    b.sb.write("backup/pfsense/pfsense-full-20261004.tar.gz", b"old tar");
    b.sb.write("backup/pfsense/config-20261008.xml", &cfg);
    b.sb.write("backup/pfsense/config-20261120.xml", &cfg);
    // A newer flat tar: the newest copy of a kind is kept whatever its age.
    b.sb.write("backup/pfsense/pfsense-full-20261122.tar.gz", b"newer tar");
    b.sb.write("backup/pfsense/notes.txt", b"not ours");
    Run::of(b.ssh_cmd(&sshd, &fw, SATURDAY).args(["--keep-weeks", "2"])).succeeds();
    assert_eq!(
        b.files(),
        [
            "2026-W48/config-20261128.xml",
            "config-20261120.xml",
            "notes.txt",
            "pfsense-full-20261122.tar.gz"
        ]
    );
    // Compared with the newest flat copy: same bytes, so unchanged.
    assert_eq!(b.metric("pfsense_config_changed"), 0.0);
    assert_eq!(b.metric("pfsense_rotated_files"), 3.0);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    let r = Run::of(b.ssh_cmd(&sshd, &fw, SUNDAY).arg("--dry-run"));
    r.succeeds()
        .stdout_contains("-o BatchMode=yes")
        .stdout_contains("-o StrictHostKeyChecking=yes")
        .stdout_contains("tar czf -")
        .stdout_contains("2026-W48/pfsense-full-20261129.tar.gz");
    assert!(!b.dest().exists());
    assert!(b.ledger_lines().is_empty());
}

#[test]
fn json_report_tells_what_was_stored() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    let r = Run::of(b.ssh_cmd(&sshd, &fw, SATURDAY).arg("--json"));
    r.succeeds();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["week"], "2026-W48");
    assert_eq!(v["config"]["ok"], true);
    assert_eq!(
        v["config"]["bytes"].as_u64(),
        Some(std::fs::metadata(fw.config_path()).expect("m").len())
    );
    assert_eq!(v["full_tar"]["wanted"], false);
}

/// Rotation after a good weekday run must not take the last good full tar
/// with it when every Sunday since failed its tar (firewall disk trouble,
/// a tar that fails remotely): those Sundays exit 3, the weekdays succeed,
/// and week retention alone would leave no filesystem copy at all. The
/// newest copy of each kind stays, whatever its age; everything else of
/// the old weeks still goes.
#[test]
fn rotation_never_removes_the_last_good_full_tar() {
    let fw = Firewall::new();
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    let keep = ["--keep-weeks", "2"];
    // 2026-11-15 (W46): a good Sunday, tar taken.
    Run::of(b.ssh_cmd(&sshd, &fw, "2026-11-15").args(keep)).succeeds();
    let good_tar = b.read("2026-W46/pfsense-full-20261115.tar.gz");
    // The next two Sundays the firewall's tar fails (its root is gone).
    for sunday in ["2026-11-22", "2026-11-29"] {
        let mut c = b.cmd(sunday);
        c.arg("--ssh")
            .arg(sshd.target())
            .arg("-p")
            .arg(sshd.port().to_string())
            .arg("--ssh-key")
            .arg(sshd.client_key())
            .arg("--known-hosts")
            .arg(sshd.known_hosts())
            .arg("--remote-config")
            .arg(fw.config_path())
            .arg("--tar-root")
            .arg(fw.path().join("no-such-root"))
            .args(keep);
        Run::of(&mut c)
            .fails_with(3)
            .stderr_contains("full tar failed");
    }
    // Monday 2026-11-30 (W49): a good run; W46 and W47 fall out of the
    // two-week window.
    Run::of(b.ssh_cmd(&sshd, &fw, MONDAY).args(keep))
        .succeeds()
        .stderr_contains("rotation: removing");
    assert_eq!(
        b.files(),
        [
            "2026-W46/pfsense-full-20261115.tar.gz",
            "2026-W48/config-20261129.xml",
            "2026-W49/config-20261130.xml"
        ],
        "the only full tar was rotated away"
    );
    assert_eq!(b.read("2026-W46/pfsense-full-20261115.tar.gz"), good_tar);
    // The next good Sunday's tar replaces it as the newest; then it goes.
    Run::of(b.ssh_cmd(&sshd, &fw, "2026-12-06").args(keep)).succeeds();
    Run::of(b.ssh_cmd(&sshd, &fw, "2026-12-07").args(keep)).succeeds();
    assert_eq!(
        b.files(),
        [
            "2026-W49/config-20261130.xml",
            "2026-W49/config-20261206.xml",
            "2026-W49/pfsense-full-20261206.tar.gz",
            "2026-W50/config-20261207.xml"
        ]
    );
}

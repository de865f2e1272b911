//! A closed stdout never panics (contract 11): `tool --json | head` ends
//! the tool quietly, as ripgrep does, instead of exit 101 and "failed
//! printing to stdout: Broken pipe". Each command runs with its stdout a
//! pipe whose read end is closed before it starts, so its first write
//! fails with EPIPE whatever the machine's load.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use backup_tests::emu::EmuHost;
use backup_tests::harness::Sandbox;

/// A pipe's write end whose read end is already closed.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors on success; each is owned
    // exactly once below.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors from pipe2, not owned elsewhere.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// Run with a closed stdout: a quiet end with `want` (0 for listings, as
/// ripgrep; a finished run keeps its own code), no panic, no message.
#[track_caller]
fn quiet(what: &str, cmd: &mut Command, want: i32) {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what}: panicked\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(want),
        "{what}: {}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    // Quiet: nothing about stdout (rsync's own messages may mention
    // other pipes, so "Broken pipe" alone is not looked for).
    for noise in [
        "failed printing to stdout",
        "stdout closed",
        "cannot write to stdout",
    ] {
        assert!(!stderr.contains(noise), "{what}: not quiet: {stderr}");
    }
}

#[test]
fn listings_and_reports_end_quietly_when_stdout_is_closed() {
    let sb = Sandbox::new();
    let nfs = sb.mkdir("srv/nfs");
    let ssd = sb.mkdir("srv/nfs-ssd");
    let root = sb.mkdir("mnt/backup");
    backup_tests::harness::init_backup_root(&root);
    for d in ["immich", "frigate", "nextcloud"] {
        std::fs::create_dir_all(nfs.join(d).join("sub")).expect("mkdir");
        std::fs::write(nfs.join(d).join("sub/f"), d).expect("write");
    }
    let skip = sb.write("skip.conf", "direct immich\nnever frigate\n");
    let offsite = |args: &[&str]| {
        let mut c = sb.cmd("offsite-sync");
        c.args(args)
            .arg("--backup-root")
            .arg(&root)
            .arg("--nfs-root")
            .arg(&nfs)
            .arg("--nfs-ssd-root")
            .arg(&ssd)
            .arg("--skip-list")
            .arg(&skip);
        c
    };
    quiet(
        "offsite-sync coverage --json",
        &mut offsite(&["coverage", "--json"]),
        3,
    );
    // No nfs-mirror ran here: nextcloud is uncovered, and a closed stdout
    // must not turn that verdict (exit 3) into a quiet success.
    quiet("offsite-sync coverage", &mut offsite(&["coverage"]), 3);
    quiet(
        "offsite-sync status --no-nas --json",
        &mut offsite(&["status", "--no-nas", "--json"]),
        0,
    );
    quiet(
        "offsite-sync status --no-nas",
        &mut offsite(&["status", "--no-nas"]),
        0,
    );

    // A failed run's report (the NAS refuses the connection, loopback
    // port 1): its exit code 1 stands.
    std::fs::write(root.join("x"), "x").expect("write");
    for json in [false, true] {
        let mut c = offsite(&["step1", "--remote", "nobody@127.0.0.1", "--ssh-port", "1"]);
        c.arg("--known-hosts").arg(sb.path().join("known_hosts"));
        if json {
            c.arg("--json");
        }
        quiet("offsite-sync step1, NAS refusing", &mut c, 1);
    }

    quiet(
        "pvc-copy current-week",
        sb.cmd("pvc-copy").arg("current-week"),
        0,
    );

    // A finished run's report: the run's own exit code stands.
    let mirror = |extra: &[&str]| {
        let mut c = sb.cmd("nfs-mirror");
        c.arg("--source")
            .arg(&nfs)
            .arg("--dest")
            .arg(&root)
            .arg("--skip-list")
            .arg(&skip)
            .args(extra);
        c
    };
    quiet("nfs-mirror --json", &mut mirror(&["--json"]), 0);
    assert!(
        root.join("nextcloud/sub/f").is_file(),
        "nfs-mirror did not run"
    );
    quiet("nfs-mirror --dry-run", &mut mirror(&["--dry-run"]), 0);

    let db = sb.mkdir("dbs");
    let st = Command::new("sqlite3")
        .arg(db.join("a.db"))
        .arg("create table t(x); insert into t values(1);")
        .status()
        .expect("sqlite3");
    assert!(st.success(), "sqlite3: {st}");
    let dump = |extra: &[&str]| {
        let mut c = sb.cmd("sqlite-dump");
        c.arg(&db)
            .arg("--to")
            .arg(root.join("sqlite-backup"))
            .args(extra);
        c
    };
    quiet("sqlite-dump --dry-run", &mut dump(&["--dry-run"]), 0);
    quiet(
        "sqlite-dump --dry-run --json",
        &mut dump(&["--dry-run", "--json"]),
        0,
    );

    quiet(
        "push-metric --dry-run",
        sb.cmd("push-metric").args([
            "--job",
            "nfs-mirror",
            "--status",
            "0",
            "--textfile-dir",
            sb.path().to_str().expect("utf-8"),
            "--dry-run",
        ]),
        0,
    );
}

#[test]
fn lvm_snap_listings_end_quietly_when_stdout_is_closed() {
    let sb = Sandbox::new();
    let emu = EmuHost::new(sb.path().join("emu"));
    emu.add_pool("pve", "data", 256 << 20);
    emu.add_thin_lv("pve", "data", "vm-100-pvc-a", 8 << 20, &[("f", b"x")]);
    emu.add_pv("app", "data", "vm-100-pvc-a");
    let lvm = |args: &[&str]| {
        let mut c = sb.cmd("lvm-snap");
        c.envs(emu.env())
            .env("TZ", "UTC")
            .env("MAPPING_CACHE", sb.path().join("map.json"))
            .env("LVM_SNAP_STATE_DIR", sb.path().join("state"))
            .args(args);
        c
    };
    quiet("lvm-snap list --json", &mut lvm(&["list", "--json"]), 0);
    quiet("lvm-snap list", &mut lvm(&["list"]), 0);
    quiet("lvm-snap pool --json", &mut lvm(&["pool", "--json"]), 0);
    quiet("lvm-snap pool", &mut lvm(&["pool"]), 0);
    // A guard that trips keeps its own code: a closed stdout hides nothing.
    emu.set_pool_usage("pve", "data", Some(99.0), Some(1.0));
    let tripped = lvm(&["pool"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn")
        .code()
        .expect("exit code");
    assert_ne!(tripped, 0, "a full pool passed the guard");
    quiet("lvm-snap pool, pool full", &mut lvm(&["pool"]), tripped);
}

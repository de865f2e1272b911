//! Contract 13 on the backup disk for the change tracker: the change log
//! goes only to a backup root carrying its identity marker. Without one at
//! the start the tracker refuses (exit 5) and writes nothing there; a disk
//! that goes away while it runs gets nothing on the bare mountpoint beneath:
//! the paths are held and written once the disk is back, and a disk that
//! comes back as another one (another marker) gets a full-sync request.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_core::ledger::{Ledger, PathKind};
use backup_tests::harness::{Sandbox, must, names_in};

const BIN: &str = env!("CARGO_BIN_EXE_nfs-track");

fn args(sb: &Sandbox, tree: &Path, log: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--all-routes")
        .arg("--watch")
        .arg(tree)
        .arg("--log")
        .arg(log)
        .arg("--state-dir")
        .arg(sb.path().join("state"))
        .arg("--metrics-file")
        .arg(sb.path().join("nfs-track.prom"))
        .args(["--metrics-interval", "1s", "--backend", "inotify"])
        .env("BACKUP_LOCK_DIR", sb.lock_dir())
        .env("BACKUP_PIPELINE_CONFIG", sb.config_path())
        .env("ALLOW_UNMOUNTED_ROOT", "1")
        .env_remove("JOURNAL_STREAM")
        .env_remove("METRICS_FILE");
    c
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Running(Child, #[allow(dead_code)] UnixDatagram);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start and wait for READY=1.
fn start(sb: &Sandbox, mut c: Command) -> Running {
    let sock_path = sb.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut child = c
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(sb.path().join("tracker.log")).expect("log"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 512];
    loop {
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
        {
            break;
        }
        assert!(child.try_wait().expect("wait").is_none(), "exited early");
        assert!(Instant::now() < deadline, "no READY=1");
    }
    Running(child, sock)
}

fn metric(sb: &Sandbox, name: &str) -> Option<f64> {
    backup_core::metrics::Metrics::read(&sb.path().join("nfs-track.prom"))
        .ok()?
        .get(name)
}

#[test]
fn a_ledger_directory_without_the_backup_root_marker_is_refused_and_left_untouched() {
    let sb = Sandbox::new();
    let tree = sb.mkdir("tree");
    let bare = sb.mkdir("backup");
    let mut child = args(&sb, &tree, &bare.join(".nfs-changes.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nfs-track started on a root without its marker");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains(&bare.display().to_string()), "{err}");
    assert!(err.contains("offsite-sync init --local"), "{err}");
    assert_eq!(names_in(&bare), Vec::<String>::new());
}

/// The disk is detached (`umount -l`) while the tracker runs: the change
/// made meanwhile is held, not written to the bare mountpoint; the same
/// disk mounted again gets it. Then the disk is replaced by another one
/// (another marker): the held path lands there with a full-sync request.
#[test]
fn a_backup_disk_that_goes_away_gets_its_paths_when_back_and_another_disk_a_full_sync() {
    let sb = Sandbox::new();
    let tree = sb.mkdir("tree");
    let root: PathBuf = sb.mount_backup_disk("backup", 16 << 20);
    let log = root.join(".nfs-changes.log");
    let tracker = start(&sb, args(&sb, &tree, &log));
    let on = |dir: &Path| Ledger::new(dir.join(".nfs-changes.log"), PathKind::Absolute);
    let logged = |dir: &Path| on(dir).read().map(|r| r.entries).unwrap_or_default();

    std::fs::write(tree.join("one"), b"1").expect("write");
    wait_until("one logged", || logged(&root).contains(&tree.join("one")));
    // Let the tracker finish with "one" (its create and close_write events
    // may reach the log in two appends): an unmount during an append is a
    // race the tracker rightly answers with a full-sync request.
    let mut seen = (u64::MAX, Instant::now());
    wait_until("the change log settles", || {
        let n = on(&root).line_count().unwrap_or(0);
        if n != seen.0 {
            seen = (n, Instant::now());
        }
        metric(&sb, "nfs_track_pending_paths") == Some(0.0)
            && seen.1.elapsed() > Duration::from_millis(1500)
    });

    // The first start's own request (no state yet) is all there is.
    let reasons = on(&root).full_sync_reasons().expect("reasons");
    must(Command::new("umount").arg("-l").arg(&root));
    std::fs::write(tree.join("two"), b"2").expect("write");
    wait_until("two held", || {
        metric(&sb, "nfs_track_ledger_available") == Some(0.0)
            && metric(&sb, "nfs_track_pending_paths").is_some_and(|n| n >= 1.0)
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        names_in(&root),
        Vec::<String>::new(),
        "written beside the disk"
    );

    // The same disk again: the held path lands on it, no full sync needed.
    let img = sb.path().join("backup.ext4");
    must(
        Command::new("mount")
            .args(["-o", "loop", "-t", "ext4"])
            .arg(&img)
            .arg(&root),
    );
    wait_until("two written", || logged(&root).contains(&tree.join("two")));
    // No full sync is owed for the same disk, unless one of the tracker's
    // own appends overlapped the unmount (the test cannot order the two;
    // the tracker then cannot tell where the lines went and rightly asks
    // for one, saying so in its log).
    let log = std::fs::read_to_string(sb.path().join("tracker.log")).unwrap_or_default();
    if !log.contains("went away while the change log was written") {
        assert_eq!(
            on(&root).full_sync_reasons().expect("reasons"),
            reasons,
            "the tracker's log:\n{log}"
        );
    }

    // Another disk in its place: the change log there lacks "one".
    must(Command::new("umount").arg("-l").arg(&root));
    let other = sb.ext4_image("other.ext4", 16 << 20);
    must(
        Command::new("mount")
            .args(["-o", "loop", "-t", "ext4"])
            .arg(&other)
            .arg(&root),
    );
    backup_tests::harness::init_backup_root(&root);
    std::fs::write(tree.join("three"), b"3").expect("write");
    wait_until("three written with a full-sync request", || {
        logged(&root).contains(&tree.join("three"))
            && on(&root)
                .full_sync_reasons()
                .is_ok_and(|r| r.iter().any(|r| r.contains("another disk")))
    });
    // The tracker stopped first: it may still be appending "three"'s
    // later events, and a disk with a file open cannot be unmounted
    // (EBUSY). The check below is about the bare mountpoint beneath.
    drop(tracker);
    must(Command::new("umount").arg(&root));
    assert_eq!(
        names_in(&root),
        Vec::<String>::new(),
        "written beside the disk"
    );
}

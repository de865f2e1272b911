//! nfs-track against real inotify and fanotify on temp trees: run the
//! binary, change the tree, SIGTERM it, read the ledger as the consumer
//! would (core's decoder).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use backup_core::ledger::{Ledger, PathKind};
use backup_tests::harness::Sandbox;

const BIN: &str = env!("CARGO_BIN_EXE_nfs-track");

struct Env {
    sb: Sandbox,
    tree: PathBuf,
    log: PathBuf,
    state: PathBuf,
    metrics: PathBuf,
}

struct Running {
    child: Child,
    _sock: UnixDatagram,
}

fn sh(script: &str) {
    let st = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .status()
        .expect("sh");
    assert!(st.success(), "script failed: {script}");
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill {sig}");
}

impl Env {
    fn new() -> Env {
        let sb = Sandbox::new();
        let tree = sb.mkdir("tree");
        let disk = sb.mkdir("disk");
        // The ledger's directory is the backup root, initialised once.
        backup_tests::harness::init_backup_root(&disk);
        Env {
            tree,
            log: disk.join("nfs-changes.log"),
            state: sb.path().join("state"),
            metrics: sb.path().join("nfs-track.prom"),
            sb,
        }
    }

    fn args(&self, backend: &str) -> Vec<String> {
        vec![
            "--watch".into(),
            self.tree.display().to_string(),
            "--log".into(),
            self.log.display().to_string(),
            "--state-dir".into(),
            self.state.display().to_string(),
            "--metrics-file".into(),
            self.metrics.display().to_string(),
            "--metrics-interval".into(),
            "1s".into(),
            "--backend".into(),
            backend.into(),
        ]
    }

    fn cmd(&self, prefix: &[&str], backend: &str, extra: &[&str]) -> Command {
        let mut c = if prefix.is_empty() {
            Command::new(BIN)
        } else {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..]).arg(BIN);
            c
        };
        c.args(self.args(backend)).args(extra);
        if !extra.contains(&"--skip-list") {
            c.arg("--all-routes");
        }
        c.env("BACKUP_LOCK_DIR", self.sb.lock_dir())
            .env("BACKUP_PIPELINE_CONFIG", self.sb.config_path())
            .env("ALLOW_UNMOUNTED_ROOT", "1")
            .env_remove("JOURNAL_STREAM")
            .env_remove("METRICS_FILE");
        c
    }

    /// Start the tracker and wait for its sd_notify READY=1.
    fn start_with(&self, prefix: &[&str], backend: &str, extra: &[&str]) -> Running {
        let sock_path = self.sb.path().join(format!("notify-{}", rand_suffix()));
        let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut child = self
            .cmd(prefix, backend, extra)
            .env("NOTIFY_SOCKET", &sock_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nfs-track");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = sock.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
            {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                let out = child.wait_with_output().expect("output");
                panic!(
                    "nfs-track exited before READY ({st}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(Instant::now() < deadline, "no READY=1 within 60 s");
        }
        Running { child, _sock: sock }
    }

    fn start(&self, backend: &str, extra: &[&str]) -> Running {
        self.start_with(&[], backend, extra)
    }

    fn ledger(&self) -> Ledger {
        Ledger::new(&self.log, PathKind::Absolute)
    }

    /// The ledger's entries as raw bytes, relative to the tree.
    fn logged(&self) -> Vec<Vec<u8>> {
        let d = self.ledger().read().expect("read ledger");
        assert!(d.rejected.is_empty(), "rejected lines: {:?}", d.rejected);
        d.entries
            .iter()
            .map(|p| {
                p.strip_prefix(&self.tree)
                    .unwrap_or(p)
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            })
            .collect()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = std::fs::read_to_string(&self.metrics).expect("metrics file");
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Running {
    /// SIGTERM, then the exit status and output.
    fn stop(self) -> Output {
        signal(&self.child, libc::SIGTERM);
        let out = self.child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "nfs-track did not stop cleanly: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn has(logged: &[Vec<u8>], rel: &[u8]) -> bool {
    logged.iter().any(|l| l == rel)
}

#[track_caller]
fn assert_logged(logged: &[Vec<u8>], rels: &[&[u8]]) {
    let missing: Vec<String> = rels
        .iter()
        .filter(|r| !has(logged, r))
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let got: Vec<String> = logged
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}; ledger has {got:?}"
    );
}

/// Every way a file can appear: nested fresh directories, a tree moved in,
/// a tree copied with `cp -a`, hostile names, a directory renamed inside
/// the tree (the watch map must follow it), one moved out (must stop).
fn every_route_reaches_the_ledger(backend: &str) {
    let e = Env::new();
    sh(&format!(
        "cd '{}' && mkdir -p old/sub out && echo 1 > old/sub/keep && mkdir leaving",
        e.tree.display()
    ));
    let outside = e.sb.mkdir("outside");
    sh(&format!(
        "cd '{}' && mkdir -p incoming/deep/er && echo a > incoming/deep/er/a && echo b > incoming/b \
         && mkdir -p copied/x/y && echo c > copied/x/y/c && ln -s c copied/x/y/link",
        outside.display()
    ));
    let t = e.start(backend, &[]);
    let tree = e.tree.display().to_string();
    sh(&format!(
        "cd '{tree}' && mkdir -p a/b/c && echo > a/b/c/f \
         && mv '{o}/incoming' moved && cp -a '{o}/copied' copy \
         && mv old renamed && mv leaving '{o}/gone'",
        o = outside.display()
    ));
    let newline = e.tree.join(OsStr::from_bytes(b"new\nline"));
    let latin1 = e.tree.join(OsStr::from_bytes(b"caf\xe9-\\n-\xff"));
    std::fs::write(&newline, b"x").expect("write");
    std::fs::write(&latin1, b"x").expect("write");
    // Wait until the rename has been seen, so the next write goes through
    // the watch of the renamed directory (its path must have followed).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has(&e.logged(), b"renamed/sub/keep") {
        assert!(Instant::now() < deadline, "rename not logged");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(e.tree.join("renamed/sub/later"), b"x").expect("write");
    std::fs::write(outside.join("gone/not-ours"), b"x").expect("write");
    t.stop();

    let logged = e.logged();
    let rescans = e.metric("nfs_track_rescans_total");
    println!(
        "{backend}: {rescans} rescans, old/sub/keep logged: {}",
        has(&logged, b"old/sub/keep")
    );
    assert_logged(
        &logged,
        &[
            b"a/b/c/f",
            b"moved/deep/er/a",
            b"moved/b",
            b"copy/x/y/c",
            b"copy/x/y/link",
            b"new\nline",
            b"caf\xe9-\\n-\xff",
            b"renamed/sub/keep",
            b"renamed/sub/later",
        ],
    );
    for l in &logged {
        let s = String::from_utf8_lossy(l);
        // Events are resolved to the directory's current path, so only a
        // rescan can log the old name: with no stamp there is none at
        // start, but a kernel queue overflow (the mark covers the whole
        // filesystem, and on a busy machine its queue may be the 256 events
        // of `overflow_is_closed_by_a_rescan`) rescans from just before the
        // start, and a walk that reads `old` before the `mv` logs
        // `old/sub/keep` (written within its margin) under the name it had
        // then. Nothing else under `old/` is possible, and not without a
        // rescan; anything written after the rename carries the new name.
        assert!(
            !s.starts_with("old/") || (s == "old/sub/keep" && rescans >= 1.0),
            "stale path after rename ({rescans} rescans): {s}"
        );
        assert!(
            !s.contains("not-ours"),
            "a directory moved out is still logged: {s}"
        );
        assert!(
            !s.ends_with("/c") || s == "copy/x/y/c",
            "directories are not logged: {s}"
        );
    }
    assert!(!has(&logged, b"a/b/c"), "a directory was logged");
    // Deduplicated: each file once (all changes fall in few flush windows
    // and the ledger is read whole).
    let lines = std::fs::read(&e.log).expect("log");
    assert!(lines.ends_with(b"\n"), "whole lines only");
}

#[test]
fn inotify_every_route_reaches_the_ledger() {
    every_route_reaches_the_ledger("inotify");
}

#[test]
fn fanotify_every_route_reaches_the_ledger() {
    every_route_reaches_the_ledger("fanotify");
}

#[test]
fn excludes_and_skip_list_route() {
    let e = Env::new();
    let skip = e.sb.write(
        "skip.conf",
        "direct immich\nnever frigate\ndirect servarr/keep\n",
    );
    let t = e.start(
        "inotify",
        &[
            "--skip-list",
            skip.to_str().expect("utf8"),
            "--route",
            "direct",
            "--exclude",
            r"\.part$",
        ],
    );
    sh(&format!(
        "cd '{}' && mkdir -p immich/up frigate servarr/keep servarr/other misc \
         && for f in immich/up/a.jpg immich/up/.a.jpg.swp immich/db.sqlite-wal immich/.nfs0001 \
            immich/up/b.part frigate/x servarr/keep/k servarr/other/o misc/m; do echo x > $f; done \
         && mkdir -p immich/.Trash-0/files && echo x > immich/.Trash-0/files/t",
        e.tree.display()
    ));
    t.stop();
    let mut logged = e.logged();
    logged.sort();
    assert_eq!(
        logged,
        vec![b"immich/up/a.jpg".to_vec(), b"servarr/keep/k".to_vec()],
        "only direct-route files, excludes applied"
    );
    // Only directories that can hold direct paths are watched: the root,
    // immich, immich/up, immich/.Trash-0 and its files/, servarr (it holds
    // servarr/keep), servarr/keep; not frigate, misc or servarr/other.
    assert_eq!(e.metric("nfs_track_watches"), 7.0);
}

/// Lowers a global queue limit for as long as it lives. The kernel reads
/// it when a tracker creates its queue, so it is held only around one
/// start-up; a test starting meanwhile merely gets a small queue, which the
/// tracker handles the same way.
struct QueueLimit {
    path: &'static str,
    old: String,
}

static QUEUE_LIMIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl QueueLimit {
    fn lower(path: &'static str, to: usize) -> QueueLimit {
        let old = std::fs::read_to_string(path).expect("read queue limit");
        std::fs::write(path, to.to_string()).expect("lower queue limit");
        QueueLimit { path, old }
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

/// A burst larger than the kernel queue while the reader is stalled
/// (SIGSTOP): the overflow must be noticed and every file still reach the
/// ledger (by the rescan) or the marker be set.
fn overflow_is_closed_by_a_rescan(backend: &str) {
    let e = Env::new();
    // The directories exist (and are watched) before the burst, so every
    // file makes events that the stalled reader cannot take.
    for d in 0..20 {
        std::fs::create_dir(e.tree.join(format!("d{d}"))).expect("mkdir");
    }
    let q = 256;
    let t = {
        let _serial = QUEUE_LIMIT.lock().unwrap_or_else(|p| p.into_inner());
        let _limit = QueueLimit::lower(
            if backend == "inotify" {
                "/proc/sys/fs/inotify/max_queued_events"
            } else {
                "/proc/sys/fs/fanotify/max_queued_events"
            },
            q,
        );
        e.start(backend, &[])
    };
    let marker_before = e.ledger().full_sync_reasons().expect("reasons").len();
    signal(&t.child, libc::SIGSTOP);
    let n = 3 * q;
    for i in 0..n {
        std::fs::write(e.tree.join(format!("d{}/f{i}", i % 20)), b"").expect("write");
    }
    signal(&t.child, libc::SIGCONT);
    let out = t.stop();
    let overflows = e.metric("nfs_track_overflows_total");
    assert!(
        overflows >= 1.0,
        "the queue of {q} should have overflowed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logged: std::collections::HashSet<Vec<u8>> = e.logged().into_iter().collect();
    let missing = (0..n)
        .filter(|i| !logged.contains(format!("d{}/f{i}", i % 20).as_bytes()))
        .count();
    let marker_after = e.ledger().full_sync_reasons().expect("reasons").len();
    assert!(
        missing == 0 || marker_after > marker_before,
        "{missing} of {n} files lost without a full-sync marker"
    );
    assert_eq!(missing, 0, "the rescan should have found every file");
    assert!(e.metric("nfs_track_rescans_total") >= 1.0);
}

#[test]
fn inotify_overflow_is_closed_by_a_rescan() {
    overflow_is_closed_by_a_rescan("inotify");
}

#[test]
fn fanotify_overflow_is_closed_by_a_rescan() {
    overflow_is_closed_by_a_rescan("fanotify");
}

/// SIGKILL, changes while down (new files, a tree moved in whose files keep
/// their old ctime), restart: the ctime rescan from the stamp logs them.
fn changes_while_killed_are_logged_after_restart(backend: &str) {
    let e = Env::new();
    let outside = e.sb.mkdir("outside");
    sh(&format!(
        "mkdir -p '{o}/album/2024' && echo p > '{o}/album/2024/p.jpg'",
        o = outside.display()
    ));
    let t = e.start(backend, &[]);
    let first = e.ledger().full_sync_reasons().expect("reasons");
    assert_eq!(first.len(), 1, "first start has no stamp: marker");
    assert!(first[0].contains("no record"), "{first:?}");
    let mut child = t.child;
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    sh(&format!(
        "cd '{tree}' && mkdir -p while/down && echo x > while/down/f && echo y > top \
         && mv '{o}/album' album",
        tree = e.tree.display(),
        o = outside.display()
    ));
    let t = e.start(backend, &[]);
    t.stop();
    assert_logged(&e.logged(), &[b"while/down/f", b"top", b"album/2024/p.jpg"]);
    assert_eq!(
        e.ledger().full_sync_reasons().expect("reasons").len(),
        1,
        "the restart closed the gap itself: no new marker"
    );
    assert!(e.metric("nfs_track_rescans_total") >= 1.0);
}

#[test]
fn inotify_changes_while_killed_are_logged_after_restart() {
    changes_while_killed_are_logged_after_restart("inotify");
}

#[test]
fn fanotify_changes_while_killed_are_logged_after_restart() {
    changes_while_killed_are_logged_after_restart("fanotify");
}

/// Not a mountpoint: paths are held and nothing is written under the bare
/// directory; once something is mounted there (a bind mount, in the
/// tracker's private mount namespace) the held paths land on it.
#[test]
fn holds_paths_until_the_backup_disk_is_mounted() {
    let mut e = Env::new();
    let mnt = e.sb.mkdir("mnt");
    let disk = e.sb.mkdir("realdisk");
    backup_tests::harness::init_backup_root(&disk);
    e.log = mnt.join("nfs-changes.log");
    let extra = ["--require-mountpoint", mnt.to_str().expect("utf8")];
    let t = e.start_with(
        &["unshare", "-m", "--propagation", "private"],
        "inotify",
        &extra,
    );
    sh(&format!(
        "cd '{}' && mkdir -p p/q && echo 1 > p/q/one && echo 2 > two",
        e.tree.display()
    ));
    // The heartbeat shows the paths held and the ledger unavailable.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = std::fs::read_to_string(&e.metrics).is_ok_and(|_| {
            e.metric("nfs_track_pending_paths") >= 2.0
                && e.metric("nfs_track_ledger_available") == 0.0
        });
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "paths were not held");
        std::thread::sleep(Duration::from_millis(100));
    }
    let under: Vec<_> = std::fs::read_dir(&mnt).expect("readdir").collect();
    assert!(
        under.is_empty(),
        "wrote under the bare mountpoint: {under:?}"
    );
    let pid = t.child.id().to_string();
    sh(&format!(
        "nsenter -t {pid} -m mount --bind '{}' '{}'",
        disk.display(),
        mnt.display()
    ));
    let on_disk = Ledger::new(disk.join("nfs-changes.log"), PathKind::Absolute);
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_disk.read().expect("read").entries.len() < 2 {
        assert!(Instant::now() < deadline, "held paths never written");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.stop();
    let mut got: Vec<PathBuf> = on_disk.read().expect("read").entries;
    got.sort();
    assert_eq!(got, vec![e.tree.join("p/q/one"), e.tree.join("two")]);
    assert!(std::fs::read_dir(&mnt).expect("readdir").next().is_none());
}

/// Past --max-pending while the disk is away: the paths are dropped and
/// the full-sync marker is written once the disk is back.
#[test]
fn too_many_held_paths_become_a_marker() {
    let mut e = Env::new();
    let mnt = e.sb.mkdir("mnt");
    let disk = e.sb.mkdir("realdisk");
    backup_tests::harness::init_backup_root(&disk);
    e.log = mnt.join("nfs-changes.log");
    let extra = [
        "--require-mountpoint",
        mnt.to_str().expect("utf8"),
        "--max-pending",
        "3",
    ];
    let t = e.start_with(
        &["unshare", "-m", "--propagation", "private"],
        "inotify",
        &extra,
    );
    sh(&format!(
        "cd '{}' && for i in 1 2 3 4 5 6 7 8; do echo $i > f$i; done",
        e.tree.display()
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&e.metrics)
        .is_ok_and(|_| e.metric("nfs_track_dropped_paths_total") >= 1.0)
    {
        assert!(Instant::now() < deadline, "paths were not dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    sh(&format!(
        "nsenter -t {} -m mount --bind '{}' '{}'",
        t.child.id(),
        disk.display(),
        mnt.display()
    ));
    let on_disk = Ledger::new(disk.join("nfs-changes.log"), PathKind::Absolute);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !on_disk
        .full_sync_reasons()
        .expect("reasons")
        .iter()
        .any(|r| r.contains("held in memory"))
    {
        assert!(
            Instant::now() < deadline,
            "no marker after the disk came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t.stop();
}

/// The watch limit (lowered in a private user namespace, so no other test
/// is affected): a message naming the sysctl, and the marker.
#[test]
fn watch_limit_names_the_sysctl_and_sets_the_marker() {
    let e = Env::new();
    for i in 0..12 {
        std::fs::create_dir_all(e.tree.join(format!("d{i}/sub"))).expect("mkdir");
    }
    let mut c = Command::new("unshare");
    c.args(["-U", "-r", "sh", "-c"])
        .arg("echo 5 > /proc/sys/user/max_inotify_watches && exec \"$@\"")
        .arg("sh")
        .arg(BIN)
        .args(e.args("inotify"))
        .arg("--all-routes")
        .env("BACKUP_LOCK_DIR", e.sb.lock_dir())
        .env("BACKUP_PIPELINE_CONFIG", e.sb.config_path())
        .env("ALLOW_UNMOUNTED_ROOT", "1")
        .stderr(Stdio::piped());
    let sock_path = e.sb.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    c.env("NOTIFY_SOCKET", &sock_path);
    let child = c.spawn().expect("spawn");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    let out = Running { child, _sock: sock }.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fs.inotify.max_user_watches"), "{err}");
    let reasons = e.ledger().full_sync_reasons().expect("reasons");
    assert!(
        reasons.iter().any(|r| r.contains("watch limit")),
        "{reasons:?}"
    );
    assert!(e.metric("nfs_track_watch_limit_hits_total") >= 1.0);
}

#[test]
fn bad_usage_is_refused_with_exit_2() {
    let e = Env::new();
    let out = Command::new(BIN)
        .args(["--watch", "/nonexistent/tree", "--log", "/tmp/x.log"])
        .env("BACKUP_LOCK_DIR", e.sb.lock_dir())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--watch /nonexistent/tree: not a directory")
    );
    let out = e
        .cmd(&[], "inotify", &["--exclude", "(unclosed"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--exclude \"(unclosed\""));
    let out = e
        .cmd(&[], "inotify", &["--require-mountpoint", "/mnt/elsewhere"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = e
        .cmd(&[], "inotify", &["--flush-interval", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--flush-interval 0: expected more than zero")
    );
    assert!(!e.log.exists(), "nothing written on bad usage");
}

#[test]
fn a_second_instance_is_busy() {
    let e = Env::new();
    let t = e.start("inotify", &[]);
    let out = e.cmd(&[], "inotify", &[]).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.stop();
}

#[test]
fn auto_picks_fanotify_as_root_and_says_so_in_the_metrics() {
    let e = Env::new();
    let t = e.start("auto", &[]);
    t.stop();
    let text = std::fs::read_to_string(&e.metrics).expect("metrics");
    assert!(
        text.contains("nfs_track_up{backend=\"fanotify\"} 0"),
        "root on a local filesystem should get fanotify; clean stop sets up=0:\n{text}"
    );
}

#[test]
fn watchdog_pings_when_systemd_asks() {
    let e = Env::new();
    let sock_path = e.sb.path().join("notify-wd");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let child = e
        .cmd(&[], "inotify", &[])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = sock.recv(&mut buf).expect("a notification within 30 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen[0].contains("READY=1"), "READY comes first: {seen:?}");
    Running { child, _sock: sock }.stop();
}

#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory;
    nfs_track::Cli::command().debug_assert();
    let out = Command::new(BIN).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes:") && help.contains("--require-mountpoint"));
}

/// The ledger's disk is full (a 64 KiB tmpfs in the tracker's private
/// mount namespace): nothing is lost, the paths are held and written once
/// space is freed, and the stamp does not move past them meanwhile.
#[test]
fn full_ledger_disk_holds_paths_until_space_is_freed() {
    let mut e = Env::new();
    let mnt = e.sb.mkdir("small");
    e.log = mnt.join("nfs-changes.log");
    // The tmpfs is the backup disk: it gets an identity marker.
    let marker = e.sb.mkdir("marker-src");
    backup_tests::harness::init_backup_root(&marker);
    // The tracker starts in its own namespace with the tmpfs already there.
    let t = e.start_with(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!(
                "mount -t tmpfs -o size=64k tmpfs '{}' && cp '{}' '{}' && exec \"$@\"",
                mnt.display(),
                marker.join(backup_core::marker::FILE).display(),
                mnt.display()
            ),
            "sh",
        ],
        "inotify",
        &[],
    );
    let pid = t.child.id();
    let in_ns = |script: &str| sh(&format!("nsenter -t {pid} -m sh -ec '{script}'"));
    in_ns(&format!(
        "dd if=/dev/zero of={}/filler bs=4k count=100 2>/dev/null || true",
        mnt.display()
    ));
    let names: Vec<String> = (0..40)
        .map(|i| format!("file-with-a-long-name-{i:03}"))
        .collect();
    for n in &names {
        std::fs::write(e.tree.join(n), b"x").expect("write");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&e.metrics)
        .is_ok_and(|_| e.metric("nfs_track_pending_paths") >= names.len() as f64)
    {
        assert!(
            Instant::now() < deadline,
            "paths not held while the disk is full"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    in_ns(&format!("rm {}/filler", mnt.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&e.metrics)
        .is_ok_and(|_| e.metric("nfs_track_pending_paths") > 0.0)
    {
        assert!(Instant::now() < deadline, "held paths never written");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Read the ledger inside the namespace before the tracker (and with it
    // the tmpfs) goes away.
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "cat"])
        .arg(&e.log)
        .output()
        .expect("nsenter cat");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let out = t.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write the ledger"), "{err}");
    let want: Vec<String> = names
        .iter()
        .map(|n| e.tree.join(n).display().to_string())
        .collect();
    for w in &want {
        assert!(
            text.lines().any(|l| l == w),
            "{w} lost after the disk was full:\n{text}"
        );
    }
    assert!(
        text.lines().all(|l| want.iter().any(|w| w == l)),
        "a truncated or foreign line in the ledger:\n{text}"
    );
}

/// A file written unnamed (`O_TMPFILE`) and then linked into place with
/// `linkat` (the atomic-write pattern of systemd and others) is created
/// with one link and its `close_write` names no real path (fanotify
/// reports `#<ino>`, inotify nothing): the creation is its only event.
fn tmpfile_linked_into_place(backend: &str) {
    use std::ffi::CString;
    let e = Env::new();
    std::fs::create_dir(e.tree.join("sub")).expect("mkdir");
    let t = e.start(backend, &[]);
    let dir = CString::new(e.tree.join("sub").as_os_str().as_bytes()).expect("c");
    let dest = CString::new(e.tree.join("sub/atomic.txt").as_os_str().as_bytes()).expect("c");
    // SAFETY: plain syscalls on valid NUL-terminated paths and our own fd.
    unsafe {
        let fd = libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_WRONLY, 0o644);
        assert!(fd >= 0, "O_TMPFILE: {}", std::io::Error::last_os_error());
        assert_eq!(libc::write(fd, b"data".as_ptr().cast(), 4), 4);
        let proc_fd = CString::new(format!("/proc/self/fd/{fd}")).expect("c");
        let rc = libc::linkat(
            libc::AT_FDCWD,
            proc_fd.as_ptr(),
            libc::AT_FDCWD,
            dest.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        );
        assert_eq!(rc, 0, "linkat: {}", std::io::Error::last_os_error());
        libc::close(fd);
    }
    // A plain file after it: once it is logged, the linked one had its chance.
    std::fs::write(e.tree.join("sub/after"), b"x").expect("write");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has(&e.logged(), b"sub/after") {
        assert!(Instant::now() < deadline, "sub/after never logged");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.stop();
    assert_logged(&e.logged(), &[b"sub/atomic.txt", b"sub/after"]);
}

#[test]
fn inotify_tmpfile_linked_into_place_is_logged() {
    tmpfile_linked_into_place("inotify");
}

#[test]
fn fanotify_tmpfile_linked_into_place_is_logged() {
    tmpfile_linked_into_place("fanotify");
}

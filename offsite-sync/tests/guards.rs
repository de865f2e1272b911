//! Guards that keep ledger entries while a source cannot be trusted
//! (found by an audit): real sshd NAS, real rsync, real ext4 mounts.

mod common;

use common::{World, set};

fn recent_full(w: &World) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for s in [1, 2] {
        World::put(
            &w.root,
            format!(".offsite-sync/last-full-step{s}").as_bytes(),
            format!("{now}\n").as_bytes(),
        );
    }
}

/// `--require-mountpoint` (the unit passes it) promises that an unmounted
/// NFS root is refused. The incremental step 2 did not check it: with
/// /srv/nfs not mounted (a bare directory), every change-log entry looked
/// "vanished", the batch was committed and the run exited 0, so the
/// changes reached the NAS only at the next full pass, up to 30 days later.
#[test]
fn step2_keeps_the_change_log_while_an_nfs_root_is_not_mounted() {
    let w = World::with_nas();
    recent_full(&w);
    // nfs-ssd is its own filesystem; /srv/nfs did not mount.
    w.sb.mount_ext4("srv/nfs-ssd", 16 << 20);
    let ssd = World::put(&w.nfs_ssd, b"immich/thumbs/t.webp", b"webp");
    let photo = w.nfs.join("immich/upload/a.jpg");
    w.leg2()
        .append_paths([photo.as_path(), ssd.as_path()])
        .expect("append");

    w.run("step2", &["--require-mountpoint"])
        .fails_with(5)
        .stderr_contains("not a mountpoint");
    assert_eq!(
        w.leg2().line_count().expect("count"),
        2,
        "the change log was consumed while /srv/nfs was not mounted"
    );

    // The filesystem is back: the same entries are delivered.
    w.sb.mount_ext4("srv/nfs", 16 << 20);
    World::put(&w.nfs, b"immich/upload/a.jpg", b"jpg");
    w.run("step2", &["--require-mountpoint"])
        .succeeds()
        .stdout_contains("2 sent");
    assert_eq!(
        World::files(&w.nas_dir.join("nfs")),
        set(&[b"immich/upload/a.jpg"])
    );
    assert_eq!(
        World::files(&w.nas_dir.join("nfs-ssd")),
        set(&[b"immich/thumbs/t.webp"])
    );
    assert_eq!(w.leg2().line_count().expect("count"), 0);
}

/// nfs-track writes canonical paths (it canonicalises `--watch`, and its
/// fanotify backend can only report real paths). When /srv/nfs is a
/// symlink to the real tree, step 2 compared those paths with the
/// configured root as given: every entry counted as "not direct", the
/// batch was committed and the run exited 0, so uploads reached the NAS
/// only at the next full pass. Real nfs-track (inotify) feeds the ledger.
#[test]
fn step2_sends_what_nfs_track_logged_under_a_symlinked_nfs_root() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let w = World::with_nas();
    recent_full(&w);
    let real = w.sb.mkdir("data/nfs");
    std::fs::create_dir_all(real.join("immich")).expect("mkdir");
    std::fs::remove_dir(&w.nfs).expect("rmdir");
    std::os::unix::fs::symlink(&real, &w.nfs).expect("symlink");

    let mut tracker = Command::new(backup_tests::harness::bin("nfs-track"))
        .arg("--watch")
        .arg(&w.nfs)
        .arg("--log")
        .arg(w.leg2().path())
        .arg("--skip-list")
        .arg(&w.skip)
        .args(["--route", "direct", "--backend", "inotify"])
        .arg("--state-dir")
        .arg(w.sb.path().join("nfs-track-state"))
        .env("BACKUP_LOCK_DIR", w.sb.lock_dir())
        .env("BACKUP_PIPELINE_CONFIG", w.sb.config_path())
        .env("ALLOW_UNMOUNTED_ROOT", "1")
        .env_remove("JOURNAL_STREAM")
        .env_remove("METRICS_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nfs-track");
    // First start: the marker (no record of watching) is written once the
    // watches are in place.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.leg2().full_sync_needed() {
        assert!(Instant::now() < deadline, "nfs-track never got ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    World::put(&w.nfs, b"immich/upload/a.jpg", b"jpg");
    while w.leg2().line_count().expect("count") < 1 {
        assert!(Instant::now() < deadline, "nfs-track never logged the file");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(tracker.id() as i32, libc::SIGTERM) };
    assert!(tracker.wait().expect("wait").success());

    w.run("step2", &["--full", "never"])
        .succeeds()
        .stdout_contains("1 sent");
    assert_eq!(
        World::files(&w.nas_dir.join("nfs")),
        set(&[b"immich/upload/a.jpg"])
    );
    assert_eq!(w.leg2().line_count().expect("count"), 0);
}

/// A `direct` rule may name a deeper glob (`direct */media`: every
/// tenant's media folder; the skip list matches `*` within one component
/// and nfs-track watches such paths). The step 2 full pass expanded globs
/// only in one-component rules, so these trees were never in it: a
/// full-sync request from nfs-track (a queue overflow) was cleared, the run
/// exited 0, and the changes it stood for never reached the NAS.
#[test]
fn step2_full_pass_covers_deeper_glob_rules() {
    let w = World::with_nas();
    recent_full(&w);
    std::fs::write(&w.skip, "direct */media\nnever */media/cache\n").expect("skip list");
    World::put(&w.nfs, b"alice/media/p.jpg", b"a");
    World::put(&w.nfs, b"bob/media/sub/q.jpg", b"b");
    World::put(&w.nfs, b"bob/media/cache/c.tmp", b"never");
    World::put(&w.nfs, b"bob/docs/leg1.odt", b"leg 1");
    // A tenant's "media" that is a symlink out of the tree is never followed.
    let outside = w.sb.mkdir("outside");
    std::fs::write(outside.join("secret"), b"s").expect("secret");
    std::fs::create_dir_all(w.nfs.join("carol")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, w.nfs.join("carol/media")).expect("symlink");
    w.leg2()
        .mark_full_sync("nfs-track: the kernel event queue overflowed")
        .expect("mark");
    w.run("step2", &[]).succeeds().stdout_contains("full pass");
    assert_eq!(
        World::files(&w.nas_dir.join("nfs")),
        set(&[b"alice/media/p.jpg", b"bob/media/sub/q.jpg"])
    );
    assert!(!w.leg2().full_sync_needed());
}

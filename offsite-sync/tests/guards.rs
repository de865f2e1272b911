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

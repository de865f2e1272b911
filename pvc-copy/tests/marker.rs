//! Contract 13 on the backup disk: pvc-copy writes only into a backup root
//! carrying the identity marker `offsite-sync init --local` wrote, and
//! (contract 12) only while it still does: a disk unmounted mid-run leaves
//! nothing on the bare mountpoint beneath and nothing ledgered for data
//! that did not land.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use backup_tests::harness::{Run, init_backup_root, must, names_in};
use common::*;

#[test]
fn a_backup_root_without_its_marker_is_refused_and_left_untouched() {
    let mut env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    // A filesystem never initialised (a new disk, or the wrong one); the
    // mountpoint check is overridden so only the marker can refuse it. Its
    // own filesystem, so pvc-copy's free-space guard measures it and never
    // the machine's /tmp (a CI machine's /tmp may be nearly full).
    env.root = env.sb.mount_ext4("bare", 64 << 20);
    env.root_is_mount = false;
    for extra in [&[][..], &["--dry-run"][..]] {
        env.run(NOW, extra)
            .fails_with(5)
            .stderr_contains(&env.root.display().to_string())
            .stderr_contains("offsite-sync init --local");
        assert_eq!(names_in(&env.root), Vec::<String>::new(), "{extra:?}");
    }
    // Initialised once, the same directory is accepted.
    init_backup_root(&env.root);
    env.run(NOW, &[]).succeeds();
    assert!(env.dest(WEEK, "ns", "a").join("f").is_file());
}

#[test]
fn the_initialised_backup_disk_is_accepted() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    env.run(NOW, &[]).succeeds();
    assert_eq!(
        fs::read(env.dest(WEEK, "ns", "a").join("f")).expect("copy"),
        b"a"
    );
    assert!(
        env.ledger_lines()
            .contains(&format!("pvc-data/{WEEK}/ns/a/f")),
        "{:?}",
        env.ledger_lines()
    );
}

/// The backup disk is detached (`umount -l`) right after the first PVC's
/// rsync, inside pvc-copy's own mount namespace (where its writes go):
/// the first copy is not swapped in or ledgered, the second is never
/// started, and the bare directory beneath the mountpoint gets nothing.
#[test]
fn a_backup_disk_unmounted_mid_run_gets_nothing_committed_and_the_bare_mountpoint_nothing_written()
{
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    env.pvc("vm-2-pvc-bbbb", "ns", "b", &[("g", b"b")]);
    let flag = env.sb.path().join("unmounted");
    let wrap = env.sb.mkdir("fault-bin");
    let script = wrap.join("rsync");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n/usr/bin/rsync \"$@\"\nrc=$?\n\
             if [ ! -e '{flag}' ]; then umount -l '{root}' && touch '{flag}'; fi\n\
             exit $rc\n",
            flag = flag.display(),
            root = env.root.display()
        ),
    )
    .expect("wrapper");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::join_paths(
        std::iter::once(wrap).chain(std::env::split_paths(&env.host.path_env())),
    )
    .expect("PATH");
    let r = Run::of(env.cmd(NOW).env("PATH", path));
    assert!(flag.exists(), "the fault never landed:\n{}", r.stderr);
    assert_ne!(r.code, 0, "{}", r.stderr);

    // The disk is still mounted in the test's namespace: take it off to
    // see the bare directory beneath, then look at the disk elsewhere.
    must(Command::new("umount").arg(&env.root));
    assert_eq!(
        names_in(&env.root),
        Vec::<String>::new(),
        "written beside the disk:\n{}",
        r.stderr
    );
    r.stderr_contains("since the run started");
    let disk = env.sb.mkdir("disk-again");
    // The lazily detached mount goes only once its last user (the tool's
    // namespace) has gone, which a loaded machine takes a moment to do.
    let mut tries = 0;
    loop {
        let o = Command::new("mount")
            .args(["-o", "loop,ro", "-t", "ext4"])
            .arg(env.sb.path().join("backup.ext4"))
            .arg(&disk)
            .output()
            .expect("spawn mount");
        if o.status.success() {
            break;
        }
        tries += 1;
        assert!(
            tries < 100,
            "remount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let week = disk.join("pvc-data").join(WEEK).join("ns");
    let ledger = fs::read_to_string(disk.join(".changed-files")).unwrap_or_default();
    let landed = (week.join("a").exists(), week.join("b").exists());
    must(Command::new("umount").arg(&disk));
    assert_eq!(
        landed,
        (false, false),
        "a copy was committed:\n{}",
        r.stderr
    );
    assert!(
        !ledger.contains("pvc-data/"),
        "ledgered without a committed copy: {ledger}"
    );
}

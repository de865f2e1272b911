//! rsync not installed ends nfs-mirror with exit 5 ("command absent")
//! naming it (issue 6), instead of failing each tree in turn (exit 1).

use backup_tests::harness::{Run, Sandbox};
use backup_tests::without::PathWithout;

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nfs-mirror: error:"))
        .collect()
}

#[test]
fn no_rsync_is_command_absent_for_the_mirror_and_the_config_copy() {
    let sb = Sandbox::new();
    let src = sb.mkdir("srv/nfs");
    let dst = sb.mkdir("mnt/backup");
    backup_tests::harness::init_backup_root(&dst);
    let skip = sb.write("skip.conf", "direct immich\n");
    sb.write("srv/nfs/nextcloud/a.txt", "a");
    sb.write("mnt/backup/nextcloud/old.txt", "old");
    let path = PathWithout::new("rsync", None, &[]);

    let r = Run::of(
        sb.cmd("nfs-mirror")
            .env("PATH", path.path())
            .env_remove("RSYNC")
            .arg("--source")
            .arg(&src)
            .arg("--dest")
            .arg(&dst)
            .arg("--skip-list")
            .arg(&skip),
    );
    r.fails_with(5);
    let lines = error_lines(&r.stderr);
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].ends_with("command absent: rsync (not found in PATH)"),
        "{}",
        r.stderr
    );

    // Without deletions to guard (no dry run first): the copy itself.
    let etc = sb.mkdir("etc/pve");
    sb.write("etc/pve/storage.cfg", "dir: local");
    let r = Run::of(
        sb.cmd("nfs-mirror")
            .env("PATH", path.path())
            .env_remove("RSYNC")
            .arg("config")
            .arg("--dest")
            .arg(&dst)
            .arg("--item")
            .arg(&etc),
    );
    r.fails_with(5);
    assert_eq!(
        error_lines(&r.stderr),
        ["nfs-mirror: error: command absent: rsync (not found in PATH)"],
        "{}",
        r.stderr
    );
}

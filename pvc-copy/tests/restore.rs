//! `pvc-copy weeks` and `pvc-copy restore` against a real backup disk (an
//! ext4 loop image with its identity marker) holding versions laid out as
//! pvc-copy writes them, restored with real rsync into another ext4 image;
//! and the versions a real copy run wrote (the emulated host of `common`).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_tests::harness::{Run, Sandbox};
use sha2::{Digest, Sha256};

const NS: &str = "media";
const PVC: &str = "db";

struct Disk {
    sb: Sandbox,
    root: PathBuf,
    /// Another filesystem, where restores go.
    scratch: PathBuf,
}

impl Disk {
    fn new() -> Disk {
        let sb = Sandbox::new();
        let root = sb.mount_backup_disk("backup", 64 << 20);
        let scratch = sb.mount_ext4("scratch", 64 << 20);
        Disk { sb, root, scratch }
    }

    fn version(&self, week: &str) -> PathBuf {
        self.root.join("pvc-data").join(week).join(NS).join(PVC)
    }

    /// A version of the claim in `week`, with its `.source` record (as
    /// pvc-copy writes it: the copy's directory inode inside).
    fn add_version(&self, week: &str, snapshot: &str, copied_at: &str, fill: impl Fn(&Path)) {
        let dir = self.version(week);
        fs::create_dir_all(&dir).expect("version dir");
        fill(&dir);
        let rec = serde_json::json!({
            "snapshot": snapshot,
            "origin": "vm-9-pvc-db",
            "pv": "pvc-1",
            "pvc": format!("{NS}/{PVC}"),
            "snapshot_created": "2026-11-27T03:00:00+00:00",
            "copied_at": copied_at,
            "dir_inode": fs::metadata(&dir).expect("dir").ino(),
        });
        fs::write(
            dir.parent().expect("ns").join(format!(".{PVC}.source")),
            rec.to_string(),
        )
        .expect("source record");
    }

    fn cmd(&self) -> Command {
        let mut c = self.sb.cmd("pvc-copy");
        c.env("BACKUP_ROOT", &self.root).env_remove("RSYNC");
        c
    }

    fn restore(&self, to: &Path, extra: &[&str]) -> Run {
        Run::of(
            self.cmd()
                .args(["restore", &format!("{NS}/{PVC}"), "--to"])
                .arg(to)
                .args(extra),
        )
    }
}

fn name(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// Every hostile name, hard links, symlinks (one dangling), an xattr, a
/// 0600 file and one owned by another uid.
fn hostile_tree(d: &Path) {
    let long = vec![b'n'; 255];
    let names: [&[u8]; 5] = [
        b"new\nline",
        b"back\\slash",
        b"-leading-dash",
        b"not-utf8-\xff\xfe",
        &long,
    ];
    for (i, n) in names.iter().enumerate() {
        fs::write(d.join(name(n)), format!("content {i}\n")).expect("hostile name");
    }
    fs::create_dir(d.join("sub")).expect("sub");
    fs::write(d.join("sub/data"), vec![7u8; 100_000]).expect("data");
    fs::hard_link(d.join("sub/data"), d.join("hardlink")).expect("hard link");
    symlink("sub/data", d.join("link")).expect("symlink");
    symlink("../nowhere/at/all", d.join("dangling")).expect("dangling");
    let secret = d.join("secret");
    fs::write(&secret, "0600\n").expect("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let owned = d.join("owned");
    fs::write(&owned, "uid 4242\n").expect("owned");
    std::os::unix::fs::chown(&owned, Some(4242), Some(4343)).expect("chown");
    rustix::fs::setxattr(
        d.join("sub/data"),
        "user.backup-test",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr");
}

/// Every entry of a tree, keyed by its relative path (bytes): type,
/// mode, owner, size, mtime, content hash, link target, user xattrs and
/// which entries share an inode. Access times are left out.
fn snapshot_tree(dir: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    // Each inode's smallest path: readdir order differs between trees.
    let mut inodes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut ino_of: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel)).expect("readdir") {
            let e = e.expect("entry");
            if rel.as_os_str().is_empty() && e.file_name() == "lost+found" {
                continue;
            }
            let r = rel.join(e.file_name());
            let p = dir.join(&r);
            let m = fs::symlink_metadata(&p).expect("lstat");
            let key = r.as_os_str().as_bytes().to_vec();
            if m.is_file() {
                let first = inodes.entry(m.ino()).or_insert_with(|| key.clone());
                if key < *first {
                    *first = key.clone();
                }
                ino_of.insert(key.clone(), m.ino());
            }
            let mut desc = format!(
                "mode={:o} uid={} gid={} mtime={}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
            );
            if m.file_type().is_symlink() {
                desc += &format!(" -> {:?}", fs::read_link(&p).expect("readlink"));
            } else {
                let mut buf = vec![0u8; 64];
                if let Ok(n) = rustix::fs::lgetxattr(&p, "user.backup-test", &mut buf) {
                    desc += &format!(" xattr={:?}", &buf[..n]);
                }
            }
            if m.is_file() {
                desc += &format!(
                    " size={} sha256={}",
                    m.len(),
                    hex::encode(Sha256::digest(fs::read(&p).expect("read")))
                );
            }
            if m.is_dir() {
                stack.push(r);
            }
            out.insert(key, desc);
        }
    }
    for (key, ino) in ino_of {
        if let (Some(d), Some(first)) = (out.get_mut(&key), inodes.get(&ino)) {
            *d += &format!(" inode-of={}", String::from_utf8_lossy(first));
        }
    }
    out
}

/// Everything on the backup disk, for the before/after comparison.
fn disk_state(root: &Path) -> BTreeMap<Vec<u8>, String> {
    snapshot_tree(root)
}

#[test]
fn a_version_round_trips_byte_for_byte_and_the_disk_is_untouched() {
    let d = Disk::new();
    d.add_version(
        "2026-W48",
        "vm-9-pvc-db_snap_20261127_0300",
        "2026-11-27T05:10:00+00:00",
        hostile_tree,
    );
    let before = disk_state(&d.root);
    let to = d.scratch.join("restored");
    let r = d.restore(&to, &[]);
    r.succeeds()
        .stdout_contains("restored media/db week 2026-W48 (vm-9-pvc-db_snap_20261127_0300)")
        .stdout_contains("0 differ from the copy");
    // Byte for byte: names, contents, modes, owners, links, xattrs.
    let (want, got) = (snapshot_tree(&d.version("2026-W48")), snapshot_tree(&to));
    assert_eq!(got, want);
    assert_eq!(got.len(), 12, "{:?}", got.keys());
    let long = vec![b'n'; 255];
    assert!(to.join(name(&long)).is_file());
    assert_eq!(
        fs::read_link(to.join("dangling")).expect("dangling"),
        Path::new("../nowhere/at/all")
    );
    assert_eq!(
        fs::metadata(to.join("hardlink")).expect("link").ino(),
        fs::metadata(to.join("sub/data")).expect("data").ino()
    );
    assert_eq!(fs::metadata(to.join("owned")).expect("owned").uid(), 4242);
    assert_eq!(
        fs::metadata(to.join("secret")).expect("secret").mode() & 0o7777,
        0o600
    );
    assert_eq!(disk_state(&d.root), before, "the backup disk changed");

    // A non-empty --to is refused (exit 5) and left alone.
    let again = d.restore(&to, &[]);
    again.fails_with(5).stderr_contains("not empty");
    assert_eq!(snapshot_tree(&to), want);
    assert_eq!(disk_state(&d.root), before, "the backup disk changed");
}

#[test]
fn into_existing_keeps_extra_files_and_delete_removes_them() {
    let d = Disk::new();
    d.add_version("2026-W48", "snap-a", "2026-11-27T05:10:00+00:00", |v| {
        fs::write(v.join("a"), "version a\n").expect("a");
    });
    let to = d.scratch.join("target");
    fs::create_dir(&to).expect("target");
    fs::write(to.join("extra"), "mine\n").expect("extra");
    fs::write(to.join("a"), "stale\n").expect("stale a");

    // Dry run: nothing changes, the list names what would be written.
    d.restore(&to, &["--into-existing", "--delete", "--dry-run"])
        .succeeds()
        .stdout_contains("a");
    assert_eq!(fs::read(to.join("a")).expect("a"), b"stale\n");
    assert!(to.join("extra").exists());

    d.restore(&to, &["--into-existing"]).succeeds();
    assert_eq!(fs::read(to.join("a")).expect("a"), b"version a\n");
    assert_eq!(fs::read(to.join("extra")).expect("extra"), b"mine\n");

    d.restore(&to, &["--into-existing", "--delete"]).succeeds();
    assert!(!to.join("extra").exists());
    assert_eq!(fs::read(to.join("a")).expect("a"), b"version a\n");

    // --delete without --into-existing is a usage error.
    d.restore(&d.scratch.join("other"), &["--delete"])
        .fails_with(2);
}

#[test]
fn a_byte_flipped_after_rsync_is_named_and_fails_the_restore() {
    let d = Disk::new();
    d.add_version("2026-W48", "snap-a", "2026-11-27T05:10:00+00:00", |v| {
        fs::write(v.join("good"), "fine\n").expect("good");
        fs::create_dir(v.join("dir")).expect("dir");
        fs::write(v.join("dir").join("bad"), "flip me\n").expect("bad");
    });
    // Real rsync, then one byte of one restored file flipped.
    let wrap = d.sb.mkdir("wrap-bin");
    let script = wrap.join("rsync");
    fs::write(
        &script,
        "#!/bin/sh\n\
         for a; do to=\"$a\"; done\n\
         /usr/bin/rsync \"$@\" || exit $?\n\
         printf 'F' | dd of=\"${to}dir/bad\" bs=1 seek=0 conv=notrunc 2>/dev/null\n",
    )
    .expect("wrapper");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::join_paths(std::iter::once(wrap).chain(std::env::split_paths(
        &std::env::var_os("PATH").expect("PATH"),
    )))
    .expect("PATH");
    let before = disk_state(&d.root);
    let to = d.scratch.join("restored");
    let r = Run::of(
        d.cmd()
            .env("PATH", path)
            .args(["restore", "media/db", "--week", "2026-W48", "--to"])
            .arg(&to),
    );
    r.fails_with(3)
        .stdout_contains("1 differ from the copy")
        .stdout_contains("differs: dir/bad: content differs")
        .stderr_contains("dir/bad");
    let diffs: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("differs: "))
        .collect();
    assert_eq!(diffs.len(), 1, "{}", r.stdout);
    assert_eq!(disk_state(&d.root), before, "the backup disk changed");
}

#[test]
fn weeks_lists_each_version_with_its_snapshot_and_offsite_state() {
    let d = Disk::new();
    d.add_version(
        "2026-W47",
        "vm-9-pvc-db_snap_20261120_0300",
        "2026-11-20T05:10:00+00:00",
        |v| {
            fs::write(v.join("a"), "12345").expect("a");
        },
    );
    fs::write(d.root.join("pvc-data/2026-W47/.pvc-copy-complete"), "{}").expect("complete");
    d.add_version(
        "2026-W48",
        "vm-9-pvc-db_snap_20261127_0300",
        "2026-11-27T05:10:00+00:00",
        |v| {
            fs::write(v.join("a"), "12345").expect("a");
            fs::write(v.join("b"), "123").expect("b");
            symlink("a", v.join("l")).expect("symlink");
        },
    );
    // offsite-sync's last success after W47's copy; W48 still ledgered.
    fs::create_dir_all(d.root.join(".offsite-sync")).expect("state");
    let t = chrono::DateTime::parse_from_rfc3339("2026-11-21T06:00:00Z").expect("t");
    fs::write(
        d.root.join(".offsite-sync/last-success"),
        format!("{}\n", t.timestamp()),
    )
    .expect("stamp");
    fs::write(
        d.root.join(".changed-files"),
        "pvc-data/2026-W48/media/.db.source\npvc-data/2026-W48/media/db/b\n",
    )
    .expect("ledger");
    let before = disk_state(&d.root);

    let r = Run::of(d.cmd().args(["weeks", "media/db", "--json"]));
    r.succeeds();
    assert_eq!(disk_state(&d.root), before, "weeks changed the backup disk");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let weeks = v["weeks"].as_array().expect("weeks");
    let row = |w: &serde_json::Value| {
        (
            w["week"].as_str().unwrap_or("").to_string(),
            w["files"].as_u64().unwrap_or(0),
            w["bytes"].as_u64().unwrap_or(0),
            w["snapshot"].as_str().unwrap_or("").to_string(),
            w["week_complete"].as_bool().unwrap_or(false),
            w["offsite"].as_str().unwrap_or("").to_string(),
        )
    };
    let rows: Vec<_> = weeks.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            (
                "2026-W48".into(),
                2,
                8,
                "vm-9-pvc-db_snap_20261127_0300".into(),
                false,
                "pending".into()
            ),
            (
                "2026-W47".into(),
                1,
                5,
                "vm-9-pvc-db_snap_20261120_0300".into(),
                true,
                "sent".into()
            ),
        ]
    );
    // The table names the same weeks; without the stamp W47 is unknown.
    fs::remove_file(d.root.join(".offsite-sync/last-success")).expect("rm stamp");
    let r = Run::of(d.cmd().args(["weeks", "media/db"]));
    r.succeeds().stdout_contains("OFFSITE");
    let w47 = r
        .stdout
        .lines()
        .find(|l| l.starts_with("2026-W47"))
        .expect("W47 row");
    assert!(w47.contains("unknown"), "{w47}");
    fs::create_dir_all(d.root.join(".offsite-sync")).expect("state");

    // Errors: no marker (5), a bad claim or week (2), an unknown claim (2).
    Run::of(d.cmd().args(["weeks", "media"])).fails_with(2);
    Run::of(d.cmd().args(["weeks", "media/other"])).fails_with(2);
    d.restore(&d.scratch.join("x"), &["--week", "2026-W40"])
        .fails_with(2)
        .stderr_contains("2026-W48, 2026-W47");
    d.restore(&d.scratch.join("x"), &["--week", "soon"])
        .fails_with(2);
    d.restore(&d.root.join("inside"), &[])
        .fails_with(2)
        .stderr_contains("backup disk");
    let bare = d.sb.mkdir("bare");
    Run::of(
        d.cmd()
            .env("BACKUP_ROOT", &bare)
            .args(["weeks", "media/db"]),
    )
    .fails_with(5);
    Run::of(
        d.cmd()
            .env("BACKUP_ROOT", &bare)
            .args(["restore", "media/db", "--to"])
            .arg(d.scratch.join("y")),
    )
    .fails_with(5);
    assert!(!d.scratch.join("x").exists() && !d.scratch.join("y").exists());
}

#[test]
fn weeks_and_restore_read_what_a_copy_run_wrote() {
    let env = common::Env::new();
    env.pvc(
        "vm-9-pvc-db",
        NS,
        PVC,
        &[("a", b"alpha\n"), ("dir/b", b"beta\n")],
    );
    env.run(common::NOW, &[]).succeeds();
    let cmd = || {
        let mut c = env.sb.cmd("pvc-copy");
        c.env("BACKUP_ROOT", &env.root);
        c
    };
    let r = Run::of(cmd().args(["weeks", "media/db", "--json"]));
    r.succeeds();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let w = &v["weeks"][0];
    assert_eq!(w["week"], common::WEEK);
    assert_eq!(w["snapshot"], "vm-9-pvc-db_snap_20261127_0300");
    assert_eq!(
        (w["files"].as_u64(), w["bytes"].as_u64()),
        (Some(2), Some(11))
    );
    assert_eq!(w["week_complete"], true);
    // The run's ledger still lists the week: not sent yet.
    assert_eq!(w["offsite"], "pending");

    let to = env.sb.path().join("restored");
    Run::of(cmd().args(["restore", "media/db", "--to"]).arg(&to))
        .succeeds()
        .stdout_contains("0 differ from the copy");
    assert_eq!(fs::read(to.join("dir/b")).expect("b"), b"beta\n");
    assert_eq!(
        snapshot_tree(&to),
        snapshot_tree(&env.dest(common::WEEK, NS, PVC))
    );
}

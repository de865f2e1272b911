//! pvc-copy end to end on an emulated host (see tests/common: the LVM,
//! kubectl, cryptsetup and blkid emulators stand for the Proxmox host);
//! mounts, rsync and the backup tree are real.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

fn sha(path: &std::path::Path) -> Vec<u8> {
    let o = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    o.stdout
}

#[test]
fn copies_files_hardlinks_wal_and_symlinks_as_links_without_touching_the_snapshot() {
    let env = Env::new();
    let src = env.tree(&[
        ("data/app.db", b"SQLite format 3\0 main file"),
        ("data/app.db-wal", b"committed rows only in the wal"),
        ("docs/a.txt", b"alpha"),
        ("deep/1/2/3/4/5/6/7/8/leaf", b"leaf"),
        ("name with\nnewline", b"hostile"),
    ]);
    fs::hard_link(
        src.path().join("docs/a.txt"),
        src.path().join("docs/a-link.txt"),
    )
    .expect("hardlink");
    std::os::unix::fs::symlink("/etc/shadow", src.path().join("escape")).expect("symlink");
    env.pvc_from_dir("vm-100-pvc-aaaa", "apps", "data", src.path(), false);
    let snap_img = env.host.fs_image(VG, "vm-100-pvc-aaaa_snap_20261127_0300");
    let before = sha(&snap_img);

    let r = env.run(NOW, &[]);
    r.succeeds();
    let d = env.dest(WEEK, "apps", "data");
    assert_eq!(
        fs::read(d.join("data/app.db-wal")).expect("wal"),
        b"committed rows only in the wal"
    );
    assert_eq!(
        fs::read(d.join("deep/1/2/3/4/5/6/7/8/leaf")).expect("leaf"),
        b"leaf"
    );
    assert_eq!(
        fs::read(d.join("name with\nnewline")).expect("hostile"),
        b"hostile"
    );
    let (a, b) = (
        fs::metadata(d.join("docs/a.txt")).expect("a"),
        fs::metadata(d.join("docs/a-link.txt")).expect("b"),
    );
    assert_eq!(a.ino(), b.ino(), "hardlinks inside the PVC are kept");
    let esc = d.join("escape");
    assert!(
        fs::symlink_metadata(&esc)
            .expect("escape")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&esc).expect("link"),
        std::path::Path::new("/etc/shadow")
    );

    // Which snapshot the copy came from, outside the copied tree.
    let rec: serde_json::Value = serde_json::from_slice(
        &fs::read(env.root.join(format!("pvc-data/{WEEK}/apps/.data.source")))
            .expect("source record"),
    )
    .expect("json");
    assert_eq!(rec["snapshot"], "vm-100-pvc-aaaa_snap_20261127_0300");
    assert_eq!(
        rec["dir_inode"].as_u64(),
        Some(fs::metadata(&d).expect("dir").ino())
    );
    assert!(!d.join(".data.source").exists());

    // The ledger names the new files relative to the backup root, a
    // newline inside a name escaped.
    let ledger = env.ledger_lines();
    let want = format!("pvc-data/{WEEK}/apps/data/name with\\nnewline");
    assert!(ledger.contains(&want), "{ledger:?}");
    assert!(ledger.contains(&format!("pvc-data/{WEEK}/apps/data/data/app.db-wal")));

    assert_eq!(env.metric("pvc_copy_pvcs{result=\"ok\"}"), Some(1.0));
    assert_eq!(env.metric("pvc_copy_pvcs{result=\"failed\"}"), Some(0.0));
    assert!(env.metric("daily_backup_bytes_synced").unwrap_or(0.0) > 0.0);
    assert_eq!(sha(&snap_img), before, "the snapshot image was written to");
    assert!(
        env.root
            .join(format!("pvc-data/{WEEK}/.pvc-copy-complete"))
            .exists()
    );
    env.assert_no_mounts();
}

#[test]
fn luks_snapshot_is_opened_read_only_and_closed_and_stale_mappings_are_closed() {
    let env = Env::new();
    let src = env.tree(&[("secret/notes.txt", b"encrypted at rest")]);
    env.pvc_from_dir("vm-101-pvc-bbbb", "vault", "store", src.path(), true);
    // A mapping of ours left open by a killed run.
    let stale = env
        .host
        .command("cryptsetup")
        .args(["open", "--type", "luks", "--readonly", "--key-file"])
        .arg(&env.key)
        .arg(env.host.lv_path(VG, "vm-101-pvc-bbbb"))
        .arg("pvc-copy-0123456789abcdef")
        .output()
        .expect("cryptsetup");
    assert!(
        stale.status.success(),
        "{}",
        String::from_utf8_lossy(&stale.stderr)
    );
    assert_eq!(env.host.open_mappers(), ["pvc-copy-0123456789abcdef"]);

    env.run(NOW, &[])
        .succeeds()
        .stderr_contains("stale LUKS mapping");
    assert_eq!(
        fs::read(env.dest(WEEK, "vault", "store").join("secret/notes.txt")).expect("copied"),
        b"encrypted at rest"
    );
    let opens: Vec<Vec<String>> = env
        .host
        .calls_of("cryptsetup")
        .into_iter()
        .filter(|c| c.get(1).map(String::as_str) == Some("open"))
        .collect();
    let ours = opens.last().expect("an open call");
    assert!(ours.contains(&"--readonly".to_string()), "{ours:?}");
    assert!(
        ours.last().expect("name").starts_with("pvc-copy-"),
        "{ours:?}"
    );
    env.assert_no_mounts();
}

#[test]
fn wrong_luks_key_old_snapshot_and_unresolvable_lv_are_counted_and_the_rest_is_copied() {
    let env = Env::new();
    env.pvc("vm-1-pvc-good", "ns", "good", &[("f", b"ok")]);
    let src = env.tree(&[("f", b"x")]);
    env.pvc_from_dir("vm-2-pvc-luks", "ns", "luks", src.path(), true);
    // An LV without a PV (a PVC created after the last kubectl answer).
    env.host
        .add_thin_lv(VG, "data", "vm-3-pvc-orphan", 16 << 20, &[("f", b"o")]);
    env.snapshot("vm-3-pvc-orphan", SNAP_UNIX);
    // A PVC whose newest snapshot is three days old.
    env.host
        .add_thin_lv(VG, "data", "vm-4-pvc-stale", 16 << 20, &[("f", b"s")]);
    env.host.add_pv("ns", "stale", "vm-4-pvc-stale");
    env.snapshot("vm-4-pvc-stale", SNAP_UNIX - 3 * 86_400);
    // A PVC never snapshotted.
    env.host
        .add_thin_lv(VG, "data", "vm-5-pvc-nosnap", 16 << 20, &[("f", b"n")]);
    env.host.add_pv("ns", "nosnap", "vm-5-pvc-nosnap");
    fs::write(&env.key, b"wrong key").expect("key");
    // Old weeks that a successful run would rotate away.
    for w in ["2026-40", "2026-41", "2026-42", "2026-43", "2026-44"] {
        fs::create_dir_all(env.root.join("pvc-data").join(w).join("ns/good")).expect("old week");
    }

    let r = env.run(NOW, &[]);
    r.fails_with(3)
        .stderr_contains("vm-3-pvc-orphan: cannot resolve PVC name")
        .stderr_contains("ns/stale (vm-4-pvc-stale): newest snapshot vm-4-pvc-stale_snap_20261124_0300 is 74h00m old")
        .stderr_contains("ns/nosnap (vm-5-pvc-nosnap): no snapshot")
        .stderr_contains("ns/luks (vm-2-pvc-luks): cannot open LUKS")
        .stderr_contains("rotation not run");
    assert_eq!(
        fs::read(env.dest(WEEK, "ns", "good").join("f")).expect("good"),
        b"ok"
    );
    assert!(!env.dest(WEEK, "ns", "luks").exists());
    assert!(
        !env.root
            .join(format!("pvc-data/{WEEK}/ns/.luks.partial"))
            .exists()
    );
    assert_eq!(env.metric("pvc_copy_pvcs{result=\"failed\"}"), Some(4.0));
    assert_eq!(env.metric("pvc_copy_pvcs{result=\"ok\"}"), Some(1.0));
    assert_eq!(env.metric("pvc_copy_exit_code"), Some(3.0));
    assert!(
        env.root.join("pvc-data/2026-40").exists(),
        "rotation ran after a failed run"
    );
    assert!(
        !env.root
            .join(format!("pvc-data/{WEEK}/.pvc-copy-complete"))
            .exists()
    );
    env.assert_no_mounts();
}

#[test]
fn weekly_versions_hardlink_unchanged_files_and_the_ledger_gets_only_changes() {
    let env = Env::new();
    let big = vec![7u8; 300_000];
    let src = env.tree(&[("same.bin", &big), ("changing.txt", b"v1")]);
    // Unchanged links must not reach the ledger every day either.
    std::os::unix::fs::symlink("same.bin", src.path().join("alias")).expect("symlink");
    fs::hard_link(src.path().join("same.bin"), src.path().join("same-hl.bin")).expect("hardlink");
    env.pvc_from_dir("vm-7-pvc-cccc", "media", "lib", src.path(), false);
    env.run(NOW, &[]).succeeds();
    let d1 = env.dest(WEEK, "media", "lib");
    let ino_same = fs::metadata(d1.join("same.bin")).expect("same").ino();
    let after_day1 = env.ledger_lines().len();

    // Day 2, same week: one file changed.
    // Another size: a same-size rewrite in the same second as the first
    // version is invisible to rsync's quick check (mkfs and debugfs keep
    // whole seconds only), which is not what this test is about.
    env.write_in_lv("vm-7-pvc-cccc", "changing.txt", b"version 2");
    env.snapshot("vm-7-pvc-cccc", SNAP_UNIX + 86_400);
    env.run("2026-11-28T05:00:00Z", &[]).succeeds();
    assert_eq!(fs::read(d1.join("changing.txt")).expect("v2"), b"version 2");
    assert_eq!(
        fs::metadata(d1.join("same.bin")).expect("same").ino(),
        ino_same
    );
    let day2: Vec<String> = env.ledger_lines()[after_day1..].to_vec();
    assert_eq!(
        day2,
        [
            format!("pvc-data/{WEEK}/media/.lib.source"),
            format!("pvc-data/{WEEK}/media/lib/changing.txt")
        ],
        "the ledger should get only what changed"
    );
    let rec: serde_json::Value = serde_json::from_slice(
        &fs::read(env.root.join(format!("pvc-data/{WEEK}/media/.lib.source"))).expect("rec"),
    )
    .expect("json");
    assert_eq!(rec["snapshot"], "vm-7-pvc-cccc_snap_20261128_0300");

    // Next week: a new version; unchanged files share the inode with the
    // previous week, a changed one does not, and the old week keeps v2.
    env.write_in_lv("vm-7-pvc-cccc", "changing.txt", b"version three");
    env.snapshot("vm-7-pvc-cccc", 1_796_353_200);
    env.run("2026-12-04T05:00:00Z", &[]).succeeds();
    let d2 = env.dest("2026-W49", "media", "lib");
    assert_eq!(
        fs::metadata(d2.join("same.bin")).expect("same").ino(),
        ino_same
    );
    assert_eq!(
        fs::read(d2.join("changing.txt")).expect("v3"),
        b"version three"
    );
    assert_eq!(fs::read(d1.join("changing.txt")).expect("v2"), b"version 2");
    assert_ne!(
        fs::metadata(d2.join("changing.txt")).expect("c").ino(),
        fs::metadata(d1.join("changing.txt")).expect("c").ino()
    );
    // A new week's paths are new paths for the offsite copy.
    let ledger = env.ledger_lines();
    assert!(ledger.contains(&"pvc-data/2026-W49/media/lib/same.bin".to_string()));
    env.assert_no_mounts();
}

#[test]
fn rotation_keeps_the_newest_complete_weeks_old_names_included() {
    let env = Env::new();
    env.pvc("vm-8-pvc-dddd", "ns", "p", &[("f", b"1")]);
    let pd = env.root.join("pvc-data");
    for (w, complete) in [
        ("2026-44", false), // old-style name (date +%Y-%W): complete by definition
        ("2026-W45", true),
        ("2026-W46", false), // a week without a fully successful run
        ("2026-W47", true),
    ] {
        fs::create_dir_all(pd.join(w).join("ns/p")).expect("week");
        fs::create_dir_all(env.root.join("sqlite-backup").join(w).join("ns/p"))
            .expect("sqlite week");
        if complete {
            fs::write(pd.join(w).join(".pvc-copy-complete"), "{}").expect("marker");
        }
    }
    env.run(NOW, &["--keep-weeks", "2", "--dry-run"])
        .succeeds()
        .stderr_contains("would delete pvc-data/2026-W45");
    assert!(pd.join("2026-W45").exists(), "dry run deleted");
    env.run(NOW, &["--keep-weeks", "2"]).succeeds();
    let mut left: Vec<String> = fs::read_dir(&pd)
        .expect("pvc-data")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["2026-W47", WEEK]);
    // sqlite-dump's copies of the dropped weeks go with them.
    let sq = env.root.join("sqlite-backup");
    assert!(
        sq.join("2026-W47").exists()
            && !sq.join("2026-W45").exists()
            && !sq.join("2026-44").exists()
    );
    assert_eq!(env.metric("pvc_copy_weeks_rotated"), Some(3.0));
}

#[test]
fn skip_and_only_select_pvcs_and_skips_are_counted() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "keep", "a", &[("f", b"a")]);
    env.pvc("vm-2-pvc-bbbb", "regen", "b", &[("f", b"b")]);
    env.run(NOW, &["--skip", "regen/*"])
        .succeeds()
        .stderr_contains("regen/b (vm-2-pvc-bbbb): skipped (--skip regen/*)");
    assert!(env.dest(WEEK, "keep", "a").join("f").exists());
    assert!(!env.dest(WEEK, "regen", "b").exists());
    assert_eq!(env.metric("pvc_copy_pvcs{result=\"skipped\"}"), Some(1.0));

    env.run(NOW, &["--only", "regen/b"]).succeeds();
    assert!(env.dest(WEEK, "regen", "b").join("f").exists());

    env.run(NOW, &["--only", "regen/nope"])
        .fails_with(2)
        .stderr_contains("--only regen/nope: no PVC");
    env.run(NOW, &["--skip", "bad"])
        .fails_with(2)
        .stderr_contains("expected NAMESPACE/PVC");
}

#[test]
fn a_claim_shared_by_two_lvs_never_shares_a_destination() {
    let env = Env::new();
    env.host
        .add_thin_lv(VG, "data", "vm-1-pvc-old", 16 << 20, &[("f", b"old")]);
    env.snapshot("vm-1-pvc-old", SNAP_UNIX);
    env.host.add_pv_rec(backup_tests::emu::PvRec {
        name: "pv-old".into(),
        driver: backup_tests::emu::CSI_DRIVER.into(),
        volume_handle: "homelab/pve1/local-lvm/vm-1-pvc-old".into(),
        namespace: "app".into(),
        claim: "data".into(),
        phase: "Released".into(),
        capacity: "1Gi".into(),
        storage_class: "proxmox-lvm".into(),
    });
    env.pvc("vm-1-pvc-new", "app", "data", &[("f", b"new")]);
    env.run(NOW, &[])
        .succeeds()
        .stderr_contains("app/data is claimed by several LVs");
    assert_eq!(
        fs::read(env.dest(WEEK, "app", "data").join("f")).expect("new"),
        b"new"
    );
    assert_eq!(
        fs::read(env.dest(WEEK, "app", "data@pv-old").join("f")).expect("old"),
        b"old"
    );
}

#[test]
fn kubectl_down_uses_the_mapping_cache_and_without_one_every_pvc_fails() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    env.host.set_kube_down(true);
    env.run(NOW, &[])
        .fails_with(1)
        .stderr_contains("no mapping cache")
        .stderr_contains("cannot resolve PVC name");
    env.host.set_kube_down(false);
    env.run(NOW, &[]).succeeds();
    assert!(env.root.join(".lv-pvc-mapping.json").exists());
    env.host.set_kube_down(true);
    env.run(NOW, &[])
        .succeeds()
        .stderr_contains("using the mapping cache");
}

#[test]
fn guards_refuse_before_doing_anything() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    env.run(NOW, &["--min-free-pct", "99"])
        .fails_with(5)
        .stderr_contains("free on");
    // Not a mount point and no override: the disk may be missing.
    let r = backup_tests::harness::Run::of(
        env.sb
            .cmd("pvc-copy")
            .envs(env.host.env())
            .env_remove("ALLOW_UNMOUNTED_ROOT")
            .arg("--backup-root")
            .arg(env.sb.mkdir("unmounted-backup"))
            .args(["--now", NOW]),
    );
    r.fails_with(5).stderr_contains("is not a mount point");
    // An empty VG is suspicious, not a success.
    env.run(NOW, &["--vg", "othervg"]).fails_with(1);
    assert!(!env.root.join("pvc-data").exists());
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    let r = env.run(NOW, &["--dry-run", "--json"]);
    r.succeeds()
        .stderr_contains("would copy vm-1-pvc-aaaa_snap_20261127_0300");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["items"][0]["result"], "planned");
    assert_eq!(v["items"][0]["dest"], format!("pvc-data/{WEEK}/ns/a"));
    assert_eq!(
        env.root_entries(),
        Vec::<String>::new(),
        "dry run wrote something"
    );
    assert!(env.host.calls_of("cryptsetup").is_empty());
}

#[test]
fn current_week_names_the_iso_week() {
    let env = Env::new();
    let r = backup_tests::harness::Run::of(env.sb.cmd("pvc-copy").args([
        "current-week",
        "--now",
        "2027-01-01T12:00:00Z",
    ]));
    r.succeeds();
    assert_eq!(r.stdout.trim(), "2026-W53");
}

#[test]
fn an_xfs_snapshot_is_mounted_with_xfs_options() {
    let env = Env::new();
    env.pvc("vm-1-pvc-xfs0", "ns", "x", &[("placeholder", b"ext4")]);
    // Turn the snapshot into an xfs filesystem (the emulator builds ext4):
    // made and filled here in a private mount namespace of its own.
    let img = env.host.fs_image(VG, "vm-1-pvc-xfs0_snap_20261127_0300");
    fs::remove_file(&img).expect("rm");
    fs::File::create(&img)
        .expect("img")
        .set_len(320 << 20)
        .expect("size");
    let mnt = env.sb.mkdir("xfs-fill");
    let o = std::process::Command::new("sh")
        .arg("-ec")
        .arg("mkfs.xfs -q -f \"$1\"; unshare -m --propagation private sh -ec 'mount -o loop -t xfs \"$1\" \"$2\"; echo xfs data > \"$2/on-xfs.txt\"; umount \"$2\"' - \"$1\" \"$2\"")
        .arg("-")
        .arg(&img)
        .arg(&mnt)
        .output()
        .expect("mkfs.xfs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.run(NOW, &[]).succeeds();
    assert_eq!(
        fs::read(env.dest(WEEK, "ns", "x").join("on-xfs.txt")).expect("copied"),
        b"xfs data\n"
    );
    env.assert_no_mounts();
}

#[test]
fn entries_of_a_copy_swapped_in_by_a_killed_run_reach_the_ledger_on_the_next_run() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    env.run(NOW, &[]).succeeds();
    let ns_dir = env.root.join(format!("pvc-data/{WEEK}/ns"));
    let ino = fs::metadata(ns_dir.join("a")).expect("copy").ino();
    // What a run killed right after its swap leaves: the pending entries
    // naming the directory now in place, and (for the other PVC dir name)
    // entries of a swap that never happened.
    fs::write(
        ns_dir.join(".a.pending"),
        format!("{ino}\npvc-data/{WEEK}/ns/a/new\\nline\n"),
    )
    .expect("pending");
    fs::create_dir_all(ns_dir.join("b")).expect("b");
    fs::write(
        ns_dir.join(".b.pending"),
        format!("{}\npvc-data/{WEEK}/ns/b/never\n", ino + 1),
    )
    .expect("pending");
    let before = env.ledger_lines().len();
    env.run(NOW, &[])
        .succeeds()
        .stderr_contains("did not record its 1 changed paths");
    let new = env.ledger_lines()[before..].to_vec();
    assert!(
        new.contains(&format!("pvc-data/{WEEK}/ns/a/new\\nline")),
        "{new:?}"
    );
    assert!(!new.iter().any(|l| l.contains("never")), "{new:?}");
    assert!(!ns_dir.join(".a.pending").exists() && !ns_dir.join(".b.pending").exists());
}

#[test]
fn hostile_claim_names_never_become_paths() {
    let env = Env::new();
    env.pvc("vm-1-pvc-good", "ns", "ok", &[("f", b"ok")]);
    env.host
        .add_thin_lv(VG, "data", "vm-2-pvc-evil", 16 << 20, &[("f", b"evil")]);
    env.snapshot("vm-2-pvc-evil", SNAP_UNIX);
    env.host.add_pv_rec(backup_tests::emu::PvRec {
        name: "pv-evil".into(),
        driver: backup_tests::emu::CSI_DRIVER.into(),
        volume_handle: "homelab/pve1/local-lvm/vm-2-pvc-evil".into(),
        namespace: "../../..".into(),
        claim: "etc".into(),
        phase: "Bound".into(),
        capacity: "1Gi".into(),
        storage_class: "proxmox-lvm".into(),
    });
    env.run(NOW, &[])
        .fails_with(3)
        .stderr_contains("vm-2-pvc-evil: cannot resolve PVC name: PV pv-evil claims \"../../..\"/\"etc\", not a valid namespace/name");
    assert_eq!(
        env.root_entries(),
        [
            ".changed-files",
            ".changed-files.lock",
            ".lv-pvc-mapping.json",
            "pvc-data"
        ]
    );
    assert!(!env.sb.path().join("etc").exists());
}

#[test]
fn a_second_run_while_one_holds_the_lock_exits_busy() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    // The test holds the run lock itself (the same flock the tool takes).
    let lock = fs::File::create(env.sb.lock_dir().join("pvc-copy.lock")).expect("lock file");
    lock.lock().expect("flock");
    let r = env.run(NOW, &[]);
    lock.unlock().expect("unlock");
    r.fails_with(4);
    assert!(!env.root.join("pvc-data").exists());
}

/// rsync escapes every control byte of a name in its output except TAB,
/// and the itemized lines were split on TABs: a tenant file named
/// `a<TAB>b` reached the ledger as `a` (a path that is another file or
/// none), so the offsite copy never got it (found by audit). Every name
/// must reach the ledger byte for byte.
#[test]
fn names_with_tabs_and_arrows_reach_the_ledger_exactly() {
    let env = Env::new();
    let src = env.tree(&[
        ("a", b"plain a"),
        ("a\tb", b"tab inside"),
        ("dir\twith tab/inner", b"inner"),
        ("x\t => y", b"looks like a hardlink suffix"),
        ("l\t -> t", b"looks like a symlink suffix"),
        ("trailing\t", b"tab at the end"),
    ]);
    fs::hard_link(src.path().join("a\tb"), src.path().join("hl\tto a-tab-b")).expect("hardlink");
    std::os::unix::fs::symlink("a\tb", src.path().join("sym\tlink")).expect("symlink");
    env.pvc_from_dir("vm-1-pvc-tabs", "ns", "t", src.path(), false);
    env.run(NOW, &[]).succeeds();
    let d = env.dest(WEEK, "ns", "t");
    assert_eq!(fs::read(d.join("a\tb")).expect("copied"), b"tab inside");

    let ledger = env.ledger_lines();
    let mut got: Vec<&str> = ledger
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("pvc-data/{WEEK}/ns/t/")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "a",
            "a\tb",
            "dir\twith tab/inner",
            "hl\tto a-tab-b",
            "l\t -> t",
            "sym\tlink",
            "trailing\t",
            "x\t => y",
        ],
        "ledger: {ledger:?}"
    );
    env.assert_no_mounts();
}

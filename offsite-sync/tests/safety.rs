//! Contracts 12 (guards hold while acting) and 13 (identity markers) for
//! offsite-sync, against real rsync, a real sshd NAS and real ext4 loop
//! mounts. The damage between a check and the action it guards is done by
//! a wrapper around the real rsync (the `RSYNC` variable) right before it
//! execs rsync, so no re-check of the tool can see it: only the action's
//! own bound (rsync `--max-delete`) and the checks after it can.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::marker::{self, Marker};
use backup_core::metrics::Metrics;
use backup_tests::harness::Run;
use backup_tests::nas::Nas;
use common::World;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn recent_full(root: &Path) {
    for s in [1, 2] {
        World::put(
            root,
            format!(".offsite-sync/last-full-step{s}").as_bytes(),
            format!("{}\n", now()).as_bytes(),
        );
    }
}

/// A world whose backup root is its own ext4 filesystem (with its marker;
/// the directory under it has none, as on the host), the NAS started and
/// `offsite-sync init` run.
fn world_on_a_backup_disk() -> World {
    let mut w = World::new();
    std::fs::remove_file(w.root.join(marker::FILE)).expect("rm marker of the bare dir");
    w.sb.mount_backup_disk("mnt/backup", 64 << 20);
    w.nas = Some(Nas::start(&w.sb.path().join("sshd")));
    w.init();
    w
}

/// The backup disk's image (Sandbox::mount_ext4 names it after the path).
fn disk_image(w: &World) -> PathBuf {
    w.sb.path().join("mnt_backup.ext4")
}

/// Mount the backup disk's image again where it was (after a lazy
/// unmount, once its last user is gone), to see what the run left on it.
fn remount(w: &World) {
    let st = Command::new("mount")
        .args(["-o", "loop", "-t", "ext4"])
        .arg(disk_image(w))
        .arg(&w.root)
        .status()
        .expect("mount");
    assert!(st.success(), "remount of the backup disk");
}

/// A wrapper around the real rsync that runs `damage` (sh) right before
/// exec'ing rsync for a matching invocation: `pattern` is a `case` pattern
/// matched against " ARGS ", dry runs never match.
fn wrapper(w: &World, name: &str, pattern: &str, damage: &str) -> PathBuf {
    let path = w.sb.write(
        name,
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" --dry-run \"*) ;;\n  {pattern}) {damage} ;;\nesac\nexec /usr/bin/rsync \"$@\"\n"
        ),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn json_steps(r: &Run) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("--json output: {e}: {}", r.stdout));
    v["steps"].as_array().expect("steps").clone()
}

fn nas_marker(dir: &Path) -> Marker {
    Marker::parse(&std::fs::read(dir.join(marker::FILE)).expect("NAS marker")).expect("parses")
}

/// Step 1's full pass with a backup root that is gone between the dry
/// run and the transfer (`damage`), 100 files on the NAS, --max-delete
/// 10%: the transfer is held to the bound, fails, reports the deletions
/// it made, commits nothing.
fn step1_full_pass_source_lost_after_dry_run(unmount: bool) {
    let w = world_on_a_backup_disk();
    for i in 0..100 {
        World::put(&w.root, format!("data/f{i:03}").as_bytes(), b"x");
    }
    w.run("step1", &[]).succeeds().stdout_contains("full pass");
    assert_eq!(World::files(&w.pve()).len(), 100);
    let stamp = std::fs::read(w.root.join(".offsite-sync/last-full-step1")).expect("stamp");
    w.leg1().append(["data/f000"]).expect("append");
    w.leg1().mark_full_sync("test: gap").expect("mark");
    let damage = if unmount {
        format!("umount -l '{}'", w.root.display())
    } else {
        format!("find '{}/data' -mindepth 1 -delete", w.root.display())
    };
    let rsync = wrapper(&w, "damaging-rsync", "*\" --delete \"*", &damage);
    let metrics = w.sb.path().join("m.prom");
    let r = Run::of(
        w.cmd(
            "step1",
            &[
                "--full",
                "always",
                "--max-delete",
                "10%",
                "--json",
                "--metrics-file",
                metrics.to_str().expect("utf8"),
            ],
        )
        .env("RSYNC", &rsync),
    );
    if unmount {
        assert!(
            !backup_tests_is_mountpoint(&w.root),
            "the wrapper did not unmount"
        );
    } else {
        assert!(World::files(&w.root.join("data")).is_empty(), "not emptied");
    }
    let left = World::files(&w.pve()).len();
    println!(
        "exit {}, {left} of 100 files left on the NAS; stderr: {}",
        r.code, r.stderr
    );
    assert!(
        left >= 90,
        "the NAS lost {} of 100 files beyond --max-delete 10% (exit {})",
        100 - left,
        r.code
    );
    assert_ne!(
        r.code, 0,
        "a full pass stopped at its bound passed for a good one"
    );
    if unmount {
        // rsync read the disk it was given (its descriptor), not the bare
        // mountpoint: nothing to delete; the root changed, nothing committed.
        assert_eq!(
            left, 100,
            "files deleted from a disk still mounted for rsync"
        );
        r.stderr_contains("unmounted or replaced");
    } else {
        r.stderr_contains("--max-delete");
    }
    // What is reported is what happened on the NAS.
    let steps = json_steps(&r);
    assert_eq!(steps[0]["deletions"], (100 - left) as u64, "{}", r.stdout);
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(
        m.get("offsite_sync_deleted_items"),
        Some((100 - left) as f64)
    );
    assert_eq!(m.get("offsite_sync_last_status"), Some(1.0));
    assert_eq!(m.get("backup_last_success_timestamp"), None);
    assert_eq!(
        nas_marker(&w.pve()).role,
        "nas-pve-backup",
        "the NAS marker was deleted"
    );
    if unmount {
        // Once the run's processes are gone, the disk can be seen again.
        remount(&w);
    }
    // Nothing committed: ledger, full-sync request and stamp as before.
    assert_eq!(w.leg1().line_count().expect("ledger"), 1);
    assert!(
        w.leg1().full_sync_needed(),
        "the full-sync request was cleared"
    );
    assert_eq!(
        std::fs::read(w.root.join(".offsite-sync/last-full-step1")).expect("stamp"),
        stamp
    );
}

/// The backup root emptied (an operator's rm, a half-failed restore)
/// between the full pass's dry run and its transfer. Before: unbounded
/// --delete, 100 of 100 NAS files deleted, "0 deletion(s)", exit 0.
#[test]
fn step1_full_pass_keeps_the_nas_copy_when_the_backup_root_is_emptied_after_its_dry_run() {
    step1_full_pass_source_lost_after_dry_run(false);
}

/// The backup disk lazily unmounted (`umount -l`) between the full pass's
/// dry run and its transfer: the root is a bare directory. Before: every
/// NAS file deleted, exit 0.
#[test]
fn step1_full_pass_keeps_the_nas_copy_when_the_backup_disk_is_unmounted_after_its_dry_run() {
    step1_full_pass_source_lost_after_dry_run(true);
}

fn backup_tests_is_mountpoint(p: &Path) -> bool {
    offsite_sync::is_mountpoint(p)
}

/// Step 2's full pass with its direct tree emptied between the dry run
/// and the transfer. Before: the NAS copy emptied, exit 0.
#[test]
fn step2_full_pass_keeps_the_nas_copy_when_a_direct_tree_is_emptied_after_its_dry_run() {
    let w = World::with_nas();
    for i in 0..100 {
        World::put(&w.nfs, format!("immich/p{i:03}").as_bytes(), b"p");
    }
    w.run("step2", &[]).succeeds().stdout_contains("full pass");
    let nas = w.nas_dir.join("nfs/immich");
    assert_eq!(World::files(&nas).len(), 100);
    let photo = w.nfs.join("immich/p000");
    w.leg2().append_paths([photo.as_path()]).expect("append");
    w.leg2().mark_full_sync("test: overflow").expect("mark");
    let stamp = std::fs::read(w.root.join(".offsite-sync/last-full-step2")).expect("stamp");
    let tree = w.nfs.join("immich");
    let rsync = wrapper(
        &w,
        "emptying-rsync",
        "*\" --delete \"*",
        &format!("find '{}' -mindepth 1 -delete", tree.display()),
    );
    let metrics = w.sb.path().join("m.prom");
    let r = Run::of(
        w.cmd(
            "step2",
            &[
                "--full",
                "always",
                "--max-delete",
                "10%",
                "--json",
                "--metrics-file",
                metrics.to_str().expect("utf8"),
            ],
        )
        .env("RSYNC", &rsync),
    );
    assert!(
        World::files(&tree).is_empty(),
        "the wrapper did not empty the tree"
    );
    let left = World::files(&nas).len();
    println!("exit {}, {left} of 100 left; stderr: {}", r.code, r.stderr);
    assert!(
        left >= 90,
        "the NAS lost {} of 100 files beyond --max-delete 10% (exit {})",
        100 - left,
        r.code
    );
    assert_ne!(r.code, 0);
    r.stderr_contains("--max-delete");
    assert_eq!(json_steps(&r)[0]["deletions"], (100 - left) as u64);
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(
        m.get("offsite_sync_deleted_items"),
        Some((100 - left) as f64)
    );
    assert_eq!(w.leg2().line_count().expect("ledger"), 1);
    assert!(w.leg2().full_sync_needed());
    assert_eq!(
        std::fs::read(w.root.join(".offsite-sync/last-full-step2")).expect("stamp"),
        stamp
    );
    assert_eq!(nas_marker(&w.nas_dir.join("nfs")).role, "nas-nfs");
}

/// A sound full pass reports the deletions it made, counted from rsync's
/// own output (before: the dry run's plan).
#[test]
fn full_pass_reports_the_deletions_rsync_made() {
    let w = World::with_nas();
    for i in 0..20 {
        World::put(&w.root, format!("data/f{i:02}").as_bytes(), b"x");
    }
    w.run("step1", &[]).succeeds();
    for i in 0..3 {
        std::fs::remove_file(w.root.join(format!("data/f{i:02}"))).expect("rm");
    }
    let r = w.run(
        "step1",
        &["--full", "always", "--max-delete", "off", "--json"],
    );
    r.succeeds();
    assert_eq!(World::files(&w.pve()).len(), 17);
    assert_eq!(json_steps(&r)[0]["deletions"], 3);
    r.stderr_contains("3 deletion(s)");
}

/// The backup disk lazily unmounted after step 1's start-up checks and
/// before its rsync: the listed files are not there to send, and
/// `--ignore-missing-args` makes that silent. Before: exit 0, "20 sent",
/// none of them on the NAS.
#[test]
fn step1_keeps_the_ledger_when_the_backup_disk_is_unmounted_before_its_rsync() {
    let w = world_on_a_backup_disk();
    recent_full(&w.root);
    let names: Vec<String> = (0..20).map(|i| format!("svc/n{i:02}")).collect();
    for n in &names {
        World::put(&w.root, n.as_bytes(), b"new");
    }
    w.leg1().append(&names).expect("append");
    let rsync = wrapper(
        &w,
        "unmounting-rsync",
        "*\" --files-from=- \"*",
        &format!("umount -l '{}'", w.root.display()),
    );
    let r = Run::of(w.cmd("step1", &[]).env("RSYNC", &rsync));
    println!("exit {}; stderr: {}", r.code, r.stderr);
    assert!(!offsite_sync::is_mountpoint(&w.root), "not unmounted");
    assert_ne!(r.code, 0, "a run that sent nothing reported success");
    assert!(World::files(&w.pve()).is_empty());
    remount(&w);
    assert_eq!(
        w.leg1().line_count().expect("ledger"),
        20,
        "ledger entries lost"
    );
    // The disk is back: the same entries are delivered.
    w.run("step1", &[]).succeeds().stdout_contains("20 sent");
    assert_eq!(World::files(&w.pve().join("svc")).len(), 20);
    assert_eq!(w.leg1().line_count().expect("ledger"), 0);
}

/// An rsync that exits 0 having sent nothing of what it was given (here
/// a wrapper drops the list): the batch is kept. Before: committed.
#[test]
fn step2_keeps_the_change_log_when_rsync_did_not_send_what_was_listed() {
    let w = World::with_nas();
    recent_full(&w.root);
    let a = World::put(&w.nfs, b"immich/upload/a.jpg", b"a");
    w.leg2().append_paths([a.as_path()]).expect("append");
    let rsync = w.sb.write(
        "lossy-rsync",
        "#!/bin/sh\nexec /usr/bin/rsync \"$@\" </dev/null\n",
    );
    std::fs::set_permissions(&rsync, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let r = Run::of(w.cmd("step2", &[]).env("RSYNC", &rsync));
    assert_ne!(r.code, 0, "{}", r.stderr);
    r.stderr_contains("neither sent nor reported up to date");
    assert_eq!(w.leg2().line_count().expect("ledger"), 1);
    w.run("step2", &[]).succeeds().stdout_contains("1 sent");
    assert!(w.nas_dir.join("nfs/immich/upload/a.jpg").is_file());
}

/// The NAS volume not mounted: the destination is a plain directory.
/// Before: step 1 wrote into it and exited 0.
#[test]
fn step1_refuses_a_nas_destination_without_its_marker() {
    let w = World::with_nas();
    recent_full(&w.root);
    World::put(&w.root, b"svc/a", b"a");
    w.leg1().append(["svc/a"]).expect("append");
    let real = w.nas_dir.join("pve-backup.volume");
    std::fs::rename(w.pve(), &real).expect("mv");
    std::fs::create_dir(w.pve()).expect("bare mountpoint");
    let r = w.run("step1", &[]);
    r.fails_with(5)
        .stderr_contains(&w.pve().display().to_string())
        .stderr_contains("no identity marker");
    assert_eq!(
        std::fs::read_dir(w.pve()).expect("ls").count(),
        0,
        "written into the bare directory"
    );
    assert_eq!(w.leg1().line_count().expect("ledger"), 1);
    // Step 2's destinations are not affected.
    std::fs::remove_dir(w.pve()).expect("rmdir");
    std::fs::rename(&real, w.pve()).expect("mv back");
    w.run("step1", &[]).succeeds().stdout_contains("1 sent");
}

/// Another repository's marker (another NAS volume mounted there, a
/// different setup): refused, nothing written. Before: written, exit 0.
#[test]
fn sync_refuses_a_nas_destination_with_a_different_marker() {
    let w = World::with_nas();
    recent_full(&w.root);
    let photo = World::put(&w.nfs, b"immich/a.jpg", b"a");
    w.leg2().append_paths([photo.as_path()]).expect("append");
    let other = Marker::new("nas-nfs").expect("m");
    std::fs::write(w.nas_dir.join("nfs").join(marker::FILE), other.render()).expect("w");
    w.run("step2", &[])
        .fails_with(5)
        .stderr_contains(&other.id)
        .stderr_contains("expected id");
    assert!(!w.nas_dir.join("nfs/immich").exists());
    assert_eq!(w.leg2().line_count().expect("ledger"), 1);
    // Never rewritten by a run.
    assert_eq!(nas_marker(&w.nas_dir.join("nfs")), other);
}

/// A backup root without its marker (the disk not mounted, a bare
/// directory): step 1 and step 2 refuse before contacting the NAS.
#[test]
fn steps_refuse_a_backup_root_without_its_marker() {
    let w = World::with_nas();
    recent_full(&w.root);
    World::put(&w.root, b"svc/a", b"a");
    w.leg1().append(["svc/a"]).expect("append");
    std::fs::remove_file(w.root.join(marker::FILE)).expect("rm");
    w.run("all", &[])
        .fails_with(5)
        .stderr_contains("no backup-root identity marker");
    assert!(World::files(&w.pve()).is_empty());
    assert_eq!(w.leg1().line_count().expect("ledger"), 1);
}

/// `init` is idempotent, adopts a NAS marker of the right role for a new
/// backup disk, and never overwrites a marker (NAS or local record).
#[test]
fn init_is_idempotent_adopts_and_never_overwrites() {
    let w = World::with_nas();
    let dests = [
        (w.pve(), "nas-pve-backup"),
        (w.nas_dir.join("nfs"), "nas-nfs"),
        (w.nas_dir.join("nfs-ssd"), "nas-nfs-ssd"),
    ];
    let first: Vec<Marker> = dests.iter().map(|(d, _)| nas_marker(d)).collect();
    for ((_, role), m) in dests.iter().zip(&first) {
        assert_eq!(&m.role, role);
    }
    let ids = w.root.join(".offsite-sync/nas-ids");
    let recorded = std::fs::read_to_string(&ids).expect("nas-ids");
    for m in &first {
        assert!(
            recorded.contains(&format!("{}={}", m.role, m.id)),
            "{recorded}"
        );
    }
    // Again: nothing changes.
    w.run("init", &[])
        .succeeds()
        .stderr_contains("already initialised");
    let again: Vec<Marker> = dests.iter().map(|(d, _)| nas_marker(d)).collect();
    assert_eq!(again, first);
    assert_eq!(std::fs::read_to_string(&ids).expect("nas-ids"), recorded);

    // A new backup disk (nothing recorded): the NAS markers are adopted.
    std::fs::remove_file(&ids).expect("rm");
    w.run("init", &[]).succeeds().stderr_contains("adopted");
    assert_eq!(std::fs::read_to_string(&ids).expect("nas-ids"), recorded);
    let again: Vec<Marker> = dests.iter().map(|(d, _)| nas_marker(d)).collect();
    assert_eq!(again, first);

    // A recorded destination whose marker is gone (volume not mounted):
    // not re-created.
    let ssd = &dests[2].0;
    std::fs::rename(ssd, w.nas_dir.join("ssd.volume")).expect("mv");
    std::fs::create_dir(ssd).expect("bare");
    w.run("init", &[])
        .fails_with(5)
        .stderr_contains("is the NAS volume mounted");
    assert!(!ssd.join(marker::FILE).exists(), "a marker was made up");
    std::fs::remove_dir(ssd).expect("rmdir");
    std::fs::rename(w.nas_dir.join("ssd.volume"), ssd).expect("mv back");

    // Another repository's marker, or another role: never overwritten.
    let foreign = Marker::new("nas-nfs").expect("m");
    std::fs::write(dests[1].0.join(marker::FILE), foreign.render()).expect("w");
    w.run("init", &[])
        .fails_with(5)
        .stderr_contains("not overwritten");
    assert_eq!(nas_marker(&dests[1].0), foreign);
    assert_eq!(std::fs::read_to_string(&ids).expect("nas-ids"), recorded);
    std::fs::remove_file(&ids).expect("rm");
    let wrong_role = Marker::new("nas-nfs-ssd").expect("m");
    std::fs::write(dests[1].0.join(marker::FILE), wrong_role.render()).expect("w");
    w.run("init", &[])
        .fails_with(5)
        .stderr_contains("identified as \"nas-nfs-ssd\"");
    assert_eq!(nas_marker(&dests[1].0), wrong_role);
}

/// A full pass with --delete into pve-dest never deletes the NAS marker,
/// and the backup root's own marker is never sent as data (it would
/// replace the NAS one). Before: the local marker overwrote the NAS one.
#[test]
fn a_full_pass_keeps_the_nas_marker_and_never_sends_the_local_one() {
    let w = World::with_nas();
    World::put(&w.root, b"svc/a", b"a");
    let nas_before = nas_marker(&w.pve());
    for _ in 0..2 {
        w.run("step1", &["--full", "always", "--max-delete", "off"])
            .succeeds()
            .stdout_contains("full pass");
        assert_eq!(nas_marker(&w.pve()), nas_before);
    }
    // The next incremental run still recognises its destination.
    World::put(&w.root, b"svc/b", b"b");
    w.leg1().append(["svc/b"]).expect("append");
    w.run("step1", &[]).succeeds().stdout_contains("1 sent");
}

/// `init --dry-run` says what it would do and writes nothing, on the NAS
/// or on the backup disk.
#[test]
fn init_dry_run_writes_nothing() {
    let mut w = World::new();
    w.nas = Some(Nas::start(&w.sb.path().join("sshd")));
    std::fs::remove_file(w.root.join(marker::FILE)).expect("rm");
    w.run("init", &["--dry-run"])
        .succeeds()
        .stderr_contains("would write a marker of role nas-pve-backup");
    assert!(!w.pve().exists(), "the dry run created the destination");
    assert!(!w.root.join(marker::FILE).exists());
    assert!(!w.root.join(".offsite-sync/nas-ids").exists());
    w.init();
    assert_eq!(nas_marker(&w.pve()).role, "nas-pve-backup");
}

/// An NFS root (its own filesystem) lazily unmounted after step 2's
/// start-up checks and before its rsync: every listed path "vanishes"
/// silently (`--ignore-missing-args`). Before: committed, exit 0, the
/// changes never sent until the next full pass.
#[test]
fn step2_keeps_the_change_log_when_an_nfs_root_is_unmounted_before_its_rsync() {
    let w = World::with_nas();
    recent_full(&w.root);
    w.sb.mount_ext4("srv/nfs", 16 << 20);
    let photos: Vec<PathBuf> = (0..5)
        .map(|i| World::put(&w.nfs, format!("immich/upload/p{i}.jpg").as_bytes(), b"p"))
        .collect();
    w.leg2()
        .append_paths(photos.iter().map(PathBuf::as_path))
        .expect("append");
    let rsync = wrapper(
        &w,
        "unmounting-rsync",
        "*\" --files-from=- \"*",
        &format!("umount -l '{}'", w.nfs.display()),
    );
    let r = Run::of(w.cmd("step2", &[]).env("RSYNC", &rsync));
    println!("exit {}; stderr: {}", r.code, r.stderr);
    assert!(!offsite_sync::is_mountpoint(&w.nfs), "not unmounted");
    assert_ne!(r.code, 0, "a run that sent nothing reported success");
    assert!(World::files(&w.nas_dir.join("nfs")).is_empty());
    assert_eq!(w.leg2().line_count().expect("ledger"), 5, "entries lost");
}

/// The NAS volume goes away after the run checked its marker and before
/// the transfer (a long step 1 first, an automount timing out): the NAS
/// side checks the marker again in the transfer's own connection, before
/// the receiving rsync starts. Before: written into the bare directory.
#[test]
fn a_nas_volume_unmounted_after_the_check_gets_nothing_written() {
    let w = World::with_nas();
    recent_full(&w.root);
    World::put(&w.root, b"svc/a", b"a");
    w.leg1().append(["svc/a"]).expect("append");
    let pve = w.pve();
    let rsync = wrapper(
        &w,
        "nas-unmounting-rsync",
        "*\" --files-from=- \"*",
        &format!("mv '{p}' '{p}.volume' && mkdir '{p}'", p = pve.display()),
    );
    let r = Run::of(w.cmd("step1", &[]).env("RSYNC", &rsync));
    r.fails_with(5)
        .stderr_contains(&pve.display().to_string())
        .stderr_contains("identity marker missing or different");
    assert_eq!(
        std::fs::read_dir(&pve).expect("ls").count(),
        0,
        "written into the bare directory"
    );
    assert_eq!(w.leg1().line_count().expect("ledger"), 1);
}

/// Step 2's full pass runs one transfer per direct tree; the slack the
/// bound leaves is shared by them, but no tree loses more than the bound
/// of its own copy (its dry run was checked on its own figures): a small
/// tree emptied after the dry run beside a large one keeps its NAS copy.
#[test]
fn step2_full_pass_holds_each_tree_to_its_own_bound() {
    let w = World::with_nas();
    std::fs::write(&w.skip, "direct immich\ndirect paperless\n").expect("skip list");
    for i in 0..100 {
        World::put(&w.nfs, format!("immich/p{i:03}").as_bytes(), b"p");
    }
    for i in 0..10 {
        World::put(&w.nfs, format!("paperless/d{i}").as_bytes(), b"d");
    }
    w.run("step2", &[]).succeeds().stdout_contains("full pass");
    let nas = w.nas_dir.join("nfs/paperless");
    assert_eq!(World::files(&nas).len(), 10);
    let tree = w.nfs.join("paperless");
    let rsync = wrapper(
        &w,
        "emptying-rsync",
        // Matched on the destination: the source is read through the
        // tree's pinned descriptor (/proc/PID/fd/N).
        "*\"/nfs/paperless/ \"*",
        &format!("find '{}' -mindepth 1 -delete", tree.display()),
    );
    let r = Run::of(
        w.cmd("step2", &["--full", "always", "--max-delete", "10%"])
            .env("RSYNC", &rsync),
    );
    assert!(World::files(&tree).is_empty(), "not emptied");
    let left = World::files(&nas).len();
    println!("exit {}, {left} of 10 left; stderr: {}", r.code, r.stderr);
    assert!(left >= 9, "a tree lost {} of its 10 files", 10 - left);
    assert_ne!(r.code, 0);
    assert_eq!(World::files(&w.nas_dir.join("nfs/immich")).len(), 100);
}

/// The marker check adds no connection: one ssh call reads the markers
/// and the capacity, then one per rsync (as before: one per rsync and one
/// for the capacity).
#[test]
fn the_marker_check_shares_the_capacity_call() {
    let w = World::with_nas();
    recent_full(&w.root);
    World::put(&w.root, b"svc/a", b"a");
    w.leg1().append(["svc/a"]).expect("append");
    let log = w.sb.path().join("ssh.log");
    let ssh = w.sb.write(
        "counting-ssh",
        format!(
            "#!/bin/sh\necho call >>'{}'\nexec ssh \"$@\"\n",
            log.display()
        ),
    );
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let metrics = w.sb.path().join("m.prom");
    Run::of(
        w.cmd(
            "step1",
            &["--metrics-file", metrics.to_str().expect("utf8")],
        )
        .env("SSH", &ssh),
    )
    .succeeds()
    .stdout_contains("1 sent");
    let calls = std::fs::read_to_string(&log).expect("log").lines().count();
    assert_eq!(
        calls, 2,
        "ssh connections: the check and the capacity, then rsync"
    );
    let m = Metrics::read(&metrics).expect("metrics");
    assert!(m.get("offsite_dest_available_bytes").expect("capacity") > 0.0);
}

/// Step 2's full pass with the NFS root (its own filesystem) lazily
/// unmounted between the dry run and the transfer; the bare mountpoint
/// still holds an empty `immich/` (as a mountpoint skeleton may): the
/// transfer stops at the bound and the run fails.
#[test]
fn step2_full_pass_keeps_the_nas_copy_when_the_nfs_root_is_unmounted_after_its_dry_run() {
    let w = World::with_nas();
    std::fs::create_dir_all(w.nfs.join("immich")).expect("skeleton under the mountpoint");
    w.sb.mount_ext4("srv/nfs", 16 << 20);
    for i in 0..100 {
        World::put(&w.nfs, format!("immich/p{i:03}").as_bytes(), b"p");
    }
    w.run("step2", &[]).succeeds().stdout_contains("full pass");
    let nas = w.nas_dir.join("nfs/immich");
    assert_eq!(World::files(&nas).len(), 100);
    let stamp = std::fs::read(w.root.join(".offsite-sync/last-full-step2")).expect("stamp");
    w.leg2().mark_full_sync("test: overflow").expect("mark");
    let rsync = wrapper(
        &w,
        "unmounting-rsync",
        "*\" --delete \"*",
        &format!("umount -l '{}'", w.nfs.display()),
    );
    let r = Run::of(
        w.cmd(
            "step2",
            &["--full", "always", "--max-delete", "10%", "--json"],
        )
        .env("RSYNC", &rsync),
    );
    assert!(!offsite_sync::is_mountpoint(&w.nfs), "not unmounted");
    let left = World::files(&nas).len();
    println!("exit {}, {left} of 100 left; stderr: {}", r.code, r.stderr);
    assert!(left >= 90, "the NAS lost {} of 100 files", 100 - left);
    assert_ne!(r.code, 0);
    assert_eq!(json_steps(&r)[0]["deletions"], (100 - left) as u64);
    assert_eq!(
        std::fs::read(w.root.join(".offsite-sync/last-full-step2")).expect("stamp"),
        stamp
    );
    assert!(
        w.leg2().full_sync_needed(),
        "the full-sync request was cleared"
    );
}

/// Contract 9 in step 2's full pass: a `direct` tree replaced by a
/// symlink (to a host directory here) is never followed, neither when it
/// is found so nor when the swap happens between the dry run and the
/// transfer. Before: the pass sent the link's target (host files) into the
/// tree's NAS copy and deleted the photos there: with `--max-delete off`
/// all 20, exit 0; with the swap after the dry run, 20 host files sent and
/// 2 photos deleted.
#[test]
fn step2_full_pass_never_follows_a_direct_tree_replaced_by_a_symlink() {
    let w = World::with_nas();
    for i in 0..20 {
        World::put(&w.nfs, format!("immich/p{i:03}").as_bytes(), b"p");
    }
    w.run("step2", &[]).succeeds().stdout_contains("full pass");
    let nas = w.nas_dir.join("nfs/immich");
    let photos = World::files(&nas);
    assert_eq!(photos.len(), 20);
    let host = w.sb.mkdir("host-dir");
    for i in 0..20 {
        World::put(&host, format!("secret{i:02}").as_bytes(), b"s");
    }
    let tree = w.nfs.join("immich");
    let old = w.sb.path().join("immich.old");

    // Swapped between the dry run and the transfer: the transfer reads
    // the directory the dry run read.
    let rsync = wrapper(
        &w,
        "swapping-rsync",
        "*\" --delete \"*",
        &format!(
            "mv '{t}' '{o}' && ln -s '{h}' '{t}'",
            t = tree.display(),
            o = old.display(),
            h = host.display()
        ),
    );
    let r = Run::of(
        w.cmd(
            "step2",
            &["--full", "always", "--max-delete", "10%", "--json"],
        )
        .env("RSYNC", &rsync),
    );
    assert!(
        std::fs::symlink_metadata(&tree).is_ok_and(|m| m.is_symlink()),
        "the wrapper did not swap the tree"
    );
    println!("swap: exit {}; stderr: {}", r.code, r.stderr);
    assert_eq!(
        World::files(&nas),
        photos,
        "the NAS copy changed (exit {})",
        r.code
    );
    assert_eq!(json_steps(&r)[0]["deletions"], 0);

    // Found as a symlink: refused, nothing sent or deleted.
    let r = w.run("step2", &["--full", "always", "--max-delete", "off"]);
    println!("symlink: exit {}; stderr: {}", r.code, r.stderr);
    assert_eq!(r.code, 5, "a direct tree that is a symlink passed");
    r.stderr_contains("never followed");
    assert_eq!(World::files(&nas), photos, "the NAS copy changed");
}

/// With `--max-delete off` only the source guard protects step 1's full
/// pass: the transfer reads the backup root it checked (opened at the
/// start, read through its descriptor), so the disk lazily unmounted
/// right before rsync starts is still what is read. Before: rsync read
/// the bare mountpoint and deleted all 100 NAS files (exit 5 afterwards).
#[test]
fn step1_full_pass_without_a_bound_reads_the_backup_disk_it_checked() {
    let w = world_on_a_backup_disk();
    for i in 0..100 {
        World::put(&w.root, format!("data/f{i:03}").as_bytes(), b"x");
    }
    w.run("step1", &[]).succeeds().stdout_contains("full pass");
    assert_eq!(World::files(&w.pve()).len(), 100);
    w.leg1().mark_full_sync("test: gap").expect("mark");
    let rsync = wrapper(
        &w,
        "unmounting-rsync",
        "*\" --delete \"*",
        &format!("umount -l '{}'", w.root.display()),
    );
    let r = Run::of(
        w.cmd(
            "step1",
            &["--full", "always", "--max-delete", "off", "--json"],
        )
        .env("RSYNC", &rsync),
    );
    assert!(!offsite_sync::is_mountpoint(&w.root), "not unmounted");
    let left = World::files(&w.pve()).len();
    println!("exit {}, {left} of 100 left; stderr: {}", r.code, r.stderr);
    assert_eq!(left, 100, "the NAS lost files read from a bare mountpoint");
    assert_eq!(json_steps(&r)[0]["deletions"], 0);
    // The root is not the disk any more: nothing committed.
    assert_ne!(r.code, 0);
    remount(&w);
    assert!(
        w.leg1().full_sync_needed(),
        "the full-sync request was cleared"
    );
}

/// The backup disk (which holds the change log and the state) lazily
/// unmounted while step 2 sends: the batch is not committed and nothing
/// is written into the bare mountpoint. Before: exit 0, and the state
/// directory (`last-success`) was created on the root filesystem under
/// the mountpoint.
#[test]
fn step2_writes_nothing_into_the_bare_mountpoint_of_a_backup_disk_unmounted_mid_run() {
    let w = world_on_a_backup_disk();
    recent_full(&w.root);
    let photo = World::put(&w.nfs, b"immich/a", b"a");
    w.leg2().append_paths([photo.as_path()]).expect("append");
    let rsync = wrapper(
        &w,
        "unmounting-rsync",
        "*",
        &format!("umount -l '{}'", w.root.display()),
    );
    let r = Run::of(w.cmd("step2", &[]).env("RSYNC", &rsync));
    assert!(!offsite_sync::is_mountpoint(&w.root), "not unmounted");
    println!("exit {}; stderr: {}", r.code, r.stderr);
    let bare: Vec<_> = std::fs::read_dir(&w.root)
        .expect("mountpoint")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        bare.is_empty(),
        "written into the bare mountpoint: {bare:?}"
    );
    assert_ne!(r.code, 0, "a run that could not commit passed");
    r.stderr_contains("nothing committed");
    remount(&w);
    assert_eq!(w.leg2().line_count().expect("ledger"), 1, "batch lost");
}

/// With `--max-delete off`, a direct tree emptied after the last check
/// and before rsync reads it: nothing bounds the deletions (the operator
/// asked for none), but the run never reports that pass as a success.
/// Before: all 20 NAS files deleted, exit 0, stamp and full-sync request
/// cleared.
#[test]
fn a_full_pass_without_a_bound_that_read_an_emptied_source_fails() {
    let w = World::with_nas();
    for i in 0..20 {
        World::put(&w.nfs, format!("immich/p{i:02}").as_bytes(), b"p");
    }
    w.run("step2", &[]).succeeds().stdout_contains("full pass");
    let stamp = std::fs::read(w.root.join(".offsite-sync/last-full-step2")).expect("stamp");
    w.leg2().mark_full_sync("test: overflow").expect("mark");
    let tree = w.nfs.join("immich");
    let rsync = wrapper(
        &w,
        "emptying-rsync",
        "*\" --delete \"*",
        &format!("find '{}' -mindepth 1 -delete", tree.display()),
    );
    let r = Run::of(
        w.cmd(
            "step2",
            &["--full", "always", "--max-delete", "off", "--json"],
        )
        .env("RSYNC", &rsync),
    );
    let left = World::files(&w.nas_dir.join("nfs/immich")).len();
    println!("exit {}, {left} of 20 left; stderr: {}", r.code, r.stderr);
    assert_ne!(r.code, 0, "a pass that read an emptied source passed");
    r.stderr_contains("emptied while the pass ran");
    assert_eq!(json_steps(&r)[0]["deletions"], (20 - left) as u64);
    assert!(
        w.leg2().full_sync_needed(),
        "the full-sync request was cleared"
    );
    assert_eq!(
        std::fs::read(w.root.join(".offsite-sync/last-full-step2")).expect("stamp"),
        stamp
    );
}

//! nfs-mirror against real rsync on temp trees (and a small loop ext4 for
//! the full-disk case).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backup_core::ledger::{Ledger, PathKind};
use backup_tests::harness::{Run, Sandbox};
use backup_tests::stop::{Stop, stop, wait_mid_run};

const SKIP: &str = "direct immich\nnever frigate\nnever servarr/downloads/f1-replays\n";

struct T {
    sb: Sandbox,
    src: PathBuf,
    dst: PathBuf,
    skip: PathBuf,
}

fn setup() -> T {
    let sb = Sandbox::new();
    let src = sb.mkdir("srv/nfs");
    let dst = sb.mkdir("mnt/backup");
    backup_tests::harness::init_backup_root(&dst);
    let skip = sb.write("skip.conf", SKIP);
    T { sb, src, dst, skip }
}

impl T {
    fn cmd(&self, extra: &[&str]) -> std::process::Command {
        let mut c = self.sb.cmd("nfs-mirror");
        c.arg("--source")
            .arg(&self.src)
            .arg("--dest")
            .arg(&self.dst)
            .arg("--skip-list")
            .arg(&self.skip)
            .args(extra);
        c
    }
    fn run(&self, extra: &[&str]) -> Run {
        Run::of(&mut self.cmd(extra))
    }
    /// Real rsync behind a wrapper that slows it to `kbps` KB/s.
    fn slow_rsync(&self, kbps: u32) -> PathBuf {
        let rsync = self.sb.write(
            "slow-rsync",
            format!("#!/bin/sh\nexec /usr/bin/rsync --bwlimit={kbps} \"$@\"\n"),
        );
        std::fs::set_permissions(&rsync, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        rsync
    }
    /// nfs-mirror in the background with real rsync slowed to `kbps` KB/s
    /// (a wrapper), so a stop lands mid-transfer.
    fn spawn_slow(&self, kbps: u32, extra: &[&str]) -> std::process::Child {
        self.cmd(extra)
            .env("RSYNC", self.slow_rsync(kbps))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn")
    }
    fn ledger(&self) -> BTreeSet<Vec<u8>> {
        Ledger::new(self.dst.join(".changed-files"), PathKind::Relative)
            .read()
            .expect("ledger")
            .entries
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect()
    }
    fn w(&self, rel: &[u8], data: &str) {
        let p = self.src.join(std::ffi::OsStr::from_bytes(rel));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    }
}

fn set(items: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    items.iter().map(|i| i.to_vec()).collect()
}

fn neighbours(dst: &Path) {
    for (rel, data) in [
        ("pvc-data/2026-W48/ns/pvc/f", "pvc"),
        ("vzdump/vm-100.vma.zst", "vm image"),
        ("devvm-home/gen1/x", "home"),
        ("unknown-dir/keep", "keep"),
        (".changed-files.lock", ""),
        (".force-full-sync", ""),
        (".nfs-changes.log", "/srv/nfs/immich/a\n"),
    ] {
        let p = dst.join(rel);
        std::fs::create_dir_all(p.parent().expect("p")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    }
}

fn assert_neighbours(dst: &Path) {
    for rel in [
        "pvc-data/2026-W48/ns/pvc/f",
        "vzdump/vm-100.vma.zst",
        "devvm-home/gen1/x",
        "unknown-dir/keep",
        ".changed-files.lock",
        ".force-full-sync",
        ".nfs-changes.log",
    ] {
        assert!(dst.join(rel).exists(), "{rel} was touched");
    }
}

#[test]
fn mirrors_leg1_entries_only_and_ledgers_exactly_what_was_sent() {
    let t = setup();
    t.w(b"nextcloud/data/a.txt", "a");
    t.w(b"nextcloud/data/new\nline", "nl");
    t.w(b"nextcloud/-leading-dash", "dash");
    t.w(b"nextcloud/back\\#012slash", "bs");
    t.w(b"calibre/metadata.db", "db");
    t.w(b"calibre/metadata.db-wal", "wal");
    t.w(b"calibre/metadata.db-shm", "shm");
    t.w(b"calibre/@eaDir/thumb", "cruft");
    t.w(b"immich/upload/p.jpg", "photo");
    t.w(b"frigate/clip.mp4", "clip");
    t.w(b"servarr/config.xml", "cfg");
    t.w(b"servarr/downloads/f1-replays/r1.mkv", "race");
    t.w(b"servarr/downloads/other.mkv", "other");
    neighbours(&t.dst);
    // A stale file inside a mirrored tree is deleted by --delete.
    std::fs::create_dir_all(t.dst.join("calibre")).expect("mkdir");
    std::fs::write(t.dst.join("calibre/stale"), "old").expect("write");

    // One stale file of one: a count limit lets it go (10% would not).
    t.run(&[])
        .fails_with(5)
        .stderr_contains("would delete 1 of 1");
    t.run(&["--max-delete", "1"]).succeeds();
    assert!(t.dst.join("nextcloud/data/new\nline").is_file());
    assert!(t.dst.join("calibre/metadata.db").is_file());
    assert!(
        !t.dst.join("calibre/metadata.db-wal").exists(),
        "WAL sidecar copied"
    );
    assert!(!t.dst.join("calibre/@eaDir").exists(), "NAS cruft copied");
    assert!(
        !t.dst.join("calibre/stale").exists(),
        "--delete inside the tree"
    );
    assert!(!t.dst.join("immich").exists(), "direct route mirrored");
    assert!(!t.dst.join("frigate").exists(), "never route mirrored");
    assert!(!t.dst.join("servarr/downloads/f1-replays").exists());
    assert!(t.dst.join("servarr/downloads/other.mkv").is_file());
    assert_neighbours(&t.dst);
    assert_eq!(
        t.ledger(),
        set(&[
            b"nextcloud/data/a.txt",
            b"nextcloud/data/new\nline",
            b"nextcloud/-leading-dash",
            b"nextcloud/back\\#012slash",
            b"calibre/metadata.db",
            b"servarr/config.xml",
            b"servarr/downloads/other.mkv",
        ])
    );

    // Nothing changed: nothing new in the ledger. Then a same-size rewrite
    // within the same second is still seen (contract 6; --modify-window=-1
    // on older rsyncs, nanosecond compare on rsync 3.5).
    std::fs::remove_file(t.dst.join(".changed-files")).expect("rm");
    t.run(&[]).succeeds();
    assert!(
        t.ledger().is_empty(),
        "unchanged files ledgered: {:?}",
        t.ledger()
    );
    let f = t.src.join("calibre/metadata.db");
    let before = std::fs::metadata(&f)
        .expect("md")
        .modified()
        .expect("mtime");
    std::fs::write(&f, "DB").expect("rewrite");
    let _ = std::fs::File::options()
        .write(true)
        .open(&f)
        .and_then(|h| h.set_modified(before + std::time::Duration::from_millis(1)));
    t.run(&[]).succeeds();
    assert_eq!(t.ledger(), set(&[b"calibre/metadata.db"]));
    assert_eq!(
        std::fs::read(t.dst.join("calibre/metadata.db")).expect("r"),
        b"DB"
    );
}

#[test]
fn bug3_empty_or_unmounted_source_deletes_nothing() {
    let t = setup();
    t.w(b"nextcloud/a", "a");
    t.w(b"calibre/b", "b");
    t.run(&[]).succeeds();

    // Whole source empty (the LV not mounted): refused, mirror intact.
    std::fs::remove_dir_all(&t.src).expect("rm");
    std::fs::create_dir_all(&t.src).expect("mkdir");
    t.run(&[]).fails_with(5).stderr_contains("is empty");
    assert!(t.dst.join("nextcloud/a").is_file());

    // Not a mountpoint when one is required.
    t.w(b"nextcloud/a", "a");
    t.run(&["--require-mountpoint"])
        .fails_with(5)
        .stderr_contains("not a mountpoint");

    // One tree empty while its mirror is not: the whole run is refused
    // before anything is copied (the new file does not arrive either).
    t.w(b"calibre/new-file", "n");
    std::fs::remove_dir_all(t.src.join("nextcloud")).expect("rm");
    std::fs::create_dir_all(t.src.join("nextcloud")).expect("mkdir");
    t.run(&[])
        .fails_with(5)
        .stderr_contains("is empty but its mirror is not");
    assert!(t.dst.join("nextcloud/a").is_file());
    assert!(!t.dst.join("calibre/new-file").exists());
}

#[test]
fn max_delete_refuses_with_the_figures_and_copies_nothing() {
    let t = setup();
    for i in 0..20 {
        t.w(format!("nextcloud/f{i:02}").as_bytes(), "x");
    }
    t.run(&[]).succeeds();
    for i in 0..5 {
        std::fs::remove_file(t.src.join(format!("nextcloud/f{i:02}"))).expect("rm");
    }
    t.w(b"nextcloud/added", "new");
    let r = t.run(&["--max-delete", "10%"]);
    r.fails_with(5).stderr_contains("would delete 5 of 20");
    assert!(t.dst.join("nextcloud/f00").exists());
    assert!(!t.dst.join("nextcloud/added").exists());
    t.run(&["--max-delete", "4"]).fails_with(5);
    t.run(&["--max-delete", "5"]).succeeds();
    assert!(!t.dst.join("nextcloud/f00").exists());
    assert!(t.dst.join("nextcloud/added").exists());
    Run::of(t.sb.cmd("nfs-mirror").args(["--max-delete", "lots"]))
        .fails_with(2)
        .stderr_contains("--max-delete");
}

#[test]
fn vanished_entry_keeps_its_mirror_and_prune_skipped_removes_rerouted_ones() {
    let t = setup();
    t.w(b"oldsvc/a", "a");
    t.w(b"photos/p", "p");
    t.w(b"keep/k", "k");
    t.run(&[]).succeeds();
    std::fs::remove_dir_all(t.src.join("oldsvc")).expect("rm");
    let r = t.run(&["--json"]);
    r.succeeds();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let vanished: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "vanished")
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(vanished, ["oldsvc"]);
    assert!(
        t.dst.join("oldsvc/a").is_file(),
        "vanished entry's mirror deleted"
    );

    // photos is now routed direct: without --prune-skipped its mirror stays.
    std::fs::write(&t.skip, format!("{SKIP}direct photos\n")).expect("skip");
    t.run(&[]).succeeds().stderr_contains("--prune-skipped");
    assert!(t.dst.join("photos/p").is_file());
    t.run(&["--prune-skipped", "--dry-run"]).succeeds();
    assert!(t.dst.join("photos/p").is_file(), "dry run pruned");
    t.run(&["--prune-skipped"]).succeeds();
    assert!(!t.dst.join("photos").exists());
    assert!(t.dst.join("keep/k").is_file());
    assert!(t.dst.join("oldsvc/a").is_file());
    // Removed by hand: no longer reported.
    std::fs::remove_dir_all(t.dst.join("oldsvc")).expect("rm");
    let r = t.run(&[]);
    r.succeeds();
    assert!(!r.stdout.contains("vanished"), "{}", r.stdout);
}

#[test]
fn dry_run_changes_nothing_and_bad_skip_list_is_a_usage_error() {
    let t = setup();
    t.w(b"nextcloud/a", "a");
    t.run(&["--dry-run"])
        .succeeds()
        .stdout_contains("would-mirror");
    assert!(!t.dst.join("nextcloud").exists());
    assert!(!t.dst.join(".changed-files").exists());
    std::fs::write(&t.skip, "sometimes nextcloud\n").expect("w");
    t.run(&[]).fails_with(2).stderr_contains("skip.conf:1");
}

#[test]
fn config_copy_goes_to_pve_config_and_the_ledger() {
    let t = setup();
    let etc = t.sb.mkdir("etc/pve");
    std::fs::write(etc.join("storage.cfg"), "dir: local").expect("w");
    let empty = t.sb.mkdir("etc/empty");
    neighbours(&t.dst);
    let mut c = t.sb.cmd("nfs-mirror");
    c.arg("config")
        .arg("--dest")
        .arg(&t.dst)
        .arg("--item")
        .arg(&etc);
    Run::of(&mut c).succeeds();
    let rel = etc.strip_prefix("/").expect("abs");
    assert!(
        t.dst
            .join("pve-config")
            .join(rel)
            .join("storage.cfg")
            .is_file()
    );
    let mut want = b"pve-config/".to_vec();
    want.extend_from_slice(rel.join("storage.cfg").as_os_str().as_bytes());
    assert_eq!(t.ledger(), set(&[&want]));
    // An empty item (pmxcfs down) fails and leaves its copy alone.
    let mut c = t.sb.cmd("nfs-mirror");
    c.arg("config")
        .arg("--dest")
        .arg(&t.dst)
        .arg("--item")
        .arg(&empty);
    Run::of(&mut c)
        .fails_with(1)
        .stderr_contains("missing or empty");
    assert_neighbours(&t.dst);
}

/// The backup disk fills up mid-run (a 4 MiB ext4 on a loop device in a
/// private mount namespace): exit != 0, and every file that reached the
/// disk is in the ledger.
#[test]
fn full_backup_disk_fails_and_ledgers_what_arrived() {
    let t = setup();
    for i in 0..12 {
        t.w(format!("media/f{i:02}").as_bytes(), &"x".repeat(512 * 1024));
    }
    let img = t.sb.ext4_image("disk.img", 4 << 20);
    let listing = t.sb.path().join("arrived.txt");
    let ledger = t.sb.path().join("ledger");
    // The disk carries the backup root's marker (copied from a marked directory).
    let marked = t.sb.mkdir("marked");
    backup_tests::harness::init_backup_root(&marked);
    let script = "mount -o loop \"$1\" \"$2\" && cp \"$8\" \"$2/\" && \"$3\" --source \"$4\" --dest \"$2\" --skip-list \"$5\" --ledger \"$6\"; rc=$?; (cd \"$2\" && find media -type f -size +0) > \"$7\"; exit $rc";
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&img)
        .arg(&t.dst)
        .arg(backup_tests::harness::bin("nfs-mirror"))
        .arg(&t.src)
        .arg(&t.skip)
        .arg(&ledger)
        .arg(&listing)
        .arg(marked.join(backup_core::marker::FILE))
        .env("BACKUP_LOCK_DIR", t.sb.lock_dir())
        .env("ALLOW_UNMOUNTED_ROOT", "1")
        .output()
        .expect("unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(0),
        "full disk reported success: {stderr}"
    );
    let arrived: BTreeSet<Vec<u8>> = std::fs::read(&listing)
        .expect("listing")
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect();
    assert!(!arrived.is_empty(), "nothing arrived: {stderr}");
    let led: BTreeSet<Vec<u8>> = Ledger::new(&ledger, PathKind::Relative)
        .read()
        .expect("ledger")
        .entries
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    let missing: Vec<_> = arrived.difference(&led).collect();
    assert!(missing.is_empty(), "arrived but not ledgered: {missing:?}");
    println!("arrived={} ledgered={}", arrived.len(), led.len());
}

/// SIGKILL of nfs-mirror at random instants (rsync dies with it), then a
/// normal run: every file that reached the backup disk is in the ledger.
#[test]
fn sigkill_at_random_instants_loses_no_ledger_entry() {
    stopped_at_random_instants(&[Stop::Kill]);
}

/// The same with SIGTERM, in turn to nfs-mirror alone (`kill PID`: it dies,
/// rsync goes by PR_SET_PDEATHSIG) and to every process of the unit
/// (systemd's stop and TimeoutStartSec=: rsync runs its own handler).
#[test]
fn sigterm_at_random_instants_loses_no_ledger_entry() {
    stopped_at_random_instants(&[Stop::Term, Stop::TermUnit]);
}

fn stopped_at_random_instants(ways: &[Stop]) {
    use rand::Rng;
    let t = setup();
    let mut rng = rand::rng();
    let mut stopped = Vec::new();
    for round in 0..6 {
        for svc in ["alpha", "beta", "gamma"] {
            for i in 0..150 {
                t.w(
                    format!("{svc}/r{round}/f{i:03}").as_bytes(),
                    &"y".repeat(2048),
                );
            }
        }
        let mut c = t.sb.cmd("nfs-mirror");
        c.arg("--source")
            .arg(&t.src)
            .arg("--dest")
            .arg(&t.dst)
            .arg("--skip-list")
            .arg(&t.skip)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(0..250)));
        let how = ways[round % ways.len()];
        let s = stop(&mut child, how);
        s.left_no_process();
        if !s.status.success() {
            stopped.push(how);
        }
    }
    // The spool lock covers an rsync still on its way out; a deadline, not
    // a try count.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while t.run(&[]).code != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the normal run after the stops failed"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // A spool still locked by a dying rsync is recovered by a later run.
    t.run(&[]).succeeds();
    let mut arrived = BTreeSet::new();
    for svc in ["alpha", "beta", "gamma"] {
        for f in walk(&t.dst.join(svc)) {
            let mut v = svc.as_bytes().to_vec();
            v.push(b'/');
            v.extend_from_slice(&f);
            arrived.insert(v);
        }
    }
    let led = t.ledger();
    let missing: Vec<_> = arrived.difference(&led).collect();
    assert!(
        missing.is_empty(),
        "{} arrived files not in the ledger",
        missing.len()
    );
    assert_eq!(arrived.len(), 3 * 6 * 150);
    assert!(
        t.dst
            .join(".nfs-mirror/spool")
            .read_dir()
            .expect("spool")
            .next()
            .is_none()
    );
    println!(
        "files={} stopped={stopped:?} ledger={} lost=0",
        arrived.len(),
        led.len()
    );
}

/// Every file of the `docs` and `media` mirrors under `dst` with its bytes,
/// named relative to `dst`.
fn mirrored(dst: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    for top in ["docs", "media"] {
        for rel in walk(&dst.join(top)) {
            let data = std::fs::read(dst.join(top).join(OsStr::from_bytes(&rel))).expect("read");
            let mut name = format!("{top}/").into_bytes();
            name.extend_from_slice(&rel);
            out.insert(name, data);
        }
    }
    out
}

/// Deterministic bytes of `n` (incompressible enough).
fn blob(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A run stopped while rsync sends (after one new file has arrived):
/// status != 0, no rsync left, every file under a final name is whole (its
/// last good bytes or its new ones), the untouched ones byte-identical; the
/// next run succeeds, recovers the stopped run's items into the ledger and
/// ledgers every new or changed file.
fn stopped_mid_transfer(how: Stop) {
    let t = setup();
    for i in 0..30 {
        t.w(format!("docs/d{i:02}.txt").as_bytes(), &format!("doc {i}"));
    }
    std::fs::create_dir_all(t.src.join("media")).expect("mkdir");
    std::fs::write(t.src.join("media/changed.bin"), blob(100 << 10, 200)).expect("write");
    t.run(&[]).succeeds();
    let good = mirrored(&t.dst);
    assert_eq!(good.len(), 31);
    let ledger_before = t.ledger();

    // Day two: six new 256 KiB files and one changed, sent by an rsync
    // slowed to 300 KB/s (real rsync behind a wrapper) so the stop lands
    // mid-transfer.
    let mut new = BTreeMap::new();
    for i in 0..6u8 {
        let rel = format!("media/n{i}.bin");
        let data = blob(256 << 10, i);
        std::fs::write(t.src.join(&rel), &data).expect("write");
        new.insert(rel.into_bytes(), data);
    }
    let changed = blob(100 << 10, 201);
    std::fs::write(t.src.join("media/changed.bin"), &changed).expect("write");
    new.insert(b"media/changed.bin".to_vec(), changed);
    let mut child = t.spawn_slow(300, &[]);
    let first = t.dst.join("media/changed.bin");
    // rsync sends in name order: changed.bin, then n0.bin...
    wait_mid_run(&mut child, "changed.bin arrived", || {
        std::fs::read(&first).ok().as_deref() == Some(&new[&b"media/changed.bin"[..]][..])
    });
    stop(&mut child, how).failed_mid("rsync").left_no_process();

    for (rel, data) in mirrored(&t.dst) {
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if name.starts_with(b".") {
            // rsync's temporary file (`.n1.bin.XXXXXX`) of a run whose
            // receiver was SIGKILLed: not a final name.
            continue;
        }
        let whole = good.get(&rel) == Some(&data) || new.get(&rel) == Some(&data);
        assert!(
            whole,
            "{} is neither its last good copy nor its new version",
            String::from_utf8_lossy(&rel)
        );
    }
    for (rel, data) in good.iter().filter(|(r, _)| r.starts_with(b"docs/")) {
        assert_eq!(
            std::fs::read(t.dst.join(OsStr::from_bytes(rel)))
                .ok()
                .as_ref(),
            Some(data),
            "{}",
            String::from_utf8_lossy(rel)
        );
    }
    // An rsync that outlived nfs-mirror would have sent the last file.
    assert!(
        !t.dst.join("media/n5.bin").exists(),
        "rsync went on sending after nfs-mirror was stopped"
    );

    t.run(&[])
        .succeeds()
        .stderr_contains("of an interrupted run into the ledger");
    let mut want = good.clone();
    want.extend(new.clone());
    assert_eq!(mirrored(&t.dst), want, "the mirror differs from the source");
    let led = t.ledger();
    assert!(led.is_superset(&ledger_before));
    for rel in new.keys() {
        assert!(
            led.contains(rel),
            "{} arrived but is not in the ledger",
            String::from_utf8_lossy(rel)
        );
    }
    assert!(
        t.dst
            .join(".nfs-mirror/spool")
            .read_dir()
            .expect("spool")
            .next()
            .is_none()
    );
}

#[test]
fn sigkill_mid_transfer_keeps_every_file_whole_and_the_next_run_ledgers_all() {
    stopped_mid_transfer(Stop::Kill);
}

/// `kill PID`: nfs-mirror does not catch SIGTERM, so it dies as with
/// SIGKILL and rsync goes by PR_SET_PDEATHSIG.
#[test]
fn sigterm_mid_transfer_keeps_every_file_whole_and_the_next_run_ledgers_all() {
    stopped_mid_transfer(Stop::Term);
}

/// systemd's stop and TimeoutStartSec=: SIGTERM to nfs-mirror and to every
/// rsync process, whose handler removes its temporary file and exits 20.
#[test]
fn systemd_stop_sigterm_to_every_process_mid_transfer_keeps_every_file_whole_and_ledgers_all() {
    stopped_mid_transfer(Stop::TermUnit);
}

fn walk(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir").flatten() {
            let p = e.path();
            if e.file_type().expect("ft").is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .expect("prefix")
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                );
            }
        }
    }
    out
}

/// A tenant directory named like another job's tree is never mirrored into
/// it: reported, the rest mirrored, exit 3.
#[test]
fn a_source_entry_named_like_another_jobs_tree_is_refused() {
    let t = setup();
    t.w(b"pvc-data/evil", "x");
    t.w(b"nextcloud/a", "a");
    neighbours(&t.dst);
    t.run(&[])
        .fails_with(3)
        .stderr_contains("pvc-data (reserved name)");
    assert!(t.dst.join("nextcloud/a").is_file());
    assert!(!t.dst.join("pvc-data/evil").exists());
    assert_neighbours(&t.dst);
}

/// The job's metrics file (names kept from the old script, docs/metrics.md; push-metric adds
/// nfs_mirror_last_status and _last_run_timestamp) on success and refusal.
#[test]
fn metrics_file_on_success_and_on_refusal() {
    use backup_core::metrics::Metrics;
    let t = setup();
    t.w(b"nextcloud/a", "abc");
    t.w(b"nextcloud/b", "def");
    let m = t.sb.path().join("nfs-mirror.prom");
    let ms = m.to_str().expect("utf8");
    t.run(&["--metrics-file", ms]).succeeds();
    let got = Metrics::read(&m).expect("metrics");
    assert!(got.get("nfs_mirror_bytes").expect("bytes") > 0.0);
    assert_eq!(got.get("nfs_mirror_files_transferred"), Some(2.0));
    assert_eq!(got.get("nfs_mirror_vanished_entries"), Some(0.0));
    assert_eq!(got.get("nfs_mirror_planned_deletions"), Some(0.0));
    std::fs::remove_dir_all(&t.src).expect("rm");
    std::fs::create_dir_all(&t.src).expect("mkdir");
    t.run(&["--metrics-file", ms]).fails_with(5);
    let got = Metrics::read(&m).expect("metrics");
    assert!(got.get("nfs_mirror_bytes").expect("bytes on refusal") > 0.0);
    assert_eq!(got.get("nfs_mirror_files_transferred"), None);
}

/// An rsync killed outright (the unit's whole cgroup SIGKILLed, the OOM
/// killer) leaves its temp file (`.NAME.XXXXXX`) in the mirror.
/// The next run deletes it, but it must not count against `--max-delete`:
/// in a small mirror that one leftover would otherwise refuse every later
/// night (found by the SIGTERM/SIGKILL tests' review).
#[test]
fn a_killed_rsyncs_temp_file_never_trips_the_deletion_guard() {
    let t = setup();
    for i in 0..3 {
        t.w(format!("photos/p{i}.jpg").as_bytes(), &format!("photo {i}"));
    }
    t.run(&["--max-delete", "10%"]).succeeds();
    let big = blob(1 << 20, 7);
    std::fs::write(t.src.join("photos/big.jpg"), &big).expect("write");
    let mut child = t.spawn_slow(100, &["--max-delete", "10%"]);
    let temp = || {
        std::fs::read_dir(t.dst.join("photos"))
            .expect("photos")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(".big.jpg."))
    };
    wait_mid_run(&mut child, "rsync wrote its temp file", || temp().is_some());
    stop(&mut child, Stop::KillUnit)
        .failed_mid("rsync")
        .left_no_process();
    let leftover = temp().expect("a killed rsync leaves its temp file");
    assert!(!t.dst.join("photos/big.jpg").exists());

    // 1 deletion of 4 items is 25%, over 10%: only the temp file's nature
    // lets this run go ahead.
    t.run(&["--max-delete", "10%"]).succeeds();
    assert_eq!(
        std::fs::read(t.dst.join("photos/big.jpg")).expect("big"),
        big
    );
    assert!(
        !t.dst.join("photos").join(&leftover).exists(),
        "temp file {leftover} left in the mirror"
    );
    assert!(t.ledger().contains(&b"photos/big.jpg"[..]));
    // A real deletion in the same small mirror still trips the guard.
    std::fs::remove_file(t.src.join("photos/p0.jpg")).expect("rm");
    t.run(&["--max-delete", "10%"]).fails_with(5);
    assert!(t.dst.join("photos/p0.jpg").exists());
}

/// `nfs-mirror config` stopped while rsync copies (systemd stop, its
/// TimeoutStartSec=, `kill PID`): the files that already arrived under
/// pve-config/ must reach the ledger, through the next run if not this one.
/// The next run finds them up to date and sends nothing for them, so a
/// file this run copied but did not ledger never goes offsite (until a
/// full sync). Real rsync, slowed by a wrapper so the stop lands after the
/// first file arrived and while the second is sent.
fn config_stopped_mid_copy(how: Stop) {
    let t = setup();
    let etc = t.sb.mkdir("etc/pve");
    std::fs::write(etc.join("a-storage.cfg"), "dir: local\n").expect("w");
    std::fs::write(etc.join("z-big.bin"), blob(512 << 10, 9)).expect("w");
    let rsync = t.slow_rsync(50);
    let config_cmd = || {
        let mut c = t.sb.cmd("nfs-mirror");
        c.arg("config")
            .arg("--dest")
            .arg(&t.dst)
            .arg("--item")
            .arg(&etc);
        c
    };
    let mut child = config_cmd()
        .env("RSYNC", &rsync)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let rel = etc.strip_prefix("/").expect("abs");
    let copy = t.dst.join("pve-config").join(rel);
    wait_mid_run(&mut child, "a-storage.cfg arrived", || {
        copy.join("a-storage.cfg").is_file()
    });
    stop(&mut child, how).failed_mid("rsync").left_no_process();
    assert!(!copy.join("z-big.bin").exists(), "the stop came too late");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while Run::of(&mut config_cmd()).code != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the normal run after the stop failed"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(copy.join("z-big.bin").is_file());
    let led = t.ledger();
    for f in ["a-storage.cfg", "z-big.bin"] {
        let mut want = b"pve-config/".to_vec();
        want.extend_from_slice(rel.join(f).as_os_str().as_bytes());
        assert!(
            led.contains(&want),
            "{} was copied but never ledgered; ledger: {:?}",
            String::from_utf8_lossy(&want),
            led.iter()
                .map(|l| String::from_utf8_lossy(l))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn config_sigterm_mid_copy_ledgers_every_copied_file() {
    config_stopped_mid_copy(Stop::Term);
}

#[test]
fn config_systemd_stop_mid_copy_ledgers_every_copied_file() {
    config_stopped_mid_copy(Stop::TermUnit);
}

/// The guard pass and the copy are minutes or hours apart. A source tree
/// emptied in between (its filesystem unmounted, an operator's rm; here a
/// wrapper empties it just before the copying rsync starts, real rsync
/// does the rest) must not get its mirror emptied: the copy itself is held
/// to --max-delete, and the run fails.
#[test]
fn a_source_emptied_after_the_guard_pass_keeps_its_mirror() {
    let t = setup();
    for i in 0..50 {
        t.w(format!("docs/d{i:02}.txt").as_bytes(), &format!("doc {i}"));
    }
    t.w(b"media/m.bin", "m");
    t.run(&[]).succeeds();
    let docs = t.src.join("docs");
    let rsync = t.sb.write(
        "emptying-rsync",
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" --dry-run \"*) ;;\n  *\"{}/ \"*) find '{}' -mindepth 1 -delete ;;\nesac\nexec /usr/bin/rsync \"$@\"\n",
            // Matched on the mirror's name: source and destination are
            // reached through pinned descriptors (/proc/PID/fd/N).
            "/docs",
            docs.display()
        ),
    );
    std::fs::set_permissions(&rsync, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = Run::of(t.cmd(&["--max-delete", "10%"]).env("RSYNC", &rsync));
    assert!(
        std::fs::read_dir(&docs).expect("docs").next().is_none(),
        "the wrapper did not empty the source"
    );
    let left = walk(&t.dst.join("docs")).len();
    assert!(
        left >= 45,
        "the mirror of an emptied source lost {} of 50 files (exit {})",
        50 - left,
        out.code
    );
    assert_ne!(
        out.code, 0,
        "a run that stopped deleting passed for a good one"
    );
    out.stderr_contains("--max-delete");
    assert!(t.dst.join("media/m.bin").is_file());
}

/// Contract 13: a destination without the backup root's identity marker
/// (the bare mountpoint of an unmounted disk, a mistyped `--dest`) is
/// refused by both modes, and nothing is written there. Before, the mirror
/// and `nfs-mirror config` wrote into any directory given as `--dest`.
#[test]
fn both_modes_refuse_a_destination_without_the_backup_root_marker() {
    let t = setup();
    t.w(b"nextcloud/a", "a");
    let bare = t.sb.mkdir("bare-mountpoint");
    let mut c = t.sb.cmd("nfs-mirror");
    c.arg("--source")
        .arg(&t.src)
        .arg("--dest")
        .arg(&bare)
        .arg("--skip-list")
        .arg(&t.skip);
    Run::of(&mut c)
        .fails_with(5)
        .stderr_contains("no backup-root identity marker");
    let etc = t.sb.mkdir("etc/pve");
    std::fs::write(etc.join("storage.cfg"), "dir: local").expect("w");
    let mut c = t.sb.cmd("nfs-mirror");
    c.arg("config")
        .arg("--dest")
        .arg(&bare)
        .arg("--item")
        .arg(&etc);
    Run::of(&mut c)
        .fails_with(5)
        .stderr_contains("no backup-root identity marker");
    assert_eq!(
        walk(&bare),
        Vec::<Vec<u8>>::new(),
        "something was written into an unmarked destination"
    );
    // The marked backup root is accepted by both.
    t.run(&[]).succeeds();
    let mut c = t.sb.cmd("nfs-mirror");
    c.arg("config")
        .arg("--dest")
        .arg(&t.dst)
        .arg("--item")
        .arg(&etc);
    Run::of(&mut c).succeeds();
}

/// Issue 2: a service directory under the SSD root (`/srv/nfs-ssd`) that
/// the skip list does not name went nowhere: nfs-mirror took one root.
/// Now each root is mirrored on its own, the SSD one into DEST/nfs-ssd/,
/// ledgered under that prefix, its direct/never entries skipped as on the
/// main root, and each run's coverage record lists what it mirrored.
#[test]
fn an_ssd_root_is_mirrored_into_its_own_subtree_and_recorded() {
    let t = setup();
    let ssd = t.sb.mkdir("srv/nfs-ssd");
    t.w(b"nextcloud/a.txt", "a");
    for (rel, data) in [
        ("vaultwarden/db.bin", "vault"),
        ("vaultwarden/attachments/x", "att"),
        ("immich/thumbs/t.webp", "thumb"),
        ("frigate/clip", "never"),
    ] {
        let p = ssd.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    }
    let ssd_arg = format!("{}:nfs-ssd", ssd.display());
    t.run(&["--source", &ssd_arg]).succeeds();
    assert_eq!(
        std::fs::read(t.dst.join("nfs-ssd/vaultwarden/db.bin")).expect("mirrored"),
        b"vault"
    );
    assert!(t.dst.join("nextcloud/a.txt").is_file());
    assert!(
        !t.dst.join("nfs-ssd/immich").exists(),
        "direct route mirrored"
    );
    assert!(
        !t.dst.join("nfs-ssd/frigate").exists(),
        "never route mirrored"
    );
    assert_eq!(
        t.ledger(),
        set(&[
            b"nextcloud/a.txt",
            b"nfs-ssd/vaultwarden/db.bin",
            b"nfs-ssd/vaultwarden/attachments/x",
        ])
    );
    let rec = backup_core::mirror_record::Record::load(&t.dst).expect("record");
    let canon = |p: &Path| {
        std::fs::canonicalize(p)
            .expect("canon")
            .into_os_string()
            .into_vec()
    };
    use std::os::unix::ffi::OsStringExt;
    let ssd_rec = &rec.roots[&canon(&ssd)];
    assert!(ssd_rec.dirs[&b"vaultwarden".to_vec()] > 0, "{ssd_rec:?}");
    assert_eq!(ssd_rec.dirs[&b"immich".to_vec()], 0, "direct is not leg 1");
    assert!(rec.roots[&canon(&t.src)].dirs[&b"nextcloud".to_vec()] > 0);

    // A main-root entry named like the SSD root's subtree is never mixed
    // into it; an emptied SSD root is refused on its own (its mirror
    // kept), the main root still mirrored, the run fails naming the root.
    t.w(b"nfs-ssd/evil", "x");
    t.w(b"calibre/b.epub", "b");
    std::fs::remove_dir_all(&ssd).expect("rm");
    std::fs::create_dir_all(&ssd).expect("mkdir");
    t.run(&["--source", &ssd_arg])
        .fails_with(5)
        .stderr_contains(&format!(
            "{}: source {} is empty",
            ssd.display(),
            ssd.display()
        ))
        .stderr_contains("nfs-ssd (reserved name)");
    assert!(t.dst.join("calibre/b.epub").is_file());
    assert!(!t.dst.join("nfs-ssd/evil").exists());
    assert!(t.dst.join("nfs-ssd/vaultwarden/db.bin").is_file());
    // Two roots into one place is a usage error.
    t.run(&["--source", &ssd.display().to_string()])
        .fails_with(2)
        .stderr_contains("own DEST subdirectory");
}

/// A wrapper around the real rsync running `damage` (sh) right before the
/// copying (not dry) rsync whose destination ends with `dst` (rsync is
/// given the backup root's /proc/PID/fd/N path, then the mirror's).
fn damaging_rsync(sb: &Sandbox, dst: &Path, damage: &str) -> PathBuf {
    let rsync = sb.write(
        "damaging-rsync",
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" --dry-run \"*) ;;\n  *\"{}/ \"*) {damage} ;;\nesac\nexec /usr/bin/rsync \"$@\"\n",
            dst.display()
        ),
    );
    std::fs::set_permissions(&rsync, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    rsync
}

/// The root's slack is shared by its trees, but no tree loses more than
/// the bound of its own copy (its guard pass was checked on its own
/// figures). Before: a 10-file tree emptied after the guard pass beside a
/// 200-file one lost its whole mirror under --max-delete 10%, exit 0, and
/// was recorded as mirrored.
#[test]
fn a_small_tree_emptied_after_the_guard_pass_beside_a_large_one_keeps_its_mirror() {
    let t = setup();
    for i in 0..200 {
        t.w(format!("big/f{i:03}").as_bytes(), "b");
    }
    for i in 0..10 {
        t.w(format!("docs/d{i}").as_bytes(), "d");
    }
    t.run(&["--max-delete", "10%"]).succeeds();
    let docs = t.src.join("docs");
    let rsync = damaging_rsync(
        &t.sb,
        Path::new("/docs"),
        &format!("find '{}' -mindepth 1 -delete", docs.display()),
    );
    let out = Run::of(t.cmd(&["--max-delete", "10%"]).env("RSYNC", &rsync));
    assert!(
        std::fs::read_dir(&docs).expect("docs").next().is_none(),
        "the wrapper did not empty the source"
    );
    let left = walk(&t.dst.join("docs")).len();
    println!("exit {}, {left} of 10 left: {}", out.code, out.stderr);
    assert!(left >= 9, "the mirror lost {} of its 10 files", 10 - left);
    assert_ne!(out.code, 0, "a tree stopped at its bound passed");
    assert_eq!(walk(&t.dst.join("big")).len(), 200);
}

/// With --max-delete off only the guard protects: it is checked again
/// right before each tree's copy, and every rsync reads the tree opened at
/// the guard pass. A tree emptied while an earlier tree was being copied
/// keeps its mirror (the run fails naming it); a root lazily unmounted
/// after the guard pass is still read through the opened trees, so its
/// mirrors keep their content. Before: both mirrors emptied, exit 0, and
/// both recorded as mirrored (covered).
#[test]
fn without_a_bound_an_emptied_or_unmounted_source_never_empties_its_mirror() {
    let t = setup();
    let ssd = t.sb.mkdir("srv/nfs-ssd");
    std::fs::create_dir_all(ssd.join("vault")).expect("skeleton under the mountpoint");
    t.sb.mount_ext4("srv/nfs-ssd", 16 << 20);
    for i in 0..20 {
        t.w(format!("big/f{i:02}").as_bytes(), "b");
    }
    for i in 0..10 {
        t.w(format!("docs/d{i}").as_bytes(), "d");
        let v = ssd.join(format!("vault/v{i}"));
        std::fs::create_dir_all(v.parent().expect("parent")).expect("mkdir");
        std::fs::write(v, "v").expect("write");
    }
    let both = |rsync: Option<&Path>| {
        let mut c = t.cmd(&["--max-delete", "off"]);
        c.arg("--source").arg(format!("{}:nfs-ssd", ssd.display()));
        if let Some(r) = rsync {
            c.env("RSYNC", r);
        }
        Run::of(&mut c)
    };
    both(None).succeeds();
    let vault = t.dst.join("nfs-ssd/vault");
    assert_eq!(walk(&vault).len(), 10);
    // During big's copy, docs is emptied; during docs', the SSD root is
    // lazily unmounted (its bare mountpoint holds an empty vault/).
    let rsync = damaging_rsync(
        &t.sb,
        Path::new("/big"),
        &format!(
            "find '{}' -mindepth 1 -delete",
            t.src.join("docs").display()
        ),
    );
    let out = both(Some(&rsync));
    println!("emptied: exit {}: {}", out.code, out.stderr);
    assert!(
        std::fs::read_dir(t.src.join("docs"))
            .expect("docs")
            .next()
            .is_none(),
        "the wrapper did not empty the source"
    );
    assert_eq!(
        walk(&t.dst.join("docs")).len(),
        10,
        "docs' mirror lost files"
    );
    assert_ne!(out.code, 0, "a tree refused before its copy passed");
    out.stderr_contains("docs");
    let rsync = damaging_rsync(
        &t.sb,
        Path::new("/vault"),
        &format!("umount -l '{}'", ssd.display()),
    );
    let out = both(Some(&rsync));
    println!("unmounted: exit {}: {}", out.code, out.stderr);
    assert!(
        std::fs::read_dir(&ssd)
            .map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name() == "vault")))
            .unwrap_or(false)
            && walk(&ssd.join("vault")).is_empty(),
        "the wrapper did not unmount the SSD root"
    );
    assert_eq!(walk(&vault).len(), 10, "vault's mirror lost files");
}

/// The backup disk lazily unmounted while nfs-mirror copies a tree:
/// rsync writes through the root's descriptor, so nothing lands on the
/// root filesystem under the bare mountpoint; the run fails, and the next
/// run (the disk back) mirrors and ledgers the tree. Before: exit 0, the
/// tree and the coverage record (saying mirrored) written under the bare
/// mountpoint.
#[test]
fn a_backup_disk_unmounted_mid_run_gets_nothing_written_on_its_bare_mountpoint() {
    let sb = Sandbox::new();
    let src = sb.mkdir("srv/nfs");
    let dst = sb.mount_backup_disk("mnt/backup", 32 << 20);
    let skip = sb.write("skip.conf", SKIP);
    for t in ["adocs", "bdocs"] {
        for i in 0..10 {
            sb.write(&format!("srv/nfs/{t}/d{i}"), "d");
        }
    }
    let rsync = damaging_rsync(
        &sb,
        Path::new("/bdocs"),
        &format!("umount -l '{}'", dst.display()),
    );
    let run = |rsync: Option<&Path>| {
        let mut c = sb.cmd("nfs-mirror");
        c.arg("--source")
            .arg(&src)
            .arg("--dest")
            .arg(&dst)
            .arg("--skip-list")
            .arg(&skip);
        if let Some(r) = rsync {
            c.env("RSYNC", r);
        }
        Run::of(&mut c)
    };
    let out = run(Some(&rsync));
    println!("exit {}: {}", out.code, out.stderr);
    let bare: Vec<_> = std::fs::read_dir(&dst)
        .expect("mountpoint")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(bare.is_empty(), "written on the bare mountpoint: {bare:?}");
    assert_ne!(out.code, 0, "a run whose disk went away passed");
    // The disk again (its last user gone): the next run mirrors the tree
    // and ledgers it.
    // Once the detached filesystem is released (its loop device gone):
    // mounting the image again earlier would read it unflushed.
    let img = sb.path().join("mnt_backup.ext4");
    let released = || {
        std::process::Command::new("losetup")
            .arg("-j")
            .arg(&img)
            .output()
            .is_ok_and(|o| o.stdout.is_empty())
    };
    for _ in 0..100 {
        if released() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(released(), "the unmounted disk's loop device stays");
    let st = std::process::Command::new("mount")
        .args(["-o", "loop", "-t", "ext4"])
        .arg(&img)
        .arg(&dst)
        .status()
        .expect("mount");
    assert!(st.success(), "remount");
    run(None).succeeds();
    assert_eq!(walk(&dst.join("bdocs")).len(), 10);
    let ledger: BTreeSet<Vec<u8>> = Ledger::new(dst.join(".changed-files"), PathKind::Relative)
        .read()
        .expect("ledger")
        .entries
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    assert!(
        ledger.contains(&b"bdocs/d0"[..]),
        "a copied file never ledgered"
    );
}

/// `nfs-mirror config` with the backup disk lazily unmounted between two
/// items: nothing is written on the root filesystem under the bare
/// mountpoint, and the run fails. Before: exit 0, the second item copied
/// under the bare mountpoint (pve-config/ and its ledger there).
#[test]
fn config_writes_nothing_on_the_bare_mountpoint_of_a_backup_disk_unmounted_mid_run() {
    let sb = Sandbox::new();
    let dst = sb.mount_backup_disk("mnt/backup", 32 << 20);
    let a = sb.mkdir("etc/aaa");
    std::fs::write(a.join("a.cfg"), "a").expect("w");
    let b = sb.mkdir("etc/bbb");
    std::fs::write(b.join("b.cfg"), "b").expect("w");
    // Right after the first item's copy, the disk goes.
    let rsync = sb.write(
        "unmounting-rsync",
        format!(
            "#!/bin/sh\n/usr/bin/rsync \"$@\"; rc=$?\ncase \" $* \" in\n  *\"{}/ \"*) umount -l '{}' ;;\nesac\nexit $rc\n",
            a.display(),
            dst.display()
        ),
    );
    std::fs::set_permissions(&rsync, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = Run::of(
        sb.cmd("nfs-mirror")
            .arg("config")
            .arg("--dest")
            .arg(&dst)
            .arg("--item")
            .arg(&a)
            .arg("--item")
            .arg(&b)
            .env("RSYNC", &rsync),
    );
    println!("exit {}: {}", out.code, out.stderr);
    let bare: Vec<_> = std::fs::read_dir(&dst)
        .expect("mountpoint")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(bare.is_empty(), "written on the bare mountpoint: {bare:?}");
    assert_ne!(out.code, 0, "a run whose disk went away passed");
}

/// With --max-delete off, a tree emptied right as its copy starts (after
/// the last check): nothing bounds the deletions, but the tree is never
/// reported or recorded as mirrored. Before: its mirror emptied, exit 0,
/// recorded as mirrored (coverage: covered).
#[test]
fn without_a_bound_a_tree_emptied_as_it_is_copied_is_not_reported_mirrored() {
    let t = setup();
    for i in 0..10 {
        t.w(format!("docs/d{i}").as_bytes(), "d");
    }
    t.run(&["--max-delete", "off"]).succeeds();
    // The record counts in seconds: the next run is a later one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let docs = t.src.join("docs");
    let rsync = damaging_rsync(
        &t.sb,
        Path::new("/docs"),
        &format!("find '{}' -mindepth 1 -delete", docs.display()),
    );
    let out = Run::of(
        t.cmd(&["--max-delete", "off", "--json"])
            .env("RSYNC", &rsync),
    );
    println!("exit {}: {}", out.code, out.stderr);
    assert_ne!(out.code, 0, "a tree emptied while copied passed");
    out.stderr_contains("emptied while it was copied");
    let rec = std::fs::read_to_string(t.dst.join(".nfs-mirror/coverage")).expect("record");
    let root = rec
        .lines()
        .find_map(|l| l.strip_prefix("root "))
        .and_then(|r| r.split(' ').next())
        .expect("root line");
    let docs_t = rec
        .lines()
        .find_map(|l| l.strip_prefix("dir ").filter(|r| r.ends_with(" docs")))
        .and_then(|r| r.split(' ').next())
        .expect("docs line");
    assert_ne!(root, docs_t, "recorded as mirrored by this run: {rec}");
}

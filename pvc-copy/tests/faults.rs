//! Faults injected for real: SIGKILL and SIGTERM (alone, and systemd's to
//! every process of the unit) in the middle of a copy, a backup
//! filesystem that fills up mid-copy. The emulators of tests/common stand
//! for the Proxmox host's LVM and Kubernetes; mounts and rsync are real.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backup_tests::harness::{Run, bin};
use backup_tests::stop::{Stop, stop};
use common::*;

/// Deterministic, incompressible-enough bytes.
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

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("proc").flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(c);
            }
        }
    }
    out
}

fn losetup_backing(img: &Path) -> String {
    let o = Command::new("losetup")
        .arg("-j")
        .arg(img)
        .output()
        .expect("losetup");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every file under `dir` with its bytes (symlinks as their target).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readdir").flatten() {
            let p = e.path();
            let ft = e.file_type().expect("file type");
            let rel = p.strip_prefix(dir).expect("under").to_path_buf();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_symlink() {
                let t = fs::read_link(&p).expect("readlink");
                out.insert(rel, t.into_os_string().into_encoded_bytes());
            } else {
                out.insert(rel, fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// A run stopped while rsync copies: status != 0, rsync and the mount go
/// with it, the previous copy is untouched and nothing of the new one sits
/// under the final name; the next run replaces the leftover and copies and
/// ledgers everything.
fn stopped_mid_copy(how: Stop) {
    let env = Env::new();
    env.pvc(
        "vm-9-pvc-kill",
        "ns",
        "big",
        &[
            ("keep.txt", b"day one"),
            ("sub/old.bin", &blob(64 << 10, 9)),
        ],
    );
    env.run(NOW, &[]).succeeds();
    let dest = env.dest(WEEK, "ns", "big");
    let good = tree(&dest);
    assert_eq!(good.len(), 2, "{:?}", good.keys());
    let ledger_before = env.ledger_lines();

    // Day two has 6 MiB more; rsync is slowed (real rsync with --bwlimit,
    // via a wrapper first on PATH) so the stop lands mid-copy.
    for i in 0..6u8 {
        env.write_in_lv("vm-9-pvc-kill", &format!("chunk{i}"), &blob(1 << 20, i));
    }
    let snap = env.snapshot("vm-9-pvc-kill", SNAP_UNIX + 3600);
    let wrap = env.sb.mkdir("slow-bin");
    let script = wrap.join("rsync");
    fs::write(
        &script,
        "#!/bin/sh\nexec /usr/bin/rsync --bwlimit=300 \"$@\"\n",
    )
    .expect("wrapper");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::join_paths(
        std::iter::once(wrap.clone()).chain(std::env::split_paths(&env.host.path_env())),
    )
    .expect("PATH");
    let mut c = env.cmd("2026-11-27T06:00:00Z");
    c.env("PATH", path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn");
    let partial = env.root.join(format!("pvc-data/{WEEK}/ns/.big.partial"));
    wait_for("rsync to start writing", Duration::from_secs(60), || {
        fs::read_dir(&partial)
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    });
    stop(&mut child, how).failed_mid("rsync").left_no_process();

    // rsync dies with its parent (PDEATHSIG, or its own SIGTERM handler
    // under systemd), so the private mount namespace empties and its loop
    // device is released.
    let me = env.sb.path().to_string_lossy().into_owned();
    wait_for("rsync to die", Duration::from_secs(20), || {
        processes_mentioning(&me).is_empty()
    });
    let snap_img = env.host.fs_image(VG, &snap);
    wait_for("the loop device to go", Duration::from_secs(20), || {
        losetup_backing(&snap_img).is_empty()
    });
    env.assert_no_mounts();
    // The previous copy is whole and byte for byte untouched (no new or
    // half-written file under its name); the unfinished one is aside.
    assert_eq!(tree(&dest), good, "the previous copy changed");
    // An rsync that outlived pvc-copy would have finished the copy.
    assert!(partial.exists());
    assert!(
        !partial.join("chunk5").exists(),
        "rsync went on copying after pvc-copy was stopped"
    );

    env.run("2026-11-27T06:00:00Z", &[])
        .succeeds()
        .stderr_contains("left by an interrupted run");
    assert!(!partial.exists());
    let now = tree(&dest);
    assert_eq!(now.len(), 8, "{:?}", now.keys());
    for (rel, bytes) in &good {
        assert_eq!(&now[rel], bytes, "{}", rel.display());
    }
    let ledger = env.ledger_lines();
    assert!(
        ledger.starts_with(&ledger_before),
        "the ledger was rewritten"
    );
    for i in 0..6u8 {
        let name = format!("chunk{i}");
        assert_eq!(now[Path::new(&name)], blob(1 << 20, i), "{name}");
        let want = format!("pvc-data/{WEEK}/ns/big/{name}");
        assert!(ledger.contains(&want), "{want} not in the ledger");
    }
    env.assert_no_mounts();
}

#[test]
fn sigkill_mid_copy_leaves_no_mount_keeps_the_previous_copy_and_the_next_run_succeeds() {
    stopped_mid_copy(Stop::Kill);
}

/// `kill PID`: pvc-copy does not catch SIGTERM, so it dies as with SIGKILL.
#[test]
fn sigterm_mid_copy_leaves_no_mount_keeps_the_previous_copy_and_the_next_run_succeeds() {
    stopped_mid_copy(Stop::Term);
}

/// systemd's stop and TimeoutStartSec=: SIGTERM to pvc-copy and to rsync,
/// which then removes its own temporary file and exits 20.
#[test]
fn systemd_stop_sigterm_to_every_process_mid_copy_keeps_the_previous_copy_and_the_next_run_succeeds()
 {
    stopped_mid_copy(Stop::TermUnit);
}

/// Runs `cmd` (a pvc-copy invocation) inside a new private mount namespace
/// where `img` is mounted on the backup root, so the small filesystem is
/// never visible to the host; returns the run and whatever `after`
/// (a shell snippet run in that namespace afterwards) prints.
fn run_on_small_fs(env: &Env, img: &Path, now: &str) -> Run {
    let wrapper = env.sb.write(
        "in-ns.sh",
        "#!/bin/sh\nset -e\nmount -o loop -t ext4 \"$BACKUP_IMG\" \"$BACKUP_MNT\"\nexec \"$@\"\n",
    );
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private"])
        .arg(&wrapper)
        .arg(bin("pvc-copy"))
        .args(env.args(now))
        .envs(env.host.env())
        .env("BACKUP_LOCK_DIR", env.sb.lock_dir())
        .env("BACKUP_IMG", img)
        .env("BACKUP_MNT", &env.root)
        .env_remove("JOURNAL_STREAM");
    let r = Run::of(&mut c);
    // The namespace's mount (and with it the image's loop device) goes
    // once its last process has exited, which the kernel finishes after
    // the run is reaped: until then the image on disk may lack the run's
    // last writes, and debugfs would read an older filesystem.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !losetup_backing(img).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    r
}

/// Give the backup disk image its identity marker, as an operator does
/// once with `offsite-sync init --local` (mounted here only for that).
fn init_backup_image(env: &Env, img: &Path) {
    let mnt = env.sb.mkdir("init-mnt");
    let o = Command::new("mount")
        .args(["-o", "loop", "-t", "ext4"])
        .arg(img)
        .arg(&mnt)
        .output()
        .expect("mount");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    backup_tests::harness::init_backup_root(&mnt);
    let o = Command::new("umount").arg(&mnt).output().expect("umount");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn debugfs(img: &Path, req: &str) -> String {
    let o = Command::new("debugfs")
        .args(["-R", req])
        .arg(img)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_backup_disk_filling_mid_copy_keeps_the_previous_copy_and_removes_the_partial_one() {
    let mut env = Env::new();
    env.root_is_mount = true;
    let img = env.sb.path().join("backup.img");
    fs::File::create(&img)
        .expect("img")
        .set_len(12 << 20)
        .expect("size");
    let mk = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
        .arg(&img)
        .output()
        .expect("mkfs");
    assert!(mk.status.success());
    init_backup_image(&env, &img);

    env.pvc("vm-6-pvc-full", "ns", "p", &[("small.txt", b"fits")]);
    run_on_small_fs(&env, &img, NOW).succeeds();
    assert_eq!(
        debugfs(&img, &format!("cat /pvc-data/{WEEK}/ns/p/small.txt")),
        "fits"
    );

    // The next snapshot holds 20 MiB: more than the 12 MiB disk.
    env.write_in_lv("vm-6-pvc-full", "huge.bin", &blob(20 << 20, 1));
    env.snapshot("vm-6-pvc-full", SNAP_UNIX + 3600);
    let r = run_on_small_fs(&env, &img, "2026-11-27T06:00:00Z");
    r.fails_with(1).stderr_contains("the previous copy is kept");
    assert_eq!(
        debugfs(&img, &format!("cat /pvc-data/{WEEK}/ns/p/small.txt")),
        "fits"
    );
    let listing = debugfs(&img, &format!("ls /pvc-data/{WEEK}/ns"));
    assert!(
        !listing.contains(".p.partial"),
        "partial copy left: {listing}"
    );
    assert!(!debugfs(&img, &format!("ls /pvc-data/{WEEK}/ns/p")).contains("huge.bin"));
    let rec = debugfs(&img, &format!("cat /pvc-data/{WEEK}/ns/.p.source"));
    assert!(rec.contains("vm-6-pvc-full_snap_20261127_0300"), "{rec}");
    assert_eq!(env.metric("pvc_copy_pvcs{result=\"failed\"}"), Some(1.0));
    env.assert_no_mounts();
    assert!(
        losetup_backing(&img).is_empty(),
        "the backup image is still attached"
    );
}

#[test]
fn a_failed_mount_is_retried_once_and_a_second_failure_counts() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    env.pvc("vm-2-pvc-bbbb", "ns", "b", &[("f", b"b")]);
    // A stand-in `mount` first on PATH: fails the first attempt for `a`
    // (as a mount hung on orphan cleanup would) and every attempt for `b`,
    // then hands over to the real mount.
    let d = env.sb.mkdir("flaky-bin");
    let state = env.sb.path().join("mount-attempts");
    let script = d.join("mount");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$*\" in *pvc-bbbb*) echo 'mount: wrong fs type' >&2; exit 32;; esac\n\
             if [ ! -e '{s}' ]; then touch '{s}'; echo 'mount: timed out' >&2; exit 32; fi\n\
             exec /usr/bin/mount \"$@\"\n",
            s = state.display()
        ),
    )
    .expect("script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::join_paths(
        std::iter::once(d.clone()).chain(std::env::split_paths(&env.host.path_env())),
    )
    .expect("PATH");
    let r = Run::of(env.cmd(NOW).env("PATH", path));
    r.fails_with(3)
        .stderr_contains("retrying once")
        .stderr_contains("succeeded on retry")
        .stderr_contains("ns/b (vm-2-pvc-bbbb): mount failed twice");
    assert_eq!(
        fs::read(env.dest(WEEK, "ns", "a").join("f")).expect("a"),
        b"a"
    );
    assert!(!env.dest(WEEK, "ns", "b").exists());
    env.assert_no_mounts();
}

#[test]
fn an_inactive_snapshot_is_activated_for_the_copy_and_deactivated_after() {
    let env = Env::new();
    env.pvc("vm-1-pvc-aaaa", "ns", "a", &[("f", b"a")]);
    let snap = "vm-1-pvc-aaaa_snap_20261127_0300";
    // lvm-snap may leave thin snapshots with activation skip, inactive.
    let o = env
        .host
        .command("lvchange")
        .args(["-an", &format!("{VG}/{snap}")])
        .output()
        .expect("lvchange");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!env.host.lv_path(VG, snap).exists());
    env.run(NOW, &[]).succeeds();
    assert_eq!(
        fs::read(env.dest(WEEK, "ns", "a").join("f")).expect("a"),
        b"a"
    );
    let calls: Vec<String> = env
        .host
        .calls_of("lvchange")
        .into_iter()
        .map(|c| c.join(" "))
        .collect();
    assert!(calls.iter().any(|c| c.contains("-ay -K")), "{calls:?}");
    assert!(!env.host.lv_path(VG, snap).exists(), "left active");
}

/// Undoes `chattr +i` even when the test fails, so the sandbox can go.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Immutable {
        let o = Command::new("chattr")
            .arg("+i")
            .arg(p)
            .output()
            .expect("chattr");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Immutable(p.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

/// The new copy is exchanged into place, then the replaced one removed.
/// When that removal failed (here: an immutable directory in the old copy
/// on the real ext4 backup disk; on the host an I/O error), the run
/// reported the PVC failed and dropped the new copy's ledger entries,
/// though the new copy stood in place: later same-week runs link against
/// it and ledger only their own changes, so the changed file never went
/// offsite (found by audit). The copy in place must reach the ledger.
#[test]
fn a_replaced_copy_that_cannot_be_removed_never_costs_the_new_copys_ledger_entries() {
    let env = Env::new();
    env.pvc(
        "vm-9-pvc-imm",
        "ns",
        "p",
        &[("sub/kept.txt", b"kept"), ("changing.txt", b"v1")],
    );
    env.run(NOW, &[]).succeeds();
    let d = env.dest(WEEK, "ns", "p");
    let guard = Immutable::set(&d.join("sub"));

    env.write_in_lv("vm-9-pvc-imm", "changing.txt", b"version 2");
    env.snapshot("vm-9-pvc-imm", SNAP_UNIX + 3600);
    let before = env.ledger_lines().len();
    let r = env.run("2026-11-27T06:00:00Z", &[]);
    assert_eq!(
        fs::read(d.join("changing.txt")).expect("in place"),
        b"version 2"
    );
    let new = env.ledger_lines()[before..].to_vec();
    assert!(
        new.contains(&format!("pvc-data/{WEEK}/ns/p/changing.txt")),
        "the copy in place is not in the ledger: {new:?}"
    );
    r.succeeds()
        .stderr_contains("cannot remove the replaced copy");

    // Once the obstacle is gone (it went aside with the replaced copy),
    // the next run removes the leftover.
    let moved = Immutable(env.root.join(format!("pvc-data/{WEEK}/ns/.p.partial/sub")));
    drop((guard, moved));
    env.run("2026-11-27T07:00:00Z", &[]).succeeds();
    assert!(
        !env.root
            .join(format!("pvc-data/{WEEK}/ns/.p.partial"))
            .exists()
    );
    env.assert_no_mounts();
}

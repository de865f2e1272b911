//! One regression test per past bug of the old pipeline (numbered in
//! docs/compatibility.md, "Past bugs"; after ripgrep's tests/regression.rs). Bugs whose behaviour a tool's own
//! tests already pin down are listed here and not tested twice; the tests
//! below cover the rest, mostly where two tools meet. Each runs the real
//! binaries against real rsync and a real OpenSSH sshd on loopback playing
//! the NAS (tests/src/nas.rs); no emulator is used in this file.
//!
//! | bug | already covered by |
//! | --- | --- |
//! | 1 nfs-mirror --delete wipes neighbours | nfs-mirror/tests/mirror.rs::mirrors_leg1_entries_only_and_ledgers_exactly_what_was_sent (vzdump/, devvm-home/, .changed-files.lock, .force-full-sync kept), ::max_delete_refuses_with_the_figures_and_copies_nothing |
//! | 2 a losing second instance cleans up the winner | per tool: lvm-snap/tests/create.rs::a_held_lock_exits_4_and_reports, pvc-copy/tests/copy.rs::a_second_run_while_one_holds_the_lock_exits_busy, sqlite-dump/tests/dump.rs::a_second_instance_is_busy, nfs-track/tests/track.rs::a_second_instance_is_busy, pfsense-pull/tests/cli.rs::a_second_run_is_refused_while_the_first_holds_the_lock; against a real first run: [`bug02_a_second_instance_leaves_the_running_one_alone`] |
//! | 3 an empty source causes mass deletion | nfs-mirror/tests/mirror.rs::bug3_empty_or_unmounted_source_deletes_nothing, offsite-sync/tests/sync.rs::full_pass_deletes_on_the_nas_only_from_a_sound_source |
//! | 4 change-log consume/truncate race | offsite-sync/tests/faults.rs::appenders_racing_the_consumer_with_random_failures_lose_nothing, core/tests/ledger_property.rs |
//! | 5 change log truncated when step 2 fails | [`bug05_change_log_kept_when_step2_fails`] (also, at random, offsite-sync/tests/faults.rs::appenders_racing_the_consumer_with_random_failures_lose_nothing) |
//! | 6 NFS health-check failure discarded | pvc-copy/tests/unit.rs::a_failed_nfs_check_still_copies_everything_and_the_night_counts_as_failed |
//! | 7 silent deaths without a metric | offsite-sync's own exits (refused, busy, NAS down): [`bug07_every_offsite_run_that_does_nothing_still_reports_a_failure`]; push-metric/tests/push.rs::killed_run_without_metrics_file_still_reports, ::from_systemd_timeout_reports_aborted; lvm-snap/tests/create.rs::a_held_lock_exits_4_and_reports; offsite-sync/tests/pushgateway.rs::success_failure_and_kill_reach_the_alerts_names |
//! | 8 unresolvable LVs skipped with status 0 | pvc-copy/tests/copy.rs::wrong_luks_key_old_snapshot_and_unresolvable_lv_are_counted_and_the_rest_is_copied, ::kubectl_down_uses_the_mapping_cache_and_without_one_every_pvc_fails; lvm-snap/tests/create.rs::kubectl_down_without_cache_snapshots_everything_and_says_so |
//! | 9 restore lookup, no rollback | lvm-snap/tests/restore.rs::a_snapshot_of_another_lv_is_refused, ::a_failed_second_rename_puts_the_names_back, ::never_ready_after_the_swap_undoes_everything; lvm-snap/tests/decide.rs::pre_restore_copies_have_their_own_retention |
//! | 10 manifest truncation not locked | [`bug10_a_mirror_run_during_offsite_sync_loses_no_entry`] |
//! | 11 a vanished manifest entry fails step 1 for good | offsite-sync/tests/sync.rs::step1_sends_the_ledger_drops_vanished_and_commits_only_after_success |
//! | 12 newlines in names break the manifests | core/src/ledger.rs::hostile_names_round_trip_exactly (library), offsite-sync/tests/sync.rs::step2_sends_only_direct_paths_and_never_follows_a_symlink_out_of_the_tree (leg 2); across nfs-mirror and offsite-sync: [`bug12_newline_names_survive_the_ledger`] |
//! | 13 a failed nfs-mirror run loses its delta | nfs-mirror/tests/mirror.rs::full_backup_disk_fails_and_ledgers_what_arrived, ::sigkill_at_random_instants_loses_no_ledger_entry |
//! | 14 sqlite-backup never offsite, WAL lost, URI injection | sqlite-dump/tests/dump.rs::bug14_rows_only_in_the_wal_reach_the_copy, ::bug14_written_files_enter_the_ledger, ::bug14_the_tree_is_searched_by_header_at_any_depth_without_following_symlinks, ::bug14_a_truncated_database_fails_is_counted_and_keeps_the_previous_copy; end to end: tests/tests/nightly.rs |
//! | 15 week-directory hazards | pvc-copy/tests/copy.rs::weekly_versions_hardlink_unchanged_files_and_the_ledger_gets_only_changes, ::a_claim_shared_by_two_lvs_never_shares_a_destination; offsite-sync/tests/sync.rs::a_new_week_shares_unchanged_files_with_the_previous_week_on_the_nas |
//! | 16 success timestamp on failure; capacity gauges lost to mawk | push-metric/tests/push.rs::failure_after_success_keeps_success_timestamp, offsite-sync/tests/pushgateway.rs::success_failure_and_kill_reach_the_alerts_names; capacity figures past 2^31: [`bug16_capacity_gauges_are_exact_integers_past_2_pow_31`] |
//! | 17 offsite target unreachable | offsite-sync/tests/faults.rs::link_cut_mid_transfer_fails_keeps_every_entry_and_the_next_run_completes, offsite-sync/tests/sync.rs::ledger_cap_marks_a_full_sync_and_status_reports_it |
//! | 18 inotify gaps | nfs-track/tests/track.rs (overflow rescans, changes while killed, watch limit, held paths until the disk is mounted) |
//! | 19 grep-while silent aborts | as 11 (a last listed file that vanished): offsite-sync/tests/sync.rs::step1_sends_the_ledger_drops_vanished_and_commits_only_after_success |
//! | 20 lvm-snap details | lvm-snap/tests/create.rs::a_failing_lvs_is_a_failure_not_a_skipped_guard, ::pool_guard_refuses_on_low_metadata_space, ::kubectl_down_falls_back_to_the_cached_mapping, ::one_failed_lvcreate_is_a_partial_run, ::a_second_run_in_the_same_minute_is_a_no_op; lvm-snap/tests/decide.rs::only_tagged_names_of_our_scheme_are_ever_dropped |
//! | 21 mount hygiene | pvc-copy/tests/copy.rs::copies_files_hardlinks_wal_and_symlinks_as_links_without_touching_the_snapshot, pvc-copy/tests/faults.rs::sigkill_mid_copy_leaves_no_mount_keeps_the_previous_copy_and_the_next_run_succeeds, pvc-copy/src/mount.rs::options_by_type |
//! | 22 pfSense | pfsense-pull/tests/ssh.rs::bug22_a_stalled_firewall_is_cut_off_by_the_run_timeout, ::bug22_27_sshd_killed_mid_tar_leaves_no_tar_and_no_rotation, pfsense-pull/src/layout.rs::bug22_retention_keeps_weeks_of_daily_configs_not_four_files |
//! | 23 symlinks followed | step 1 after a tenant swapped a directory for a symlink between two nfs-mirror runs: [`bug23_a_directory_swapped_for_a_symlink_never_leaks_through_step1`]; offsite-sync/tests/sync.rs::step2_sends_only_direct_paths_and_never_follows_a_symlink_out_of_the_tree, offsite-sync/src/resolve.rs::symlinks_on_the_way_are_never_followed |
//! | 24 pushes fail silently | push-metric/tests/push.rs::gateway_down_exits_1_with_one_line_reason, ::push_retries_until_the_gateway_is_back |
//! | 25 doc and code drift | not behaviour: settled in README/units (timers, retention flags) |
//! | 26 argument injection | lvm-snap/tests/restore.rs::hostile_names_are_rejected_before_any_command_runs (no emulated LVM call made), pvc-copy/tests/copy.rs::hostile_claim_names_never_become_paths, lvm-snap/src/lvm.rs::operands_come_after_a_double_dash |
//! | 27 partial transfers accepted | pvc-copy/tests/faults.rs::a_backup_disk_filling_mid_copy_keeps_the_previous_copy_and_removes_the_partial_one, pfsense-pull/tests/ssh.rs::bug27_a_killed_run_leaves_only_a_partial_that_the_next_run_replaces, nfs-mirror/tests/mirror.rs::full_backup_disk_fails_and_ledgers_what_arrived |

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_core::ledger::{Ledger, PathKind};
use backup_tests::harness::{Run, Sandbox};
use backup_tests::nas::Nas;
use backup_tests::pushgateway::Pushgateway;

const SKIP: &str = "direct immich\nnever frigate\n";

/// A backup root, NFS roots with the skip list, and a real sshd NAS.
struct World {
    sb: Sandbox,
    root: PathBuf,
    nfs: PathBuf,
    nfs_ssd: PathBuf,
    skip: PathBuf,
    nas_dir: PathBuf,
    nas: Nas,
}

impl World {
    fn new() -> World {
        let sb = Sandbox::new();
        let root = sb.mkdir("mnt/backup");
        backup_tests::harness::init_backup_root(&root);
        let nfs = sb.mkdir("srv/nfs");
        let nfs_ssd = sb.mkdir("srv/nfs-ssd");
        let skip = sb.write("etc/backup-skip-list.conf", SKIP);
        let nas_dir = sb.mkdir("nas");
        let nas = Nas::start(&sb.path().join("sshd"));
        let w = World {
            sb,
            root,
            nfs,
            nfs_ssd,
            skip,
            nas_dir,
            nas,
        };
        // The NAS destinations get their identity markers once, as an
        // operator's first `offsite-sync init` gives them.
        Run::of(&mut w.offsite("init", &[])).succeeds();
        w
    }

    fn pve(&self) -> PathBuf {
        self.nas_dir.join("pve-backup")
    }

    /// nfs-track's state, written by its own code as a tracker watching
    /// both roots keeps it (offsite-sync's coverage reads it).
    fn tracker_state(&self) -> PathBuf {
        let dir = self.sb.mkdir("var/lib/nfs-track");
        let roots = [&self.nfs, &self.nfs_ssd].map(|r| std::fs::canonicalize(r).expect("root"));
        nfs_track::state::State::new(&dir, &self.root.join(".nfs-changes.log"), &roots)
            .stamp(std::time::SystemTime::now())
            .expect("tracker state");
        dir
    }

    fn put(dir: &Path, rel: &[u8], data: &[u8]) -> PathBuf {
        let p = dir.join(OsStr::from_bytes(rel));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
        p
    }

    /// nfs-mirror as its unit runs it (less --require-mountpoint: the
    /// sandbox roots are plain directories).
    fn mirror(&self) -> Command {
        let mut c = self.sb.cmd("nfs-mirror");
        c.arg("--source")
            .arg(&self.nfs)
            .arg("--dest")
            .arg(&self.root)
            .arg("--skip-list")
            .arg(&self.skip)
            .args(["--max-delete", "10%"]);
        c
    }

    /// offsite-sync `sub` against the loopback NAS; no full pass unless
    /// asked (`--full never`), so the ledgers alone decide what travels.
    fn offsite(&self, sub: &str, extra: &[&str]) -> Command {
        let mut c = self.sb.cmd("offsite-sync");
        c.arg(sub)
            .args(self.nas.flags())
            .arg("--backup-root")
            .arg(&self.root)
            .arg("--nfs-root")
            .arg(&self.nfs)
            .arg("--nfs-ssd-root")
            .arg(&self.nfs_ssd)
            .arg("--pve-dest")
            .arg(self.pve())
            .arg("--nfs-dest")
            .arg(self.nas_dir.join("nfs"))
            .arg("--nfs-ssd-dest")
            .arg(self.nas_dir.join("nfs-ssd"))
            .arg("--skip-list")
            .arg(&self.skip)
            .arg("--nfs-track-state-dir")
            .arg(self.tracker_state())
            .args([
                "--keepalive",
                "2s",
                "--io-timeout",
                "30s",
                "--full",
                "never",
            ])
            .args(extra);
        c
    }

    fn leg1_path(&self) -> PathBuf {
        self.root.join(".changed-files")
    }

    fn leg2_path(&self) -> PathBuf {
        self.root.join(".nfs-changes.log")
    }

    /// Lines of a ledger plus its inflight batch: what is still owed.
    fn pending(ledger: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut inflight = ledger.as_os_str().to_owned();
        inflight.push(".inflight");
        for p in [ledger.to_path_buf(), PathBuf::from(inflight)] {
            out.extend(
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .map(String::from),
            );
        }
        out.sort();
        out.dedup();
        out
    }

    fn inflight_exists(ledger: &Path) -> bool {
        let mut p = ledger.as_os_str().to_owned();
        p.push(".inflight");
        Path::new(&p).exists()
    }

    /// A step 1 that has taken its batch and whose rsync is stopped
    /// (SIGSTOP) mid-transfer, so the test acts while the run is surely in
    /// flight, whatever the machine's load. Resume with [`Paused::resume`].
    fn step1_paused_mid_transfer(&self) -> Paused {
        let child = self
            .offsite("step1", &["--bwlimit", "150"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn offsite-sync");
        let start = Instant::now();
        let rsync = loop {
            if let Some(pid) = child_named(child.id(), "rsync") {
                break pid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "step 1 never started rsync"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        // SAFETY: kill(2) on a process this test started (offsite-sync's rsync).
        unsafe { libc::kill(rsync, libc::SIGSTOP) };
        assert!(
            World::inflight_exists(&self.leg1_path()),
            "rsync runs but the batch was not taken"
        );
        Paused {
            child: Some(child),
            rsync,
        }
    }
}

/// offsite-sync run whose rsync is stopped. A failing test leaves no
/// stopped process behind (drop resumes rsync and kills the run).
struct Paused {
    child: Option<Child>,
    rsync: i32,
}

impl Paused {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn still_running(&mut self) -> bool {
        let c = self.child.as_mut().expect("running");
        c.try_wait().expect("wait").is_none()
    }

    fn resume(mut self) -> (i32, String) {
        // SAFETY: kill(2) on the rsync this test stopped.
        unsafe { libc::kill(self.rsync, libc::SIGCONT) };
        finish(self.child.take().expect("running"))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as above.
            unsafe { libc::kill(self.rsync, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pid of a child of `parent` whose command name is `name`.
fn child_named(parent: u32, name: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if comm == name && ppid == Some(&parent.to_string()) {
            return Some(pid);
        }
    }
    None
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bug 2: the loser of the lock race removed the winner's pidfile (and in
/// daily-backup unmounted its work). Now a second instance exits 4 at
/// once, names the holder, and the running one finishes its work.
#[test]
fn bug02_a_second_instance_leaves_the_running_one_alone() {
    let w = World::new();
    World::put(&w.nfs, b"media/big.bin", &vec![7u8; 300 * 1024]);
    Run::of(&mut w.mirror()).succeeds();
    let mut first = w.step1_paused_mid_transfer();
    let lock = w.sb.lock_dir().join("offsite-sync.lock");
    assert!(lock.exists());

    let second = Run::of(&mut w.offsite("all", &[]));
    second.fails_with(4);
    println!("second instance: {}", second.stderr);
    assert!(
        second.stderr.contains(&first.pid().to_string()),
        "the busy message does not name the holder (pid {}): {}",
        first.pid(),
        second.stderr
    );
    // The loser left the winner's lock and batch alone.
    assert!(lock.exists(), "the second instance removed the lock file");
    assert!(World::inflight_exists(&w.leg1_path()));
    assert_eq!(World::pending(&w.leg1_path()), vec!["media/big.bin"]);
    assert!(first.still_running());

    let (code, stderr) = first.resume();
    assert_eq!(code, 0, "the first run: {stderr}");
    assert_eq!(
        std::fs::read(w.pve().join("media/big.bin")).expect("on the NAS"),
        vec![7u8; 300 * 1024]
    );
    assert!(World::pending(&w.leg1_path()).is_empty());
    // And the lock is free again for the next night.
    Run::of(&mut w.offsite("step1", &[])).succeeds();
}

/// Bug 5: the change log was truncated even when step 2 failed, so a NAS
/// hiccup discarded the backlog. Now a failed step 2 keeps every entry
/// (step 1's success does not commit leg 2) and the next run delivers.
#[test]
fn bug05_change_log_kept_when_step2_fails() {
    let w = World::new();
    let photos: Vec<PathBuf> = (0..4)
        .map(|i| {
            World::put(
                &w.nfs,
                format!("immich/upload/IMG_{i:04}.jpg").as_bytes(),
                &[i as u8; 5000],
            )
        })
        .collect();
    // Appended as nfs-track does.
    let leg2 = Ledger::new(w.leg2_path(), PathKind::Absolute);
    leg2.append_paths(photos.iter().map(|p| p.as_path()))
        .expect("append");
    World::put(&w.nfs, b"nextcloud/doc.odt", b"leg 1");
    Run::of(&mut w.mirror()).succeeds();
    // The NAS cannot take step 2: its immich/ is immutable (nfs/ itself
    // stays the recognised destination, marker and all).
    let blocked = w.nas_dir.join("nfs/immich");
    std::fs::create_dir_all(&blocked).expect("block");
    chattr(&blocked, "+i");

    let r = Run::of(&mut w.offsite("all", &[]));
    assert_ne!(r.code, 0, "a failed step 2 reported success: {}", r.stderr);
    let want: Vec<String> = photos.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        World::pending(&w.leg2_path()),
        want,
        "change log entries lost"
    );
    // Step 1 went through and committed its own ledger only.
    assert_eq!(
        std::fs::read(w.pve().join("nextcloud/doc.odt")).expect("leg 1"),
        b"leg 1"
    );
    assert!(World::pending(&w.leg1_path()).is_empty());

    chattr(&blocked, "-i");
    Run::of(&mut w.offsite("all", &[])).succeeds();
    for (i, p) in photos.iter().enumerate() {
        let rel = p.strip_prefix(&w.nfs).expect("rel");
        assert_eq!(
            std::fs::read(w.nas_dir.join("nfs").join(rel)).expect("delivered"),
            vec![i as u8; 5000]
        );
    }
    assert!(World::pending(&w.leg2_path()).is_empty());
}

/// `chattr FLAG path`: an immutable directory refuses even root.
fn chattr(path: &Path, flag: &str) {
    let ok = Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .expect("chattr")
        .success();
    assert!(ok, "chattr {flag} {}", path.display());
}

/// Bug 10: `> .changed-files` ran without the lock, so entries an
/// overlapping nfs-mirror appended between rsync's read and the truncation
/// were lost. Now nfs-mirror appends during a running step 1 and every
/// entry it wrote is still owed afterwards, then delivered.
#[test]
fn bug10_a_mirror_run_during_offsite_sync_loses_no_entry() {
    let w = World::new();
    World::put(&w.nfs, b"media/big.bin", &vec![1u8; 300 * 1024]);
    Run::of(&mut w.mirror()).succeeds();
    let mut first = w.step1_paused_mid_transfer();

    // nfs-mirror runs while offsite-sync holds its batch.
    let news: Vec<String> = (0..5).map(|i| format!("docs/new-{i}.txt")).collect();
    for n in &news {
        World::put(&w.nfs, n.as_bytes(), n.as_bytes());
    }
    Run::of(&mut w.mirror()).succeeds();
    assert!(first.still_running());
    let (code, stderr) = first.resume();
    assert_eq!(code, 0, "{stderr}");

    let owed = World::pending(&w.leg1_path());
    for n in &news {
        assert!(
            owed.contains(n) || w.pve().join(n).is_file(),
            "{n}: appended during the sync, then lost (owed: {owed:?})"
        );
    }
    Run::of(&mut w.offsite("step1", &[])).succeeds();
    for n in &news {
        assert_eq!(
            std::fs::read(w.pve().join(n)).expect("delivered"),
            n.as_bytes()
        );
    }
    assert!(World::pending(&w.leg1_path()).is_empty());
}

/// Bug 12: a newline in a tenant's file name split the line manifests, and
/// a crafted second half became another path to send (another job's file,
/// here vzdump/). Now the name travels whole from nfs-mirror's ledger to
/// the NAS, and the decoy path never does. Leading/trailing blanks (the
/// old `read -r` without `IFS=`) and a literal backslash survive too.
#[test]
fn bug12_newline_names_survive_the_ledger() {
    let w = World::new();
    World::put(&w.root, b"vzdump/vm-100.vma.zst", b"another job's image");
    let names: [&[u8]; 4] = [
        b"nextcloud/alice/x\nvzdump/vm-100.vma.zst",
        b"nextcloud/alice/ padded name ",
        b"nextcloud/alice/back\\nslash",
        b"nextcloud/alice/tab\there",
    ];
    for (i, n) in names.iter().enumerate() {
        World::put(&w.nfs, n, format!("content {i}").as_bytes());
    }
    Run::of(&mut w.mirror()).succeeds();
    // One escaped line per name; the decoy is no line of its own.
    let owed = World::pending(&w.leg1_path());
    assert!(
        owed.contains(&"nextcloud/alice/x\\nvzdump/vm-100.vma.zst".to_string()),
        "{owed:?}"
    );
    assert!(
        !owed.contains(&"vzdump/vm-100.vma.zst".to_string()),
        "{owed:?}"
    );
    let r = Run::of(&mut w.offsite("step1", &[]));
    r.succeeds();
    for (i, n) in names.iter().enumerate() {
        let p = w.pve().join(OsStr::from_bytes(n));
        assert_eq!(
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            format!("content {i}").as_bytes()
        );
    }
    assert!(
        !w.pve().join("vzdump").exists(),
        "the second half of a tenant's name was sent as a path"
    );
    assert!(!w.pve().join("nextcloud/alice/x").exists());
    assert!(World::pending(&w.leg1_path()).is_empty());
}

/// Bug 16 (capacity half): the capacity gauges went through mawk, which
/// prints 2^31 or more as `5.82542e+12`; a guard then dropped them, so they
/// were never pushed. Now offsite-sync reports the NAS filesystem's size in
/// exact bytes and the Pushgateway holds that figure.
#[test]
fn bug16_capacity_gauges_are_exact_integers_past_2_pow_31() {
    let w = World::new();
    let pg = Pushgateway::start();
    World::put(&w.root, b"svc/a", b"a");
    Ledger::new(w.leg1_path(), PathKind::Relative)
        .append([b"svc/a"])
        .expect("append");
    std::fs::create_dir_all(w.pve()).expect("pve");
    let prom = w.sb.path().join("offsite-sync.prom");
    let mut c = w.offsite("step1", &[]);
    c.arg("--metrics-file").arg(&prom);
    Run::of(&mut c).succeeds();
    let mut p = w.sb.cmd("push-metric");
    p.args(["--job", "offsite-backup-sync", "--prefix", "offsite_sync"])
        .args(["--status", "0", "--file"])
        .arg(&prom)
        .arg("--gateway")
        .arg(pg.url());
    Run::of(&mut p).succeeds();

    // The same filesystem's size, as df itself reports it (1K blocks).
    let o = Command::new("df")
        .args(["-kP", "--"])
        .arg(&w.nas_dir)
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&o.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("df output: {text}"));
    let want = kib * 1024;
    assert!(
        want >= 1 << 31,
        "this filesystem ({want} bytes) is too small to show the bug"
    );
    let pushed = pg
        .value("offsite-backup-sync", "offsite_dest_size_bytes")
        .expect("offsite_dest_size_bytes not pushed");
    assert_eq!(pushed as u64, want, "pushed {pushed}, df says {want}");
    let text = std::fs::read_to_string(&prom).expect("metrics");
    let line = text
        .lines()
        .find(|l| l.starts_with("offsite_dest_size_bytes "))
        .expect("size line");
    assert_eq!(line, format!("offsite_dest_size_bytes {want}"));
    assert!(
        pg.value(
            "offsite-backup-sync",
            "offsite_dest_capacity_timestamp_seconds"
        )
        .is_some_and(|t| t > 0.0)
    );
}

/// Bug 7: offsite-sync exited without any metric when the lock was taken,
/// when /mnt/backup was not mounted, or when the NAS was down, so only the
/// 9-day staleness alert could notice. Now each of these ends with a
/// non-zero exit, and the unit's ExecStopPost= push-metric (run here with
/// the variables systemd sets) records status 1 and keeps the last success
/// timestamp.
#[test]
fn bug07_every_offsite_run_that_does_nothing_still_reports_a_failure() {
    const JOB: &str = "offsite-backup-sync";
    let w = World::new();
    let pg = Pushgateway::start();
    let prom = w.sb.path().join("offsite-sync.prom");
    let run_and_push = |extra: &[&str]| -> i32 {
        let _ = std::fs::remove_file(&prom); // the unit's ExecStartPre=
        let mut c = w.offsite("all", extra);
        c.env("METRICS_FILE", &prom);
        let r = Run::of(&mut c);
        let mut p = w.sb.cmd("push-metric");
        p.args([
            "--from-systemd",
            "--job",
            JOB,
            "--prefix",
            "offsite_sync",
            "--file",
        ])
        .arg(&prom)
        .arg("--gateway")
        .arg(pg.url())
        .env(
            "SERVICE_RESULT",
            if r.code == 0 { "success" } else { "exit-code" },
        )
        .env("EXIT_CODE", "exited")
        .env("EXIT_STATUS", r.code.to_string());
        Run::of(&mut p).succeeds();
        r.code
    };
    World::put(&w.root, b"svc/a", b"a");
    Ledger::new(w.leg1_path(), PathKind::Relative)
        .append([b"svc/a"])
        .expect("append");
    assert_eq!(run_and_push(&[]), 0);
    // Before each case the gateway shows a success, so a missing push
    // would leave status 0 there; after it, status 1 and that success's
    // timestamp.
    let success = || -> f64 {
        let mut p = w.sb.cmd("push-metric");
        p.args(["--job", JOB, "--prefix", "offsite_sync", "--status", "0"])
            .arg("--gateway")
            .arg(pg.url());
        Run::of(&mut p).succeeds();
        assert_eq!(pg.value(JOB, "offsite_sync_last_status"), Some(0.0));
        pg.value(JOB, "offsite_sync_last_success_timestamp")
            .expect("success timestamp")
    };
    let check = |what: &str, ok_ts: f64| {
        assert_eq!(
            pg.value(JOB, "offsite_sync_last_status"),
            Some(1.0),
            "{what}: status"
        );
        assert_eq!(
            pg.value(JOB, "offsite_sync_last_success_timestamp"),
            Some(ok_ts),
            "{what}: success timestamp moved"
        );
    };
    let ok_ts = success();
    let refused = run_and_push(&["--require-mountpoint"]);
    check("refused", ok_ts);
    // The lock is held by another run (flock(2), as core's lock takes it).
    let holder = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(w.sb.lock_dir().join("offsite-sync.lock"))
        .expect("lock file");
    holder.try_lock().expect("take the lock");
    let ok_ts = success();
    let busy = run_and_push(&[]);
    drop(holder);
    check("busy", ok_ts);
    // The NAS does not answer while something is owed. (With nothing
    // owed, offsite-sync exits 0 and only warns that the NAS capacity was
    // unreadable; the capacity timestamp then goes stale.)
    World::put(&w.root, b"svc/b", b"b");
    Ledger::new(w.leg1_path(), PathKind::Relative)
        .append([b"svc/b"])
        .expect("append");
    let ok_ts = success();
    let down = run_and_push(&["--ssh-port", "1"]);
    check("NAS down", ok_ts);
    for (what, code, want) in [
        ("refused", refused, 5),
        ("busy", busy, 4),
        ("NAS down", down, 1),
    ] {
        assert_eq!(code, want, "{what}: exit code");
    }
    assert!(
        pg.get("/metrics").1.contains("offsite_sync_last_status{"),
        "status missing from the exposition"
    );
}

/// Bug 23: `[ -f ]` and rsync's `--files-from` resolved symlinked
/// intermediate directories on the root-run sender. A tenant swaps a
/// listed directory for a symlink to someone else's data between two
/// nfs-mirror runs (the old entry is still owed, the NAS was down in
/// between); step 1 must not send what the symlink points at.
#[test]
fn bug23_a_directory_swapped_for_a_symlink_never_leaks_through_step1() {
    let w = World::new();
    World::put(&w.nfs, b"nextcloud/alice/photos/x.jpg", b"alice's photo");
    World::put(&w.nfs, b"nextcloud/alice/notes.txt", b"notes");
    // Enough other files that one deletion stays under --max-delete 10%.
    for i in 0..30 {
        World::put(&w.nfs, format!("nextcloud/bob/d{i}.txt").as_bytes(), b"d");
    }
    Run::of(&mut w.mirror()).succeeds();
    assert!(World::pending(&w.leg1_path()).contains(&"nextcloud/alice/photos/x.jpg".to_string()));
    // The tenant's swap, mirrored onto the backup disk by the next run.
    let other = w.sb.mkdir("other-tenant");
    std::fs::write(other.join("x.jpg"), b"bob's secret").expect("secret");
    std::fs::remove_dir_all(w.nfs.join("nextcloud/alice/photos")).expect("rm");
    std::os::unix::fs::symlink(&other, w.nfs.join("nextcloud/alice/photos")).expect("ln");
    Run::of(&mut w.mirror()).succeeds();
    let on_disk = w.root.join("nextcloud/alice/photos");
    assert!(
        std::fs::symlink_metadata(&on_disk)
            .expect("mirrored")
            .file_type()
            .is_symlink(),
        "nfs-mirror followed the tenant's symlink"
    );

    let r = Run::of(&mut w.offsite("step1", &[]));
    assert!(r.code == 0 || r.code == 3, "step 1: {}", r.stderr);
    // The operator is told which entry was held back, and why.
    r.stdout_contains("1 unsafe")
        .stderr_contains("nextcloud/alice/photos/x.jpg");
    let leaked: Vec<PathBuf> = walk(&w.nas_dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|d| d == b"bob's secret"))
        .collect();
    assert!(
        leaked.is_empty(),
        "another tenant's file reached the NAS: {leaked:?}"
    );
    assert_eq!(
        std::fs::read(w.pve().join("nextcloud/alice/notes.txt")).expect("notes"),
        b"notes"
    );
    let nas_photos = w.pve().join("nextcloud/alice/photos");
    if let Ok(m) = std::fs::symlink_metadata(&nas_photos) {
        assert!(
            m.file_type().is_symlink(),
            "the NAS holds a directory where the source has a link"
        );
    }
}

/// Regular files under `dir` (symlinks not followed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

//! Copying one PVC's snapshot into place: checked, mounted, copied,
//! swapped in, recorded, ledgered.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_core::cmd::Cmd;
use backup_core::ledger::Ledger;
use backup_core::log::p;
use backup_core::root_guard::RootGuard;
use backup_core::{debug, info, warn};
use chrono::Utc;

use crate::cli::RunArgs;
use crate::copy::{self, Dest, RsyncRun, SourceRecord};
use crate::plan::{self, Item, Snapshot};
use crate::run::label;
use crate::{mount, store};

pub(crate) struct Done {
    pub(crate) total_size: u64,
    pub(crate) transferred: u64,
    pub(crate) changed: usize,
}

/// Activated for the copy when lvm-snap left it inactive (activation skip);
/// deactivated again afterwards.
struct Activated<'a> {
    vg: &'a str,
    lv: &'a str,
    timeout: Duration,
}

impl Drop for Activated<'_> {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("lvchange")
            .args(["-an", "--", &format!("{}/{}", self.vg, self.lv)])
            .timeout(self.timeout)
            .run()
        {
            warn!("cannot deactivate {}/{}: {e}", self.vg, self.lv);
        }
    }
}

/// Why one PVC was not copied; `absent` when a command it needs is not
/// installed, which ends the run with exit 5.
pub(crate) struct Fail {
    pub(crate) why: String,
    pub(crate) absent: bool,
}

impl From<String> for Fail {
    fn from(why: String) -> Self {
        Fail { why, absent: false }
    }
}

impl From<&str> for Fail {
    fn from(why: &str) -> Self {
        Fail::from(why.to_string())
    }
}

impl From<backup_core::cmd::CmdError> for Fail {
    fn from(e: backup_core::cmd::CmdError) -> Self {
        Fail {
            absent: e.is_absent(),
            why: e.to_string(),
        }
    }
}

/// One PVC's snapshot copied into place: nothing is started, swapped in
/// or ledgered on a root that is no longer the backup disk.
pub(crate) fn copy_one(
    a: &RunArgs,
    guard: &RootGuard,
    week: &str,
    it: &Item,
    link: Option<&Path>,
    work: &Path,
    ledger: &Ledger,
) -> Result<Done, Fail> {
    let root = guard.dir();
    // Nothing is created under a root that is no longer the backup disk.
    guard.check()?;
    let snap = it.snapshot.as_ref().ok_or("no snapshot")?;
    let (ns, name) = (
        it.dest_ns.as_deref().ok_or("no namespace")?,
        it.dest_name.as_deref().ok_or("no PVC name")?,
    );
    let t = prepare_dest(root, week, ns, name)?;
    note_untagged(it, snap);
    // Kept to the end of the copy: the snapshot is deactivated last.
    let _activated = activate(a, snap)?;
    let out_file = work.join("rsync.out");
    let run = rsync_snapshot(a, snap, &t.dest, link, work, &out_file)?;
    let entries = match stage(a, guard, it, &t, link, &out_file, run) {
        Ok(e) => e,
        Err(why) => return discard_partial(&t.dest, why),
    };
    record_and_ledger(guard, ledger, it, snap, &t.dest, entries)
}

/// Where one PVC's copy goes: `pvc-data/<week>/<ns>/<name>`.
struct Target<'a> {
    week: &'a str,
    ns: &'a str,
    name: &'a str,
    dest: Dest,
}

/// `pvc-data/<week>/<ns>/` exists and holds no stale `.<pvc>.partial`.
fn prepare_dest<'a>(
    root: &Path,
    week: &'a str,
    ns: &'a str,
    name: &'a str,
) -> Result<Target<'a>, Fail> {
    let dest = Dest {
        ns_dir: store::pvc_data(root).join(week).join(ns),
        name: name.to_string(),
    };
    std::fs::create_dir_all(&dest.ns_dir)
        .map_err(|e| format!("cannot create {}: {e}", p(&dest.ns_dir)))?;
    copy::remove_tree(&dest.partial())
        .map_err(|e| format!("cannot remove {}: {e}", p(&dest.partial())))?;
    Ok(Target {
        week,
        ns,
        name,
        dest,
    })
}

/// A snapshot lvm-snap did not tag is said so, and copied all the same.
fn note_untagged(it: &Item, snap: &Snapshot) {
    if !snap.tagged {
        info!(
            "{}: snapshot {} lacks lvm-snap's tag {} (made by the old script?); copied all the same",
            label(it),
            snap.name,
            plan::SNAP_TAG
        );
    }
}

/// The snapshot's device is there: activated (and deactivated when the
/// guard is dropped) when lvm-snap left it inactive.
fn activate<'a>(a: &'a RunArgs, snap: &'a Snapshot) -> Result<Option<Activated<'a>>, Fail> {
    if !snap.path.is_empty() && Path::new(&snap.path).exists() {
        return Ok(None);
    }
    backup_core::cmd::require("lvchange")?;
    Cmd::new("lvchange")
        .args(["-ay", "-K", "--", &format!("{}/{}", a.vg, snap.name)])
        .timeout(a.command_timeout)
        .run()
        .map_err(|e| {
            format!(
                "snapshot {} is not active and cannot be activated: {e}",
                snap.name
            )
        })?;
    Ok(Some(Activated {
        vg: &a.vg,
        lv: &snap.name,
        timeout: a.command_timeout,
    }))
}

/// The snapshot mounted read-only and rsynced into a fresh
/// `.<pvc>.partial`; unmounted (and its LUKS mapping closed) before the
/// outcome, returned as is, is judged.
fn rsync_snapshot(
    a: &RunArgs,
    snap: &Snapshot,
    dest: &Dest,
    link: Option<&Path>,
    work: &Path,
    out_file: &Path,
) -> Result<std::io::Result<RsyncRun>, Fail> {
    let dev = if snap.path.is_empty() {
        PathBuf::from(format!("/dev/{}/{}", a.vg, snap.name))
    } else {
        PathBuf::from(&snap.path)
    };
    let (luks, mount_dev, fstype) = open_device(a, snap, &dev)?;
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| format!("cannot create {}: {e}", p(&mnt)))?;
    let mounted = mount::mount_ro(
        &mount_dev,
        &fstype,
        &mnt,
        a.mount_timeout,
        a.mount_retry_delay,
    )?;

    std::fs::create_dir(dest.partial())
        .map_err(|e| format!("cannot create {}: {e}", p(&dest.partial())))?;
    let args = copy::rsync_args(mounted.dir(), &dest.partial(), link);
    debug!("rsync {:?}", args);
    let run = copy::run_rsync(&args, out_file, a.rsync_timeout);
    mounted.unmount();
    drop(luks);
    Ok(run)
}

/// The device to mount and its filesystem type; a LUKS snapshot is opened
/// read-only first (closed when the mapping is dropped).
fn open_device(
    a: &RunArgs,
    snap: &Snapshot,
    dev: &Path,
) -> Result<(Option<mount::Luks>, PathBuf, String), Fail> {
    let ty = mount::blkid_type(dev, a.command_timeout)?;
    if ty != "crypto_LUKS" {
        return Ok((None, dev.to_path_buf(), ty));
    }
    backup_core::cmd::require("cryptsetup")?;
    let l = mount::Luks::open(
        dev,
        &snap.name,
        &a.luks_key,
        &a.mapper_dir,
        a.command_timeout,
    )?;
    let inner = mount::blkid_type(&l.device, a.command_timeout)?;
    let d = l.device.clone();
    Ok((Some(l), d, inner))
}

/// The unfinished copy removed; the previous copy stays as it was.
fn discard_partial(dest: &Dest, why: String) -> Result<Done, Fail> {
    if let Err(e) = copy::remove_tree(&dest.partial()) {
        warn!(
            "cannot remove the unfinished copy {}: {e}",
            p(&dest.partial())
        );
    }
    Err(Fail::from(why))
}

/// What a staged copy adds to the ledger, and rsync's figures.
struct Entries {
    names: Vec<Vec<u8>>,
    changed: usize,
    prefix: String,
    total_size: u64,
    transferred: u64,
    dir_inode: u64,
}

/// A complete rsync run swapped in, with its ledger entries waiting
/// beside it, only while the root is still the backup disk; on `Err`
/// the caller discards `.<pvc>.partial`.
fn stage(
    a: &RunArgs,
    guard: &RootGuard,
    it: &Item,
    t: &Target<'_>,
    link: Option<&Path>,
    out_file: &Path,
    run: std::io::Result<RsyncRun>,
) -> Result<Entries, String> {
    let dest = &t.dest;
    check_rsync(a, it, run)?;
    // The copy took long; the disk it went to must still be the one
    // checked at the start before the copy is swapped in and ledgered.
    guard.check()?;
    let mut entries = ledger_entries(guard.dir(), t, link, out_file)?;

    // The entries wait beside the copy until they are in the ledger, so a
    // kill between the swap and the append loses none of them.
    use std::os::unix::fs::MetadataExt;
    entries.dir_inode = std::fs::metadata(dest.partial())
        .map_err(|e| format!("cannot stat {}: {e}", p(&dest.partial())))?
        .ino();
    copy::write_pending(dest, entries.dir_inode, &entries.names)
        .map_err(|e| format!("cannot write {}: {e}", p(&dest.pending())))?;
    if let Err(e) = guard.check() {
        let _ = std::fs::remove_file(dest.pending());
        return Err(e);
    }
    if let Err(e) = copy::swap_in(&dest.partial(), &dest.dir()) {
        let _ = std::fs::remove_file(dest.pending());
        return Err(format!("cannot put the copy in place: {e}"));
    }
    Ok(entries)
}

/// rsync ran to the end: exit 0, or 24 (files vanished, said so).
fn check_rsync(a: &RunArgs, it: &Item, run: std::io::Result<RsyncRun>) -> Result<(), String> {
    let run = run.map_err(|e| format!("cannot run rsync: {e}"))?;
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        backup_core::log::escape_str(&lines[lines.len().saturating_sub(3)..].join(" | "))
    };
    if run.timed_out {
        return Err(format!(
            "rsync timed out after {}s; the previous copy is kept",
            a.rsync_timeout.as_secs()
        ));
    }
    match run.code {
        Some(0) => {}
        Some(24) => warn!(
            "{}: files vanished during the copy of a frozen snapshot",
            label(it)
        ),
        Some(c) => {
            return Err(format!(
                "rsync exited {c} ({}); the previous copy is kept: {}",
                backup_core::cmd::RsyncResult::describe(c),
                tail(&run.stderr)
            ));
        }
        None => {
            return Err(format!(
                "rsync was killed by a signal: {}",
                tail(&run.stderr)
            ));
        }
    }
    Ok(())
}

/// The ledger entries of the new copy, from rsync's itemized output:
/// its `.source` record, then what changed (and, on a new week, all else).
fn ledger_entries(
    root: &Path,
    t: &Target<'_>,
    link: Option<&Path>,
    out_file: &Path,
) -> Result<Entries, String> {
    let (week, ns, name, dest) = (t.week, t.ns, t.name, &t.dest);
    let out = std::fs::read(out_file).map_err(|e| format!("cannot read rsync's output: {e}"))?;
    let mut items = copy::parse_itemized(&out);
    items.confirm_unchanged(&dest.partial(), link);
    // Before the swap: a same-week link-dest is the copy being replaced.
    let (links_changed, links_same) = copy::split_symlinks(&items.symlinks, &dest.partial(), link);

    // Same-week link-dest: unchanged files are already in the ledger's
    // history under these very paths. A new week's paths are all new.
    let same_week = link.is_some_and(|l| l.starts_with(store::pvc_data(root).join(week)));
    let prefix = format!("pvc-data/{week}/{ns}/{name}/");
    let mut names: Vec<Vec<u8>> = vec![format!("pvc-data/{week}/{ns}/.{name}.source").into_bytes()];
    let none: &[Vec<u8>] = &[];
    let pick = items
        .changed
        .iter()
        .chain(&links_changed)
        .chain(if same_week {
            none
        } else {
            &items.unchanged[..]
        })
        .chain(if same_week { none } else { &links_same[..] });
    for n in pick {
        let mut full = prefix.as_bytes().to_vec();
        full.extend_from_slice(n);
        names.push(full);
    }
    let changed = names.len() - 1;
    Ok(Entries {
        names,
        changed,
        prefix,
        total_size: items.total_size,
        transferred: items.transferred,
        dir_inode: 0,
    })
}

/// The swapped-in copy's source recorded and its entries ledgered, only
/// while the root is still the backup disk; then `.pending` and the
/// replaced copy removed.
fn record_and_ledger(
    guard: &RootGuard,
    ledger: &Ledger,
    it: &Item,
    snap: &Snapshot,
    dest: &Dest,
    entries: Entries,
) -> Result<Done, Fail> {
    let Entries {
        names,
        changed,
        prefix,
        ..
    } = &entries;
    let rec = SourceRecord {
        snapshot: snap.name.clone(),
        origin: it.lv.clone(),
        pv: it.pv.clone().unwrap_or_default(),
        pvc: it.pvc.clone().unwrap_or_default(),
        snapshot_created: snap.created.to_rfc3339(),
        copied_at: Utc::now().to_rfc3339(),
        dir_inode: entries.dir_inode,
    };
    let recorded = copy::write_source(dest, &rec);
    // The copy is in place on the disk with its entries beside it
    // (.pending): when the disk went away since, the next run ledgers
    // them there; nothing is appended to a ledger on a bare directory.
    guard.check().map_err(|e| {
        format!("{e}: the copy is in place but not yet ledgered (the next run on the disk does it)")
    })?;
    if let Err(e) = ledger.append(names) {
        // The copy is good; make sure the offsite leg still picks it up.
        let reason = format!("pvc-copy could not append {} entries: {e}", names.len());
        ledger
            .mark_full_sync(&reason)
            .map_err(|e2| format!("copy in place, but neither the ledger ({e}) nor the full-sync flag ({e2}) could be written"))?;
        warn!("{reason}; asked for a full offsite sync instead");
    }
    if let Err(e) = std::fs::remove_file(dest.pending()) {
        warn!("cannot remove {}: {e}", p(&dest.pending()));
    }
    // The replaced copy, now at .<pvc>.partial: only garbage once the new
    // one is recorded, and the next run's leftover sweep retries it.
    if let Err(e) = copy::remove_tree(&dest.partial()) {
        warn!(
            "cannot remove the replaced copy {}: {e}; the next run removes it",
            p(&dest.partial())
        );
    }
    recorded.map_err(|e| format!("copy in place, but cannot record its source: {e}"))?;
    debug!(
        "{} ledger entries for {}",
        changed,
        backup_core::log::escape_bytes(Path::new(prefix).as_os_str().as_bytes())
    );
    Ok(Done {
        total_size: entries.total_size,
        transferred: entries.transferred,
        changed: *changed,
    })
}

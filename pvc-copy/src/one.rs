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
use crate::copy::{self, Dest, SourceRecord};
use crate::plan::{self, Item};
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
    let dest = Dest {
        ns_dir: store::pvc_data(root).join(week).join(ns),
        name: name.to_string(),
    };
    std::fs::create_dir_all(&dest.ns_dir)
        .map_err(|e| format!("cannot create {}: {e}", p(&dest.ns_dir)))?;
    copy::remove_tree(&dest.partial())
        .map_err(|e| format!("cannot remove {}: {e}", p(&dest.partial())))?;

    if !snap.tagged {
        info!(
            "{}: snapshot {} lacks lvm-snap's tag {} (made by the old script?); copied all the same",
            label(it),
            snap.name,
            plan::SNAP_TAG
        );
    }
    let dev = PathBuf::from(&snap.path);
    let _activated = if snap.path.is_empty() || !dev.exists() {
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
        Some(Activated {
            vg: &a.vg,
            lv: &snap.name,
            timeout: a.command_timeout,
        })
    } else {
        None
    };
    let dev = if snap.path.is_empty() {
        PathBuf::from(format!("/dev/{}/{}", a.vg, snap.name))
    } else {
        dev
    };
    let ty = mount::blkid_type(&dev, a.command_timeout)?;
    let (luks, mount_dev, fstype) = if ty == "crypto_LUKS" {
        backup_core::cmd::require("cryptsetup")?;
        let l = mount::Luks::open(
            &dev,
            &snap.name,
            &a.luks_key,
            &a.mapper_dir,
            a.command_timeout,
        )?;
        let inner = mount::blkid_type(&l.device, a.command_timeout)?;
        let d = l.device.clone();
        (Some(l), d, inner)
    } else {
        (None, dev.clone(), ty)
    };
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
    let out_file = work.join("rsync.out");
    debug!("rsync {:?}", args);
    let run = copy::run_rsync(&args, &out_file, a.rsync_timeout);
    mounted.unmount();
    drop(luks);
    let fail = |why: String| {
        if let Err(e) = copy::remove_tree(&dest.partial()) {
            warn!(
                "cannot remove the unfinished copy {}: {e}",
                p(&dest.partial())
            );
        }
        Err(Fail::from(why))
    };
    let run = match run {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot run rsync: {e}")),
    };
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        backup_core::log::escape_str(&lines[lines.len().saturating_sub(3)..].join(" | "))
    };
    if run.timed_out {
        return fail(format!(
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
            return fail(format!(
                "rsync exited {c} ({}); the previous copy is kept: {}",
                backup_core::cmd::RsyncResult::describe(c),
                tail(&run.stderr)
            ));
        }
        None => {
            return fail(format!(
                "rsync was killed by a signal: {}",
                tail(&run.stderr)
            ));
        }
    }
    // The copy took long; the disk it went to must still be the one
    // checked at the start before the copy is swapped in and ledgered.
    if let Err(e) = guard.check() {
        return fail(e);
    }
    let out = match std::fs::read(&out_file) {
        Ok(o) => o,
        Err(e) => return fail(format!("cannot read rsync's output: {e}")),
    };
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

    // The entries wait beside the copy until they are in the ledger, so a
    // kill between the swap and the append loses none of them.
    use std::os::unix::fs::MetadataExt;
    let ino = match std::fs::metadata(dest.partial()) {
        Ok(m) => m.ino(),
        Err(e) => return fail(format!("cannot stat {}: {e}", p(&dest.partial()))),
    };
    if let Err(e) = copy::write_pending(&dest, ino, &names) {
        return fail(format!("cannot write {}: {e}", p(&dest.pending())));
    }
    if let Err(e) = guard.check() {
        let _ = std::fs::remove_file(dest.pending());
        return fail(e);
    }
    if let Err(e) = copy::swap_in(&dest.partial(), &dest.dir()) {
        let _ = std::fs::remove_file(dest.pending());
        return fail(format!("cannot put the copy in place: {e}"));
    }
    let rec = SourceRecord {
        snapshot: snap.name.clone(),
        origin: it.lv.clone(),
        pv: it.pv.clone().unwrap_or_default(),
        pvc: it.pvc.clone().unwrap_or_default(),
        snapshot_created: snap.created.to_rfc3339(),
        copied_at: Utc::now().to_rfc3339(),
        dir_inode: ino,
    };
    let recorded = copy::write_source(&dest, &rec);
    // The copy is in place on the disk with its entries beside it
    // (.pending): when the disk went away since, the next run ledgers
    // them there; nothing is appended to a ledger on a bare directory.
    guard.check().map_err(|e| {
        format!("{e}: the copy is in place but not yet ledgered (the next run on the disk does it)")
    })?;
    if let Err(e) = ledger.append(&names) {
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
        backup_core::log::escape_bytes(Path::new(&prefix).as_os_str().as_bytes())
    );
    Ok(Done {
        total_size: items.total_size,
        transferred: items.transferred,
        changed,
    })
}

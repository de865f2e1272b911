//! Step 1's full pass (`--delete`): the backup root, pinned by its
//! descriptor, mirrored to `pve-dest`, held to `--max-delete` by a dry run
//! and by rsync itself (contract 12).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::cmd::Cmd;
use backup_core::exit::Exit;
use backup_core::info;
use backup_core::ledger::{Consume, Ledger};
use backup_core::log::p;
use backup_core::rsync_items::{self, DeletePlan};

use crate::guard::{RootId, source_guard};
use crate::schedule::write_stamp;
use crate::transfer::{
    DRY, deleting_transfer, dir_arg, emptied_during, guard_deletions, max_delete_arg,
    transfer_bound,
};
use crate::{Config, STATE_EXCLUDES, StepReport};

/// The full pass of step 1, in order: guard, pin, dry run, re-check,
/// bounded transfer, checks after it, commit.
pub(super) fn run(
    cfg: &Config,
    start: &RootId,
    ledger: &Ledger,
    batch: Consume,
    seen: usize,
    why: &[String],
    rep: &mut StepReport,
) -> Result<()> {
    let root = &cfg.backup_root;
    info!("step 1: full pass ({})", why.join("; "));
    refuse_unguarded_source(cfg)?;
    let (_pin, pinned) = pin_root(root, start)?;
    let plan = guard_deletions(cfg, command(cfg, &pinned, true, None)?)?;
    if cfg.dry_run {
        report_dry_run(&plan, rep);
        return Ok(());
    }
    let bound = transfer_bound(cfg, &plan);
    recheck_before_transfer(cfg, start)?;
    deleting_transfer(
        cfg,
        command(cfg, &pinned, false, bound)?,
        "full pass",
        bound,
        rep,
    )?;
    check_after_transfer(root, &pinned, start, rep)?;
    commit(cfg, ledger, batch, seen)?;
    info!(
        "step 1: full pass done, {} created, {} deletion(s) (planned {})",
        rep.sent, rep.deletions, plan.deletions
    );
    Ok(())
}

/// The backup root is a directory with content (and mounted, when
/// required): a missing or empty source never deletes on the NAS.
fn refuse_unguarded_source(cfg: &Config) -> Result<()> {
    if let Some(g) = source_guard(&cfg.backup_root, cfg.require_mountpoint, true) {
        return Err(Exit::refused(format!(
            "full pass refused, nothing sent or deleted: {g}"
        )));
    }
    Ok(())
}

/// The root opened once, and its `/proc/PID/fd/N` path, still the root of
/// the start.
fn pin_root(root: &Path, start: &RootId) -> Result<(OwnedFd, PathBuf)> {
    // Contract 12: the dry run and the transfer read the backup root
    // checked here, through its descriptor (/proc/PID/fd/N): a disk
    // lazily unmounted meanwhile is still what rsync reads, never the
    // bare mountpoint left in its place (with --max-delete off, the
    // only bound then was the re-check, a moment before rsync starts).
    let pin = backup_core::fsutil::open_dir(root).with_context(|| p(root))?;
    let pinned = backup_core::fsutil::fd_path(&pin);
    if let Some(g) = start.changed(&pinned) {
        return Err(Exit::refused(format!(
            "full pass refused, nothing sent or deleted: {g}"
        )));
    }
    Ok((pin, pinned))
}

/// The deleting rsync of the pinned root to `pve-dest`: a dry run
/// listing every item, or the transfer held to `bound` deletions.
fn command(cfg: &Config, pinned: &Path, dry: bool, bound: Option<u64>) -> Result<Cmd> {
    let mut c = cfg.rsync_into(&cfg.pve_dest)?.arg("--delete");
    if dry {
        c = c.args(DRY);
    } else {
        c = c.args(max_delete_arg(bound)).arg(rsync_items::OUT_FORMAT);
    }
    for e in STATE_EXCLUDES {
        c = c.arg(format!("--exclude={e}"));
    }
    Ok(c.arg("--")
        .arg(dir_arg(pinned))
        .arg(cfg.remote_path(format!("{}/", cfg.pve_dest))))
}

/// A dry run reports what the full pass would delete; nothing is sent.
fn report_dry_run(plan: &DeletePlan, rep: &mut StepReport) {
    rep.deletions = plan.deletions;
    info!(
        "step 1 (dry run): full pass would delete {} of {} items on the NAS, create {}",
        plan.deletions, plan.existing, plan.new
    );
}

/// Right before the transfer, the source guard holds again and the root
/// is still the one of the start (contract 12).
fn recheck_before_transfer(cfg: &Config, start: &RootId) -> Result<()> {
    let root = &cfg.backup_root;
    if let Some(g) =
        source_guard(root, cfg.require_mountpoint, true).or_else(|| start.changed(root))
    {
        return Err(Exit::refused(format!(
            "full pass refused after its dry run, nothing sent or deleted: {g}"
        )));
    }
    Ok(())
}

/// After the transfer, the source it read was not emptied meanwhile and
/// the root is still the one of the start: otherwise nothing is committed.
fn check_after_transfer(
    root: &Path,
    pinned: &Path,
    start: &RootId,
    rep: &StepReport,
) -> Result<()> {
    if let Some(g) = emptied_during(pinned, true, rep) {
        return Err(g);
    }
    if let Some(g) = start.changed(root) {
        return Err(Exit::refused(format!("full pass: {g}; nothing committed")));
    }
    Ok(())
}

/// The batch committed, the markers it served cleared and the pass stamped.
fn commit(cfg: &Config, ledger: &Ledger, batch: Consume, seen: usize) -> Result<()> {
    batch.commit().context("committing the ledger batch")?;
    ledger
        .clear_full_sync(seen)
        .context("clearing the marker")?;
    let _ = std::fs::remove_file(cfg.backup_root.join(".force-full-sync"));
    write_stamp(&cfg.stamp(1))
}

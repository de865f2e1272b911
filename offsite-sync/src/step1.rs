//! Step 1: the backup disk to `pve-dest`, consuming `.changed-files`
//! (leg 1, paths relative to the backup root): a full pass when due
//! (`full`), otherwise the listed entries (`incremental`).

mod full;
mod incremental;

use std::path::PathBuf;

use anyhow::{Context, Result};
use backup_core::exit::Exit;
use backup_core::ledger::{Consume, Ledger};
use backup_core::log::{escape_bytes, p};
use backup_core::warn;

use crate::guard::RootId;
use crate::schedule::full_due;
use crate::{Config, StepReport, is_mountpoint};

/// Step 1: the backup disk to `pve-dest`.
pub fn step1(cfg: &Config) -> Result<StepReport> {
    let mut rep = StepReport {
        step: 1,
        ..Default::default()
    };
    run_into(cfg, &mut rep)?;
    Ok(rep)
}

/// Step 1, its counts into `rep` whatever the outcome.
pub(crate) fn run_into(cfg: &Config, rep: &mut StepReport) -> Result<()> {
    require_backup_disk(cfg)?;
    // Contract 13: a root without its marker is not the backup disk.
    let start = RootId::of(&cfg.backup_root, true)?;
    let ledger = cfg.leg1();
    let (full, why, seen) = full_due(cfg, 1, &ledger)?;
    rep.full = full;
    rep.full_reasons = why.clone();
    let (batch, rels) = take_batch(&ledger, rep)?;
    if full {
        full::run(cfg, &start, &ledger, batch, seen, &why, rep)
    } else {
        incremental::run(cfg, &start, batch, rels, rep)
    }
}

/// The backup root exists and, under `--require-mountpoint`, is mounted.
fn require_backup_disk(cfg: &Config) -> Result<()> {
    let root = &cfg.backup_root;
    if let Err(e) = std::fs::metadata(root) {
        return Err(Exit::refused(format!("backup root {}: {e}", p(root))));
    }
    if cfg.require_mountpoint && !is_mountpoint(root) {
        return Err(Exit::refused(format!(
            "backup root {} is not a mountpoint: nothing sent or deleted",
            p(root)
        )));
    }
    Ok(())
}

/// The ledger's batch (kept inflight until committed) and its entries,
/// sorted and deduplicated; rejected lines are counted and logged.
fn take_batch(ledger: &Ledger, rep: &mut StepReport) -> Result<(Consume, Vec<PathBuf>)> {
    let batch = ledger.begin().context("consuming the ledger")?;
    rep.rejected = batch.rejected().len() as u64;
    for r in batch.rejected() {
        warn!(
            "{} line {}: {} ({}), dropped",
            p(batch.inflight_path()),
            r.line,
            escape_bytes(&r.raw),
            r.reason
        );
    }
    let mut rels: Vec<PathBuf> = batch.entries().to_vec();
    rels.sort();
    rels.dedup();
    rep.entries = rels.len() as u64;
    Ok((batch, rels))
}

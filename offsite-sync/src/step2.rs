//! Step 2: the `direct` NFS trees to `nfs-dest` / `nfs-ssd-dest`,
//! consuming `.nfs-changes.log` (leg 2, absolute paths): a full pass when
//! due (`full`), otherwise the logged entries (`incremental`).

mod full;
mod incremental;

use std::path::PathBuf;

use anyhow::{Context, Result};
use backup_core::exit::{Exit, ExitCode};
use backup_core::ledger::{Consume, Ledger};
use backup_core::skiplist::SkipList;

use crate::guard::{RootId, dev_of};
use crate::schedule::full_due;
use crate::{Config, StepReport};

/// Step 2: the `direct` NFS trees to `nfs-dest` / `nfs-ssd-dest`.
pub fn step2(cfg: &Config) -> Result<StepReport> {
    let mut rep = StepReport {
        step: 2,
        ..Default::default()
    };
    run_into(cfg, &mut rep)?;
    Ok(rep)
}

/// What a step-2 run holds from its start: the roots as they were, and
/// the skip list.
pub(super) struct Started<'a> {
    cfg: &'a Config,
    /// The backup root (the change log and the state live there).
    backup_root: RootId,
    /// Each NFS root's filesystem, in [`leg2_roots`] order.
    nfs_roots: Vec<RootId>,
    skip: SkipList,
}

/// Step 2, its counts into `rep` whatever the outcome.
pub(crate) fn run_into(cfg: &Config, rep: &mut StepReport) -> Result<()> {
    let started = Started::take(cfg)?;
    let ledger = cfg.leg2();
    let (full, why, seen) = full_due(cfg, 2, &ledger)?;
    rep.full = full;
    rep.full_reasons = why.clone();
    let (batch, abs) = take_batch(&ledger, rep)?;
    if full {
        full::run(&started, &ledger, batch, seen, &why, rep)
    } else {
        incremental::run(&started, batch, abs, rep)
    }
}

impl<'a> Started<'a> {
    /// The roots' identities at the start, and the skip list.
    fn take(cfg: &'a Config) -> Result<Started<'a>> {
        // The change log and the state live in the backup root: it must be
        // the backup disk (contract 13), and still be it when the batch is
        // committed and the stamps written (contract 12): a disk unmounted
        // mid-step leaves its bare mountpoint, where they would land.
        let backup_root = RootId::of(&cfg.backup_root, true)?;
        // Each NFS root's filesystem at the start (contract 12).
        let nfs_roots: Vec<RootId> = leg2_roots(cfg)
            .iter()
            .map(|(r, _)| RootId {
                dev: dev_of(r),
                marker: None,
            })
            .collect();
        let skip = SkipList::load(&cfg.skip_list).map_err(|e| Exit::usage(e.to_string()))?;
        Ok(Started {
            cfg,
            backup_root,
            nfs_roots,
            skip,
        })
    }

    /// `Err` (failed, nothing committed) when the backup root is no longer
    /// the backup disk of the start.
    fn backup_root_gone(&self) -> Option<anyhow::Error> {
        self.backup_root.changed(&self.cfg.backup_root).map(|g| {
            Exit::err(
                ExitCode::Failed,
                format!(
                    "{g}: the change log batch stays on the backup disk for the next run, \
                     nothing committed"
                ),
            )
        })
    }
}

/// The change log's batch (kept inflight until committed) and its entries,
/// sorted and deduplicated; rejected lines are counted.
fn take_batch(ledger: &Ledger, rep: &mut StepReport) -> Result<(Consume, Vec<PathBuf>)> {
    let batch = ledger.begin().context("consuming the change log")?;
    rep.rejected = batch.rejected().len() as u64;
    let mut abs: Vec<PathBuf> = batch.entries().to_vec();
    abs.sort();
    abs.dedup();
    rep.entries = abs.len() as u64;
    Ok((batch, abs))
}

/// The leg-2 trees: (local root, NAS destination).
fn leg2_roots(cfg: &Config) -> [(PathBuf, String); 2] {
    [
        (cfg.nfs_root.clone(), cfg.nfs_dest.clone()),
        (cfg.nfs_ssd_root.clone(), cfg.nfs_ssd_dest.clone()),
    ]
}

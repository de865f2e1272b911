//! Step 2's incremental run: the paths nfs-track logged, routed to their
//! NFS root, those of `direct` trees sent and each accounted for by rsync.

use std::path::PathBuf;

use anyhow::{Context, Result};
use backup_core::exit::{Exit, ExitCode};
use backup_core::info;
use backup_core::ledger::Consume;
use backup_core::log::p;
use backup_core::skiplist::{Route, SkipList};

use super::{Started, leg2_roots};
use crate::transfer::{
    LISTED, check_listed, dir_arg, filter_present, nul_list, rel_bytes, transfer,
};
use crate::{Config, StepReport, is_mountpoint};

/// One transfer: (local root, NAS destination, entries beneath the root).
type Send = (PathBuf, String, Vec<PathBuf>);

/// The incremental run of step 2, in order: route, check the roots and
/// select, dry run or send, check the roots again, commit.
pub(super) fn run(
    st: &Started,
    batch: Consume,
    abs: Vec<PathBuf>,
    rep: &mut StepReport,
) -> Result<()> {
    let cfg = st.cfg;
    let per_root = route_entries(cfg, &st.skip, abs, rep);
    let had_entries: Vec<bool> = per_root.iter().map(|v| !v.is_empty()).collect();
    let sends = select_present(cfg, per_root, rep)?;
    if cfg.dry_run {
        report_dry_run(&sends, rep);
        return Ok(());
    }
    send_all(cfg, &sends, rep)?;
    require_roots_unchanged(st, &had_entries)?;
    if let Some(e) = st.backup_root_gone() {
        return Err(e);
    }
    batch.commit().context("committing the change log batch")?;
    info!(
        "step 2: {} sent, {} vanished, {} not direct, {} unsafe, {} rejected",
        rep.sent, rep.vanished, rep.not_direct, rep.unsafe_paths, rep.rejected
    );
    Ok(())
}

/// Each logged path, relative to its NFS root, when the skip list routes
/// it `direct`; the rest counted as not direct.
fn route_entries(
    cfg: &Config,
    skip: &SkipList,
    abs: Vec<PathBuf>,
    rep: &mut StepReport,
) -> Vec<Vec<PathBuf>> {
    let roots = leg2_roots(cfg);
    // nfs-track logs canonical paths (it canonicalises its --watch roots;
    // fanotify reports real paths): a root configured through a symlink
    // must match them too, or every entry would be dropped as not direct.
    let canon: Vec<Option<PathBuf>> = roots
        .iter()
        .map(|(r, _)| std::fs::canonicalize(r).ok().filter(|c| c != r))
        .collect();
    let mut per_root: Vec<Vec<PathBuf>> = vec![Vec::new(), Vec::new()];
    for a in abs {
        let Some((i, rel)) = roots.iter().enumerate().find_map(|(i, (root, _))| {
            a.strip_prefix(root)
                .ok()
                .or_else(|| canon[i].as_ref().and_then(|c| a.strip_prefix(c).ok()))
                .map(|r| (i, r.to_path_buf()))
        }) else {
            rep.not_direct += 1;
            continue;
        };
        if rel.as_os_str().is_empty()
            || rel.as_os_str() == backup_core::marker::FILE
            || skip.route(&rel) != Route::Direct
        {
            rep.not_direct += 1;
            continue;
        }
        per_root[i].push(rel);
    }
    per_root
}

/// The entries present beneath each root that has any, the root being
/// there and mounted (when required): otherwise the batch is kept.
fn select_present(
    cfg: &Config,
    per_root: Vec<Vec<PathBuf>>,
    rep: &mut StepReport,
) -> Result<Vec<Send>> {
    let roots = leg2_roots(cfg);
    let mut sends = Vec::new();
    for (i, rels) in per_root.into_iter().enumerate() {
        let (root, dest) = &roots[i];
        if rels.is_empty() {
            continue;
        }
        if !root.is_dir() {
            // The tree is not there (unmounted): keep the batch for later.
            return Err(Exit::refused(format!(
                "NFS root {} is missing: change log kept",
                p(root)
            )));
        }
        // An unmounted tree is a bare directory: every entry would look
        // vanished and the batch would be committed, losing the changes
        // until the next full pass. Keep the batch instead.
        if cfg.require_mountpoint && !is_mountpoint(root) {
            return Err(Exit::refused(format!(
                "NFS root {} is not a mountpoint: change log kept",
                p(root)
            )));
        }
        let keep = filter_present(root, rels, rep)?;
        if !keep.is_empty() {
            sends.push((root.clone(), dest.clone(), keep));
        }
    }
    Ok(sends)
}

/// A dry run counts what would be sent; nothing is sent or committed.
fn report_dry_run(sends: &[Send], rep: &mut StepReport) {
    rep.sent = sends.iter().map(|s| s.2.len() as u64).sum();
    info!(
        "step 2 (dry run): would send {} entries ({} vanished, {} not direct, {} unsafe)",
        rep.sent, rep.vanished, rep.not_direct, rep.unsafe_paths
    );
}

/// Each root's entries, each accounted for by rsync.
fn send_all(cfg: &Config, sends: &[Send], rep: &mut StepReport) -> Result<()> {
    for (root, dest, keep) in sends {
        let c = cfg
            .rsync_into(dest)?
            .args([
                "--from0",
                "--files-from=-",
                "--ignore-missing-args",
                "--mkpath",
            ])
            .args(LISTED)
            .arg("--")
            .arg(dir_arg(root))
            .arg(cfg.remote_path(format!("{dest}/")))
            .stdin(nul_list(keep.iter().map(|r| rel_bytes(r))));
        let what = format!("transfer from {}", p(root));
        let out = transfer(c, &what)?;
        let (sent, vanished) = check_listed(&out, root, keep, &what)?;
        rep.sent += sent;
        rep.vanished += vanished;
    }
    Ok(())
}

/// Every root read is still the filesystem of the start: one unmounted
/// meanwhile reads as a bare directory where every entry "vanished"
/// (contract 12).
fn require_roots_unchanged(st: &Started, had_entries: &[bool]) -> Result<()> {
    for (i, (root, _)) in leg2_roots(st.cfg).iter().enumerate() {
        if had_entries[i]
            && let Some(g) = st.nfs_roots[i].changed(root)
        {
            return Err(Exit::err(
                ExitCode::Failed,
                format!("{g}: the change log batch is kept, nothing committed"),
            ));
        }
    }
    Ok(())
}

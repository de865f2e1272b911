//! Step 2's full pass (`--delete`): each `direct` tree, pinned by its
//! descriptor, mirrored to its NAS destination, held to `--max-delete` by
//! a dry run and by rsync itself, each tree on its own figures and all of
//! them on the step's (contract 12).

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::cmd::Cmd;
use backup_core::exit::{Exit, ExitCode};
use backup_core::ledger::{Consume, Ledger};
use backup_core::log::p;
use backup_core::rsync_items::{self, DeletePlan};
use backup_core::skiplist::{Route, SkipList};
use backup_core::{info, warn};

use super::{Started, leg2_roots};
use crate::guard::source_guard;
use crate::schedule::write_stamp;
use crate::transfer::{
    DRY, deleting_transfer, dir_arg, emptied_during, guard_deletions, max_delete_arg, remote_dir,
    transfer_bound,
};
use crate::{Config, StepReport, is_mountpoint};

/// One tree of a full pass: opened once, read through its descriptor.
struct TreeRun {
    /// Its root, by index in [`leg2_roots`].
    root: usize,
    /// The tree as configured, for messages.
    src: PathBuf,
    /// Held open while the pass runs: `pinned` names it.
    _pin: OwnedFd,
    /// `/proc/PID/fd/N` of the tree: what every rsync of it reads.
    pinned: PathBuf,
    /// Its NAS directory.
    dst: OsString,
    /// The rules of other routes below it.
    excludes: Vec<String>,
}

/// A tree's dry run: (deletions measured, its own bound).
type TreePlan = (u64, Option<u64>);

/// The full pass of step 2, in order: pin and guard every tree, dry run
/// them all, then each re-checked and sent within its bound, the roots
/// checked, commit.
pub(super) fn run(
    st: &Started,
    ledger: &Ledger,
    batch: Consume,
    seen: usize,
    why: &[String],
    rep: &mut StepReport,
) -> Result<()> {
    let cfg = st.cfg;
    info!("step 2: full pass ({})", why.join("; "));
    let runs = pin_trees(st, rep)?;
    let (total, planned) = dry_run_trees(cfg, &runs)?;
    if cfg.dry_run {
        report_dry_run(&total, rep);
        return Ok(());
    }
    transfer_trees(st, &runs, planned, &total, rep)?;
    require_roots_unchanged(st, &runs)?;
    if let Some(e) = st.backup_root_gone() {
        return Err(e);
    }
    batch.commit().context("committing the change log batch")?;
    ledger
        .clear_full_sync(seen)
        .context("clearing the marker")?;
    write_stamp(&cfg.stamp(2))?;
    info!(
        "step 2: full pass done, {} created, {} deletion(s) (planned {})",
        rep.sent, rep.deletions, total.deletions
    );
    Ok(())
}

/// Every `direct` tree of every root, opened and guarded; any root or
/// tree refused refuses the whole pass before anything is sent.
fn pin_trees(st: &Started, rep: &mut StepReport) -> Result<Vec<TreeRun>> {
    let cfg = st.cfg;
    let mut refused = Vec::new();
    let mut runs = Vec::new();
    for (i, (root, dest)) in leg2_roots(cfg).into_iter().enumerate() {
        if cfg.require_mountpoint && !is_mountpoint(&root) {
            refused.push(format!("{} is not a mountpoint", p(&root)));
            continue;
        }
        for tree in direct_trees(&st.skip, &root) {
            let src = root.join(&tree);
            let pin = match open_tree(&root, &tree, &src, rep)? {
                Opened::Tree(fd) => fd,
                Opened::Skipped => continue,
                Opened::Refused(g) => {
                    refused.push(g);
                    continue;
                }
            };
            let pinned = backup_core::fsutil::fd_path(&pin);
            if let Some(g) = source_guard(&pinned, false, false) {
                let g = g.replace(&p(&pinned), &p(&src));
                refused.push(g);
                continue;
            }
            let excludes = tree_excludes(&st.skip, &tree);
            let dst = remote_dir(&[OsStr::new(&dest), tree.as_os_str()]);
            runs.push(TreeRun {
                root: i,
                src,
                _pin: pin,
                pinned,
                dst,
                excludes,
            });
        }
    }
    if !refused.is_empty() {
        return Err(Exit::refused(format!(
            "full pass refused, nothing sent or deleted: {}",
            refused.join("; ")
        )));
    }
    Ok(runs)
}

/// What opening a tree gave.
enum Opened {
    Tree(OwnedFd),
    /// Left out (absent, or unsafe below the top), said why.
    Skipped,
    /// Refuses the pass.
    Refused(String),
}

/// The tree opened without following a symlink on the way or in its place.
fn open_tree(root: &Path, tree: &Path, src: &Path, rep: &mut StepReport) -> Result<Opened> {
    if std::fs::symlink_metadata(src).is_err() {
        // Never delete a NAS copy because its source is absent.
        warn!("{}: absent, its NAS copy is left as it is", p(src));
        return Ok(Opened::Skipped);
    }
    // The names are the tenants' (contract 9): a symlink on the way or in
    // the tree's place must not take the pass out of the tree. The tree is
    // opened without following one and every rsync of it reads that very
    // directory (its /proc/PID/fd path): a tree renamed, replaced by a
    // symlink or mounted over after this check is never what is sent or
    // what decides the deletions.
    match backup_core::fsutil::open_dir_beneath(root, tree) {
        Ok(Some(fd)) => Ok(Opened::Tree(fd)),
        Ok(None) if tree.iter().count() > 1 => {
            rep.unsafe_paths += 1;
            warn!(
                "{}: a symlink or not a directory, never followed; not sent",
                p(src)
            );
            Ok(Opened::Skipped)
        }
        // A tree the skip list names at the top is a service's directory:
        // in its place a symlink (followed, it sent the link's target and
        // deleted the NAS copy) or a file is refused, never skipped quietly.
        Ok(None) => Ok(Opened::Refused(format!(
            "{} is a symlink or not a directory: never followed",
            p(src)
        ))),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", p(src))),
    }
}

/// The `--exclude`s of a tree: rules below it (globs matched against its
/// components) of another route stay out of it.
fn tree_excludes(skip: &SkipList, tree: &Path) -> Vec<String> {
    let mut excludes = Vec::new();
    let depth = tree.iter().count();
    for r in skip.rules() {
        if r.route != Route::Direct
            && r.pattern.len() > depth
            && skip.route(Path::new(&r.pattern_str())) != Route::Direct
            && r.pattern
                .iter()
                .zip(tree.iter())
                .all(|(p, c)| backup_core::skiplist::component_matches(p, c))
        {
            excludes.push(format!(
                "--exclude={}",
                backup_core::skiplist::rsync_pattern(&r.pattern[depth..])
            ));
        }
    }
    excludes
}

/// The deleting rsync of a pinned tree to its NAS directory: a dry run
/// listing every item, or the transfer held to `bound` deletions.
fn command(cfg: &Config, run: &TreeRun, dry: bool, bound: Option<u64>) -> Result<Cmd> {
    Ok(cfg
        .rsync_into(&leg2_roots(cfg)[run.root].1)?
        .args(["--delete", "--mkpath"])
        .args(if dry {
            DRY.as_slice()
        } else {
            std::slice::from_ref(&rsync_items::OUT_FORMAT)
        })
        .args(max_delete_arg(bound))
        .args(&run.excludes)
        .arg("--")
        .arg(dir_arg(&run.pinned))
        .arg(cfg.remote_path(&run.dst)))
}

/// Every tree's dry run within `--max-delete`: the step's total, and per
/// tree (deletions measured, its own bound).
fn dry_run_trees(cfg: &Config, runs: &[TreeRun]) -> Result<(DeletePlan, Vec<TreePlan>)> {
    let mut total = DeletePlan::default();
    let mut planned = Vec::new();
    for run in runs {
        let plan = guard_deletions(cfg, command(cfg, run, true, None)?).map_err(|e| {
            if backup_core::exit::code_of(&e) == ExitCode::Refused {
                Exit::refused(format!("{}: {e}", p(&run.src)))
            } else {
                e
            }
        })?;
        // Each tree is held to the bound on its own too (its dry run
        // was checked on its own figures), whatever the slack.
        let own = transfer_bound(cfg, &plan);
        planned.push((plan.deletions + plan.rsync_temps, own));
        total.add(plan);
    }
    Ok((total, planned))
}

/// A dry run reports what the full pass would delete; nothing is sent.
fn report_dry_run(total: &DeletePlan, rep: &mut StepReport) {
    rep.deletions = total.deletions;
    info!(
        "step 2 (dry run): full pass would delete {} of {} items on the NAS, create {}",
        total.deletions, total.existing, total.new
    );
}

/// Each tree sent, re-checked right before and checked right after, held
/// to its own bound and to the slack the step's bound leaves.
fn transfer_trees(
    st: &Started,
    runs: &[TreeRun],
    planned: Vec<TreePlan>,
    total: &DeletePlan,
    rep: &mut StepReport,
) -> Result<()> {
    let cfg = st.cfg;
    // Contract 12, as nfs-mirror: each transfer may delete what its dry
    // run measured plus the slack the bound leaves, shared by the whole
    // step (deletions beyond a tree's measured ones use it up), and
    // rsync enforces it (--max-delete, exit 25).
    let mut slack = cfg
        .max_delete
        .allowed(total.existing)
        .map(|a| a.saturating_sub(total.deletions));
    for (run, (planned, own)) in runs.iter().zip(planned) {
        recheck_before_transfer(st, run, rep)?;
        let bound = match (slack.map(|s| planned + s), own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let before = rep.deletions;
        let what = format!("full pass of {}", p(&run.src));
        deleting_transfer(cfg, command(cfg, run, false, bound)?, &what, bound, rep)?;
        if let Some(g) = emptied_during(&run.pinned, false, rep) {
            return Err(g);
        }
        if let Some(s) = slack.as_mut() {
            *s = s.saturating_sub((rep.deletions - before).saturating_sub(planned));
        }
    }
    Ok(())
}

/// Right before a tree's transfer: the source guard holds, its root is
/// still mounted (when required) and the filesystem of the start.
fn recheck_before_transfer(st: &Started, run: &TreeRun, rep: &StepReport) -> Result<()> {
    let cfg = st.cfg;
    let (root, _) = &leg2_roots(cfg)[run.root];
    let again = source_guard(&run.pinned, false, false)
        .map(|g| g.replace(&p(&run.pinned), &p(&run.src)))
        .or_else(|| {
            (cfg.require_mountpoint && !is_mountpoint(root))
                .then(|| format!("{} is not a mountpoint", p(root)))
        })
        .or_else(|| st.nfs_roots[run.root].changed(root));
    if let Some(g) = again {
        return Err(Exit::refused(format!(
            "full pass refused after its dry run, nothing more sent or deleted \
             ({} deletion(s) made so far): {g}",
            rep.deletions
        )));
    }
    Ok(())
}

/// Every root a tree was sent from is still the filesystem of the start.
fn require_roots_unchanged(st: &Started, runs: &[TreeRun]) -> Result<()> {
    for (i, (root, _)) in leg2_roots(st.cfg).iter().enumerate() {
        if runs.iter().any(|r| r.root == i)
            && let Some(g) = st.nfs_roots[i].changed(root)
        {
            return Err(Exit::refused(format!("full pass: {g}; nothing committed")));
        }
    }
    Ok(())
}

/// The `direct` trees below a root for a full pass: the paths a direct
/// rule names, globs expanded against the source component by component.
/// Deeper globs (`direct */media`) count too: leaving them out made a full
/// pass (and the marker it clears) skip those trees silently.
fn direct_trees(skip: &SkipList, root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for r in skip.rules().iter().filter(|r| r.route == Route::Direct) {
        let mut cands = vec![PathBuf::new()];
        for pc in &r.pattern {
            let mut next = Vec::new();
            for c in &cands {
                if !pc.contains(['*', '?']) {
                    next.push(c.join(pc));
                    continue;
                }
                let Ok(rd) = std::fs::read_dir(root.join(c)) else {
                    continue;
                };
                for e in rd.flatten() {
                    if backup_core::skiplist::component_matches(pc, &e.file_name()) {
                        next.push(c.join(e.file_name()));
                    }
                }
            }
            cands = next;
        }
        out.extend(cands.into_iter().filter(|c| skip.route(c) == Route::Direct));
    }
    out.sort();
    out.dedup();
    out
}

//! Step 1's incremental run: the entries listed in `.changed-files`, each
//! week directory in its own rsync with `--link-dest` to earlier weeks.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::exit::{Exit, ExitCode};
use backup_core::info;
use backup_core::ledger::Consume;
use backup_core::log::p;

use crate::guard::RootId;
use crate::transfer::{
    LISTED, check_listed, dir_arg, filter_present, nul_list, rel_bytes, remote_dir, transfer,
};
use crate::{Config, StepReport};

/// Entries of a week directory, by (tree, week), relative to the week.
type Weekly = BTreeMap<(PathBuf, String), Vec<PathBuf>>;

/// The incremental run of step 1, in order: select, dry run or send,
/// check the root, commit.
pub(super) fn run(
    cfg: &Config,
    start: &RootId,
    batch: Consume,
    rels: Vec<PathBuf>,
    rep: &mut StepReport,
) -> Result<()> {
    let root = &cfg.backup_root;
    let rels = filter_present(root, drop_state_files(rels), rep)?;
    let (plain, weekly) = split_by_week(rels);
    if cfg.dry_run {
        report_dry_run(&plain, &weekly, rep);
        return Ok(());
    }
    send_plain(cfg, &plain, rep)?;
    send_weeks(cfg, &weekly, rep)?;
    require_same_root(root, start)?;
    batch.commit().context("committing the ledger batch")?;
    info!(
        "step 1: {} sent, {} vanished, {} unsafe, {} rejected",
        rep.sent, rep.vanished, rep.unsafe_paths, rep.rejected
    );
    Ok(())
}

/// State files (top-level dot entries) never travel.
fn drop_state_files(mut rels: Vec<PathBuf>) -> Vec<PathBuf> {
    rels.retain(|r| {
        let first = r.components().next();
        !matches!(first, Some(Component::Normal(s)) if s.as_bytes().first() == Some(&b'.'))
    });
    rels
}

/// Entries outside week directories, and those inside, by week.
fn split_by_week(rels: Vec<PathBuf>) -> (Vec<PathBuf>, Weekly) {
    // Entries inside a week directory (`<tree>/<week>/...`) go in one rsync
    // per week, rooted there, so `--link-dest` can point at earlier weeks on
    // the NAS: unchanged files become hard links, not copies.
    let mut weekly = Weekly::new();
    let mut plain = Vec::new();
    for r in rels {
        let comps: Vec<&OsStr> = r.iter().collect();
        if comps.len() >= 2
            && let Some(w) = comps[1].to_str().and_then(backup_core::weeks::parse_week)
        {
            // The week directory itself: all of it, still rooted there.
            let rest: PathBuf = if comps.len() == 2 {
                PathBuf::from(".")
            } else {
                comps[2..].iter().collect()
            };
            weekly
                .entry((PathBuf::from(comps[0]), w.name.clone()))
                .or_default()
                .push(rest);
            continue;
        }
        plain.push(r);
    }
    (plain, weekly)
}

/// A dry run counts what would be sent; nothing is sent or committed.
fn report_dry_run(plain: &[PathBuf], weekly: &Weekly, rep: &mut StepReport) {
    rep.sent = plain.len() as u64 + weekly.values().map(|v| v.len() as u64).sum::<u64>();
    info!(
        "step 1 (dry run): would send {} entries ({} vanished, {} unsafe, {} rejected)",
        rep.sent, rep.vanished, rep.unsafe_paths, rep.rejected
    );
}

/// The entries outside week directories, each accounted for by rsync.
fn send_plain(cfg: &Config, plain: &[PathBuf], rep: &mut StepReport) -> Result<()> {
    if plain.is_empty() {
        return Ok(());
    }
    let root = &cfg.backup_root;
    let c = cfg
        .rsync_into(&cfg.pve_dest)?
        .args(["--from0", "--files-from=-", "--ignore-missing-args"])
        .args(LISTED)
        .arg("--")
        .arg(dir_arg(root))
        .arg(cfg.remote_path(format!("{}/", cfg.pve_dest)))
        .stdin(nul_list(plain.iter().map(|r| rel_bytes(r))));
    let out = transfer(c, "incremental transfer")?;
    let (sent, vanished) = check_listed(&out, root, plain, "incremental transfer")?;
    rep.sent += sent;
    rep.vanished += vanished;
    Ok(())
}

/// Each week's entries, hard-linked to up to three earlier weeks on the
/// NAS, each accounted for by rsync.
fn send_weeks(cfg: &Config, weekly: &Weekly, rep: &mut StepReport) -> Result<()> {
    let root = &cfg.backup_root;
    for ((tree, week), files) in weekly {
        let local_tree = root.join(tree);
        let earlier = earlier_weeks(&local_tree, week);
        let mut c = cfg.rsync_into(&cfg.pve_dest)?.args([
            "--from0",
            "--files-from=-",
            "--ignore-missing-args",
            "--mkpath",
        ]);
        for e in earlier.iter().take(3) {
            c = c.arg(format!("--link-dest=../{e}"));
        }
        let dst = remote_dir(&[
            OsStr::new(&cfg.pve_dest),
            tree.as_os_str(),
            OsStr::new(week),
        ]);
        let src = local_tree.join(week);
        let c = c
            .args(LISTED)
            .arg("--")
            .arg(dir_arg(&src))
            .arg(cfg.remote_path(&dst))
            .stdin(nul_list(files.iter().map(|r| rel_bytes(r))));
        let what = format!("transfer of {}/{week}", p(tree));
        let out = transfer(c, &what)?;
        let (sent, vanished) = check_listed(&out, &src, files, &what)?;
        rep.sent += sent;
        rep.vanished += vanished;
    }
    Ok(())
}

/// What was read came from the backup disk of the start: a root unmounted
/// meanwhile reads as a bare directory where everything "vanished".
fn require_same_root(root: &Path, start: &RootId) -> Result<()> {
    if let Some(g) = start.changed(root) {
        return Err(Exit::err(
            ExitCode::Failed,
            format!("{g}: the ledger batch is kept, nothing committed"),
        ));
    }
    Ok(())
}

/// Week directories of a local tree older than `week`, newest first.
fn earlier_weeks(tree: &Path, week: &str) -> Vec<String> {
    let Some(this) = backup_core::weeks::parse_week(week) else {
        return Vec::new();
    };
    let mut v: Vec<backup_core::weeks::Week> = std::fs::read_dir(tree)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(backup_core::weeks::parse_week)
                })
                .filter(|w| *w < this)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().rev().map(|w| w.name).collect()
}

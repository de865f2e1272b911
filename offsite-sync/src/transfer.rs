//! Transfers to the NAS: the deleting one (full pass) with its bound and
//! the dry run that measures it, the listed one (incremental) whose every
//! entry must be accounted for, and the argument helpers they share.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::cmd::{Cmd, RsyncResult};
use backup_core::exit::{Exit, ExitCode};
use backup_core::log::p;
use backup_core::rsync_items::{self, DeletePlan};
use backup_core::warn;

use crate::guard::source_guard;
use crate::nas;
use crate::resolve::{Resolved, resolve_beneath};
use crate::{Config, StepReport};

/// Cap on a full pass's dry-run item list (spooled to disk): every item is
/// listed, about 160 million lines of 100 bytes.
const DRY_RUN_MAX_OUTPUT: u64 = 16 << 30;
/// The flags of a guard's dry run (every item listed, changed or not).
pub(crate) const DRY: [&str; 3] = ["--dry-run", "-ii", rsync_items::OUT_FORMAT];

/// Dry run a deleting transfer and check it against `--max-delete`.
pub(crate) fn guard_deletions(cfg: &Config, cmd: Cmd) -> Result<DeletePlan> {
    // One line per item, changed or not: millions on a full pass of a
    // large tree, so into an unnamed file (beside the state files when they
    // exist) and counted from there as a stream.
    let dir = Some(cfg.state_dir())
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let spool = backup_core::cmd::spool_file(&dir).context("dry run of the full pass")?;
    let out = cmd
        .stdout_into(spool.try_clone().with_context(|| p(&dir))?)
        .max_stdout(DRY_RUN_MAX_OUTPUT)
        .run_any()
        .context("dry run of the full pass")?;
    if !RsyncResult::classify(out.code, &out.stderr).is_success() {
        anyhow::bail!(
            "dry run of the full pass: rsync exited {} ({}): {}",
            out.code,
            RsyncResult::describe(out.code),
            backup_core::log::escape_str(out.stderr.trim())
        );
    }
    let plan = DeletePlan::from_spool(&spool).context("reading the dry run of the full pass")?;
    if let Some(why) = cfg.max_delete.check(&plan) {
        return Err(Exit::refused(format!(
            "full pass refused, nothing sent or deleted: {why}"
        )));
    }
    Ok(plan)
}

/// Run a transfer; rsync's item lines for a finished rsync, its stderr
/// in the error.
pub(crate) fn transfer(cmd: Cmd, what: &str) -> Result<Vec<u8>> {
    let out = cmd.run_any().with_context(|| what.to_string())?;
    nas::refused_by_nas(&out.stderr, what)?;
    let r = RsyncResult::classify(out.code, &out.stderr);
    match &r {
        RsyncResult::Ok => {}
        RsyncResult::Vanished { files } => {
            warn!(
                "{what}: {files} file(s) vanished during the transfer (rsync 24): counted as success"
            );
        }
        _ => {
            anyhow::bail!(
                "{what}: rsync exited {} ({}): {}",
                out.code,
                RsyncResult::describe(out.code),
                backup_core::log::escape_str(out.stderr.trim())
            );
        }
    }
    Ok(out.stdout)
}

/// The flags of an incremental transfer whose every listed entry must be
/// accounted for: every item, changed or not, is itemized.
pub(crate) const LISTED: [&str; 2] = ["-ii", rsync_items::OUT_FORMAT];

/// Check that what rsync itemized accounts for what was listed: each
/// listed entry was sent or found up to date, or has vanished from the
/// source since. An entry listed, still present and not itemized was
/// not sent (`--ignore-missing-args` makes that silent): `Err`, and the
/// batch must not be committed. Returns (accounted for, vanished).
pub(crate) fn check_listed(
    items_out: &[u8],
    base: &Path,
    listed: &[PathBuf],
    what: &str,
) -> Result<(u64, u64)> {
    let seen: std::collections::HashSet<PathBuf> = rsync_items::parse(items_out)
        .iter()
        .filter(|i| !i.is_deletion())
        .map(|i| i.path())
        .collect();
    let (mut ok, mut vanished) = (0u64, 0u64);
    let mut missing = Vec::new();
    for l in listed {
        if seen.contains(l) {
            ok += 1;
            continue;
        }
        match resolve_beneath(base, l) {
            Ok(Resolved::Vanished) if base.is_dir() => vanished += 1,
            _ => missing.push(l),
        }
    }
    if !missing.is_empty() {
        return Err(anyhow::anyhow!(
            "{what}: {} of {} listed entries were neither sent nor reported up to date by rsync \
             (first: {}): not committed",
            missing.len(),
            listed.len(),
            p(missing[0])
        ));
    }
    Ok((ok, vanished))
}

/// A deleting transfer (full pass) held to `bound` deletions by rsync
/// itself (`--max-delete`, exit 25). The deletions it made, counted from
/// its own itemized output, are added to `rep` whatever the outcome.
pub(crate) fn deleting_transfer(
    cfg: &Config,
    cmd: Cmd,
    what: &str,
    bound: Option<u64>,
    rep: &mut StepReport,
) -> Result<u64> {
    let out = cmd.run_any().with_context(|| what.to_string())?;
    nas::refused_by_nas(&out.stderr, what)?;
    let items = rsync_items::parse(&out.stdout);
    let deleted = items.iter().filter(|i| i.is_deletion()).count() as u64;
    rep.deletions += deleted;
    rep.sent += items
        .iter()
        .filter(|i| !i.is_deletion() && i.is_new() && i.name != b"./")
        .count() as u64;
    match RsyncResult::classify(out.code, &out.stderr) {
        RsyncResult::Ok => {}
        RsyncResult::Vanished { files } => warn!(
            "{what}: {files} file(s) vanished during the transfer (rsync 24): counted as success"
        ),
        _ if out.code == 25 => anyhow::bail!(
            "{what}: the source changed since the dry run: rsync stopped deleting at the \
             --max-delete {} bound ({} deletion(s) allowed, {deleted} made; exit 25), the rest \
             of the NAS copy is kept; nothing committed",
            cfg.max_delete,
            bound.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
        ),
        _ => anyhow::bail!(
            "{what}: rsync exited {} ({}) after {deleted} deletion(s): {}",
            out.code,
            RsyncResult::describe(out.code),
            backup_core::log::escape_str(out.stderr.trim())
        ),
    }
    Ok(deleted)
}

/// After a deleting transfer: `Err` (failed) when its source is empty
/// now, so the transfer may have read it empty (emptied between the last
/// check and rsync's start; with `--max-delete off` nothing else bounds
/// that). The deletions made are reported; nothing is committed, and the
/// next full pass is refused by the source guard until the source is back.
pub(crate) fn emptied_during(
    src: &Path,
    ignore_state: bool,
    rep: &StepReport,
) -> Option<anyhow::Error> {
    source_guard(src, false, ignore_state).map(|_| {
        Exit::err(
            ExitCode::Failed,
            format!(
                "full pass: its source is empty now, it was emptied while the pass ran: \
                 {} deletion(s) made on the NAS; nothing committed",
                rep.deletions
            ),
        )
    })
}

/// The `--max-delete=N` argument for a deleting transfer, when bounded.
pub(crate) fn max_delete_arg(bound: Option<u64>) -> Vec<String> {
    bound
        .map(|b| vec![format!("--max-delete={b}")])
        .unwrap_or_default()
}

pub(crate) fn nul_list<'a, I: IntoIterator<Item = &'a [u8]>>(names: I) -> Vec<u8> {
    let mut buf = Vec::new();
    for n in names {
        buf.extend_from_slice(n);
        buf.push(0);
    }
    buf
}

/// `A/B/C/`: a NAS directory from its parts, bytes kept.
pub(crate) fn remote_dir(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for part in parts {
        s.push(part);
        s.push("/");
    }
    s
}

pub(crate) fn dir_arg(p: &Path) -> OsString {
    let mut s = p.as_os_str().to_os_string();
    s.push("/");
    s
}

pub(crate) fn rel_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Filter a batch beneath a root: present entries kept, the rest counted.
pub(crate) fn filter_present(
    root: &Path,
    rels: Vec<PathBuf>,
    rep: &mut StepReport,
) -> Result<Vec<PathBuf>> {
    let mut keep = Vec::new();
    for r in rels {
        match resolve_beneath(root, &r).with_context(|| format!("{}/{}", p(root), p(&r)))? {
            Resolved::Present => keep.push(r),
            Resolved::Vanished => rep.vanished += 1,
            Resolved::Unsafe => {
                rep.unsafe_paths += 1;
                warn!(
                    "{}: a component on the way is a symlink or not a directory; not sent",
                    p(&r)
                );
            }
        }
    }
    Ok(keep)
}

/// The deletions a deleting transfer may make: what its dry run measured
/// plus the slack `--max-delete` leaves (`None`: unbounded).
pub(crate) fn transfer_bound(cfg: &Config, plan: &DeletePlan) -> Option<u64> {
    cfg.max_delete
        .allowed(plan.existing)
        .map(|a| a.max(plan.deletions) + plan.rsync_temps)
}

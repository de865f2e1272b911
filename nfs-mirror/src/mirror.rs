//! The NFS mirror run (`nfs-mirror` without a subcommand): each `--source`
//! root mirrored on its own (`root::mirror_root`), then the coverage record.

mod root;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cli::Common;
use backup_core::exit::{Exit, ExitCode};
use backup_core::ledger::{Ledger, PathKind};
use backup_core::log::p;
use backup_core::metrics::Metrics;
use backup_core::mirror_record::Record;
use backup_core::rsync_items::{DeletePlan, MaxDelete};
use backup_core::skiplist::{Route, SkipList};
use backup_core::{error, warn};

use crate::dest::Dest;
use crate::{STATE_DIR, SourceRoot, fs_used_bytes, is_mountpoint, spool};
use root::{RootOutcome, mirror_root};

#[derive(Debug, Clone)]
pub struct MirrorOpts {
    pub sources: Vec<SourceRoot>,
    pub dest: PathBuf,
    pub skip_list: PathBuf,
    pub ledger: Option<PathBuf>,
    pub require_mountpoint: bool,
    pub max_delete: MaxDelete,
    pub prune_skipped: bool,
    pub dry_run: bool,
    pub json: bool,
    pub timeout: Duration,
    pub rsync: OsString,
}

/// What happened to one top-level entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryReport {
    /// The NFS root the entry is in.
    pub root: String,
    pub name: String,
    pub route: Route,
    /// mirrored, skipped, vanished, pruned, refused, failed, reserved, would-mirror, would-prune
    pub action: String,
    pub transferred: u64,
    pub deletions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub entries: Vec<EntryReport>,
    pub transferred: u64,
    pub ledger_entries: u64,
    pub vanished_files: u64,
    pub plan: DeletePlan,
    pub dest_used_bytes: u64,
}

/// The mirror run as the command runs it: its metrics written on every
/// path (unless a dry run), then its report printed.
pub fn run_mirror(o: &MirrorOpts, common: &Common) -> Result<ExitCode> {
    let mut m = Metrics::new();
    let res = mirror(o, &mut m);
    add_metrics(o, &res, &mut m)?;
    if !o.dry_run {
        common.write_metrics(&m);
    }
    let (code, report) = res?;
    // The report of a finished run: a closed stdout keeps its code.
    print_report(&report, o.json)?;
    Ok(code)
}

/// The run's own figures, on every path. nfs_mirror_last_status and
/// _last_run_timestamp come from push-metric (--job nfs-mirror, prefix
/// nfs_mirror), which also sees kills.
fn add_metrics(o: &MirrorOpts, res: &Result<(ExitCode, Report)>, m: &mut Metrics) -> Result<()> {
    let used = match res {
        Ok((_, r)) => r.dest_used_bytes,
        Err(_) => fs_used_bytes(&o.dest),
    };
    m.gauge(
        "nfs_mirror_bytes",
        "Used bytes of the backup filesystem after the run.",
        used as f64,
    )?;
    if let Ok((_, r)) = res {
        m.gauge(
            "nfs_mirror_files_transferred",
            "Files transferred (and added to the ledger) by the last run.",
            r.transferred as f64,
        )?;
        m.gauge(
            "nfs_mirror_vanished_files",
            "Source files that vanished during the last run (rsync 24).",
            r.vanished_files as f64,
        )?;
        let vanished = r.entries.iter().filter(|e| e.action == "vanished").count();
        m.gauge(
            "nfs_mirror_vanished_entries",
            "Mirrors kept although their source entry is gone.",
            vanished as f64,
        )?;
    }
    Ok(())
}

/// Print the per-entry report on stdout, as JSON or one line per entry;
/// a closed stdout is not an error.
pub fn print_report(report: &Report, json: bool) -> std::io::Result<()> {
    let print = || -> std::io::Result<()> {
        if json {
            backup_core::outln!("{}", serde_json::to_string_pretty(report)?)?;
        } else {
            for e in &report.entries {
                backup_core::outln!(
                    "{:<14} {:<12} {:<16} {:<24} transferred={} deletions={}{}",
                    e.action,
                    e.route.as_str(),
                    e.root,
                    e.name,
                    e.transferred,
                    e.deletions,
                    e.message
                        .as_deref()
                        .map(|m| format!("  ({m})"))
                        .unwrap_or_default()
                )?;
            }
        }
        Ok(())
    };
    backup_core::out::ignore_closed(print())
}

/// Mirror every `--source` root into its place under DEST. Each root is
/// guarded on its own (an unmounted or empty root, too many deletions):
/// a refused root is reported and the others still run. The coverage
/// record (`DEST/.nfs-mirror/coverage`) then says, per root that ran,
/// which top-level directories it saw and which it mirrored.
pub fn mirror(o: &MirrorOpts, metrics: &mut Metrics) -> Result<(ExitCode, Report)> {
    let skip = SkipList::load(&o.skip_list).map_err(|e| Exit::usage(e.to_string()))?;
    check_dest_and_roots(o)?;
    // Contract 12 with 13: the backup root checked here is the one every
    // copy writes to and every result is committed on (crate::dest; rsync's
    // receiver cannot work in a detached mount, so such a copy fails).
    // Before each copy, before its items reach the ledger and before the
    // coverage record is saved, the root is checked again.
    let dest_at = Dest::require(&o.dest)?;
    let ledger_path = o
        .ledger
        .clone()
        .unwrap_or_else(|| o.dest.join(".changed-files"));
    let ledger = Ledger::new(ledger_path, PathKind::Relative);
    let mut report = Report::default();
    recover_spool(o, &ledger, &mut report)?;
    let subs = subdirs(o);
    let mut results = RootResults::start(o)?;
    for root in &o.sources {
        let res = mirror_root(o, root, &skip, &ledger, &subs, &dest_at, &mut report);
        results.record_coverage(root, res)?;
    }
    results.save_coverage(&dest_at)?;
    metrics.gauge(
        "nfs_mirror_planned_deletions",
        "Items the last run deleted in the mirrors, or would have when a guard refused it.",
        report.plan.deletions as f64,
    )?;
    report.dest_used_bytes = fs_used_bytes(&o.dest);
    let code = results.finish()?;
    Ok((code, report))
}

/// Check the run's configuration: the destination is the backup root
/// (its identity marker, and a mountpoint when asked), and the roots are
/// distinct and land in distinct places.
fn check_dest_and_roots(o: &MirrorOpts) -> Result<()> {
    let dest_md = std::fs::metadata(&o.dest)
        .map_err(|e| Exit::refused(format!("destination {}: {e}", p(&o.dest))))?;
    if !dest_md.is_dir() {
        return Err(Exit::refused(format!(
            "destination {} is not a directory",
            p(&o.dest)
        )));
    }
    // Contract 13: a bare directory (the unmounted disk's mountpoint, a
    // mistyped --dest) has no marker; nothing is written there.
    backup_core::marker::require_backup_root(&o.dest)?;
    // An unmounted backup disk would fill the root filesystem.
    if o.require_mountpoint && !is_mountpoint(&o.dest)? {
        return Err(Exit::refused(format!(
            "destination {} is not a mountpoint (--allow-unmounted-root for a sandbox): nothing copied or deleted",
            p(&o.dest)
        )));
    }
    if o.sources.is_empty() {
        return Err(Exit::usage(
            "no --source given: expected at least one NFS root",
        ));
    }
    for (i, a) in o.sources.iter().enumerate() {
        for b in &o.sources[..i] {
            if a.path == b.path {
                return Err(Exit::usage(format!("--source {}: given twice", p(&a.path))));
            }
            if a.into == b.into {
                return Err(Exit::usage(format!(
                    "--source {} and --source {} would both be mirrored into {}: give each root its own DEST subdirectory (ROOT:SUBDIR)",
                    p(&b.path),
                    p(&a.path),
                    p(&o.dest.join(a.into.as_deref().unwrap_or(Path::new(""))))
                )));
            }
        }
    }
    Ok(())
}

/// The transferred files of a killed run's copies are in the ledger
/// before this run copies anything (not on a dry run).
fn recover_spool(o: &MirrorOpts, ledger: &Ledger, report: &mut Report) -> Result<()> {
    if !o.dry_run {
        let state = o.dest.join(STATE_DIR);
        std::fs::create_dir_all(state.join("spool")).with_context(|| p(&state))?;
        report.ledger_entries += spool::recover(&state.join("spool"), ledger)?;
    }
    Ok(())
}

/// The DEST subdirectories of the other roots: reserved in the main one.
fn subdirs(o: &MirrorOpts) -> Vec<Vec<u8>> {
    o.sources
        .iter()
        .filter_map(|s| s.into.as_ref())
        .map(|s| s.as_os_str().as_bytes().to_vec())
        .collect()
}

/// The roots' results so far: the run's exit code, its errors, and the
/// coverage record they update.
struct RootResults<'a> {
    o: &'a MirrorOpts,
    record: Record,
    now: u64,
    code: ExitCode,
    errors: Vec<anyhow::Error>,
    /// Roots mirrored (not refused).
    ran: usize,
    /// Refused roots marked in the record.
    recorded: usize,
}

impl<'a> RootResults<'a> {
    /// No root run yet; the record as saved (an empty one on a dry run).
    fn start(o: &'a MirrorOpts) -> Result<RootResults<'a>> {
        let record = if o.dry_run {
            Record::default()
        } else {
            Record::load(&o.dest)?
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(RootResults {
            o,
            record,
            now,
            code: ExitCode::Ok,
            errors: Vec::new(),
            ran: 0,
            recorded: 0,
        })
    }

    /// One root's result is in the exit code and (unless a dry run) in the
    /// coverage record: what it saw and mirrored, or that it was refused.
    fn record_coverage(&mut self, root: &SourceRoot, res: Result<RootOutcome>) -> Result<()> {
        let o = self.o;
        match res {
            Ok(out) => {
                self.ran += 1;
                self.code = self.code.merge(out.code);
                if !o.dry_run {
                    let canon = std::fs::canonicalize(&root.path).with_context(|| p(&root.path))?;
                    self.record.update(
                        canon.as_os_str().as_bytes(),
                        self.now,
                        &out.seen,
                        &out.mirrored,
                    );
                }
            }
            Err(e) => {
                self.code = self.code.merge(backup_core::exit::code_of(&e));
                // Coverage (contract 15): this run mirrored nothing of the
                // root, and the record says so tonight, not once it ages.
                if !o.dry_run
                    && let Ok(canon) = std::fs::canonicalize(&root.path)
                {
                    self.record.refused(canon.as_os_str().as_bytes(), self.now);
                    self.recorded += 1;
                }
                // With several roots, each error names its root.
                self.errors.push(if o.sources.len() > 1 {
                    Exit::err(
                        backup_core::exit::code_of(&e),
                        format!("{}: {}", p(&root.path), backup_core::exit::one_line(&e)),
                    )
                } else {
                    e
                });
            }
        }
        Ok(())
    }

    /// The record is saved only on the backup root the run started on.
    fn save_coverage(&mut self, dest_at: &Dest) -> Result<()> {
        let o = self.o;
        if let Err(e) = dest_at.guard.check() {
            // Saved there, the record would describe a directory that is
            // not the backup disk.
            self.code = self.code.merge(ExitCode::Failed);
            self.errors.push(Exit::err(
                ExitCode::Failed,
                format!("{e}: coverage record not saved"),
            ));
        } else if !o.dry_run && self.ran > 0 {
            self.record.save(&o.dest)?;
        } else if !o.dry_run
            && self.recorded > 0
            && let Err(e) = self.record.save(&o.dest)
        {
            // The run's own error is the one to report.
            warn!("coverage record: {}", backup_core::exit::one_line(&e));
        }
        Ok(())
    }

    /// The run's exit code with its errors logged; when no root ran, the
    /// first error is the run's.
    fn finish(mut self) -> Result<ExitCode> {
        if self.ran == 0 {
            for e in self.errors.iter().skip(1) {
                error!("{}", backup_core::exit::one_line(e));
            }
            let first = self.errors.remove(0);
            return Err(first);
        }
        for e in &self.errors {
            error!("{}", backup_core::exit::one_line(e));
        }
        Ok(self.code)
    }
}

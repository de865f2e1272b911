//! Contract 15: every top-level directory under every NFS root is carried
//! by exactly one leg that really runs for that root. The skip list gives
//! each directory its route (contract 5); whether that route's leg carries
//! it is read from what the legs themselves recorded, never assumed:
//!
//! - `backup-disk` (leg 1): nfs-mirror's coverage record on the backup disk
//!   (`.nfs-mirror/coverage`, core::mirror_record) has a section for the
//!   root, and the directory was mirrored successfully by the root's last
//!   run (one refused or failed leaves it uncovered that night), at most
//!   `--coverage-max-age` old. A directory that appeared after the last
//!   nfs-mirror run of a root (not in its record, the record fresh) is
//!   *pending*: the next run mirrors it or records why not, so it becomes
//!   covered or uncovered the next night. A root nfs-mirror does not mirror
//!   has no section: all its leg-1 directories are uncovered.
//! - `direct` (leg 2): step 2 carries the direct trees of both NFS roots
//!   (`--nfs-root`, `--nfs-ssd-root`); its incremental input is nfs-track's
//!   change log, so nfs-track must watch the root and log the direct route
//!   (or everything), into the ledger step 2 reads, as its state file says (`--nfs-track-state-dir`, `last-watching`,
//!   written by nfs-track/src/state.rs), stamped at most
//!   `--coverage-max-age` ago. A leg-1 directory with `direct` rules below
//!   it needs this too.
//! - `never`: not backed up, by decision (the skip list).
//!
//! `lost+found` at the top of a root is the filesystem's, not a service's,
//! and is not listed. A root that does not exist is skipped with a warning;
//! a root that is not a mountpoint under `--require-mountpoint` is one
//! uncovered entry (its directories cannot be seen).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::exit::{Exit, ExitCode};
use backup_core::log::p;
use backup_core::metrics::Metrics;
use backup_core::mirror_record::Record;
use backup_core::skiplist::{Route, SkipList};
use backup_core::tracker_state::Stamp;
use backup_core::{error, warn};

use crate::schedule::now_secs;
use crate::{Config, is_mountpoint};

/// Whether a directory's leg carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Its leg carries it (or it is `never` by decision).
    Covered,
    /// New since the last nfs-mirror run of its root, which was recent:
    /// the next run decides.
    Pending,
    /// Backed up by nothing.
    Uncovered,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Covered => "covered",
            State::Pending => "pending",
            State::Uncovered => "uncovered",
        }
    }
}

/// `offsite-sync coverage`: one top-level NFS directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CoverageRow {
    pub root: String,
    pub name: String,
    pub route: Route,
    pub exceptions: Vec<(String, Route)>,
    pub state: State,
    /// Why it is (not) covered, in words.
    pub reason: String,
}

/// `path` with its directory resolved (the file itself may not exist).
fn canon_file(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(d), Some(f)) => std::fs::canonicalize(d)
            .map(|d| d.join(f))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

fn hours(secs: u64) -> String {
    format!("{}h", secs / 3600)
}

/// Why the direct leg does not run for `root`, if it does not.
fn direct_gap(cfg: &Config, tracker: Option<&Stamp>, root: &[u8], now: u64) -> Option<String> {
    let state = cfg.nfs_track_state_dir.join("last-watching");
    let Some(t) = tracker else {
        return Some(format!(
            "nfs-track has recorded no watch ({} is missing): nothing logs its changes for step 2",
            p(&state)
        ));
    };
    let want = canon_file(cfg.leg2().path());
    let logs_to = t
        .ledger
        .as_ref()
        .map(|l| canon_file(Path::new(std::ffi::OsStr::from_bytes(l))));
    if logs_to.as_ref() != Some(&want) {
        return Some(format!(
            "nfs-track logs to {}, step 2 reads {}",
            logs_to.map(|l| p(&l)).unwrap_or_else(|| "nothing".into()),
            p(&want)
        ));
    }
    match t.route.as_deref() {
        Some("direct") | Some("all") => {}
        other => {
            return Some(format!(
                "nfs-track logs route {} ({}), not direct",
                other.unwrap_or("unknown (restart nfs-track)"),
                p(&state)
            ));
        }
    }
    if !t.roots.iter().any(|r| r.as_slice() == root) {
        return Some(format!(
            "nfs-track does not watch {} (its --watch roots, {})",
            String::from_utf8_lossy(root),
            p(&state)
        ));
    }
    let when = t
        .when
        .and_then(|w| w.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    match when {
        Some(w) if now.saturating_sub(w) <= cfg.coverage_max_age.as_secs() => None,
        Some(w) => Some(format!(
            "nfs-track last recorded watching {} ago (more than --coverage-max-age {})",
            hours(now.saturating_sub(w)),
            hours(cfg.coverage_max_age.as_secs())
        )),
        None => Some(format!("{}: no last-watching time", p(&state))),
    }
}

/// Leg 1 for one directory: its state and why.
fn mirror_state(cfg: &Config, rec: &Record, root: &[u8], name: &[u8], now: u64) -> (State, String) {
    let max = cfg.coverage_max_age.as_secs();
    let root_s = String::from_utf8_lossy(root);
    let Some(r) = rec.roots.get(root) else {
        return (
            State::Uncovered,
            format!(
                "nfs-mirror has never mirrored {root_s} (not among its --source roots; see {})",
                p(&Record::path(&cfg.backup_root))
            ),
        );
    };
    let age = now.saturating_sub(r.run);
    if age > max {
        return (
            State::Uncovered,
            format!(
                "nfs-mirror last mirrored {root_s} {} ago (more than --coverage-max-age {})",
                hours(age),
                hours(max)
            ),
        );
    }
    match r.dirs.get(name) {
        None => (
            State::Pending,
            format!(
                "new since nfs-mirror's last run of {root_s} {} ago: the next run mirrors it or says why not",
                hours(age)
            ),
        ),
        Some(0) => (
            State::Uncovered,
            "nfs-mirror saw it and has never mirrored it (refused, failed or a reserved name: see its last run)".into(),
        ),
        // Each run stamps the directories it mirrored with its own time,
        // so one older than the root's last run (fresh, checked above)
        // was not mirrored by it.
        Some(&t) if t < r.run => (
            State::Uncovered,
            format!(
                "nfs-mirror's last run of {root_s} ({} ago) did not mirror it (refused or failed: \
                 see that run); last mirrored {} ago",
                hours(age),
                hours(now.saturating_sub(t))
            ),
        ),
        Some(_) => (State::Covered, "mirrored by nfs-mirror".into()),
    }
}

/// Every top-level NFS directory with its route and whether that route's
/// leg carries it. Fails (usage) when the skip list gives a name two routes.
pub fn coverage(cfg: &Config) -> Result<Vec<CoverageRow>> {
    let skip = SkipList::load(&cfg.skip_list).map_err(|e| Exit::usage(e.to_string()))?;
    let rec = Record::load(&cfg.backup_root)?;
    let tracker =
        backup_core::tracker_state::read(&cfg.nfs_track_state_dir).with_context(|| {
            p(&cfg
                .nfs_track_state_dir
                .join(backup_core::tracker_state::FILE))
        })?;
    let now = now_secs();
    let mut rows = Vec::new();
    for root in [&cfg.nfs_root, &cfg.nfs_ssd_root] {
        let rd = match std::fs::read_dir(root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!("{}: no such NFS root here, nothing to cover", p(root));
                continue;
            }
            Err(e) => {
                return Err(anyhow::anyhow!("cannot list NFS root {}: {e}", p(root)));
            }
        };
        if cfg.require_mountpoint && !is_mountpoint(root) {
            rows.push(CoverageRow {
                root: p(root),
                name: String::new(),
                route: Route::BackupDisk,
                exceptions: Vec::new(),
                state: State::Uncovered,
                reason: "not a mountpoint: its directories cannot be seen".into(),
            });
            continue;
        }
        // The legs record canonical roots (nfs-mirror, nfs-track).
        let canon = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
        let rb = canon.as_os_str().as_bytes();
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in rd {
            let e = e.map_err(|e| anyhow::anyhow!("cannot list NFS root {}: {e}", p(root)))?;
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && e.file_name().as_bytes() != b"lost+found"
            {
                names.push(e.file_name().as_bytes().to_vec());
            }
        }
        names.sort();
        // Names as bytes: a non-UTF-8 name is routed as the legs route it.
        let cov = skip
            .coverage(names.iter().map(|n| std::ffi::OsStr::from_bytes(n)))
            .map_err(|e| Exit::usage(format!("{}: overlapping routes: {e}", p(&cfg.skip_list))))?;
        for (c, raw) in cov.into_iter().zip(&names) {
            let direct_needed =
                c.route == Route::Direct || c.exceptions.iter().any(|(_, r)| *r == Route::Direct);
            let (mut state, mut reason) = match c.route {
                Route::Never => (State::Covered, "never backed up, by decision".into()),
                Route::Direct => (State::Covered, "sent by step 2, logged by nfs-track".into()),
                Route::BackupDisk => mirror_state(cfg, &rec, rb, raw, now),
            };
            if direct_needed && let Some(gap) = direct_gap(cfg, tracker.as_ref(), rb, now) {
                state = State::Uncovered;
                reason = if c.route == Route::Direct {
                    gap
                } else {
                    format!("its direct subtrees: {gap}")
                };
            }
            rows.push(CoverageRow {
                root: p(root),
                name: backup_core::log::escape_bytes(raw),
                route: c.route,
                exceptions: c.exceptions,
                state,
                reason,
            });
        }
    }
    Ok(rows)
}

/// `offsite-sync coverage`: the verdict (each uncovered directory on
/// stderr), then the table (JSON with `json`); the exit code is the verdict's.
pub fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let rows = coverage(cfg)?;
    // The verdict comes first: a reader that closes stdout early never
    // hides a gap.
    let code = verdict(&rows);
    let print = || -> std::io::Result<()> {
        if json {
            backup_core::outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        } else {
            for r in &rows {
                let ex: Vec<String> = r
                    .exceptions
                    .iter()
                    .map(|(p, route)| format!("{p}={}", route.as_str()))
                    .collect();
                backup_core::outln!(
                    "{:<14} {:<28} {:<12} {:<10} {}{}",
                    r.root,
                    r.name,
                    r.route.as_str(),
                    r.state.as_str(),
                    r.reason,
                    if ex.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", ex.join(" "))
                    }
                )?;
            }
        }
        Ok(())
    };
    backup_core::out::ignore_closed(print())?;
    Ok(code)
}

/// Log every uncovered directory (one error line each, naming it) and
/// every pending one; `Partial` (exit 3: the check ran to the end and
/// lists the directories that failed) when any is uncovered.
pub fn verdict(rows: &[CoverageRow]) -> ExitCode {
    let mut code = ExitCode::Ok;
    for r in rows {
        let path = if r.name.is_empty() {
            r.root.clone()
        } else {
            format!("{}/{}", r.root, r.name)
        };
        match r.state {
            State::Uncovered => {
                error!(
                    "uncovered: {path} (route {}) is backed up by nothing: {}",
                    r.route.as_str(),
                    r.reason
                );
                code = ExitCode::Partial;
            }
            State::Pending => warn!("pending: {path}: {}", r.reason),
            State::Covered => {}
        }
    }
    code
}

/// The nightly check (`offsite-sync all`): coverage into the metrics
/// (`backup_coverage_uncovered_dirs{root}`, `backup_coverage_pending_dirs{root}`)
/// and the run's exit code (3 when a directory is backed up by nothing).
pub fn check(cfg: &Config, m: &mut Metrics) -> ExitCode {
    let rows = match coverage(cfg) {
        Ok(r) => r,
        Err(e) => {
            error!("coverage: {}", backup_core::exit::one_line(&e));
            return backup_core::exit::code_of(&e);
        }
    };
    let mut roots: Vec<String> = Vec::new();
    for r in &rows {
        if !roots.contains(&r.root) {
            roots.push(r.root.clone());
        }
    }
    for root in [&cfg.nfs_root, &cfg.nfs_ssd_root] {
        // A root with no directories: zero, so an alert clears.
        if root.is_dir() && !roots.contains(&p(root)) {
            roots.push(p(root));
        }
    }
    for root in &roots {
        let count = |st: State| {
            rows.iter()
                .filter(|r| &r.root == root && r.state == st)
                .count() as f64
        };
        let l = [("root", root.as_str())];
        let _ = m.gauge_with(
            "backup_coverage_uncovered_dirs",
            "Top-level NFS directories that no running leg carries (contract 15).",
            &l,
            count(State::Uncovered),
        );
        let _ = m.gauge_with(
            "backup_coverage_pending_dirs",
            "Top-level NFS directories new since the last nfs-mirror run of their root.",
            &l,
            count(State::Pending),
        );
    }
    verdict(&rows)
}

//! `sqlite-dump dump` (the default): every database under SRC_DIR copied,
//! verified and renamed into place under DEST_DIR, then ledgered.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use backup_core::cli::Common;
use backup_core::exit::{Exit, ExitCode};
use backup_core::ledger::{Ledger, PathKind};
use backup_core::lock::RunLock;
use backup_core::log::p;
use backup_core::metrics::Metrics;
use backup_core::root_guard::RootGuard;
use backup_core::{error, info, warn};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::cli::DumpArgs;
use crate::discover::{self, Candidate, Discovery};
use crate::dump::{self, Written};
use crate::{TOOL, bytes_of, sqlite};

/// `path` made absolute without resolving symlinks in a part that may not
/// exist yet: the deepest existing ancestor is canonicalized and the rest
/// appended (a `..` in the missing part is refused).
fn resolve(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let abs =
        std::path::absolute(path).map_err(|e| Exit::usage(format!("{what} {}: {e}", p(path))))?;
    let mut existing = abs.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if existing.exists() {
            break;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .map_err(|e| Exit::usage(format!("{what} {}: {e}", p(path))))?;
    for name in rest.iter().rev() {
        if Path::new(name)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return Err(Exit::usage(format!(
                "{what} {}: a '..' in a part that does not exist yet",
                p(path)
            )));
        }
        out.push(name);
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct DumpTotals {
    ok: u64,
    failed: u64,
    skipped: u64,
    bytes: u64,
    files_scanned: u64,
}

fn dump_metrics(t: &DumpTotals) -> anyhow::Result<Metrics> {
    let mut m = Metrics::new();
    m.gauge(
        "sqlite_dump_databases_ok",
        "Databases copied and verified in this run",
        t.ok as f64,
    )?;
    m.gauge(
        "sqlite_dump_databases_failed",
        "Databases (and unreadable directories) that failed in this run",
        t.failed as f64,
    )?;
    m.gauge(
        "sqlite_dump_skipped",
        "Entries not dumped on purpose: symlinks, other filesystems, databases named like sidecars",
        t.skipped as f64,
    )?;
    m.gauge(
        "sqlite_dump_bytes",
        "Bytes of verified copies written in this run",
        t.bytes as f64,
    )?;
    m.gauge(
        "sqlite_dump_files_scanned",
        "Regular files whose header was read",
        t.files_scanned as f64,
    )?;
    Ok(m)
}

/// The dump with its metrics, written whatever the outcome (except busy).
pub(crate) fn run(a: &DumpArgs, common: &Common) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut totals = DumpTotals::default();
    let res = dump_all(a, &mut totals);
    let code = match &res {
        Ok(c) => *c,
        Err(e) => backup_core::exit::code_of(e),
    };
    // The metrics file is written on success and on failure alike. A run
    // that stopped before the end has no meaningful counts: only its exit
    // code and duration are written, so "failed 0" never reads as success.
    let m = if matches!(code, ExitCode::Ok | ExitCode::Partial) {
        dump_metrics(&totals)?
    } else {
        Metrics::new()
    };
    let mut m = m;
    m.gauge(
        "sqlite_dump_exit_code",
        "Exit code of this run (0 ok, 3 some databases failed, else the run stopped early)",
        f64::from(code.code()),
    )?;
    m.gauge(
        "sqlite_dump_duration_seconds",
        "Wall time of this run",
        started.elapsed().as_secs_f64(),
    )?;
    // A busy run must not overwrite the figures of the run holding the lock.
    if code != ExitCode::Busy {
        common.write_metrics(&m);
    }
    res
}

/// The steps of a dump, in order; each stops the run the way it always did.
fn dump_all(a: &DumpArgs, t: &mut DumpTotals) -> anyhow::Result<ExitCode> {
    let run = preflight(a)?;
    let scan = run.scan(t)?;
    if a.dry_run {
        return print_plan(a, &scan.found);
    }
    let ws = run.prepare_dest()?;
    let (results, stopped) = run.dump_each(&scan, &ws.scratch, t);
    drop(ws.scratch);
    stop_on_signal(stopped, t, scan.found.databases.len())?;
    run.report(&scan.found, results, t)
}

/// What the steps share once source and destination have passed their checks.
struct Dump<'a> {
    a: &'a DumpArgs,
    /// The ledger, and DEST_DIR relative to the ledger's root.
    ledger: Option<(Ledger, PathBuf)>,
    guard: RootGuard,
    dest: PathBuf,
    src: PathBuf,
}

/// The source tree, opened once, and what was found in it.
struct Scan {
    root: OwnedFd,
    dev: u64,
    found: Discovery,
}

/// The run lock and the private scratch directory of a real run.
struct Workspace {
    scratch: TempDir,
    _lock: RunLock,
}

/// SRC_DIR is an existing directory; DEST_DIR is on the mounted,
/// initialised backup disk, apart from SRC_DIR; the ledger, if any, is known.
fn preflight(a: &DumpArgs) -> anyhow::Result<Dump<'_>> {
    let (src, dest) = locate(a)?;
    // Contract 13, dry runs included: DEST_DIR is on the initialised backup
    // disk (found upwards, never across a mount), else nothing is written
    // there, no directory created. Re-checked before every commit.
    let guard = RootGuard::find(&dest)?;
    guard.require_mounted(a.allow_unmounted_root)?;
    if dest.starts_with(&src) || src.starts_with(&dest) {
        return Err(Exit::usage(format!(
            "destination {} and source {} overlap; the source is never written to",
            p(&dest),
            p(&src)
        )));
    }
    let ledger = ledger_for(a, &dest)?;
    Ok(Dump {
        a,
        ledger,
        guard,
        dest,
        src,
    })
}

/// SRC_DIR (canonical, an existing directory) and DEST_DIR (absolute),
/// defaulting to this week's directories of the backup root.
fn locate(a: &DumpArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let week = backup_core::weeks::current_key();
    let src_default = a.backup_root.join("pvc-data").join(&week);
    let dest_default = a.backup_root.join("sqlite-backup").join(&week);
    let src_arg = a.src.as_deref().unwrap_or(&src_default);
    let dest_arg = a.to.as_deref().unwrap_or(&dest_default);
    if !src_arg.exists() {
        return Err(Exit::refused(format!(
            "source {} does not exist (expected a directory to search)",
            p(src_arg)
        )));
    }
    let src = src_arg
        .canonicalize()
        .map_err(|e| Exit::refused(format!("source {}: {e}", p(src_arg))))?;
    if !src.is_dir() {
        return Err(Exit::usage(format!(
            "source {} is not a directory",
            p(src_arg)
        )));
    }
    let dest = resolve(dest_arg, "destination")?;
    Ok((src, dest))
}

/// The ledger written files go to, with DEST_DIR relative to its root:
/// `--ledger`/`--ledger-root`, else the backup root's when DEST_DIR is on it.
fn ledger_for(a: &DumpArgs, dest: &Path) -> anyhow::Result<Option<(Ledger, PathBuf)>> {
    Ok(match (&a.ledger, &a.ledger_root) {
        (Some(l), Some(r)) => {
            let root = resolve(r, "--ledger-root")?;
            let prefix = dest.strip_prefix(&root).map_err(|_| {
                Exit::usage(format!(
                    "destination {} is not under --ledger-root {}",
                    p(dest),
                    p(&root)
                ))
            })?;
            Some((Ledger::new(l, PathKind::Relative), prefix.to_path_buf()))
        }
        _ => {
            // The default ledger: the backup root's, when DEST_DIR is on it.
            let root = resolve(&a.backup_root, "--backup-root")?;
            dest.strip_prefix(&root).ok().map(|prefix| {
                (
                    Ledger::new(root.join(".changed-files"), PathKind::Relative),
                    prefix.to_path_buf(),
                )
            })
        }
    })
}

/// The dry run's output: the databases a run would dump; exit 3 when part
/// of the tree could not be scanned.
fn print_plan(a: &DumpArgs, found: &Discovery) -> anyhow::Result<ExitCode> {
    if a.json {
        let dbs: Vec<_> = found
            .databases
            .iter()
            .map(|c| json!({"path": bytes_of(&c.rel), "size": c.size}))
            .collect();
        let out = json!({"dry_run": true, "databases": dbs,
            "skipped": found.skipped.iter().map(|s| json!({"path": bytes_of(&s.rel), "reason": s.reason})).collect::<Vec<_>>(),
            "errors": found.errors.iter().map(|e| json!({"path": bytes_of(&e.rel), "error": e.error})).collect::<Vec<_>>()});
        backup_core::out::ignore_closed(backup_core::outln!("{out}"))?;
    } else {
        for c in &found.databases {
            backup_core::out::ignore_closed(backup_core::outln!("{}", bytes_of(&c.rel)))?;
        }
    }
    Ok(if found.errors.is_empty() {
        ExitCode::Ok
    } else {
        ExitCode::Partial
    })
}

/// A signal that stopped the loop (or came just after it) fails the run.
fn stop_on_signal(stopped: Option<i32>, t: &DumpTotals, total: usize) -> anyhow::Result<()> {
    let stopped = stopped.or_else(backup_core::signals::received);
    if let Some(sig) = stopped {
        // What was renamed into place is complete and verified; the rest
        // was never started or was cleaned up.
        return Err(Exit::err(
            ExitCode::Failed,
            format!(
                "stopped by signal {sig} after {} of {total} database(s)",
                t.ok
            ),
        ));
    }
    Ok(())
}

impl Dump<'_> {
    /// SRC_DIR scanned by header, never following symlinks or leaving its
    /// filesystem; skipped entries and scan errors logged and counted.
    fn scan(&self, t: &mut DumpTotals) -> anyhow::Result<Scan> {
        let src = &self.src;
        let (root, dev) = discover::open_root(src)
            .map_err(|e| Exit::refused(format!("cannot open source {}: {e}", p(src))))?;
        let found = discover::discover(&root, dev);
        t.files_scanned = found.files_scanned;
        t.skipped = found.skipped.len() as u64;
        for s in &found.skipped {
            // Symlinks are common in PVCs; one line each only with -v.
            if s.reason.starts_with("symlink") {
                backup_core::debug!("skipped: {}: {}", bytes_of(&s.rel), s.reason);
            } else {
                info!("skipped: {}: {}", bytes_of(&s.rel), s.reason);
            }
        }
        for e in &found.errors {
            error!("cannot scan {}: {}", bytes_of(&e.rel), e.error);
        }
        t.failed += found.errors.len() as u64;
        info!(
            "found {} database(s) in {} file(s) under {}; {} entries skipped (symlinks are never followed, other filesystems never entered)",
            found.databases.len(),
            found.files_scanned,
            p(src),
            found.skipped.len()
        );
        Ok(Scan { root, dev, found })
    }

    /// The lock held and signals caught, DEST_DIR created (0700) and swept
    /// of a killed run's scratch, a private scratch directory made outside
    /// the source.
    fn prepare_dest(&self) -> anyhow::Result<Workspace> {
        let (a, src, dest) = (self.a, &self.src, &self.dest);
        let lock = backup_core::lock::acquire(TOOL)?;
        backup_core::signals::catch();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode_0700()
            .create(dest)
            .map_err(|e| {
                Exit::err(
                    ExitCode::Failed,
                    format!("cannot create destination {}: {e}", p(dest)),
                )
            })?;
        clean_stale_scratch(dest);
        let scratch_parent = match &a.scratch_dir {
            Some(s) => {
                std::fs::create_dir_all(s)
                    .with_context(|| format!("cannot create scratch dir {}", p(s)))?;
                resolve(s, "--scratch-dir")?
            }
            None => dest.clone(),
        };
        if scratch_parent.starts_with(src) {
            return Err(Exit::usage(format!(
                "--scratch-dir {} is inside the source",
                p(&scratch_parent)
            )));
        }
        let scratch = tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempdir_in(&scratch_parent)
            .with_context(|| {
                format!(
                    "cannot create a scratch directory in {}",
                    p(&scratch_parent)
                )
            })?;
        Ok(Workspace {
            scratch,
            _lock: lock,
        })
    }

    /// Every database dumped in turn, each with its JSON result; a signal
    /// stops the loop before the next one (returned with the results).
    fn dump_each(
        &self,
        scan: &Scan,
        scratch: &TempDir,
        t: &mut DumpTotals,
    ) -> (Vec<Value>, Option<i32>) {
        let all: HashSet<PathBuf> = scan.found.databases.iter().map(|c| c.rel.clone()).collect();
        let mut results = Vec::new();
        for (i, c) in scan.found.databases.iter().enumerate() {
            if let Some(sig) = backup_core::signals::received() {
                return (results, Some(sig));
            }
            results.push(self.dump_db(scan, &all, scratch.path().join(i.to_string()), c, t));
        }
        (results, None)
    }

    /// One database dumped, only while the root is still the backup disk,
    /// in its own scratch directory (removed after); counted in `t`.
    fn dump_db(
        &self,
        scan: &Scan,
        all: &HashSet<PathBuf>,
        scratch_one: PathBuf,
        c: &Candidate,
        t: &mut DumpTotals,
    ) -> Value {
        // Nothing is started on a root that is no longer the backup disk.
        if let Err(e) = self.guard.check() {
            t.failed += 1;
            error!("{}: {e}", bytes_of(&c.rel));
            return json!({"path": bytes_of(&c.rel), "result": "failed", "error": e});
        }
        let partial = dump::partial_rel(&c.rel, all);
        let job = dump::Job {
            root: &scan.root,
            dev: scan.dev,
            rel: &c.rel,
            dest_root: &self.dest,
            partial_rel: &partial,
            scratch: &scratch_one,
            deadline: sqlite::Deadline::after(self.a.timeout_per_db),
            guard: &self.guard,
        };
        let mut notes = Vec::new();
        let r = dump::dump_one(&job, &mut notes);
        let _ = std::fs::remove_dir_all(&scratch_one);
        for n in &notes {
            info!("{}: {n}", bytes_of(&c.rel));
        }
        match r {
            Ok(w) => self.record(&c.rel, &w, t),
            Err(e) => {
                t.failed += 1;
                let msg = backup_core::exit::one_line(&e);
                error!("{}: {msg}", bytes_of(&c.rel));
                json!({"path": bytes_of(&c.rel), "result": "failed", "error": msg})
            }
        }
    }

    /// A copy in place, ledgered and counted; one the ledger misses counts
    /// as failed.
    fn record(&self, rel: &Path, w: &Written, t: &mut DumpTotals) -> Value {
        let ledger_err = self.append_to_ledger(rel);
        t.bytes += w.bytes;
        if let Some(e) = ledger_err {
            t.failed += 1;
            error!("{}: {e}", bytes_of(rel));
            json!({"path": bytes_of(rel), "result": "failed", "error": e, "bytes": w.bytes})
        } else {
            t.ok += 1;
            info!("ok: {} ({} bytes)", bytes_of(rel), w.bytes);
            json!({"path": bytes_of(rel), "result": "ok", "bytes": w.bytes})
        }
    }

    /// The ledger line of a copy in place, appended only while the root is
    /// still the backup disk; `Some(why)` when it is not recorded.
    fn append_to_ledger(&self, rel: &Path) -> Option<String> {
        let (ledger, prefix) = self.ledger.as_ref()?;
        let entry = prefix.join(rel);
        if let Err(e) = self.guard.check() {
            // Renamed into place on the disk, which has gone
            // since: no ledger line on a bare directory. The
            // next run dumps and ledgers it again.
            return Some(format!("copied, but not recorded in the ledger: {e}"));
        }
        if let Err(e) = ledger.append_paths([entry.as_path()]) {
            // The copy is good, but offsite would miss it: ask
            // for a full sync and count the failure.
            let _ = ledger.mark_full_sync("sqlite-dump could not append to the ledger");
            return Some(format!("copied, but not recorded in the ledger: {e}"));
        }
        None
    }

    /// The summary: `--json` output, the failures listed (exit 3), else
    /// the tally.
    fn report(
        &self,
        found: &Discovery,
        results: Vec<Value>,
        t: &DumpTotals,
    ) -> anyhow::Result<ExitCode> {
        let failed_names: Vec<String> = results
            .iter()
            .filter(|r| r["result"] == "failed")
            .filter_map(|r| r["path"].as_str().map(str::to_owned))
            .chain(found.errors.iter().map(|e| bytes_of(&e.rel)))
            .collect();
        if self.a.json {
            let out = json!({
                "source": bytes_of(&self.src),
                "destination": bytes_of(&self.dest),
                "ok": t.ok, "failed": t.failed, "skipped": t.skipped, "bytes": t.bytes,
                "files_scanned": t.files_scanned,
                "databases": results,
                "skipped_entries": found.skipped.iter().map(|s| json!({"path": bytes_of(&s.rel), "reason": s.reason})).collect::<Vec<_>>(),
                "scan_errors": found.errors.iter().map(|e| json!({"path": bytes_of(&e.rel), "error": e.error})).collect::<Vec<_>>(),
            });
            backup_core::out::ignore_closed(backup_core::outln!("{out}"))?;
        }
        if found.databases.is_empty() && found.errors.is_empty() {
            warn!("no SQLite database under {}", p(&self.src));
        }
        if t.failed > 0 {
            return Err(Exit::partial(format!(
                "{} of {} failed: {}",
                t.failed,
                t.ok + t.failed,
                failed_names.join(", ")
            )));
        }
        info!(
            "{} database(s) copied and verified, {} bytes, {} skipped",
            t.ok, t.bytes, t.skipped
        );
        Ok(ExitCode::Ok)
    }
}

const SCRATCH_PREFIX: &str = ".sqlite-dump-scratch.";

/// Scratch directories left by a killed run (we hold the lock, so no
/// other run is using one).
fn clean_stale_scratch(dest: &Path) {
    let Ok(rd) = std::fs::read_dir(dest) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if name.as_bytes().starts_with(SCRATCH_PREFIX.as_bytes())
            && e.file_type().is_ok_and(|t| t.is_dir())
        {
            let path = e.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => info!("removed stale scratch directory {}", p(&path)),
                Err(e) => warn!("cannot remove stale scratch directory {}: {e}", p(&path)),
            }
        }
    }
}

trait DirBuilderExt700 {
    fn mode_0700(&mut self) -> &mut Self;
}
impl DirBuilderExt700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

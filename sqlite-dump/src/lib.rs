//! sqlite-dump: every SQLite database in a tree -> a consistent, verified
//! copy; and `check`, an integrity check of live databases.
//!
//! Replaces the SQLite pass of daily-backup and fixes bug 14 of the old
//! pipeline (docs/compatibility.md): no `*.db`/depth filter, no URI or
//! dot-command built from a tenant's name, no main-file-only fallback that
//! drops the WAL, failures counted, written files in the ledger.

pub mod discover;
pub mod dump;
pub mod sqlite;

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use backup_core::cli::{Common, parse_duration};
use backup_core::exit::{EXIT_CODE_HELP, Exit, ExitCode};
use backup_core::ledger::{Ledger, PathKind};
use backup_core::log::{escape_bytes, p};
use backup_core::metrics::Metrics;
use backup_core::root_guard::RootGuard;
use backup_core::{error, info, warn};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

pub const TOOL: &str = "sqlite-dump";

#[derive(Debug, Parser)]
#[command(
    name = "sqlite-dump",
    version,
    about = "Find every SQLite database under SRC_DIR and write a consistent, verified copy of each under DEST_DIR",
    long_about = "Find every SQLite database under SRC_DIR (by its 16-byte header, at any depth, \
on the same filesystem, never following symlinks) and write a consistent, verified copy of each \
to DEST_DIR/<relative path>. SRC_DIR is never written to: each database is copied with its -wal \
and hot -journal into a private scratch directory, recovered there by SQLite, copied with the \
online backup API and checked with PRAGMA integrity_check before it is renamed into place.\n\n\
`sqlite-dump SRC_DIR --to DEST_DIR` is short for `sqlite-dump dump SRC_DIR --to DEST_DIR` \
(use the long form for a source directory literally named `check` or `dump`).",
    after_help = EXIT_CODE_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub dump: DumpArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dump every database under SRC_DIR into DEST_DIR (the default).
    #[command(after_help = EXIT_CODE_HELP)]
    Dump(DumpArgs),
    /// PRAGMA integrity_check on live databases, read-only (the hourly check).
    #[command(after_help = EXIT_CODE_HELP)]
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DumpArgs {
    /// The tree to search; never written to [default: BACKUP_ROOT/pvc-data/<this week>].
    #[arg(value_name = "SRC_DIR")]
    pub src: Option<PathBuf>,
    /// Where the copies go, at the same relative paths, below a backup root
    /// carrying its identity marker (`offsite-sync init --local`)
    /// [default: BACKUP_ROOT/sqlite-backup/<this week>].
    #[arg(long, value_name = "DEST_DIR")]
    pub to: Option<PathBuf>,
    /// The backup disk root: the default source, destination and ledger.
    #[arg(
        long,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub backup_root: PathBuf,
    /// Accept a backup root that is not a mountpoint (a sandbox or test);
    /// its identity marker is still required.
    #[arg(long, env = "ALLOW_UNMOUNTED_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_unmounted_root: bool,
    /// Append every written file to this ledger [default, when DEST_DIR is
    /// under BACKUP_ROOT: BACKUP_ROOT/.changed-files].
    #[arg(long, value_name = "FILE", requires = "ledger_root")]
    pub ledger: Option<PathBuf>,
    /// Ledger entries are relative to this directory [default: BACKUP_ROOT, with the default ledger].
    #[arg(long, value_name = "DIR", requires = "ledger")]
    pub ledger_root: Option<PathBuf>,
    /// Give up on one database after this long (e.g. 300s, 10m).
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub timeout_per_db: Duration,
    /// Private scratch space for the recovered copies [default: a temp dir under DEST_DIR].
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Only list the databases that would be dumped; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Database files to check (opened read-only; a live WAL database is
    /// fine); the environment or configuration gives them space-separated.
    #[arg(
        value_name = "DB",
        required = true,
        env = "SQLITE_CHECK_DBS",
        value_delimiter = ' '
    )]
    pub dbs: Vec<PathBuf>,
    /// Give up on one database after this long.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout_per_db: Duration,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Entry point used by main.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.common.init_logging();
    match cli.command {
        Some(Command::Check(a)) => run_check(&a, &cli.common),
        Some(Command::Dump(a)) => run_dump(&a, &cli.common),
        None => run_dump(&cli.dump, &cli.common),
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn bytes_of(path: &Path) -> String {
    escape_bytes(path.as_os_str().as_bytes())
}

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

fn run_dump(a: &DumpArgs, common: &Common) -> anyhow::Result<ExitCode> {
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

fn dump_all(a: &DumpArgs, t: &mut DumpTotals) -> anyhow::Result<ExitCode> {
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
    let ledger = match (&a.ledger, &a.ledger_root) {
        (Some(l), Some(r)) => {
            let root = resolve(r, "--ledger-root")?;
            let prefix = dest.strip_prefix(&root).map_err(|_| {
                Exit::usage(format!(
                    "destination {} is not under --ledger-root {}",
                    p(&dest),
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
    };

    let (root, dev) = discover::open_root(&src)
        .map_err(|e| Exit::refused(format!("cannot open source {}: {e}", p(&src))))?;
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
        p(&src),
        found.skipped.len()
    );

    if a.dry_run {
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
        return Ok(if found.errors.is_empty() {
            ExitCode::Ok
        } else {
            ExitCode::Partial
        });
    }

    let _lock = backup_core::lock::acquire(TOOL)?;
    backup_core::signals::catch();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode_0700()
        .create(&dest)
        .map_err(|e| {
            Exit::err(
                ExitCode::Failed,
                format!("cannot create destination {}: {e}", p(&dest)),
            )
        })?;
    clean_stale_scratch(&dest);
    let scratch_parent = match &a.scratch_dir {
        Some(s) => {
            std::fs::create_dir_all(s)
                .with_context(|| format!("cannot create scratch dir {}", p(s)))?;
            resolve(s, "--scratch-dir")?
        }
        None => dest.clone(),
    };
    if scratch_parent.starts_with(&src) {
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

    let all: HashSet<PathBuf> = found.databases.iter().map(|c| c.rel.clone()).collect();
    let mut results = Vec::new();
    let mut stopped = None;
    for (i, c) in found.databases.iter().enumerate() {
        if let Some(sig) = backup_core::signals::received() {
            stopped = Some(sig);
            break;
        }
        // Nothing is started on a root that is no longer the backup disk.
        if let Err(e) = guard.check() {
            t.failed += 1;
            error!("{}: {e}", bytes_of(&c.rel));
            results.push(json!({"path": bytes_of(&c.rel), "result": "failed", "error": e}));
            continue;
        }
        let partial = dump::partial_rel(&c.rel, &all);
        let scratch_one = scratch.path().join(i.to_string());
        let job = dump::Job {
            root: &root,
            dev,
            rel: &c.rel,
            dest_root: &dest,
            partial_rel: &partial,
            scratch: &scratch_one,
            deadline: sqlite::Deadline::after(a.timeout_per_db),
            guard: &guard,
        };
        let mut notes = Vec::new();
        let r = dump::dump_one(&job, &mut notes);
        let _ = std::fs::remove_dir_all(&scratch_one);
        for n in &notes {
            info!("{}: {n}", bytes_of(&c.rel));
        }
        match r {
            Ok(w) => {
                let mut ledger_err = None;
                if let Some((ledger, prefix)) = &ledger {
                    let entry = prefix.join(&c.rel);
                    if let Err(e) = guard.check() {
                        // Renamed into place on the disk, which has gone
                        // since: no ledger line on a bare directory. The
                        // next run dumps and ledgers it again.
                        ledger_err = Some(format!("copied, but not recorded in the ledger: {e}"));
                    } else if let Err(e) = ledger.append_paths([entry.as_path()]) {
                        // The copy is good, but offsite would miss it: ask
                        // for a full sync and count the failure.
                        let _ = ledger.mark_full_sync("sqlite-dump could not append to the ledger");
                        ledger_err = Some(format!("copied, but not recorded in the ledger: {e}"));
                    }
                }
                t.bytes += w.bytes;
                if let Some(e) = ledger_err {
                    t.failed += 1;
                    error!("{}: {e}", bytes_of(&c.rel));
                    results.push(json!({"path": bytes_of(&c.rel), "result": "failed", "error": e, "bytes": w.bytes}));
                } else {
                    t.ok += 1;
                    info!("ok: {} ({} bytes)", bytes_of(&c.rel), w.bytes);
                    results
                        .push(json!({"path": bytes_of(&c.rel), "result": "ok", "bytes": w.bytes}));
                }
            }
            Err(e) => {
                t.failed += 1;
                let msg = backup_core::exit::one_line(&e);
                error!("{}: {msg}", bytes_of(&c.rel));
                results.push(json!({"path": bytes_of(&c.rel), "result": "failed", "error": msg}));
            }
        }
    }
    drop(scratch);
    let stopped = stopped.or_else(backup_core::signals::received);
    if let Some(sig) = stopped {
        // What was renamed into place is complete and verified; the rest
        // was never started or was cleaned up.
        return Err(Exit::err(
            ExitCode::Failed,
            format!(
                "stopped by signal {sig} after {} of {} database(s)",
                t.ok,
                found.databases.len()
            ),
        ));
    }

    let failed_names: Vec<String> = results
        .iter()
        .filter(|r| r["result"] == "failed")
        .filter_map(|r| r["path"].as_str().map(str::to_owned))
        .chain(found.errors.iter().map(|e| bytes_of(&e.rel)))
        .collect();
    if a.json {
        let out = json!({
            "source": bytes_of(&src),
            "destination": bytes_of(&dest),
            "ok": t.ok, "failed": t.failed, "skipped": t.skipped, "bytes": t.bytes,
            "files_scanned": t.files_scanned,
            "databases": results,
            "skipped_entries": found.skipped.iter().map(|s| json!({"path": bytes_of(&s.rel), "reason": s.reason})).collect::<Vec<_>>(),
            "scan_errors": found.errors.iter().map(|e| json!({"path": bytes_of(&e.rel), "error": e.error})).collect::<Vec<_>>(),
        });
        backup_core::out::ignore_closed(backup_core::outln!("{out}"))?;
    }
    if found.databases.is_empty() && found.errors.is_empty() {
        warn!("no SQLite database under {}", p(&src));
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

fn run_check(a: &CheckArgs, common: &Common) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut m = Metrics::new();
    let mut failed = Vec::new();
    let mut results = Vec::new();
    // SQLITE_CHECK_DBS is split on single spaces: doubled ones give empty words.
    for db in a.dbs.iter().filter(|d| !d.as_os_str().is_empty()) {
        let label = bytes_of(db);
        let deadline = sqlite::Deadline::after(a.timeout_per_db);
        let r = check_one(db, deadline).map_err(|e| sqlite::explain(e, &deadline));
        let ok = r.is_ok();
        m.gauge_with(
            "sqlite_check_ok",
            "1 when PRAGMA integrity_check of the database returned ok",
            &[("db", &label)],
            if ok { 1.0 } else { 0.0 },
        )?;
        m.gauge_with(
            "sqlite_check_timestamp_seconds",
            "When the database was last checked (unix seconds)",
            &[("db", &label)],
            now_unix(),
        )?;
        match r {
            Ok(()) => {
                info!("ok: {label}");
                results.push(json!({"db": label, "ok": true}));
            }
            Err(e) => {
                let msg = backup_core::exit::one_line(&e);
                error!("{label}: {msg}");
                results.push(json!({"db": label, "ok": false, "error": msg}));
                failed.push(label);
            }
        }
    }
    m.gauge(
        "sqlite_check_failed",
        "Databases whose integrity check failed in this run",
        failed.len() as f64,
    )?;
    m.gauge(
        "sqlite_check_duration_seconds",
        "Wall time of this run",
        started.elapsed().as_secs_f64(),
    )?;
    common.write_metrics(&m);
    if a.json {
        backup_core::out::ignore_closed(backup_core::outln!(
            "{}",
            json!({"ok": a.dbs.len() - failed.len(), "failed": failed.len(), "databases": results})
        ))?;
    }
    if !failed.is_empty() {
        return Err(Exit::partial(format!(
            "{} of {} database(s) failed the integrity check: {}",
            failed.len(),
            a.dbs.len(),
            failed.join(", ")
        )));
    }
    Ok(ExitCode::Ok)
}

fn check_one(db: &Path, deadline: sqlite::Deadline) -> anyhow::Result<()> {
    let abs = std::path::absolute(db).context("cannot make the path absolute")?;
    let meta = std::fs::metadata(&abs).context("cannot stat")?;
    if !meta.is_file() {
        anyhow::bail!("not a regular file");
    }
    let mut head = Vec::with_capacity(16);
    use std::io::Read;
    std::fs::File::open(&abs)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .context("cannot read the header")?;
    if head != discover::MAGIC {
        anyhow::bail!("not an SQLite 3 database (no 'SQLite format 3' header)");
    }
    let conn = sqlite::open(&abs, sqlite::Mode::ReadOnly, deadline)?;
    // A live writer may hold a lock for a moment (a checkpoint).
    conn.busy_timeout(Duration::from_secs(10))?;
    sqlite::integrity_check(&conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_short_form_is_dump() {
        let c = Cli::try_parse_from(["sqlite-dump", "/src", "--to", "/dst"]).expect("parse");
        assert!(c.command.is_none());
        assert_eq!(c.dump.src.as_deref(), Some(Path::new("/src")));
        let c = Cli::try_parse_from(["sqlite-dump", "check", "/a.db", "/b.db", "--json"])
            .expect("parse");
        match c.command {
            Some(Command::Check(a)) => {
                assert_eq!(a.dbs.len(), 2);
                assert!(a.json);
            }
            other => panic!("expected check, got {other:?}"),
        }
        let c =
            Cli::try_parse_from(["sqlite-dump", "dump", "/s", "--to", "/d", "-q"]).expect("parse");
        assert!(matches!(c.command, Some(Command::Dump(_))));
        // SRC_DIR and --to default to this week's directories of BACKUP_ROOT.
        assert!(Cli::try_parse_from(["sqlite-dump", "/src"]).is_ok());
        assert!(
            Cli::try_parse_from(["sqlite-dump", "/s", "--to", "/d", "--ledger", "/l"]).is_err()
        );
    }
}

//! `sqlite-dump check`: PRAGMA integrity_check of live databases, read-only.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use backup_core::cli::Common;
use backup_core::exit::{Exit, ExitCode};
use backup_core::metrics::Metrics;
use backup_core::{error, info};
use serde_json::json;

use crate::cli::CheckArgs;
use crate::{bytes_of, discover, sqlite};

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `check` subcommand: every database checked, each result in the metrics.
pub(crate) fn run(a: &CheckArgs, common: &Common) -> anyhow::Result<ExitCode> {
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

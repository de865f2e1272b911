//! Opening SQLite connections on tenant databases safely.
//!
//! Paths are always absolute and passed as paths, never as URIs: the flags
//! never include `SQLITE_OPEN_URI`, and the bundled SQLite only reads a
//! filename as a URI when it starts with `file:`, which an absolute path
//! cannot. So `?` and `#` in a name are plain characters
//! (docs/compatibility.md, bug 14).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

/// The wall-clock budget of one database.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    end: Instant,
    budget: Duration,
}

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Deadline {
            end: Instant::now() + budget,
            budget,
        }
    }
    /// True when the budget is used up or a stop signal arrived (the
    /// progress handler then aborts the running statement).
    pub fn expired(&self) -> bool {
        backup_core::signals::received().is_some() || Instant::now() >= self.end
    }
    /// Fail when the budget is used up or a stop signal arrived.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(sig) = backup_core::signals::received() {
            bail!("stopped by signal {sig}");
        }
        if self.expired() {
            bail!("timed out after {}s", self.budget.as_secs());
        }
        Ok(())
    }
    pub fn budget(&self) -> Duration {
        self.budget
    }
}

/// How a connection is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Existing file, read-only (the live `check`).
    ReadOnly,
    /// Existing file, read-write (our private scratch copy, our own output).
    ReadWrite,
    /// Create if missing (the `.partial` output).
    Create,
}

/// Open a connection with the defensive settings every connection gets:
/// no extension loading, `trusted_schema=OFF`, defensive mode, and a
/// progress handler that aborts the statement when the deadline passes.
pub fn open(path: &Path, mode: Mode, deadline: Deadline) -> anyhow::Result<Connection> {
    if !path.is_absolute() {
        // A relative name could start with "file:" and be read as a URI.
        bail!("internal error: SQLite path is not absolute");
    }
    disable_uri_filenames();
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
    flags |= match mode {
        Mode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
        Mode::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
        Mode::Create => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    };
    let conn = Connection::open_with_flags(path, flags).context("cannot open with SQLite")?;
    harden(&conn)?;
    conn.progress_handler(1000, Some(move || deadline.expired()));
    Ok(conn)
}

/// The bundled SQLite is built with SQLITE_USE_URI=1 (any filename that
/// starts with `file:` is a URI). Turn that off process-wide before the
/// first connection; absolute paths already rule it out, this is the
/// second lock on the same door.
fn disable_uri_filenames() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config(SQLITE_CONFIG_URI, int) before the library
        // is initialized (no connection opened yet in this process); if it
        // already was, SQLite returns SQLITE_MISUSE and changes nothing.
        let _ = unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_URI, 0 as std::ffi::c_int)
        };
    });
}

/// The defensive settings (separate so tests can check them).
pub fn harden(conn: &Connection) -> anyhow::Result<()> {
    // SAFETY: a valid open handle; option 1005 takes (int, int*) and a
    // null pointer for the result is allowed.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION,
            0 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        bail!("cannot disable extension loading (SQLite error {rc})");
    }
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .context("cannot enable defensive mode")?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
        .context("cannot turn trusted_schema off")?;
    conn.pragma_update(None, "trusted_schema", false)
        .context("cannot set trusted_schema=OFF")?;
    Ok(())
}

/// `PRAGMA integrity_check`: Ok when it returns exactly one row `ok`,
/// otherwise an error quoting the first problems.
pub fn integrity_check(conn: &Connection) -> anyhow::Result<()> {
    let mut stmt = conn
        .prepare("PRAGMA integrity_check(20)")
        .context("integrity_check")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .context("integrity_check")?
        .collect::<Result<_, _>>()
        .context("integrity_check")?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    let shown: Vec<String> = rows
        .iter()
        .take(3)
        .map(|r| backup_core::log::escape_str(r))
        .collect();
    bail!(
        "integrity_check failed ({} problem(s)): {}",
        rows.len(),
        shown.join("; ")
    )
}

/// Turn SQLite's "interrupted" into the timeout it stands for.
pub fn explain(err: anyhow::Error, deadline: &Deadline) -> anyhow::Error {
    let interrupted = err.chain().any(|e| {
        e.downcast_ref::<rusqlite::Error>()
            .and_then(|e| e.sqlite_error_code())
            == Some(rusqlite::ErrorCode::OperationInterrupted)
    });
    if let Some(sig) = backup_core::signals::received() {
        return err.context(format!("stopped by signal {sig}"));
    }
    if interrupted || deadline.expired() {
        return err.context(format!("timed out after {}s", deadline.budget().as_secs()));
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_hardened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.db");
        let c = open(&p, Mode::Create, Deadline::after(Duration::from_secs(60))).expect("open");
        let trusted: i64 = c
            .query_row("PRAGMA trusted_schema", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(trusted, 0);
        assert!(
            c.db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE)
                .expect("db_config")
        );
        let err = c
            .query_row("SELECT load_extension('/nonexistent/x')", [], |r| {
                r.get::<_, Option<String>>(0)
            })
            .expect_err("extension loading must be off");
        assert!(err.to_string().contains("not authorized"), "{err}");
    }

    #[test]
    fn a_spent_deadline_interrupts_statements() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.db");
        let d = Deadline::after(Duration::ZERO);
        let c = open(&p, Mode::Create, d).expect("open");
        let err = c
            .query_row(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n) SELECT count(*) FROM n",
                [],
                |r| r.get::<_, i64>(0),
            )
            .expect_err("must be interrupted");
        let err = explain(err.into(), &d);
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let d = Deadline::after(Duration::from_secs(1));
        assert!(open(Path::new("file:x.db?mode=memory"), Mode::Create, d).is_err());
    }
}

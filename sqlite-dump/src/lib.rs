//! sqlite-dump: every SQLite database in a tree -> a consistent, verified
//! copy; and `check`, an integrity check of live databases.
//!
//! Replaces the SQLite pass of daily-backup and fixes bug 14 of the old
//! pipeline (docs/compatibility.md): no `*.db`/depth filter, no URI or
//! dot-command built from a tenant's name, no main-file-only fallback that
//! drops the WAL, failures counted, written files in the ledger.
//!
//! One module per subcommand (`dump_all`, `check`); one database's dump
//! is in `dump`.

pub mod cli;
mod check;
pub mod discover;
pub mod dump;
mod dump_all;
pub mod sqlite;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use backup_core::exit::ExitCode;
use backup_core::log::escape_bytes;

pub use crate::cli::{CheckArgs, Cli, Command, DumpArgs};

pub const TOOL: &str = "sqlite-dump";

/// Entry point used by main.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.common.init_logging();
    match cli.command {
        Some(Command::Check(a)) => check::run(&a, &cli.common),
        Some(Command::Dump(a)) => dump_all::run(&a, &cli.common),
        None => dump_all::run(&cli.dump, &cli.common),
    }
}

fn bytes_of(path: &Path) -> String {
    escape_bytes(path.as_os_str().as_bytes())
}

//! The command line: `dump` (also the default, without a subcommand) and `check`.

use std::path::PathBuf;
use std::time::Duration;

use backup_core::cli::{Common, parse_duration};
use backup_core::exit::EXIT_CODE_HELP;
use clap::{Args, Parser, Subcommand};

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

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

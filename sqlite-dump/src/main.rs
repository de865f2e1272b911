//! sqlite-dump: verified copies of every SQLite database in a tree.
use clap::Parser;

fn main() {
    let cli = sqlite_dump::Cli::parse();
    backup_core::exit::run_main(sqlite_dump::TOOL, || sqlite_dump::run(cli));
}

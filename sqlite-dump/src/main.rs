//! sqlite-dump: verified copies of every SQLite database in a tree.

fn main() {
    let cli = backup_core::config::parse::<sqlite_dump::Cli>(sqlite_dump::TOOL);
    backup_core::exit::run_main(sqlite_dump::TOOL, || sqlite_dump::run(cli));
}

//! lvm-snap: thin snapshots of every PVC volume (see `lvm-snap --help`).
use clap::Parser;

fn main() {
    let cli = lvm_snap::Cli::parse();
    backup_core::exit::run_main("lvm-snap", || lvm_snap::run(cli));
}

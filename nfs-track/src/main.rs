use clap::Parser;

fn main() {
    let cli = nfs_track::Cli::parse();
    backup_core::exit::run_main("nfs-track", || nfs_track::run(cli))
}

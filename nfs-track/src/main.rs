fn main() {
    let cli = backup_core::config::parse::<nfs_track::Cli>("nfs-track");
    backup_core::exit::run_main("nfs-track", || nfs_track::run(cli))
}

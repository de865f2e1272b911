fn main() {
    let cli = backup_core::exit::parse_args::<nfs_track::Cli>("nfs-track");
    backup_core::exit::run_main("nfs-track", || nfs_track::run(cli))
}

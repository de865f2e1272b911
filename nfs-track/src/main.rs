fn main() {
    backup_core::exit::run_main("nfs-track", || anyhow::bail!("not implemented yet"));
}

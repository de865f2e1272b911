fn main() {
    backup_core::exit::run_main("offsite-sync", || anyhow::bail!("not implemented yet"));
}

fn main() {
    backup_core::exit::run_main("nfs-mirror", || anyhow::bail!("not implemented yet"));
}

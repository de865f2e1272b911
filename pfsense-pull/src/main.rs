fn main() {
    backup_core::exit::run_main("pfsense-pull", || anyhow::bail!("not implemented yet"));
}

fn main() {
    backup_core::exit::run_main("sqlite-dump", || anyhow::bail!("not implemented yet"));
}

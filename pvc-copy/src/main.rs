fn main() {
    backup_core::exit::run_main("pvc-copy", || anyhow::bail!("not implemented yet"));
}

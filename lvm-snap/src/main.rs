fn main() {
    backup_core::exit::run_main("lvm-snap", || anyhow::bail!("not implemented yet"));
}

fn main() {
    let cli = backup_core::config::parse::<pvc_copy::Cli>("pvc-copy");
    backup_core::exit::run_main("pvc-copy", || pvc_copy::run(cli));
}

fn main() {
    let cli = backup_core::config::parse::<push_metric::Cli>("push-metric");
    backup_core::exit::run_main("push-metric", || push_metric::run(cli))
}

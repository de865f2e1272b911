use clap::Parser;

fn main() {
    let cli = push_metric::Cli::parse();
    backup_core::exit::run_main("push-metric", || push_metric::run(cli))
}

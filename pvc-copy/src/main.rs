use clap::Parser;

fn main() {
    let cli = pvc_copy::Cli::parse();
    backup_core::exit::run_main("pvc-copy", || pvc_copy::run(cli));
}

//! pfsense-pull: argument parsing and exit code over the library.
use clap::Parser;

fn main() {
    let cli = pfsense_pull::Cli::parse();
    backup_core::exit::run_main(pfsense_pull::TOOL, || pfsense_pull::run(cli));
}

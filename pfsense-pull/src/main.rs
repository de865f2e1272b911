//! pfsense-pull: argument parsing and exit code over the library.

fn main() {
    let cli = backup_core::config::parse::<pfsense_pull::Cli>(pfsense_pull::TOOL);
    backup_core::exit::run_main(pfsense_pull::TOOL, || pfsense_pull::run(cli));
}

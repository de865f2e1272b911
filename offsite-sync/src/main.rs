//! offsite-sync: argument parsing (cli.rs), then each subcommand's run in
//! the library.
mod cli;

use anyhow::Result;
use backup_core::exit::ExitCode;
use cli::{Cli, Sub};

fn main() {
    let cli = backup_core::config::parse::<Cli>("offsite-sync");
    cli.common.init_logging();
    backup_core::exit::run_main("offsite-sync", || run(cli))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.opts.json;
    let cfg = cli.opts.config();
    cfg.validate()?;
    let steps: &[u8] = match cli.cmd {
        Sub::Step1 => &[1],
        Sub::Step2 => &[2],
        Sub::All => &[1, 2],
        Sub::Init { local } => return offsite_sync::init(&cfg, local).map(|()| ExitCode::Ok),
        Sub::Coverage => return offsite_sync::coverage::run(&cfg, json),
        Sub::Status { no_nas } => return offsite_sync::status::run(&cfg, !no_nas, json),
    };
    offsite_sync::steps::run(&cfg, steps, &cli.common, json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}

//! nfs-mirror: argument parsing (cli.rs), then the subcommand's run in the
//! library, each under its own lock.
mod cli;

use anyhow::Result;
use backup_core::exit::ExitCode;
use cli::{Cli, Sub};

fn main() {
    let cli = backup_core::config::parse::<Cli>("nfs-mirror");
    cli.common.init_logging();
    backup_core::exit::run_main("nfs-mirror", || run(cli))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Some(Sub::Config(args)) => {
            let _lock = backup_core::lock::acquire("nfs-mirror-config")?;
            nfs_mirror::run_config(&args.into_opts(), &cli.common)
        }
        None => {
            let _lock = backup_core::lock::acquire("nfs-mirror")?;
            nfs_mirror::run_mirror(&cli.mirror.into_opts()?, &cli.common)
        }
    }
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

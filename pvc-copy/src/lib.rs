//! `pvc-copy`: for every PVC origin LV, its newest own snapshot, mounted
//! read-only in a private mount namespace, copied with rsync into
//! `pvc-data/<week>/<ns>/<pvc>/` on the backup disk, hardlinked against the
//! newest earlier copy, swapped in only when complete.
//!
//! One module per subcommand (`run`, `preflight`, `current_week`, `weeks`,
//! `restore`); the copy run's steps are in `run`, one PVC's in `one`.

pub mod cli;
pub mod copy;
mod current_week;
pub mod mount;
mod one;
pub mod plan;
pub mod preflight;
mod report;
pub mod restore;
mod run;
pub mod store;
pub mod weeks;

use backup_core::exit::ExitCode;

pub use crate::cli::{Cli, PreflightArgs, RestoreArgs, RunArgs, Sub, WeeksArgs};
pub use crate::current_week::current_week;
pub use crate::report::{ItemReport, Report};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.common.init_logging();
    match &cli.cmd {
        Some(Sub::Preflight(a)) => preflight::run(a, &cli.common),
        Some(Sub::CurrentWeek { now }) => current_week::run(now.as_deref()),
        Some(Sub::Weeks(a)) => weeks::run(a),
        Some(Sub::Restore(a)) => restore::run(a),
        None => run::run(&cli.run, &cli.common),
    }
}

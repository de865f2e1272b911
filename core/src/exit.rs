//! Contract 4: exit codes shared by every tool, and the `main` wrapper.

use std::fmt;

/// The exit codes of every tool (the table in each `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitCode {
    /// 0: done.
    Ok = 0,
    /// 1: failed.
    Failed = 1,
    /// 2: bad usage or configuration.
    Usage = 2,
    /// 3: ran to the end, some items failed.
    Partial = 3,
    /// 4: another run holds the lock.
    Busy = 4,
    /// 5: a guard tripped (disk not mounted, source empty, command missing...).
    Refused = 5,
}

/// The table printed in every `--help` (`after_help`).
pub const EXIT_CODE_HELP: &str = "Exit codes:
  0  done
  1  failed
  2  bad usage or configuration
  3  partial: ran to the end, some items failed (listed)
  4  busy: another run holds the lock
  5  refused: a guard tripped (disk not mounted, source missing or empty, command absent)";

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Severity used by [`ExitCode::merge`]: a more severe code wins.
    fn severity(self) -> u8 {
        match self {
            ExitCode::Ok => 0,
            ExitCode::Partial => 1,
            ExitCode::Failed => 2,
            ExitCode::Refused => 3,
            ExitCode::Busy => 4,
            ExitCode::Usage => 5,
        }
    }

    /// Combine two results; the more severe one wins.
    pub fn merge(self, other: ExitCode) -> ExitCode {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// Exit code of a run over many items: all fine -> 0, some failed -> 3,
    /// every item failed -> 1 (nothing useful happened).
    pub fn from_items(ok: usize, failed: usize) -> ExitCode {
        match (ok, failed) {
            (_, 0) => ExitCode::Ok,
            (0, _) => ExitCode::Failed,
            _ => ExitCode::Partial,
        }
    }

    /// The status metric: 0 for exit 0, 1 otherwise (2 is reserved for
    /// killed or timed-out runs, which push-metric learns from systemd).
    pub fn status_metric(self) -> u8 {
        if self == ExitCode::Ok { 0 } else { 1 }
    }
}

/// An error that carries the exit code it should end the process with.
/// Attach it with [`Exit::new`] or the helpers; anything else exits 1.
#[derive(Debug)]
pub struct Exit {
    pub code: ExitCode,
    pub message: String,
}

impl Exit {
    pub fn err(code: ExitCode, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Exit {
            code,
            message: message.into(),
        })
    }
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Self::err(ExitCode::Usage, message)
    }
    pub fn refused(message: impl Into<String>) -> anyhow::Error {
        Self::err(ExitCode::Refused, message)
    }
    pub fn partial(message: impl Into<String>) -> anyhow::Error {
        Self::err(ExitCode::Partial, message)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The exit code an error ends the process with: the first [`Exit`] in
/// its chain, or 5 for a command that could not be started because it is
/// absent ([`crate::cmd::CmdError::Absent`]), else 1.
pub fn code_of(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(|e| {
            if let Some(x) = e.downcast_ref::<Exit>() {
                return Some(x.code);
            }
            absent_cmd(e).map(|_| ExitCode::Refused)
        })
        .unwrap_or(ExitCode::Failed)
}

/// `e` as a command that is absent, when it is one (`lvs` errors wrap
/// theirs transparently, so they are looked into too).
fn absent_cmd<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a crate::cmd::CmdError> {
    let c = e.downcast_ref::<crate::cmd::CmdError>().or_else(|| {
        match e.downcast_ref::<crate::lvm::LvsError>() {
            Some(crate::lvm::LvsError::Run(c)) => Some(c),
            _ => None,
        }
    })?;
    c.is_absent().then_some(c)
}

/// The message of an absent command in `err`'s chain
/// ("command absent: rsync (not found in PATH)"), if there is one: for
/// call sites that count a failure per item and must end with exit 5
/// instead when the command itself is missing.
pub fn absent_in(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(absent_cmd).map(|c| c.to_string())
}

/// For a command that is absent, the error that ends the tool with exit 5
/// ("command absent: rsync (not found in PATH)"); `None` for any other
/// failure. For call sites that turn a command's failure into their own
/// error (a message string, a per-item failure) and would otherwise lose
/// that the command is missing.
pub fn absent_command(err: &crate::cmd::CmdError) -> Option<anyhow::Error> {
    err.is_absent().then(|| Exit::refused(err.to_string()))
}

/// The one-line form of an error chain, as printed in the journal.
pub fn one_line(err: &anyhow::Error) -> String {
    crate::log::escape_str(&format!("{err:#}"))
}

/// Shared `main`: names the tool for every log line, runs `body`, prints
/// a fatal error once as one line (`tool: error: a: b: c`, see
/// [`crate::log::format_line`]), and exits with the right code. A write
/// to a closed stdout (`tool --json | head`) ends quietly with 0, as
/// ripgrep does (see [`crate::out`]).
pub fn run_main(tool: &str, body: impl FnOnce() -> anyhow::Result<ExitCode>) -> ! {
    crate::log::set_tool(tool);
    let code = match body() {
        Ok(code) => code,
        Err(err) if crate::out::is_closed(&err) => ExitCode::Ok,
        Err(err) => {
            let code = code_of(&err);
            crate::log::emit(crate::log::Level::Error, &one_line(&err));
            code
        }
    };
    std::process::exit(code.code())
}

/// Parse the command line of `tool` with clap; see [`usage_exit`] for a
/// bad one.
pub fn parse_args<T: clap::Parser>(tool: &str) -> T {
    T::try_parse().unwrap_or_else(|e| usage_exit(tool, &e))
}

/// End the process for a command line clap refused: `--help` and
/// `--version` print as clap does; a bad usage is one error line in the
/// shared form (`tool: error: invalid value '5y' for '--flush-interval
/// <FLUSH_INTERVAL>': ...`), then clap's usage and hint, and exit 2.
pub fn usage_exit(tool: &str, e: &clap::Error) -> ! {
    use clap::error::ErrorKind;
    if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        e.exit()
    }
    crate::log::set_tool(tool);
    let (line, rest) = usage_error_line(e);
    crate::log::emit(crate::log::Level::Error, &line);
    if !rest.is_empty() {
        use std::io::Write;
        // Nowhere else to report a failed write to stderr.
        let _ = write!(std::io::stderr().lock(), "\n{rest}");
    }
    std::process::exit(ExitCode::Usage.code())
}

/// A clap error as one line without clap's `error: ` tag (its first
/// paragraph, a list of arguments joined with `, `, escaped), and the rest
/// (usage, hint) as clap writes it.
fn usage_error_line(e: &clap::Error) -> (String, String) {
    let text = e.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let (first, rest) = text.split_once("\n\n").unwrap_or((text, ""));
    // clap lists missing arguments one per indented line.
    let line = first.replacen(":\n  ", ": ", 1).replace("\n  ", ", ");
    (crate::log::escape_str(&line), rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_most_severe() {
        use ExitCode::*;
        assert_eq!(Ok.merge(Partial), Partial);
        assert_eq!(Partial.merge(Ok), Partial);
        assert_eq!(Partial.merge(Failed), Failed);
        assert_eq!(Failed.merge(Refused), Refused);
        assert_eq!(Refused.merge(Busy), Busy);
        assert_eq!(Ok.merge(Ok), Ok);
    }

    #[test]
    fn items_map_to_codes() {
        assert_eq!(ExitCode::from_items(117, 1), ExitCode::Partial);
        assert_eq!(ExitCode::from_items(118, 0), ExitCode::Ok);
        assert_eq!(ExitCode::from_items(0, 3), ExitCode::Failed);
        assert_eq!(ExitCode::from_items(0, 0), ExitCode::Ok);
    }

    #[test]
    fn error_chain_finds_the_code() {
        let e = Exit::refused("/mnt/backup is not a mountpoint");
        let e = e.context("preflight");
        assert_eq!(code_of(&e), ExitCode::Refused);
        assert_eq!(one_line(&e), "preflight: /mnt/backup is not a mountpoint");
        let plain = anyhow::anyhow!("boom");
        assert_eq!(code_of(&plain), ExitCode::Failed);
    }

    #[test]
    fn an_absent_command_is_refused_through_context() {
        let e = crate::cmd::Cmd::new("definitely-not-a-program-xyz")
            .run()
            .expect_err("absent");
        let e = anyhow::Error::new(e).context("step 1");
        assert_eq!(code_of(&e), ExitCode::Refused);
        assert_eq!(
            one_line(&e),
            "step 1: command absent: definitely-not-a-program-xyz (not found in PATH)"
        );
        assert_eq!(
            absent_in(&e).as_deref(),
            Some("command absent: definitely-not-a-program-xyz (not found in PATH)")
        );
        let failed = crate::cmd::Cmd::new("false").run().expect_err("fails");
        let failed = anyhow::Error::new(failed);
        assert_eq!(code_of(&failed), ExitCode::Failed);
        assert_eq!(absent_in(&failed), None);
        let lvs = crate::lvm::LvsError::Run(
            crate::cmd::Cmd::new("/nonexistent/lvs")
                .run()
                .expect_err("absent"),
        );
        let lvs = anyhow::Error::new(lvs).context("reading the LVs of VG pve");
        assert_eq!(code_of(&lvs), ExitCode::Refused);
    }

    #[test]
    fn a_bad_usage_is_one_line() {
        let cmd = || {
            clap::Command::new("t")
                .arg(clap::Arg::new("to").long("to").required(true))
                .arg(clap::Arg::new("src").required(true))
                .arg(
                    clap::Arg::new("every")
                        .long("every")
                        .value_parser(crate::cli::parse_duration),
                )
        };
        let e = cmd().try_get_matches_from(["t"]).expect_err("missing");
        let (line, rest) = usage_error_line(&e);
        assert_eq!(
            line,
            "the following required arguments were not provided: --to <to>, <src>"
        );
        assert!(rest.starts_with("Usage: t"), "{rest}");
        let e = cmd()
            .try_get_matches_from(["t", "--to", "d", "s", "--every", "5y\n"])
            .expect_err("bad value");
        let (line, _) = usage_error_line(&e);
        assert!(
            line.starts_with("invalid value '5y\\n' for '--every <every>': invalid duration"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
}

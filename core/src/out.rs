//! Contract 11: what a tool prints on stdout (listings, `--json`, reports).
//!
//! `println!` panics when stdout is closed (`tool --json | head`), and the
//! run ends with 101 and a panic message. Everything a tool prints goes
//! through [`outln!`](crate::outln) / [`out!`](crate::out) instead: a write
//! to a closed stdout returns an error marked [`StdoutClosed`], which
//! [`run_main`](crate::exit::run_main) ends quietly with exit 0, as ripgrep
//! does: the reader went away, there is nothing to report to it. Only
//! stdout's broken pipe is quiet; one on a pipe to a child (rsync's
//! `--files-from=-`) is a failure like any other.
//!
//! A run that prints its report after the work keeps its own exit code:
//! it passes the printing's result through [`ignore_closed`].

use std::fmt;
use std::io::{self, Write};

/// The marker inside the `io::Error` of a write to a closed stdout.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Write to stdout and flush (so a closed stdout shows here, not at exit).
pub fn write_fmt(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut o = io::stdout().lock();
    o.write_fmt(args)
        .and_then(|()| o.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed),
            _ => io::Error::new(e.kind(), format!("cannot write to stdout: {e}")),
        })
}

/// Whether an io error is a write to a closed stdout (from [`write_fmt`]).
pub fn io_is_closed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
        && e.get_ref()
            .is_some_and(|i| i.downcast_ref::<StdoutClosed>().is_some())
}

/// Whether an error chain ends in a write to a closed stdout.
pub fn is_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<StdoutClosed>().is_some()
            || e.downcast_ref::<io::Error>().is_some_and(io_is_closed)
    })
}

/// A closed stdout is not an error (the report of a finished run: its own
/// exit code stands); any other write error still is.
pub fn ignore_closed(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if io_is_closed(&e) => Ok(()),
        r => r,
    }
}

/// `print!` that returns `io::Result<()>` instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write_fmt(format_args!($($arg)*))
    };
}

/// `println!` that returns `io::Result<()>` instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stdout_s_broken_pipe_is_quiet() {
        let closed = io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed);
        assert!(io_is_closed(&closed));
        let e = anyhow::Error::from(closed).context("listing");
        assert!(is_closed(&e));
        // rsync's stdin going away is a failure, not a closed stdout.
        let child = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(!io_is_closed(&child));
        assert!(!is_closed(&anyhow::Error::from(child)));
        assert!(
            ignore_closed(Err(io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed))).is_ok()
        );
        assert!(ignore_closed(Err(io::Error::from(io::ErrorKind::BrokenPipe))).is_err());
    }
}

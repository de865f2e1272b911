//! Contract 11: log lines on stderr; `<N>` syslog priority prefixes under
//! systemd (`JOURNAL_STREAM` set); `-q`/`-v`; tenant names escaped.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

// Default: info. `-q` lowers to warnings, `-v` raises to debug.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Set verbosity from the counts of `-q` and `-v` flags.
pub fn init(quiet: u8, verbose: u8) {
    let level = if quiet > 0 {
        Level::Warn
    } else if verbose > 0 {
        Level::Debug
    } else {
        Level::Info
    };
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

fn journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// The line as it is written, without the trailing newline.
pub fn format_line(level: Level, msg: &str, journal: bool) -> String {
    let tag = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info | Level::Debug => "",
    };
    if journal {
        format!("<{}>{tag}{msg}", level as u8)
    } else {
        format!("{tag}{msg}")
    }
}

/// Write one log line (errors are always written, whatever `-q` says).
pub fn emit(level: Level, msg: &str) {
    if level != Level::Error && !enabled(level) {
        return;
    }
    let line = format_line(level, msg, journal());
    // A log line that cannot be written has nowhere else to go.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Error, &format!($($t)*)) }; }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Warn, &format!($($t)*)) }; }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Info, &format!($($t)*)) }; }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Debug, &format!($($t)*)) }; }

/// Escape a tenant-controlled name (bytes) for a log line: control
/// characters, backslash and invalid UTF-8 become `\n`, `\t`, `\\`,
/// `\xNN`, so one name is always one visible line that can be pasted back.
pub fn escape_bytes(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        push_escaped(&mut out, chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Same as [`escape_bytes`] for text that is already UTF-8.
pub fn escape_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// A path for a log line: escaped bytes.
pub fn p(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escape_bytes(path.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_priority() {
        assert_eq!(format_line(Level::Error, "x", true), "<3>error: x");
        assert_eq!(format_line(Level::Warn, "x", true), "<4>warning: x");
        assert_eq!(format_line(Level::Info, "x", true), "<6>x");
        assert_eq!(format_line(Level::Info, "x", false), "x");
    }

    #[test]
    fn hostile_names_stay_on_one_line() {
        assert_eq!(escape_bytes(b"a\nb"), "a\\nb");
        assert_eq!(escape_bytes(b"\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(escape_bytes(b"caf\xe9"), "caf\\xe9");
        assert_eq!(escape_bytes("café".as_bytes()), "café");
        assert_eq!(escape_bytes(b"a\\b"), "a\\\\b");
    }
}

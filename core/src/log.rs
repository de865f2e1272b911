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

static TOOL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Name the tool once at start (done by [`crate::exit::run_main`]); error
/// and warning lines begin with it. Until then the program's file name is
/// used. A second call changes nothing.
pub fn set_tool(tool: &str) {
    let _ = TOOL.set(tool.to_owned());
}

/// The tool name error and warning lines begin with.
pub fn tool() -> String {
    if let Some(t) = TOOL.get() {
        return t.clone();
    }
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

/// The line as it is written, without the trailing newline: errors and
/// warnings are `TOOL: error: WHAT: WHY` and `TOOL: warning: ...`, other
/// lines are the message alone; under systemd every line starts with its
/// `<N>` priority.
pub fn format_line(level: Level, msg: &str, journal: bool) -> String {
    format_line_of(&tool(), level, msg, journal)
}

/// [`format_line`] for a given tool name (empty: no tool prefix).
pub fn format_line_of(tool: &str, level: Level, msg: &str, journal: bool) -> String {
    let tag = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info | Level::Debug => "",
    };
    let tool = if tag.is_empty() || tool.is_empty() {
        String::new()
    } else {
        format!("{tool}: ")
    };
    if journal {
        format!("<{}>{tool}{tag}{msg}", level as u8)
    } else {
        format!("{tool}{tag}{msg}")
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
        let f = |l, j| format_line_of("nfs-mirror", l, "x", j);
        assert_eq!(f(Level::Error, true), "<3>nfs-mirror: error: x");
        assert_eq!(f(Level::Warn, true), "<4>nfs-mirror: warning: x");
        assert_eq!(f(Level::Info, true), "<6>x");
        assert_eq!(f(Level::Info, false), "x");
        assert_eq!(f(Level::Debug, false), "x");
    }

    #[test]
    fn error_lines_name_the_tool_first() {
        assert_eq!(
            format_line_of(
                "nfs-mirror",
                Level::Error,
                "/srv/nfs/x: rsync exited 23",
                false
            ),
            "nfs-mirror: error: /srv/nfs/x: rsync exited 23"
        );
        assert_eq!(
            format_line_of("pvc-copy", Level::Warn, "a: b", false),
            "pvc-copy: warning: a: b"
        );
        assert_eq!(format_line_of("", Level::Error, "a", false), "error: a");
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

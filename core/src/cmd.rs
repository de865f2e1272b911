//! Contract 6: external commands. Argument vectors only (never a shell),
//! a timeout that kills the child's whole process group, stderr kept for
//! the error text; rsync's exit codes classified in one place.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("{prog}: cannot run: {source}")]
    Spawn {
        prog: String,
        source: std::io::Error,
    },
    #[error("{prog}: timed out after {secs}s and was killed{}", tail(stderr))]
    Timeout {
        prog: String,
        secs: u64,
        stderr: String,
    },
    #[error("{prog}: exited {code}{}", tail(stderr))]
    Failed {
        prog: String,
        code: i32,
        stderr: String,
    },
    #[error("{prog}: killed by signal {signal}{}", tail(stderr))]
    Signalled {
        prog: String,
        signal: i32,
        stderr: String,
    },
    #[error("{prog}: {source}")]
    Io {
        prog: String,
        source: std::io::Error,
    },
}

impl CmdError {
    /// The exit code, when the command ran and exited with one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CmdError::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, CmdError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The last few stderr lines, joined, for a one-line error message.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(3);
    format!(": {}", crate::log::escape_str(&lines[start..].join(" | ")))
}

/// The result of a command that ran to an exit.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// A command to run: program, arguments, timeout, optional stdin.
#[derive(Debug, Clone)]
pub struct Cmd {
    prog: OsString,
    args: Vec<OsString>,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
    /// Kept separate so the caller decides whether stdout goes to a file.
    stdout_to: Option<std::path::PathBuf>,
}

impl Cmd {
    pub fn new(prog: impl AsRef<OsStr>) -> Self {
        Cmd {
            prog: prog.as_ref().to_os_string(),
            args: Vec::new(),
            timeout: Duration::from_secs(300),
            stdin: None,
            env: Vec::new(),
            stdout_to: None,
        }
    }
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }
    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(it.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn stdin(mut self, data: Vec<u8>) -> Self {
        self.stdin = Some(data);
        self
    }
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }
    /// Stream stdout into a file instead of memory (large outputs).
    pub fn stdout_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.stdout_to = Some(path.into());
        self
    }
    pub fn prog_name(&self) -> String {
        std::path::Path::new(&self.prog)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.prog.to_string_lossy().into_owned())
    }
    /// The argv as one printable line, for `--dry-run` and debug logs.
    pub fn display(&self) -> String {
        std::iter::once(&self.prog)
            .chain(&self.args)
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run to completion; any exit but 0 is an error.
    pub fn run(&self) -> Result<Output, CmdError> {
        let out = self.run_any()?;
        if out.code != 0 {
            return Err(CmdError::Failed {
                prog: self.prog_name(),
                code: out.code,
                stderr: out.stderr,
            });
        }
        Ok(out)
    }

    /// Run to completion and return whatever exit code it had (callers
    /// such as rsync classify codes themselves). Timeout and signals are
    /// still errors.
    pub fn run_any(&self) -> Result<Output, CmdError> {
        let prog = self.prog_name();
        let mut c = Command::new(&self.prog);
        c.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            // Own process group: a timeout kills the child and everything
            // it started (ssh under rsync), not just the first process.
            .process_group(0);
        // The child dies with us: a tool killed outside systemd (no cgroup
        // kill) must not leave an rsync running on its own. Safe to enable
        // always, because the spawning thread waits for the child below.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid) between
        // fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("parent exited before exec"));
                }
                Ok(())
            });
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        match &self.stdout_to {
            Some(p) => {
                let f = std::fs::File::create(p).map_err(|source| CmdError::Io {
                    prog: prog.clone(),
                    source,
                })?;
                c.stdout(f);
            }
            None => {
                c.stdout(Stdio::piped());
            }
        }
        let mut child = c.spawn().map_err(|source| CmdError::Spawn {
            prog: prog.clone(),
            source,
        })?;
        let pgid = child.id() as i32;
        let stdin_thread = child
            .stdin
            .take()
            .zip(self.stdin.clone())
            .map(|(mut pipe, data)| {
                std::thread::spawn(move || {
                    let _ = pipe.write_all(&data);
                })
            });
        let out_thread = child.stdout.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = s.read_to_end(&mut v);
                v
            })
        });
        let err_thread = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = s.read_to_end(&mut v);
                v
            })
        });
        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait().map_err(|source| CmdError::Io {
                prog: prog.clone(),
                source,
            })? {
                Some(st) => break st,
                None if Instant::now() >= deadline => {
                    timed_out = true;
                    kill_group(pgid);
                    break child.wait().map_err(|source| CmdError::Io {
                        prog: prog.clone(),
                        source,
                    })?;
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        // The group may still hold the pipes open (a grandchild): make sure
        // nothing of it outlives us, then collect the output.
        kill_group(pgid);
        if let Some(t) = stdin_thread {
            let _ = t.join();
        }
        let stdout = out_thread.and_then(|t| t.join().ok()).unwrap_or_default();
        let stderr =
            String::from_utf8_lossy(&err_thread.and_then(|t| t.join().ok()).unwrap_or_default())
                .into_owned();
        if timed_out {
            return Err(CmdError::Timeout {
                prog,
                secs: self.timeout.as_secs(),
                stderr,
            });
        }
        match status.code() {
            Some(code) => Ok(Output {
                code,
                stdout,
                stderr,
            }),
            None => Err(CmdError::Signalled {
                prog,
                signal: status.signal().unwrap_or(0),
                stderr,
            }),
        }
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Quote an argument for display so it can be pasted into a shell.
pub fn shell_quote(a: &OsStr) -> String {
    let s = a.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", crate::log::escape_str(&s).replace('\'', "'\\''"))
    }
}

/// True when a program is found on PATH (or is an existing path).
pub fn which(prog: &str) -> bool {
    if prog.contains('/') {
        return std::path::Path::new(prog).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// How a finished rsync run counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RsyncResult {
    /// Exit 0.
    Ok,
    /// Exit 24: source files vanished during the transfer. Counts as
    /// success, with a warning and the number of vanished files.
    Vanished { files: usize },
    /// Exit 23: some files were not transferred.
    Partial,
    /// Anything else: the transfer failed (10, 12, 30 and 255 are network
    /// failures that a later run retries).
    Failed { code: i32 },
}

impl RsyncResult {
    pub fn classify(code: i32, stderr: &str) -> RsyncResult {
        match code {
            0 => RsyncResult::Ok,
            24 => RsyncResult::Vanished {
                files: stderr
                    .lines()
                    .filter(|l| l.contains("file has vanished"))
                    .count(),
            },
            23 => RsyncResult::Partial,
            code => RsyncResult::Failed { code },
        }
    }
    pub fn is_success(&self) -> bool {
        matches!(self, RsyncResult::Ok | RsyncResult::Vanished { .. })
    }
    /// A human-readable meaning of rsync's exit code.
    pub fn describe(code: i32) -> &'static str {
        match code {
            0 => "success",
            1 => "syntax or usage error",
            2 => "protocol incompatibility",
            3 => "errors selecting input/output files",
            5 => "error starting client-server protocol",
            10 => "error in socket I/O",
            11 => "error in file I/O",
            12 => "error in rsync protocol data stream",
            20 => "received SIGUSR1 or SIGINT",
            23 => "partial transfer due to error",
            24 => "partial transfer due to vanished source files",
            30 => "timeout in data send/receive",
            35 => "timeout waiting for daemon connection",
            255 => "ssh connection failed",
            _ => "unexpected exit code",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_part_of_the_error() {
        let e = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .expect_err("fails");
        assert_eq!(e.exit_code(), Some(3));
        assert_eq!(e.to_string(), "sh: exited 3: oops");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survivor");
        // The grandchild would create the marker after 2 s if it survived.
        let script = format!("(sleep 2; touch '{}') & sleep 30", marker.display());
        let start = Instant::now();
        let e = Cmd::new("sh")
            .args(["-c", &script])
            .timeout(Duration::from_millis(300))
            .run()
            .expect_err("timeout");
        assert!(matches!(e, CmdError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "a grandchild survived the timeout");
    }

    #[test]
    fn arguments_are_never_shell_parsed() {
        let out = Cmd::new("printf")
            .args(["%s|", "a b", "$(id)", "-x"])
            .run()
            .expect("printf");
        assert_eq!(out.stdout, b"a b|$(id)|-x|");
    }

    #[test]
    fn missing_program_is_reported() {
        let e = Cmd::new("definitely-not-a-program-xyz")
            .run()
            .expect_err("missing");
        assert!(e.is_not_found());
    }

    #[test]
    fn rsync_codes_are_classified() {
        assert_eq!(RsyncResult::classify(0, ""), RsyncResult::Ok);
        let r = RsyncResult::classify(24, "file has vanished: \"/a\"\nfile has vanished: \"/b\"\n");
        assert_eq!(r, RsyncResult::Vanished { files: 2 });
        assert!(r.is_success());
        assert_eq!(RsyncResult::classify(23, ""), RsyncResult::Partial);
        assert!(!RsyncResult::Partial.is_success());
        assert_eq!(
            RsyncResult::classify(30, ""),
            RsyncResult::Failed { code: 30 }
        );
    }
}

//! Contract 6: external commands. Argument vectors only (never a shell),
//! a timeout that kills the child's whole process group, stderr kept for
//! the error text; rsync's exit codes classified in one place.
//!
//! What a child prints is bounded: stdout is read in chunks into memory up
//! to [`DEFAULT_MAX_STDOUT`] (or a file, up to [`DEFAULT_MAX_STDOUT_FILE`]),
//! each settable per call with [`Cmd::max_stdout`]; one byte more kills the
//! child's process group and the call fails with [`CmdError::TooLarge`]
//! ("ssh: output exceeds 16 MiB, stopped"). stderr is only text for
//! messages, so it never fails a call: its last [`Cmd::max_stderr`] bytes
//! are kept (the end is where the reason is) and the dropped head is noted
//! in one line at the start. A program that cannot be started because it is
//! not there (or not executable) is [`CmdError::Absent`], which
//! [`crate::exit::code_of`] turns into exit 5 in every tool.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Default cap on stdout read into memory.
pub const DEFAULT_MAX_STDOUT: u64 = 16 << 20;
/// Default cap on stdout streamed to a file ([`Cmd::stdout_file`]).
pub const DEFAULT_MAX_STDOUT_FILE: u64 = 16 << 30;
/// Default amount of stderr kept (its tail).
pub const DEFAULT_MAX_STDERR: usize = 1 << 20;
/// Reads from a child's pipes happen in chunks of this size.
const CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program is not there: not found (in PATH, for a bare name), or
    /// not executable. Exit 5 ("command absent") in every tool.
    #[error("command absent: {prog} ({why})")]
    Absent {
        prog: String,
        why: String,
        /// The spawn error (not a `source`: the message says it already).
        io: std::io::Error,
    },
    #[error("{prog}: cannot run: {source}")]
    Spawn {
        prog: String,
        source: std::io::Error,
    },
    /// The child printed more than the call's cap; it was killed (with its
    /// process group) as soon as the cap was passed.
    #[error("{prog}: output exceeds {}, stopped", human_bytes(*cap))]
    TooLarge { prog: String, cap: u64 },
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
    /// The error for `prog` failing to start with `source`: [`CmdError::Absent`]
    /// when it is missing or not executable. For the few places that spawn
    /// a child themselves (a spool file held locked while it runs).
    pub fn from_spawn(prog: &OsStr, source: std::io::Error) -> CmdError {
        spawn_error(prog, Cmd::new(prog).prog_name(), source)
    }
    /// The program does not exist (ENOENT at exec).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CmdError::Absent { io, .. } if io.kind() == std::io::ErrorKind::NotFound)
    }
    /// The program could not be started because it is absent or not
    /// executable: exit 5 ("command absent").
    pub fn is_absent(&self) -> bool {
        matches!(self, CmdError::Absent { .. })
    }
}

/// A byte count in the largest binary unit that shows it exactly
/// (`16 MiB`, `1536 KiB`, `100 bytes`).
pub fn human_bytes(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    if n >= 1 << 20 {
        return format!("{n} bytes ({:.1} MiB)", n as f64 / (1u64 << 20) as f64);
    }
    format!("{n} bytes")
}

/// Turn a spawn error into [`CmdError::Absent`] when the program is
/// missing or not executable, else [`CmdError::Spawn`].
fn spawn_error(prog: &OsStr, name: String, source: std::io::Error) -> CmdError {
    let bare = !prog.as_encoded_bytes().contains(&b'/');
    let why = match source.kind() {
        std::io::ErrorKind::NotFound if bare => "not found in PATH".to_string(),
        std::io::ErrorKind::NotFound => format!("no such file: {}", prog.to_string_lossy()),
        std::io::ErrorKind::PermissionDenied => format!("not executable: {source}"),
        _ => return CmdError::Spawn { prog: name, source },
    };
    CmdError::Absent {
        prog: name,
        why,
        io: source,
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
    stdout_to: Option<PathBuf>,
    /// An open file stdout goes into instead (an unnamed temp file).
    stdout_into: Option<Arc<std::fs::File>>,
    /// Cap on stdout; `None` is the default of the sink (memory or file).
    max_stdout: Option<u64>,
    max_stderr: usize,
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
            stdout_into: None,
            max_stdout: None,
            max_stderr: DEFAULT_MAX_STDERR,
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
    /// Stream stdout into a file instead of memory (large outputs). The
    /// file is created or truncated (an existing file keeps its mode);
    /// its size is capped like memory, by default at
    /// [`DEFAULT_MAX_STDOUT_FILE`].
    pub fn stdout_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout_to = Some(path.into());
        self
    }
    /// Stream stdout into an open file, from its current offset: an
    /// unnamed temp file (`tempfile::tempfile_in`) leaves nothing behind
    /// when the tool is killed. Capped like [`Cmd::stdout_file`].
    pub fn stdout_into(mut self, file: std::fs::File) -> Self {
        self.stdout_into = Some(Arc::new(file));
        self
    }
    /// Cap on the bytes of stdout (in memory or in the file): one more
    /// kills the child's group and fails with [`CmdError::TooLarge`].
    pub fn max_stdout(mut self, bytes: u64) -> Self {
        self.max_stdout = Some(bytes);
        self
    }
    /// How much of stderr's end is kept (default [`DEFAULT_MAX_STDERR`]);
    /// more never fails the call, the head is dropped and noted.
    pub fn max_stderr(mut self, bytes: usize) -> Self {
        self.max_stderr = bytes;
        self
    }
    /// The stdout cap this call runs with.
    pub fn stdout_cap(&self) -> u64 {
        self.max_stdout
            .unwrap_or(if self.stdout_to.is_some() || self.stdout_into.is_some() {
                DEFAULT_MAX_STDOUT_FILE
            } else {
                DEFAULT_MAX_STDOUT
            })
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
        let io = |source| CmdError::Io {
            prog: prog.clone(),
            source,
        };
        let sink = self.stdout_sink().map_err(io)?;
        let mut child = self
            .command()
            .spawn()
            .map_err(|source| spawn_error(&self.prog, prog.clone(), source))?;
        let pgid = child.id() as i32;
        let readers = self.start_readers(&mut child, sink);
        let (status, timed_out) = self.wait_bounded(&mut child, pgid, &readers.stop)?;
        // The group may still hold the pipes open (a grandchild): make sure
        // nothing of it outlives us, then collect the output.
        kill_group(pgid);
        let (stdout, stderr) = readers.collect(&prog, self.stdout_cap())?;
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

    /// The child's command: own process group, killed with its parent,
    /// stdout and stderr piped (stdout always through the capped reader).
    fn command(&self) -> Command {
        let mut c = Command::new(&self.prog);
        c.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a timeout kills the child and everything
            // it started (ssh under rsync), not just the first process.
            .process_group(0);
        // The child dies with us: a tool killed outside systemd (no cgroup
        // kill) must not leave an rsync running on its own. Safe to enable
        // always, because the spawning thread waits for the child.
        let parent = rustix::process::getpid();
        // SAFETY: only async-signal-safe calls (prctl, getppid: one system
        // call each, no allocation) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                // The parent may have died before prctl took effect.
                if rustix::process::getppid() != Some(parent) {
                    return Err(std::io::Error::other("parent exited before exec"));
                }
                Ok(())
            });
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Where stdout goes beyond memory: the open file or the path given.
    fn stdout_sink(&self) -> std::io::Result<Option<std::fs::File>> {
        match (&self.stdout_into, &self.stdout_to) {
            (Some(f), _) => f.try_clone().map(Some),
            (None, Some(p)) => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map(Some)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot create {}: {e}", p.display()))
                }),
            (None, None) => Ok(None),
        }
    }

    /// Feed stdin and read stdout (capped) and stderr (its tail) on threads
    /// of their own, so no pipe can fill and stall the child.
    fn start_readers(
        &self,
        child: &mut std::process::Child,
        sink: Option<std::fs::File>,
    ) -> Readers {
        let stdin = child
            .stdin
            .take()
            .zip(self.stdin.clone())
            .map(|(mut pipe, data)| {
                std::thread::spawn(move || {
                    let _ = pipe.write_all(&data);
                })
            });
        // Set by the stdout reader when it stops early (cap passed, or the
        // file cannot be written): the wait then kills the group.
        let stop = Arc::new(AtomicBool::new(false));
        let cap = self.stdout_cap();
        let stdout = child.stdout.take().map(|s| {
            let stop = Arc::clone(&stop);
            let path = self.stdout_to.clone();
            std::thread::spawn(move || {
                let r = read_capped(s, sink, cap);
                if !matches!(r, StdoutEnd::Eof(_)) {
                    stop.store(true, Ordering::SeqCst);
                }
                (r, path)
            })
        });
        let keep_err = self.max_stderr;
        let stderr = child
            .stderr
            .take()
            .map(|s| std::thread::spawn(move || read_tail(s, keep_err)));
        Readers {
            stop,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Wait for the child, killing its group when the reader stopped early
    /// or the timeout passed; `true` with the status when it timed out.
    fn wait_bounded(
        &self,
        child: &mut std::process::Child,
        pgid: i32,
        stop: &AtomicBool,
    ) -> Result<(std::process::ExitStatus, bool), CmdError> {
        let io = |source| CmdError::Io {
            prog: self.prog_name(),
            source,
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            match child.try_wait().map_err(io)? {
                Some(st) => return Ok((st, false)),
                None if stop.load(Ordering::SeqCst) => {
                    kill_group(pgid);
                    return Ok((child.wait().map_err(io)?, false));
                }
                None if Instant::now() >= deadline => {
                    kill_group(pgid);
                    return Ok((child.wait().map_err(io)?, true));
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

/// The threads of one run: stdin's writer, stdout's capped reader (and
/// the flag it raises when it stops early), stderr's tail.
struct Readers {
    stop: Arc<AtomicBool>,
    stdin: Option<std::thread::JoinHandle<()>>,
    stdout: Option<std::thread::JoinHandle<(StdoutEnd, Option<std::path::PathBuf>)>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Readers {
    /// Join the threads: stdout's bytes (an error past the cap or when its
    /// file could not be written) and stderr's tail.
    fn collect(self, prog: &str, cap: u64) -> Result<(Vec<u8>, String), CmdError> {
        if let Some(t) = self.stdin {
            let _ = t.join();
        }
        let (end, path) = match self.stdout.and_then(|t| t.join().ok()) {
            Some(r) => r,
            None => (StdoutEnd::Eof(Vec::new()), None),
        };
        let stderr = self.stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        // The child may have exited on its own between the reader giving up
        // and the wait noticing: the output is short either way.
        match end {
            StdoutEnd::Eof(v) => Ok((v, stderr)),
            StdoutEnd::TooLarge => Err(CmdError::TooLarge {
                prog: prog.to_string(),
                cap,
            }),
            StdoutEnd::WriteFailed(e) => {
                let what = path
                    .map(|p| format!("writing {}: {e}", p.display()))
                    .unwrap_or_else(|| e.to_string());
                Err(CmdError::Io {
                    prog: prog.to_string(),
                    source: std::io::Error::new(e.kind(), what),
                })
            }
        }
    }
}

/// How reading a child's stdout ended.
enum StdoutEnd {
    /// End of the stream; the bytes when they were kept in memory.
    Eof(Vec<u8>),
    /// More than the cap arrived; reading stopped at the cap.
    TooLarge,
    /// The file sink could not be written (disk full...).
    WriteFailed(std::io::Error),
}

/// Read `src` in chunks into memory or `sink`, never holding or writing
/// more than `cap` bytes; stop at the first byte beyond it.
fn read_capped(mut src: impl Read, mut sink: Option<std::fs::File>, cap: u64) -> StdoutEnd {
    let mut mem = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A read error on our end of a pipe: treat as its end.
            Err(_) => break,
        };
        if total + n as u64 > cap {
            return StdoutEnd::TooLarge;
        }
        total += n as u64;
        match sink.as_mut() {
            Some(f) => {
                if let Err(e) = f.write_all(&buf[..n]) {
                    return StdoutEnd::WriteFailed(e);
                }
            }
            None => mem.extend_from_slice(&buf[..n]),
        }
    }
    if let Some(f) = sink.as_mut()
        && let Err(e) = f.flush()
    {
        return StdoutEnd::WriteFailed(e);
    }
    StdoutEnd::Eof(mem)
}

/// Read `src` to its end keeping only its last `keep` bytes (memory stays
/// under twice that); a dropped head is noted in one line at the start.
/// What the runner does with stderr; public for children spawned elsewhere.
pub fn read_tail(mut src: impl Read, keep: usize) -> String {
    let mut v: Vec<u8> = Vec::new();
    let mut dropped: u64 = 0;
    let mut buf = vec![0u8; CHUNK.min(keep.max(1))];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                v.extend_from_slice(&buf[..n]);
                if v.len() > keep.saturating_mul(2).max(CHUNK) {
                    let cut = v.len() - keep;
                    dropped += cut as u64;
                    v.drain(..cut);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if v.len() > keep {
        let cut = v.len() - keep;
        dropped += cut as u64;
        v.drain(..cut);
    }
    let text = String::from_utf8_lossy(&v).into_owned();
    if dropped == 0 {
        return text;
    }
    // Start at a line boundary so no line is shown cut.
    let rest = match text.find('\n') {
        Some(i) => {
            dropped += text[..=i].len() as u64;
            &text[i + 1..]
        }
        None => text.as_str(),
    };
    format!("[first {dropped} bytes of stderr dropped]\n{rest}")
}

/// SIGKILL to the process group we created (an error: it is gone already).
fn kill_group(pgid: i32) {
    if let Some(pgid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
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

/// An unnamed file in `dir` (`O_TMPFILE`, else created and unlinked at
/// once), mode 0600, for [`Cmd::stdout_into`]: a killed run leaves nothing
/// behind, and large output goes to that disk rather than into memory.
pub fn spool_file(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).mode(0o600);
    if let Ok(f) = o.clone().custom_flags(libc::O_TMPFILE).open(dir) {
        return Ok(f);
    }
    // Filesystems without O_TMPFILE: a named file, unlinked at once.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for i in 0..100 {
        let p = dir.join(format!(".spool.{}.{stamp}.{i}", std::process::id()));
        match o.clone().create_new(true).open(&p) {
            Ok(f) => {
                std::fs::remove_file(&p)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot create a spool file in {}: {e}", dir.display()),
                ));
            }
        }
    }
    Err(std::io::Error::other(format!(
        "cannot create a spool file in {}: names taken",
        dir.display()
    )))
}

/// Fail as starting `prog` would when it is absent: not found (on PATH,
/// for a bare name) or not executable. For a tool that checks the commands
/// it needs before it starts changing anything.
pub fn require(prog: impl AsRef<OsStr>) -> Result<(), CmdError> {
    use std::os::unix::fs::PermissionsExt;
    let prog = prog.as_ref();
    let name = Cmd::new(prog).prog_name();
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let found = if prog.as_encoded_bytes().contains(&b'/') {
        let p = std::path::Path::new(prog);
        if p.exists() && !executable(p) {
            return Err(spawn_error(
                prog,
                name,
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            ));
        }
        p.exists()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| executable(&d.join(prog))))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(spawn_error(
            prog,
            name,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
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
        assert!(e.is_absent());
        assert_eq!(
            e.to_string(),
            "command absent: definitely-not-a-program-xyz (not found in PATH)"
        );
        let e = Cmd::new("/nonexistent/rsync").run().expect_err("missing");
        assert!(e.is_absent());
        assert_eq!(
            e.to_string(),
            "command absent: rsync (no such file: /nonexistent/rsync)"
        );
    }

    #[test]
    fn require_says_what_spawning_would() {
        assert!(require("sh").is_ok());
        let e = require("definitely-not-a-program-xyz").expect_err("absent");
        assert_eq!(
            e.to_string(),
            "command absent: definitely-not-a-program-xyz (not found in PATH)"
        );
        assert!(
            require("/nonexistent/rsync")
                .expect_err("absent")
                .is_absent()
        );
    }

    #[test]
    fn a_program_that_is_not_executable_is_absent() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let prog = dir.path().join("rsync");
        std::fs::write(&prog, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Cmd::new(&prog).run().expect_err("not executable");
        assert!(e.is_absent(), "{e}");
        assert!(
            e.to_string()
                .starts_with("command absent: rsync (not executable: "),
            "{e}"
        );
    }

    /// Peak resident set size of this process, from /proc (kB).
    fn vm_hwm_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    #[test]
    fn stdout_beyond_the_cap_stops_the_child() {
        let start = Instant::now();
        // 200 MB from a child that would run for long after the cap.
        let e = Cmd::new("head")
            .args(["-c", "200000000", "/dev/zero"])
            .max_stdout(1 << 20)
            .run()
            .expect_err("too large");
        assert!(
            matches!(e, CmdError::TooLarge { cap, .. } if cap == 1 << 20),
            "{e}"
        );
        assert_eq!(e.to_string(), "head: output exceeds 1 MiB, stopped");
        assert!(start.elapsed() < Duration::from_secs(60));
        // Exactly the cap is fine.
        let out = Cmd::new("head")
            .args(["-c", "1048576", "/dev/zero"])
            .max_stdout(1 << 20)
            .run()
            .expect("at the cap");
        assert_eq!(out.stdout.len(), 1 << 20);
    }

    #[test]
    fn the_default_cap_bounds_memory_while_reading() {
        // 100 MB: without a cap all of it was read into memory.
        let before = vm_hwm_kb();
        let e = Cmd::new("head")
            .args(["-c", "100000000", "/dev/zero"])
            .timeout(Duration::from_secs(120))
            .run()
            .expect_err("too large");
        assert_eq!(e.to_string(), "head: output exceeds 16 MiB, stopped");
        let grown_mb = vm_hwm_kb().saturating_sub(before) / 1024;
        assert!(grown_mb < 48, "peak RSS grew by {grown_mb} MB");
    }

    #[test]
    fn a_killed_group_leaves_no_grandchild_after_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survivor");
        let script = format!(
            "(sleep 2; touch '{}') & head -c 5000000 /dev/zero; sleep 30",
            marker.display()
        );
        let e = Cmd::new("sh")
            .args(["-c", &script])
            .max_stdout(100_000)
            .run()
            .expect_err("too large");
        assert!(matches!(e, CmdError::TooLarge { .. }), "{e}");
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "a grandchild survived the cap");
    }

    #[test]
    fn stdout_streams_to_a_file_under_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("out");
        let out = Cmd::new("head")
            .args(["-c", "3000000", "/dev/urandom"])
            .stdout_file(&f)
            .max_stdout(3_000_000)
            .run()
            .expect("to file");
        assert!(out.stdout.is_empty());
        assert_eq!(std::fs::metadata(&f).expect("meta").len(), 3_000_000);
        let e = Cmd::new("head")
            .args(["-c", "3000001", "/dev/zero"])
            .stdout_file(&f)
            .max_stdout(3_000_000)
            .run()
            .expect_err("too large");
        assert_eq!(
            e.to_string(),
            "head: output exceeds 3000000 bytes (2.9 MiB), stopped"
        );
        assert!(std::fs::metadata(&f).expect("meta").len() <= 3_000_000);
    }

    #[test]
    fn stdout_streams_into_an_open_file() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = spool_file(dir.path()).expect("spool file");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            0,
            "unnamed"
        );
        Cmd::new("printf")
            .arg("a\\nb\\n")
            .stdout_into(f.try_clone().expect("clone"))
            .run()
            .expect("printf");
        f.seek(SeekFrom::Start(0)).expect("seek");
        let mut back = String::new();
        f.read_to_string(&mut back).expect("read");
        assert_eq!(back, "a\nb\n");
        let e = Cmd::new("head")
            .args(["-c", "100", "/dev/zero"])
            .stdout_into(f)
            .max_stdout(99)
            .run()
            .expect_err("too large");
        assert_eq!(e.to_string(), "head: output exceeds 99 bytes, stopped");
    }

    #[test]
    fn stderr_keeps_its_tail() {
        let e = Cmd::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 5000 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done; echo 'the reason' >&2; exit 2",
            ])
            .max_stderr(4096)
            .run()
            .expect_err("fails");
        let CmdError::Failed { stderr, .. } = &e else {
            panic!("{e}");
        };
        assert!(stderr.len() <= 4096 + 64, "{} bytes kept", stderr.len());
        assert!(stderr.starts_with("[first "), "{stderr}");
        assert!(stderr.ends_with("the reason\n"), "{stderr}");
        assert!(e.to_string().ends_with("| the reason"), "{e}");
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

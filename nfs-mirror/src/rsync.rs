//! rsync for one tree: its arguments, and a runner that spools rsync's
//! item list to a file the next run can recover (crate::spool).

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cmd::Cmd;
use backup_core::log::p;
use backup_core::rsync_items;

use crate::EXCLUDES;

/// The rsync arguments for one tree (`%i %n` lines on stdout).
pub(crate) fn args(
    src: &Path,
    dst: &Path,
    excludes: &[String],
    delete_excluded: bool,
    dry_run: bool,
) -> Vec<OsString> {
    let mut c: Vec<OsString> = Vec::new();
    c.extend(
        [
            "-rltH",
            "--delete",
            // Contract 6: the source is live, compare times at full precision.
            "--modify-window=-1",
            rsync_items::OUT_FORMAT,
        ]
        .map(OsString::from),
    );
    if delete_excluded {
        c.push("--delete-excluded".into());
    }
    if dry_run {
        c.extend(["--dry-run", "-ii"].map(OsString::from));
    }
    for e in EXCLUDES
        .iter()
        .map(|e| e.to_string())
        .chain(excludes.iter().cloned())
    {
        c.push(format!("--exclude={e}").into());
    }
    let mut s = src.as_os_str().to_os_string();
    s.push("/");
    let mut d = dst.as_os_str().to_os_string();
    d.push("/");
    c.extend(["--".into(), s, d]);
    c
}

/// Add `--max-delete=BOUND` to arguments made by `args`.
pub(crate) fn with_max_delete(args: &mut Vec<OsString>, bound: u64) {
    // Before the trailing `-- SRC/ DST/`.
    let at = args.len() - 3;
    args.insert(at, format!("--max-delete={bound}").into());
}

/// Cap on a dry run's item list (spooled to disk): -ii lists every item,
/// about 160 million lines of 100 bytes.
pub(crate) const DRY_RUN_MAX_OUTPUT: u64 = 16 << 30;

/// The dry run (or copy) of one tree as a command run by core's runner.
pub(crate) fn cmd(
    rsync: &OsStr,
    src: &Path,
    dst: &Path,
    excludes: &[String],
    delete_excluded: bool,
    dry_run: bool,
    timeout: Duration,
) -> Cmd {
    Cmd::new(rsync)
        .args(args(src, dst, excludes, delete_excluded, dry_run))
        .timeout(timeout)
}

/// How a spooled rsync ended.
pub(crate) enum Spooled {
    Exited { code: i32, stderr: String },
    Failed(String),
}

/// Run rsync with stdout into `spool`, which stays flocked for as long as
/// any process of the rsync holds it open; rsync dies with us
/// (PR_SET_PDEATHSIG), and its whole group on a timeout.
pub(crate) fn run_spooled(
    rsync: &OsStr,
    args: &[OsString],
    spool: &Path,
    timeout: Duration,
) -> Result<Spooled> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(spool)
        .with_context(|| p(spool))?;
    f.lock().with_context(|| p(spool))?;
    let mut c = std::process::Command::new(rsync);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().with_context(|| p(spool))?)
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe (one system call, no allocation);
    // nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let _ = rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ));
            Ok(())
        });
    }
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            // rsync absent ends the run (exit 5), not just this tree.
            let e = backup_core::cmd::CmdError::from_spawn(rsync, e);
            if e.is_absent() {
                return Err(e.into());
            }
            return Ok(Spooled::Failed(e.to_string()));
        }
    };
    let pgid = rustix::process::Pid::from_child(&child);
    // Nothing of the group may outlive the run (an error: the group is gone).
    let kill_group = || {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    };
    // stderr is for messages: its tail, bounded (core's runner does the same).
    let err_thread = child.stderr.take().map(|s| {
        std::thread::spawn(move || {
            backup_core::cmd::read_tail(s, backup_core::cmd::DEFAULT_MAX_STDERR)
        })
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if std::time::Instant::now() >= deadline => {
                timed_out = true;
                kill_group();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    kill_group();
    let stderr = err_thread.and_then(|t| t.join().ok()).unwrap_or_default();
    drop(f);
    if timed_out {
        return Ok(Spooled::Failed(format!(
            "rsync timed out after {}s and was killed",
            timeout.as_secs()
        )));
    }
    match status.and_then(|s| s.code()) {
        Some(code) => Ok(Spooled::Exited { code, stderr }),
        None => Ok(Spooled::Failed(format!(
            "rsync was killed by a signal: {}",
            backup_core::log::escape_str(stderr.trim())
        ))),
    }
}

//! Contract 2: one run at a time per tool, by `flock` on
//! `<lock dir>/<tool>.lock`. The kernel releases it on any death, so there
//! is no stale PID file to clean up. The pid inside is only for messages.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::exit::{Exit, ExitCode};

pub const DEFAULT_LOCK_DIR: &str = "/run/backup-pipeline";

/// The lock directory: `$BACKUP_LOCK_DIR`, else `/run/backup-pipeline`.
pub fn lock_dir() -> PathBuf {
    std::env::var_os("BACKUP_LOCK_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCK_DIR))
}

/// Held for the whole run; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Take `<lock dir>/<tool>.lock`, or fail with exit 4 naming the holder.
pub fn acquire(tool: &str) -> anyhow::Result<RunLock> {
    acquire_in(&lock_dir(), tool)
}

pub fn acquire_in(dir: &Path, tool: &str) -> anyhow::Result<RunLock> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Exit::err(
            ExitCode::Failed,
            format!("cannot create lock directory {}: {e}", dir.display()),
        )
    })?;
    let path = dir.join(format!("{tool}.lock"));
    // Never truncate on open: the holder's pid would vanish from its file.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            Exit::err(
                ExitCode::Failed,
                format!("cannot open lock {}: {e}", path.display()),
            )
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() {
                "pid unknown".to_string()
            } else {
                format!("pid {pid}")
            };
            return Err(Exit::err(
                ExitCode::Busy,
                format!("another run holds {} ({holder})", path.display()),
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(Exit::err(
                ExitCode::Failed,
                format!("cannot lock {}: {e}", path.display()),
            ));
        }
    }
    // The pid is informational; failing to write it must not fail the run.
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = writeln!(file, "{}", std::process::id());
    Ok(RunLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::code_of;

    #[test]
    fn second_holder_is_busy_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire_in(dir.path(), "lvm-snap").expect("first lock");
        let err = acquire_in(dir.path(), "lvm-snap").expect_err("second must fail");
        assert_eq!(code_of(&err), ExitCode::Busy);
        let msg = err.to_string();
        assert!(msg.contains("lvm-snap.lock"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        acquire_in(dir.path(), "lvm-snap").expect("free again after drop");
    }

    #[test]
    fn tools_do_not_share_a_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _a = acquire_in(dir.path(), "pvc-copy").expect("a");
        let _b = acquire_in(dir.path(), "offsite-sync").expect("b");
    }
}

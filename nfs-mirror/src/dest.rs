//! The backup root a run writes to: checked at the start, then pinned.
//!
//! Contract 12 with 13: rsync writes through the root's descriptor
//! (`/proc/PID/fd/N`), never through its path, so a disk lazily unmounted
//! mid-run is never replaced by the root filesystem under its bare
//! mountpoint; the root is checked again before each step that commits.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::exit::{Exit, ExitCode};
use backup_core::log::p;
use backup_core::root_guard::RootGuard;

pub(crate) struct Dest {
    pub(crate) guard: RootGuard,
    /// Kept open for the run: `pinned` names it.
    _fd: OwnedFd,
    /// The backup root's `/proc/PID/fd/N` path: rsync writes through it.
    pinned: PathBuf,
}

impl Dest {
    /// The backup root at `root` (its identity marker required), pinned.
    pub(crate) fn require(root: &Path) -> Result<Dest> {
        let guard = RootGuard::require(root)?;
        let fd = backup_core::fsutil::open_dir(root).with_context(|| p(root))?;
        let pinned = backup_core::fsutil::fd_path(&fd);
        Ok(Dest {
            guard,
            _fd: fd,
            pinned,
        })
    }

    /// `dst` (below the backup root) reached through the pinned root.
    pub(crate) fn pinned(&self, root: &Path, dst: &Path) -> PathBuf {
        dst.strip_prefix(root)
            .map(|rel| self.pinned.join(rel))
            .unwrap_or_else(|_| dst.to_path_buf())
    }

    /// `Err` (failed) when the backup root is no longer the one of the start.
    pub(crate) fn check(&self) -> Result<()> {
        self.guard
            .check()
            .map_err(|e| Exit::err(ExitCode::Failed, e))
    }
}

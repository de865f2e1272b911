//! Contract 12 applied to contract 13: the backup root a run checked at its
//! start (its identity marker, the filesystem it is on) is still the one it
//! writes to when it commits a result. A backup disk unmounted mid-run
//! (`umount -l`) leaves its bare mountpoint behind: paths then resolve
//! there, on the root filesystem, and a result renamed or ledgered through
//! them would be trusted by the next run while the disk never saw it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::log::p;
use crate::marker::{self, Marker};

/// A backup root whose marker was checked, pinned to the directory
/// (device and inode) it was found on.
#[derive(Debug, Clone)]
pub struct RootGuard {
    dir: PathBuf,
    dev: u64,
    ino: u64,
    marker: Marker,
}

impl RootGuard {
    /// [`marker::require_backup_root`]: `root` itself carries the marker.
    pub fn require(root: &Path) -> anyhow::Result<RootGuard> {
        let m = marker::require_backup_root(root)?;
        Self::pin(root, m)
    }

    /// [`marker::find_backup_root`]: the backup root holding `path`.
    pub fn find(path: &Path) -> anyhow::Result<RootGuard> {
        let (dir, m) = marker::find_backup_root(path)?;
        Self::pin(&dir, m)
    }

    fn pin(dir: &Path, marker: Marker) -> anyhow::Result<RootGuard> {
        let meta = std::fs::metadata(dir).map_err(|e| anyhow::anyhow!("{}: {e}", p(dir)))?;
        Ok(RootGuard {
            dir: dir.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            marker,
        })
    }

    /// Refuse (exit 5) a backup root that is not a mountpoint, unless
    /// `allow_unmounted` (`--allow-unmounted-root`, ALLOW_UNMOUNTED_ROOT:
    /// a sandbox): an unmounted disk leaves its bare mountpoint, on the
    /// root filesystem, where nothing must be written.
    pub fn require_mounted(&self, allow_unmounted: bool) -> anyhow::Result<()> {
        if allow_unmounted || is_mountpoint(&self.dir) {
            return Ok(());
        }
        Err(crate::exit::Exit::refused(format!(
            "backup root {} is not a mountpoint (backup disk not mounted?); --allow-unmounted-root (ALLOW_UNMOUNTED_ROOT=1) for a sandbox",
            p(&self.dir)
        )))
    }

    /// The backup root's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The marker found at the start.
    pub fn marker(&self) -> &Marker {
        &self.marker
    }

    /// `Ok` while the root is the same directory on the same filesystem
    /// with the same marker; else one line saying what changed.
    pub fn check(&self) -> Result<(), String> {
        let gone = |why: String| {
            Err(format!(
                "backup root {} {why} since the run started (backup disk unmounted?); nothing more is committed there",
                p(&self.dir)
            ))
        };
        match std::fs::metadata(&self.dir) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {}
            Ok(_) => return gone("is another directory or filesystem".into()),
            Err(e) => return gone(format!("cannot be read ({e})")),
        }
        match marker::read(&self.dir) {
            Ok(Some(m)) if m.id == self.marker.id => Ok(()),
            Ok(Some(m)) => gone(format!("carries another identity marker (id {})", m.id)),
            Ok(None) => gone(format!("has lost its identity marker ({})", marker::FILE)),
            Err(e) => gone(format!("has an unreadable identity marker ({e})")),
        }
    }
}

/// `dir` is a mountpoint: another device than its parent's, or the same
/// inode as its parent (`/`).
pub fn is_mountpoint(dir: &Path) -> bool {
    let (Ok(d), Ok(up)) = (std::fs::metadata(dir), std::fs::metadata(dir.join(".."))) else {
        return false;
    };
    d.dev() != up.dev() || d.ino() == up.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_whose_marker_changes_or_goes_fails_the_check() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("backup");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        assert!(RootGuard::require(&root).is_err());
        marker::init(&root, marker::ROLE_BACKUP_ROOT).expect("init");
        let g = RootGuard::find(&root.join("sub/new")).expect("found");
        assert_eq!(g.dir(), root);
        g.check().expect("unchanged");
        std::fs::remove_file(root.join(marker::FILE)).expect("rm");
        let e = g.check().expect_err("marker gone");
        assert!(e.contains("lost its identity marker"), "{e}");
        marker::init(&root, marker::ROLE_BACKUP_ROOT).expect("init again");
        let e = g.check().expect_err("another marker");
        assert!(e.contains("another identity marker"), "{e}");
        // Same name, another directory (a bare mountpoint in its place).
        let g = RootGuard::require(&root).expect("root");
        std::fs::rename(&root, d.path().join("old")).expect("mv");
        std::fs::create_dir(&root).expect("bare");
        std::fs::copy(
            d.path().join("old").join(marker::FILE),
            root.join(marker::FILE),
        )
        .expect("copied marker");
        let e = g.check().expect_err("another directory");
        assert!(e.contains("another directory"), "{e}");
    }
}

//! nfs-mirror: leg 1 of the NFS backup. Every top-level entry of each NFS
//! root that the skip list routes to the backup disk is mirrored: the
//! main root's (`/srv/nfs`) into `DEST/<name>/`, another root given as
//! `ROOT:SUBDIR` (`/srv/nfs-ssd:nfs-ssd`) into `DEST/SUBDIR/<name>/`;
//! nothing else under DEST is ever touched. Also copies the host
//! configuration into `DEST/pve-config/` (`nfs-mirror config`). DEST must
//! carry the backup root's identity marker (contract 13).
//!
//! Every run records, per root, which top-level entries it saw and which
//! it mirrored (`DEST/.nfs-mirror/coverage`, core::mirror_record):
//! `offsite-sync coverage` counts a directory routed to the backup disk as
//! covered only from that record (contract 15).
//!
//! Deletion is guarded: the source must be non-empty (and a mountpoint when
//! asked), no mirrored tree may go from files to an empty source, and a
//! dry-run pass bounds the deletions by `--max-delete` before any real
//! transfer. The ledger (`DEST/.changed-files`) receives exactly the files
//! rsync reported as transferred, also for a run that fails midway: rsync's
//! item list is spooled under `DEST/.nfs-mirror/` and turned into ledger
//! entries even by the next run if this one is killed.
//!
//! Modules: `mirror` (the NFS mirror run; `mirror::root`, one `--source`
//! root's), `config_copy` (`nfs-mirror config`), and the pieces both
//! share: `rsync` (arguments and the spooled runner), `spool` (rsync's
//! item lists into the ledger, recovery of a killed run's), `entries`
//! (the names mirrored per root) and `dest` (the pinned backup root).

mod config_copy;
mod dest;
mod entries;
mod mirror;
mod rsync;
mod spool;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::log::p;

pub use config_copy::{ConfigOpts, config, run_config};
pub use mirror::{EntryReport, MirrorOpts, Report, mirror, print_report, run_mirror};

/// Top-level names under the backup root that belong to other jobs or are
/// state files: never mirrored into, never deleted.
pub const RESERVED: &[&str] = &[
    "pvc-data",
    "sqlite-backup",
    "pfsense",
    "pve-config",
    "vzdump",
    "devvm-home",
    "lost+found",
    "anca-elements",
];

/// Excluded inside every mirrored tree: SQLite sidecars (they vanish
/// mid-transfer, contract 6) and NAS cruft.
pub const EXCLUDES: &[&str] = &[
    "*-wal",
    "*-shm",
    "*-journal",
    "@eaDir/",
    "*@synoeastream",
    ".DS_Store",
    "Thumbs.db",
];

/// The state directory nfs-mirror keeps under the backup root.
pub const STATE_DIR: &str = ".nfs-mirror";

fn reserved(name: &[u8]) -> bool {
    name.first() == Some(&b'.') || RESERVED.iter().any(|r| r.as_bytes() == name)
}

/// One NFS root to mirror (`--source ROOT[:SUBDIR]`): its top-level
/// entries go to `DEST/<name>/`, or to `DEST/SUBDIR/<name>/` when a
/// subdirectory is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRoot {
    pub path: PathBuf,
    pub into: Option<PathBuf>,
}

impl SourceRoot {
    /// `ROOT` or `ROOT:SUBDIR` (split at the last `:`; SUBDIR is one plain
    /// name, not a name of another job's tree under DEST).
    pub fn parse(s: &str) -> std::result::Result<SourceRoot, String> {
        let (path, into) = match s.rsplit_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        if !path.starts_with('/') {
            return Err(format!(
                "{s:?}: expected an absolute NFS root, optionally :SUBDIR (e.g. /srv/nfs-ssd:nfs-ssd)"
            ));
        }
        let into = match into {
            None => None,
            Some(b) => {
                let ok = !b.is_empty()
                    && !b.contains('/')
                    && !b.starts_with('.')
                    && !RESERVED.contains(&b);
                if !ok {
                    return Err(format!(
                        "{s:?}: SUBDIR {b:?} must be one plain name that no other job uses under DEST"
                    ));
                }
                Some(PathBuf::from(b))
            }
        };
        Ok(SourceRoot {
            path: PathBuf::from(path),
            into,
        })
    }
}

fn name_str(n: &[u8]) -> String {
    backup_core::log::escape_bytes(n)
}

/// core's mountpoint test; a path that cannot be read is an error here
/// (a source or destination that is missing is reported as such).
pub fn is_mountpoint(path: &Path) -> Result<bool> {
    std::fs::metadata(path).with_context(|| p(path))?;
    Ok(backup_core::root_guard::is_mountpoint(path))
}

/// Used bytes of the filesystem holding `path` (statvfs, integers only).
pub fn fs_used_bytes(path: &Path) -> u64 {
    let Ok(st) = rustix::fs::statvfs(path) else {
        return 0;
    };
    st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize
}

/// Nothing in `d` (or it cannot be listed).
fn is_empty_dir(d: &Path) -> bool {
    std::fs::read_dir(d)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

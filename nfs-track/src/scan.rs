//! Walking a tree without following symlinks, for the scans of new
//! directories and the ctime rescans that close gaps.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What to do with the entries below a directory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    /// Log every file (a directory that is new to us: created or moved in).
    All,
    /// Log files whose ctime is at or after this instant.
    Newer(SystemTime),
    /// Log nothing (only watches are wanted).
    Nothing,
}

pub fn ctime(m: &Metadata) -> SystemTime {
    let secs = m.ctime();
    let nanos = m.ctime_nsec().clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH
    }
}

/// A file worth logging: a regular file or a symlink (rsync copies both).
pub fn loggable(m: &Metadata) -> bool {
    let t = m.file_type();
    t.is_file() || t.is_symlink()
}

impl Scope {
    /// Whether a file with this metadata is logged under this scope.
    pub fn wants(&self, m: &Metadata) -> bool {
        match self {
            Scope::All => loggable(m),
            Scope::Newer(t) => loggable(m) && ctime(m) >= *t,
            Scope::Nothing => false,
        }
    }
}

/// Walk below `dir` (not including it), depth first, never following a
/// symlink. `on_dir(path, meta)` is called for each subdirectory and
/// returns the scope for its contents, or `None` to skip it; `on_file` for
/// every other entry with the scope of its directory. Entries that vanish
/// or cannot be read are skipped: a concurrent delete is not an error.
pub fn walk(
    dir: &Path,
    scope: Scope,
    on_dir: &mut dyn FnMut(&Path, &Metadata, Scope) -> Option<Scope>,
    on_file: &mut dyn FnMut(PathBuf, &Metadata, Scope),
) {
    let mut stack: Vec<(PathBuf, Scope)> = vec![(dir.to_path_buf(), scope)];
    while let Some((d, scope)) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                backup_core::debug!("cannot read {}: {e}", backup_core::log::p(&d));
                continue;
            }
        };
        for ent in rd.flatten() {
            // DirEntry::metadata does not follow symlinks.
            let Ok(m) = ent.metadata() else { continue };
            let p = ent.path();
            if m.is_dir() {
                if let Some(s) = on_dir(&p, &m, scope) {
                    stack.push((p, s));
                }
            } else {
                on_file(p, &m, scope);
            }
        }
    }
}

/// The scope of a subdirectory met during a gap rescan at `threshold`: a
/// directory whose ctime is new may have been moved or renamed in, and a
/// move keeps the old ctimes of everything inside, so all of it is logged.
pub fn rescan_scope(parent: Scope, m: &Metadata, threshold: SystemTime, new_to_us: bool) -> Scope {
    match parent {
        Scope::All => Scope::All,
        _ if new_to_us && ctime(m) >= threshold => Scope::All,
        _ => Scope::Newer(threshold),
    }
}

//! Walking a tree without following symlinks, for the scans of new
//! directories and the ctime rescans that close gaps.

use std::fs::{DirEntry, Metadata};
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

impl Scope {
    /// Whether a file met in a walk is logged under this scope. The file
    /// type comes from readdir; only `Newer` needs an lstat (for ctime).
    pub fn wants(&self, e: &DirEntry) -> bool {
        let loggable = e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink());
        match self {
            Scope::All => loggable,
            Scope::Newer(t) => loggable && e.metadata().is_ok_and(|m| ctime(&m) >= *t),
            Scope::Nothing => false,
        }
    }
}

/// Walk below `dir` (not including it), depth first, never following a
/// symlink. `on_dir(path, entry, scope)` is called for each subdirectory and
/// returns the scope for its contents, or `None` to skip it; `on_file` for
/// every other entry with the scope of its directory. Entries that vanish
/// or cannot be read are skipped: a concurrent delete is not an error.
pub fn walk(
    dir: &Path,
    scope: Scope,
    on_dir: &mut dyn FnMut(&Path, &DirEntry, Scope) -> Option<Scope>,
    on_file: &mut dyn FnMut(PathBuf, &DirEntry, Scope),
) {
    let mut stack: Vec<(PathBuf, Scope)> = vec![(dir.to_path_buf(), scope)];
    while let Some((d, scope)) = stack.pop() {
        crate::sys::watchdog_tick();
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                backup_core::debug!("cannot read {}: {e}", backup_core::log::p(&d));
                continue;
            }
        };
        for ent in rd.flatten() {
            // The type from readdir (d_type): no stat per entry, and a
            // symlink is never taken for the directory it points to.
            let Ok(ft) = ent.file_type() else { continue };
            let p = ent.path();
            if ft.is_dir() {
                if let Some(s) = on_dir(&p, &ent, scope) {
                    stack.push((p, s));
                }
            } else {
                on_file(p, &ent, scope);
            }
        }
    }
}

/// The scope of a subdirectory met during a gap rescan at `threshold`: a
/// directory whose ctime is new may have been moved or renamed in, and a
/// move keeps the old ctimes of everything inside, so all of it is logged.
pub fn rescan_scope(parent: Scope, e: &DirEntry, threshold: SystemTime, new_to_us: bool) -> Scope {
    match parent {
        Scope::All => Scope::All,
        _ if new_to_us && e.metadata().is_ok_and(|m| ctime(&m) >= threshold) => Scope::All,
        _ => Scope::Newer(threshold),
    }
}
